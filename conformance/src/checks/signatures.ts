/**
 * The signature checks (with --secret): correctly signed callbacks are accepted; missing,
 * malformed, wrong, stale, future, legacy (v1) and replayed signatures are refused with 401 and
 * change nothing; a signature binds its route.
 */
import { SIGNATURE_MAX_AGE_MS, signBody, signBodyV1 } from '@fastify-2pc/protocol'
import { show, type Answer, type Route, type Signing } from '../http.js'
import { wellFormedBatch } from './batch.js'
import { codeOf, expect401, expectOk, expectVote, fail, is2xx, type CheckDef, type Context } from './context.js'

/** The forged-signature scenario: every route answers 401, and signed follow-ups show nothing changed. */
async function rejectsForged (c: Context, forge: (body: Record<string, unknown>, route: Route) => Signing): Promise<string> {
  const yes = c.vote === 'yes'
  const codes = new Set<string>()
  const note = (a: Answer): void => { codes.add(codeOf(a) ?? '(no code)') }

  // prepare
  const a = c.newTx()
  const body = c.prepareBody(a)
  const p = await c.post('prepare', a, body, forge(body, 'prepare'))
  expect401(p, 'prepare with this signature')
  note(p)
  const afterPrepare = await c.decide('commit', a)
  if (is2xx(afterPrepare)) fail(`the refused prepare was applied anyway: a signed commit afterwards answered ${show(afterPrepare)}`)
  if (yes) {
    const again = await c.prepare(a)
    const vote = expectVote(again, 'a signed prepare after the refused one')
    if (vote !== 'yes') fail(`the refused prepare left a record: a signed prepare afterwards voted "${vote}": ${show(again)}`)
    expectOk(await c.decide('abort', a), 'abort (clean-up)')
  }

  // commit
  if (yes) {
    const { txid } = await c.prepareYes()
    const body = { txid, participant: c.options.name }
    const r = await c.post('commit', txid, body, forge(body, 'commit'))
    expect401(r, 'commit with this signature')
    note(r)
    const abort = await c.decide('abort', txid)
    if (!is2xx(abort)) fail(`the refused commit was applied anyway: a signed abort afterwards answered ${show(abort)}`)
  } else {
    const txid = c.newTx()
    const body = { txid, participant: c.options.name }
    const r = await c.post('commit', txid, body, forge(body, 'commit'))
    expect401(r, 'commit with this signature')
    note(r)
  }

  // abort
  if (yes) {
    const { txid } = await c.prepareYes()
    const body = { txid, participant: c.options.name }
    const r = await c.post('abort', txid, body, forge(body, 'abort'))
    expect401(r, 'abort with this signature')
    note(r)
    const commit = await c.decide('commit', txid)
    if (!is2xx(commit)) fail(`the refused abort was applied anyway: a signed commit afterwards answered ${show(commit)}`)
  } else {
    const txid = c.newTx()
    const body = { txid, participant: c.options.name }
    const r = await c.post('abort', txid, body, forge(body, 'abort'))
    expect401(r, 'abort with this signature')
    note(r)
  }
  const changed = yes
    ? 'nothing changed (signed follow-ups saw the state untouched)'
    : 'state follow-ups need a yes vote for --payload, only the refusals were checked'
  return `prepare, commit, abort: 401 ${[...codes].join(', ')}; ${changed}`
}

const OTHER_SECRET_SUFFIX = '-not-the-secret'

/**
 * Each correctly signed request (prepare, commit, abort, and batch when advertised) sent, body and
 * signature unchanged, to every other route: each answers 401, and signed follow-ups show that
 * nothing changed (with a yes vote for --payload). A participant that verifies the signature
 * without its route (scheme v1, or v2 for any operation) lets an on-path attacker turn a signed
 * abort into a commit.
 */
async function replaysRefused (c: Context): Promise<string> {
  const yes = c.vote === 'yes'
  const batch = wellFormedBatch(c.advertised) !== undefined
  // The other routes, the most harmful replay first (an abort sent to /commit).
  const targets: Record<Route, Route[]> = {
    abort: ['commit', 'prepare', 'batch'],
    commit: ['abort', 'prepare', 'batch'],
    prepare: ['commit', 'abort', 'batch'],
    batch: ['commit', 'abort', 'prepare']
  }
  let replays = 0
  const replay = async (signedFor: Route, txid: string, body: unknown): Promise<void> => {
    const raw = JSON.stringify(body)
    const header = c.http.sign(signedFor, raw)
    for (const sentTo of targets[signedFor].filter(r => batch || r !== 'batch')) {
      const a = await c.post(sentTo, txid, raw, { kind: 'header', value: header })
      if (a.status !== 401) {
        fail(`${signedFor === 'abort' ? 'an' : 'a'} ${signedFor} signed for /${signedFor}, sent to /${sentTo}, answered ${show(a)}, expected 401: the signature must bind its route (v2 signs "v2.${signedFor}.<t>.<body>")`)
      }
      replays++
    }
  }
  const decision = (txid: string): Record<string, unknown> => ({ txid, participant: c.options.name })

  // abort: replayed onto /commit it must not commit
  const ab = yes ? (await c.prepareYes()).txid : c.newTx()
  await replay('abort', ab, decision(ab))
  if (yes) {
    const a = await c.decide('abort', ab)
    if (!is2xx(a)) fail(`a replayed abort changed the state (committed?): the abort, sent where it was signed for, answered ${show(a)}`)
  }
  // commit: replayed onto /abort it must not abort
  const cm = yes ? (await c.prepareYes()).txid : c.newTx()
  await replay('commit', cm, decision(cm))
  if (yes) {
    const a = await c.decide('commit', cm)
    if (!is2xx(a)) fail(`a replayed commit changed the state (aborted?): the commit, sent where it was signed for, answered ${show(a)}`)
  }
  // prepare
  const p = c.newTx()
  await replay('prepare', p, c.prepareBody(p))
  if (yes) {
    const vote = expectVote(await c.prepare(p), 'a signed prepare after the replays of its signature')
    if (vote !== 'yes') fail(`a replayed prepare changed the state: the same prepare, sent where it was signed for, voted "${vote}"`)
    expectOk(await c.decide('abort', p), 'abort (clean-up)')
  }
  // batch
  if (batch) {
    const b = yes ? (await c.prepareYes()).txid : c.newTx()
    await replay('batch', b, { calls: [{ op: 'abort', body: decision(b) }] })
    if (yes) {
      const a = await c.decide('commit', b)
      if (!is2xx(a)) fail(`a replayed batch changed the state: a signed commit afterwards answered ${show(a)}`)
    }
  }
  const changed = yes ? 'nothing changed (signed follow-ups saw the state untouched)' : 'state follow-ups need a yes vote for --payload, only the refusals were checked'
  return `${replays} replays of ${batch ? 'abort, commit, prepare, batch' : 'abort, commit, prepare'} onto the other routes: 401 each; ${changed}`
}

export const SIGNATURE_CHECKS: CheckDef[] = [
  // --- signatures ------------------------------------------------------------------------------
  {
    id: 'signature-valid-accepted',
    level: 'MUST',
    needs: 'secret',
    description: 'callbacks signed with the secret (t=<ms>,v2=<hex HMAC-SHA256 of "v2.<route>.<t>.<body>">) are accepted',
    async run (c) {
      const txid = c.newTx()
      const p = await c.prepare(txid)
      expectVote(p, 'a signed prepare')
      const a = await c.decide('abort', txid)
      expectOk(a, 'a signed abort')
      return 'signed prepare and abort: 200 (and every other request of this run was signed)'
    }
  },
  {
    id: 'signature-missing-rejected',
    level: 'MUST',
    needs: 'secret',
    description: 'without x-2pc-signature: 401 on prepare, commit, abort; nothing changes',
    run: async c => await rejectsForged(c, () => ({ kind: 'none' }))
  },
  {
    id: 'signature-malformed-rejected',
    level: 'MUST',
    needs: 'secret',
    description: 'a malformed x-2pc-signature: 401; nothing changes',
    run: async c => await rejectsForged(c, () => ({ kind: 'header', value: `t=${Date.now()},v2=not-a-mac` }))
  },
  {
    id: 'signature-wrong-rejected',
    level: 'MUST',
    needs: 'secret',
    description: 'a signature made with another secret: 401; nothing changes',
    run: async c => await rejectsForged(c, (body, route) => ({
      kind: 'header', value: signBody(`${c.options.secret ?? ''}${OTHER_SECRET_SUFFIX}`, route, JSON.stringify(body))
    }))
  },
  {
    id: 'signature-stale-rejected',
    level: 'MUST',
    needs: 'secret',
    description: 'a correct signature older than 5 minutes: 401; nothing changes',
    run: async c => await rejectsForged(c, (body, route) => ({
      kind: 'header', value: c.http.sign(route, JSON.stringify(body), Date.now() - SIGNATURE_MAX_AGE_MS - 60_000)
    }))
  },
  {
    id: 'signature-replayed-rejected',
    level: 'MUST',
    needs: 'secret',
    description: 'a fresh, valid signature of another body (replayed over this one): 401; nothing changes',
    run: async c => await rejectsForged(c, (body, route) => ({
      kind: 'header', value: c.http.sign(route, JSON.stringify({ ...body, txid: c.newTx() }))
    }))
  },
  {
    id: 'signature-route-bound',
    level: 'MUST',
    needs: 'secret',
    description: 'a correctly signed prepare, commit, abort (and batch, if advertised) sent to another route: 401 each; nothing changes (a signed abort never commits)',
    run: replaysRefused
  },
  {
    id: 'signature-legacy-rejected',
    level: 'SHOULD',
    needs: 'secret',
    description: 'a correct signature of the legacy scheme (t=<ms>,v1=…, no route bound): 401; nothing changes',
    run: async c => await rejectsForged(c, body => ({ kind: 'header', value: signBodyV1(c.options.secret ?? '', JSON.stringify(body)) }))
  },
  {
    id: 'signature-future-rejected',
    level: 'SHOULD',
    needs: 'secret',
    description: 'a correct signature dated more than 5 minutes ahead: 401; nothing changes',
    run: async c => await rejectsForged(c, (body, route) => ({
      kind: 'header', value: c.http.sign(route, JSON.stringify(body), Date.now() + SIGNATURE_MAX_AGE_MS + 60_000)
    }))
  }
]
