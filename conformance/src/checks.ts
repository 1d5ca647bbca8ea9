/**
 * The conformance checks: what any participant (whatever its language) must answer on
 * `POST {base}/prepare|commit|abort` (DESIGN.md, "Participant callbacks"; protocol/src/wire.ts),
 * and on the optional `POST {base}/batch` when its prepare answers advertise `batch`.
 *
 * Every check works on fresh random transaction ids and only over HTTP. Checks are MUST (the
 * coordinator's safety or the contract depends on it: a failure makes the run fail) or SHOULD
 * (the documented answer, where a different answer is still safe: reported as a warning).
 * Checks that need a transaction the participant votes `yes` for are skipped, saying so, when it
 * votes otherwise for `--payload`; signature checks are skipped without `--secret`.
 */
import { randomBytes } from 'node:crypto'
import { MAX_BATCH_CALLS, SIGNATURE_MAX_AGE_MS, TX_ID_PATTERN, signBody, signBodyV1, type BatchCapability, type Vote } from '@fastify-2pc/protocol'
import { ParticipantHttp, TransportError, show, type Answer, type Route, type Signing } from './http.js'

export type Level = 'MUST' | 'SHOULD'
/** `fail` is a failed MUST check, `warn` a failed SHOULD check. */
export type Result = 'pass' | 'fail' | 'warn' | 'skip'

export interface CheckResult {
  id: string
  level: Level
  result: Result
  /** What the check verifies. */
  description: string
  /** What was seen (or why it was skipped). */
  detail: string
}

export interface ConformanceOptions {
  /** Callback base, e.g. `http://127.0.0.1:3001/2pc`. */
  url: string
  /** The participant name sent in prepare bodies (the SDK refuses another name). */
  name: string
  /** Sent as `payload` in every prepare: one the participant votes `yes` to enables the yes-path checks. */
  payload: unknown
  /** Prefix of the generated transaction ids. */
  coordinatorId: string
  secret?: string | undefined
  timeoutMs: number
}

export interface ConformanceReport {
  participant: string
  name: string
  payload: unknown
  signed: boolean
  /** The participant's vote for `--payload` (undefined when prepare gave no valid vote). */
  vote: Vote | undefined
  checks: CheckResult[]
  summary: { passed: number, failed: number, warnings: number, skipped: number }
  /** Transactions the kit left prepared and then aborted at the end (and those it could not). */
  cleanup: { aborted: number, failed: string[] }
  /** Every MUST check passed (skipped ones aside). */
  ok: boolean
}

class Fail extends Error {}
class Skip extends Error {}

const fail = (detail: string): never => { throw new Fail(detail) }
const is2xx = (a: Answer): boolean => a.status >= 200 && a.status < 300
const is4xx = (a: Answer): boolean => a.status >= 400 && a.status < 500
const codeOf = (a: Answer): string | undefined => {
  const code = (a.json as { code?: unknown } | undefined)?.code
  return typeof a.json === 'object' && a.json !== null && typeof code === 'string' ? code : undefined
}
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

const TXID = new RegExp(TX_ID_PATTERN)
/** Crockford base32, lower case, as in TX_ID_PATTERN. */
const BASE32 = '0123456789abcdefghjkmnpqrstvwxyz'

type Prepared = { txid: string, body: Record<string, unknown> }
/** One call of a batch, as the coordinator sends it. */
type BatchCall = { op: 'prepare' | 'commit' | 'abort', body: Record<string, unknown> }

export class Context {
  vote: Vote | undefined
  /** Set when nothing else can run (unreachable, prepare gives no vote). */
  blocked: string | undefined
  probeTx: string | undefined
  committedTx: string | undefined
  abortedTx: string | undefined
  tombstoneTx: string | undefined
  /** What the first prepare answer said in `batch` (undefined: no batch route advertised). */
  advertised: unknown
  /** The advertised batch capability, once batch-advertised-valid found it well formed. */
  batch: BatchCapability | undefined
  readonly saved = new Map<string, Answer>()
  /** Transactions the participant voted yes for and that are not known settled yet. */
  readonly held = new Set<string>()

  constructor (readonly http: ParticipantHttp, readonly options: ConformanceOptions) {}

  get signed (): boolean { return this.options.secret !== undefined }

  newTx (): string {
    const bytes = randomBytes(26)
    let id = ''
    for (const b of bytes) id += BASE32[b & 31]
    return `${this.options.coordinatorId}.${id}`
  }

  prepareBody (txid: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { txid, participant: this.options.name, payload: this.options.payload, deadline: Date.now() + 60_000, ...extra }
  }

  /** Sends a body about `txid` and keeps track of what is left prepared. */
  async post (route: Route, txid: string | undefined, body: unknown, signing?: Signing): Promise<Answer> {
    const a = await this.http.post(route, body, signing)
    if (txid !== undefined && a.status === 200) {
      if (route === 'prepare' && isObject(a.json) && a.json.vote === 'yes') this.held.add(txid)
      if (route !== 'prepare') this.held.delete(txid)
    }
    return a
  }

  /** Sends a batch and keeps track of what its calls may have left prepared. */
  async postBatch (calls: BatchCall[], signing?: Signing): Promise<Answer> {
    // A batched prepare may have been applied whatever the answer says (results garbled, out of
    // order, lost): it is held — aborted at the end — until a decision for it succeeds.
    for (const call of calls) {
      if (call.op === 'prepare' && typeof call.body.txid === 'string' && TXID.test(call.body.txid)) this.held.add(call.body.txid)
    }
    const a = await this.http.post('batch', { calls }, signing)
    const results = isObject(a.json) ? a.json.results : undefined
    if (a.status === 200 && Array.isArray(results) && results.length === calls.length) {
      calls.forEach((call, i) => {
        const txid = call.body.txid
        if (call.op !== 'prepare' && typeof txid === 'string' && (results[i] as { status?: unknown } | undefined)?.status === 200) this.held.delete(txid)
      })
    }
    return a
  }

  async prepare (txid: string, signing?: Signing, extra?: Record<string, unknown>): Promise<Answer> {
    return await this.post('prepare', txid, this.prepareBody(txid, extra), signing)
  }

  async decide (route: 'commit' | 'abort', txid: string, signing?: Signing): Promise<Answer> {
    return await this.post(route, txid, { txid, participant: this.options.name }, signing)
  }

  /** A fresh transaction the participant votes yes for (it did for the first prepare). */
  async prepareYes (): Promise<Prepared> {
    const txid = this.newTx()
    const body = this.prepareBody(txid)
    const a = await this.post('prepare', txid, body)
    const vote = expectVote(a, 'prepare')
    if (vote !== 'yes') fail(`a fresh prepare with --payload voted "${vote}" this time (it voted yes at first; out of stock or funds?): ${show(a)}`)
    return { txid, body }
  }
}

/** A 200 answer `{vote, reason?}` with a valid vote. */
function expectVote (a: Answer, what: string): Vote {
  if (a.status !== 200) fail(`${what} answered ${show(a)}, expected 200 {"vote":…}`)
  if (!a.isJson || !isObject(a.json)) fail(`${what} answered a body that is not a JSON object: ${show(a)}`)
  const { vote, reason } = a.json as { vote?: unknown, reason?: unknown }
  if (vote !== 'yes' && vote !== 'no' && vote !== 'read-only') fail(`${what} answered without a vote "yes" | "no" | "read-only": ${show(a)}`)
  if (reason !== undefined && typeof reason !== 'string') fail(`${what} answered a reason that is not a string: ${show(a)}`)
  return vote as Vote
}

/** A 2xx answer `{ok:true}`. */
function expectOk (a: Answer, what: string): void {
  if (!is2xx(a)) fail(`${what} answered ${show(a)}, expected 200 {"ok":true}`)
  if (!isObject(a.json) || a.json.ok !== true) fail(`${what} answered ${show(a)}, expected the body {"ok":true}`)
}

function expect4xx (a: Answer, what: string): void {
  if (is2xx(a)) fail(`${what} was accepted: ${show(a)}; expected a 4xx refusal`)
  if (!is4xx(a)) fail(`${what} answered ${show(a)}; expected a 4xx refusal (5xx tells a coordinator to retry forever)`)
}

function expectRefusedSafely (a: Answer, what: string): void {
  if (is2xx(a)) fail(`${what} was accepted: ${show(a)}; it must be refused (a heuristic outcome is never hidden)`)
  if (a.status < 400) fail(`${what} answered ${show(a)}; expected an error status`)
}

function expect401 (a: Answer, what: string): void {
  if (a.status !== 401) fail(`${what} answered ${show(a)}, expected 401`)
}

export interface CheckDef {
  id: string
  level: Level
  description: string
  /** `yes`: needs a yes vote for --payload; `secret`: needs --secret. */
  needs?: 'yes' | 'secret'
  /** If it fails, nothing after it can run. */
  gate?: boolean
  run: (c: Context) => Promise<string>
}

const SECRET_SKIP = 'skipped: no --secret given (signature checks need the participant\'s secret)'

function yesSkip (vote: Vote | undefined): string {
  if (vote === 'no') return 'skipped: the participant voted no to --payload (pass a --payload it votes yes to)'
  if (vote === 'read-only') return 'skipped: the participant voted read-only to --payload (it takes no part in phase 2; pass a --payload it votes yes to)'
  return 'skipped: no vote for --payload'
}

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

const NOT_ADVERTISED = 'not advertised: prepare answers carry no "batch" (the batch route is optional), nothing to check'

/** The advertised batch capability if it is well formed (batch-advertised-valid says why not). */
function wellFormedBatch (advertised: unknown): BatchCapability | undefined {
  if (!isObject(advertised)) return undefined
  const { maxCalls, maxBytes } = advertised as { maxCalls?: unknown, maxBytes?: unknown }
  const valid = typeof maxCalls === 'number' && Number.isInteger(maxCalls) && maxCalls >= 1 && maxCalls <= MAX_BATCH_CALLS &&
    typeof maxBytes === 'number' && Number.isSafeInteger(maxBytes) && maxBytes >= 1
  return valid ? { maxCalls, maxBytes } : undefined
}

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

/** The advertised capability, or undefined when there is none to check (throws Skip when it was malformed). */
function batchOf (c: Context): BatchCapability | undefined {
  if (c.advertised === undefined) return undefined
  if (c.batch === undefined) throw new Skip('skipped: batch-advertised-valid failed')
  return c.batch
}

/** A 200 `{results:[{status, body}, …]}` with one result per call; each as an Answer of its op. */
function expectResults (a: Answer, calls: BatchCall[], what: string): Answer[] {
  if (a.status !== 200) fail(`${what} answered ${show(a)}, expected 200 {"results":[…]}`)
  const results = isObject(a.json) ? a.json.results : undefined
  if (!Array.isArray(results)) fail(`${what} answered without a "results" array: ${show(a)}`)
  const list = results as unknown[]
  if (list.length !== calls.length) fail(`${what} sent ${calls.length} calls and got ${list.length} results: ${show(a)}`)
  return list.map((r, i) => {
    const status = (r as { status?: unknown } | null)?.status
    if (!isObject(r) || typeof status !== 'number' || !Number.isInteger(status)) fail(`${what}: result #${i + 1} is not {status, body}: ${JSON.stringify(r)?.slice(0, 120)}`)
    const body = (r as { body?: unknown }).body
    const text = JSON.stringify(body) ?? ''
    return { route: (calls[i] as BatchCall).op, status: status as number, contentType: a.contentType, text, json: body, isJson: body !== undefined }
  })
}

export const CHECKS: CheckDef[] = [
  // --- prepare -------------------------------------------------------------------------------
  {
    id: 'prepare-answers-vote',
    level: 'MUST',
    gate: true,
    description: 'prepare {txid, participant, payload, deadline} answers 200 {vote:"yes"|"no"|"read-only", reason?}',
    async run (c) {
      const txid = c.newTx()
      c.probeTx = txid
      const a = await c.prepare(txid)
      if (a.status === 401) {
        fail(c.signed
          ? `${show(a)} — the signature made with --secret was refused: is it the participant's secret?`
          : `${show(a)} — the participant wants signed callbacks: pass --secret`)
      }
      if (is4xx(a) && codeOf(a) === 'PARTICIPANT_MISMATCH') fail(`${show(a)} — pass --name <the participant's name>`)
      c.vote = expectVote(a, 'prepare')
      c.advertised = (a.json as { batch?: unknown }).batch
      return show(a)
    }
  },
  {
    id: 'prepare-repeated-same-vote',
    level: 'MUST',
    description: 'a repeated prepare answers the vote already given (twice more)',
    async run (c) {
      const txid = c.probeTx as string
      for (const n of [2, 3]) {
        const a = await c.prepare(txid)
        const vote = expectVote(a, `prepare #${n}`)
        if (vote !== c.vote) fail(`prepare #1 voted "${String(c.vote)}", prepare #${n} of the same txid voted "${vote}": ${show(a)}`)
      }
      return `"${String(c.vote)}" three times`
    }
  },
  // --- commit after yes ------------------------------------------------------------------------
  {
    id: 'commit-after-yes',
    level: 'MUST',
    needs: 'yes',
    description: 'commit after a yes vote answers 200 {ok:true}',
    async run (c) {
      const txid = c.probeTx as string
      const a = await c.decide('commit', txid)
      expectOk(a, 'commit')
      c.committedTx = txid
      return show(a)
    }
  },
  {
    id: 'commit-idempotent',
    level: 'MUST',
    needs: 'yes',
    description: 'commit repeated (twice more) answers 200 {ok:true} again',
    async run (c) {
      if (c.committedTx === undefined) throw new Skip('skipped: commit-after-yes failed')
      for (const n of [2, 3]) expectOk(await c.decide('commit', c.committedTx), `commit #${n}`)
      return 'commit #2 and #3: 200 {"ok":true}'
    }
  },
  {
    id: 'prepare-after-commit-same-vote',
    level: 'SHOULD',
    needs: 'yes',
    description: 'a late, repeated prepare of a committed transaction still answers yes',
    async run (c) {
      if (c.committedTx === undefined) throw new Skip('skipped: commit-after-yes failed')
      const a = await c.prepare(c.committedTx)
      const vote = expectVote(a, 'prepare after commit')
      if (vote !== 'yes') fail(`voted "${vote}" (it voted yes before committing): ${show(a)}`)
      return show(a)
    }
  },
  {
    id: 'abort-after-commit-refused',
    level: 'MUST',
    needs: 'yes',
    description: 'abort of a committed transaction is refused (error status) and changes nothing',
    async run (c) {
      if (c.committedTx === undefined) throw new Skip('skipped: commit-after-yes failed')
      const a = await c.decide('abort', c.committedTx)
      c.saved.set('abort-after-commit', a)
      expectRefusedSafely(a, 'abort after commit')
      const again = await c.decide('commit', c.committedTx)
      if (!is2xx(again)) fail(`refused (${show(a)}) but it changed the state: a commit afterwards answered ${show(again)}`)
      return `${show(a)}; still committed`
    }
  },
  {
    id: 'abort-after-commit-409',
    level: 'SHOULD',
    needs: 'yes',
    description: 'that refusal is 409 TX_ALREADY_COMMITTED (the coordinator records a heuristic)',
    async run (c) {
      const a = c.saved.get('abort-after-commit')
      if (a === undefined) throw new Skip('skipped: abort-after-commit-refused did not run')
      if (a.status !== 409 || codeOf(a) !== 'TX_ALREADY_COMMITTED') fail(`got ${a.status} ${codeOf(a) ?? '(no code)'}: ${show(a)}`)
      return `${a.status} ${String(codeOf(a))}`
    }
  },
  // --- abort after yes -------------------------------------------------------------------------
  {
    id: 'abort-after-yes',
    level: 'MUST',
    needs: 'yes',
    description: 'abort after a yes vote answers 200 {ok:true}',
    async run (c) {
      const { txid } = await c.prepareYes()
      const a = await c.decide('abort', txid)
      expectOk(a, 'abort')
      c.abortedTx = txid
      return show(a)
    }
  },
  {
    id: 'abort-idempotent',
    level: 'MUST',
    needs: 'yes',
    description: 'abort repeated (twice more) answers 200 {ok:true} again',
    async run (c) {
      if (c.abortedTx === undefined) throw new Skip('skipped: abort-after-yes failed')
      for (const n of [2, 3]) expectOk(await c.decide('abort', c.abortedTx), `abort #${n}`)
      return 'abort #2 and #3: 200 {"ok":true}'
    }
  },
  {
    id: 'prepare-after-abort-votes-no',
    level: 'SHOULD',
    needs: 'yes',
    description: 'a late prepare of an aborted transaction votes no (it does not prepare again)',
    async run (c) {
      if (c.abortedTx === undefined) throw new Skip('skipped: abort-after-yes failed')
      const a = await c.prepare(c.abortedTx)
      const vote = expectVote(a, 'prepare after abort')
      if (vote !== 'no') fail(`voted "${vote}" after the abort: ${show(a)}`)
      return show(a)
    }
  },
  {
    id: 'commit-after-abort-refused',
    level: 'MUST',
    needs: 'yes',
    description: 'commit of an aborted transaction is refused (error status) and changes nothing',
    async run (c) {
      if (c.abortedTx === undefined) throw new Skip('skipped: abort-after-yes failed')
      const a = await c.decide('commit', c.abortedTx)
      c.saved.set('commit-after-abort', a)
      expectRefusedSafely(a, 'commit after abort')
      const again = await c.decide('abort', c.abortedTx)
      if (!is2xx(again)) fail(`refused (${show(a)}) but it changed the state: an abort afterwards answered ${show(again)}`)
      return `${show(a)}; still aborted`
    }
  },
  {
    id: 'commit-after-abort-409',
    level: 'SHOULD',
    needs: 'yes',
    description: 'that refusal is 409 TX_ALREADY_ABORTED (the coordinator records a heuristic)',
    async run (c) {
      const a = c.saved.get('commit-after-abort')
      if (a === undefined) throw new Skip('skipped: commit-after-abort-refused did not run')
      if (a.status !== 409 || codeOf(a) !== 'TX_ALREADY_ABORTED') fail(`got ${a.status} ${codeOf(a) ?? '(no code)'}: ${show(a)}`)
      return `${a.status} ${String(codeOf(a))}`
    }
  },
  // --- unknown transactions --------------------------------------------------------------------
  {
    id: 'abort-unknown-ok',
    level: 'MUST',
    description: 'abort of a transaction never prepared answers 200 {ok:true}',
    async run (c) {
      const txid = c.newTx()
      const a = await c.decide('abort', txid)
      expectOk(a, 'abort before prepare')
      c.tombstoneTx = txid
      return show(a)
    }
  },
  {
    id: 'abort-before-prepare-tombstone',
    level: 'MUST',
    needs: 'yes',
    description: 'after an abort-before-prepare, a late prepare (with --payload) votes no and a commit is refused',
    async run (c) {
      if (c.tombstoneTx === undefined) throw new Skip('skipped: abort-unknown-ok failed')
      const a = await c.prepare(c.tombstoneTx)
      const vote = expectVote(a, 'prepare after abort-before-prepare')
      if (vote !== 'no') fail(`no tombstone: the late prepare voted "${vote}": ${show(a)}`)
      const commit = await c.decide('commit', c.tombstoneTx)
      if (is2xx(commit)) fail(`the late prepare voted no but a commit was accepted: ${show(commit)}`)
      return `${show(a)}; commit: ${commit.status} ${codeOf(commit) ?? ''}`.trimEnd()
    }
  },
  {
    id: 'commit-unknown-refused',
    level: 'MUST',
    description: 'commit of a transaction never prepared is refused with 4xx',
    async run (c) {
      const a = await c.decide('commit', c.newTx())
      c.saved.set('commit-unknown', a)
      expect4xx(a, 'commit of an unknown txid')
      return `${a.status} ${codeOf(a) ?? '(no code)'}`
    }
  },
  {
    id: 'commit-unknown-404',
    level: 'SHOULD',
    description: 'that refusal is 404 TX_UNKNOWN (the coordinator records a heuristic)',
    async run (c) {
      const a = c.saved.get('commit-unknown')
      if (a === undefined) throw new Skip('skipped: commit-unknown-refused did not run')
      if (a.status !== 404 || codeOf(a) !== 'TX_UNKNOWN') fail(`got ${a.status} ${codeOf(a) ?? '(no code)'}: ${show(a)}`)
      return `${a.status} ${String(codeOf(a))}`
    }
  },
  // --- prepare edge cases ----------------------------------------------------------------------
  {
    id: 'prepare-past-deadline-votes-no',
    level: 'SHOULD',
    needs: 'yes',
    description: 'a prepare that arrives after its deadline votes no',
    async run (c) {
      const txid = c.newTx()
      const a = await c.prepare(txid, undefined, { deadline: Date.now() - 60_000 })
      const vote = expectVote(a, 'prepare past its deadline')
      if (vote !== 'no') fail(`voted "${vote}" a minute past the deadline: ${show(a)}`)
      return show(a)
    }
  },
  {
    id: 'prepare-other-participant-refused',
    level: 'SHOULD',
    description: 'a prepare naming another participant (a misrouted enlistment) is refused with 4xx',
    async run (c) {
      const txid = c.newTx()
      const a = await c.prepare(txid, undefined, { participant: `${c.options.name.slice(0, 50)}-not-me` })
      expect4xx(a, 'prepare for another participant')
      return `${a.status} ${codeOf(a) ?? '(no code)'}`
    }
  },
  // --- malformed requests ----------------------------------------------------------------------
  {
    id: 'malformed-json-refused',
    level: 'MUST',
    description: 'a body that is not JSON (cut short) is refused with 4xx on prepare, commit and abort',
    async run (c) {
      const seen: string[] = []
      for (const route of ['prepare', 'commit', 'abort'] as const) {
        const txid = c.newTx()
        const a = await c.post(route, txid, `{"txid":"${txid}","participant":`)
        expect4xx(a, `${route} with malformed JSON`)
        seen.push(`${route} ${a.status}`)
      }
      return seen.join(', ')
    }
  },
  {
    id: 'missing-txid-refused',
    level: 'MUST',
    description: 'a body without txid is refused with 4xx on prepare, commit and abort',
    async run (c) {
      const seen: string[] = []
      for (const route of ['prepare', 'commit', 'abort'] as const) {
        const body: Record<string, unknown> = route === 'prepare' ? c.prepareBody('') : { participant: c.options.name }
        delete body.txid
        const a = await c.post(route, undefined, body)
        expect4xx(a, `${route} without txid`)
        seen.push(`${route} ${a.status}`)
      }
      return seen.join(', ')
    }
  },
  {
    id: 'bad-txid-refused',
    level: 'SHOULD',
    description: 'a txid that is not <coordinatorId>.<26 base32 chars> is refused with 4xx (prepare, abort)',
    async run (c) {
      const seen: string[] = []
      for (const route of ['prepare', 'abort'] as const) {
        const txid = 'not a transaction id'
        const body = route === 'prepare' ? c.prepareBody(txid) : { txid, participant: c.options.name }
        const a = await c.post(route, txid, body)
        expect4xx(a, `${route} with txid "${txid}"`)
        seen.push(`${route} ${a.status}`)
      }
      return seen.join(', ')
    }
  },
  {
    id: 'unknown-fields-refused',
    level: 'SHOULD',
    description: 'a body with an undocumented field is refused with 4xx and changes nothing',
    async run (c) {
      const seen: string[] = []
      const extra = { surprise: true }
      const t1 = c.newTx()
      const p = await c.prepare(t1, undefined, extra)
      expect4xx(p, 'prepare with an undocumented field')
      seen.push(`prepare ${p.status}`)
      const t2 = c.newTx()
      const a = await c.post('abort', t2, { txid: t2, participant: c.options.name, ...extra })
      expect4xx(a, 'abort with an undocumented field')
      seen.push(`abort ${a.status}`)
      if (c.vote === 'yes') {
        const again = await c.prepare(t1)
        const vote = expectVote(again, 'a prepare after the refused one')
        if (vote !== 'yes') fail(`the refused prepare left a record: a prepare afterwards voted "${vote}"`)
        const cm = await c.post('commit', t1, { txid: t1, participant: c.options.name, ...extra })
        expect4xx(cm, 'commit with an undocumented field')
        seen.push(`commit ${cm.status}`)
        const abort = await c.decide('abort', t1)
        if (!is2xx(abort)) fail(`the refused commit was applied anyway: an abort afterwards answered ${show(abort)}`)
        const late = await c.prepare(t2)
        const lateVote = expectVote(late, 'a prepare after the refused abort')
        if (lateVote !== 'yes') fail(`the refused abort left a tombstone: a prepare afterwards voted "${lateVote}"`)
        expectOk(await c.decide('abort', t2), 'abort (clean-up)')
        return `${seen.join(', ')}; nothing changed`
      }
      return `${seen.join(', ')} (commit and state follow-ups need a yes vote for --payload)`
    }
  },
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
  },
  // --- the batch route (optional) -------------------------------------------------------------
  // A participant that advertises nothing passes these: the coordinator then never batches to it.
  {
    id: 'batch-advertised-valid',
    level: 'MUST',
    description: `if prepare answers advertise "batch", it is {maxCalls: integer 1..${MAX_BATCH_CALLS}, maxBytes: positive integer}`,
    async run (c) {
      if (c.advertised === undefined) return NOT_ADVERTISED
      const capability = wellFormedBatch(c.advertised)
      if (capability === undefined) return fail(`prepare advertised "batch": ${JSON.stringify(c.advertised)?.slice(0, 120)}`)
      c.batch = capability
      return `maxCalls ${capability.maxCalls}, maxBytes ${capability.maxBytes}`
    }
  },
  {
    id: 'batch-results-in-order',
    level: 'MUST',
    needs: 'yes',
    description: 'a batch [prepare, commit of another prepared tx, abort of a third, an invalid call] answers 200 {results} in the calls\' order (vote yes, ok, ok, 4xx), each applied as its single call would be; with --secret, the same batch unsigned gets 401 and changes nothing',
    async run (c) {
      const capability = batchOf(c)
      if (capability === undefined) return NOT_ADVERTISED
      if (capability.maxCalls < 4) throw new Skip(`skipped: maxCalls ${capability.maxCalls} is under the 4 calls this check sends`)
      const committed = (await c.prepareYes()).txid
      const aborted = (await c.prepareYes()).txid
      const fresh = c.newTx()
      const calls: BatchCall[] = [
        { op: 'prepare', body: c.prepareBody(fresh) },
        { op: 'commit', body: { txid: committed, participant: c.options.name } },
        { op: 'abort', body: { txid: aborted, participant: c.options.name } },
        { op: 'prepare', body: c.prepareBody('not a transaction id') }
      ]
      let forged = ''
      if (c.signed) {
        const unsigned = await c.postBatch(calls, { kind: 'none' })
        expect401(unsigned, 'the batch without x-2pc-signature')
        const still = await c.prepare(aborted)
        const vote = expectVote(still, 'a prepare after the refused batch')
        if (vote !== 'yes') fail(`the refused batch was applied anyway: its abort went through (a prepare afterwards voted "${vote}")`)
        forged = 'unsigned: 401, nothing applied; '
      }
      const a = await c.postBatch(calls)
      const [p, cm, ab, bad] = expectResults(a, calls, 'the batch') as [Answer, Answer, Answer, Answer]
      const vote = expectVote(p, 'result #1 (prepare of a fresh tx)')
      if (vote !== 'yes') fail(`result #1 (prepare of a fresh tx) voted "${vote}" (the same payload voted yes singly): ${show(a)}`)
      expectOk(cm, 'result #2 (commit)')
      expectOk(ab, 'result #3 (abort)')
      expect4xx(bad, 'result #4 (a prepare with txid "not a transaction id")')
      // Each result was applied: a conflicting single call is refused now, and the prepare holds.
      const afterCommit = await c.decide('abort', committed)
      if (is2xx(afterCommit)) fail(`the batched commit was not applied: an abort afterwards answered ${show(afterCommit)}`)
      const afterAbort = await c.decide('commit', aborted)
      if (is2xx(afterAbort)) fail(`the batched abort was not applied: a commit afterwards answered ${show(afterAbort)}`)
      const again = expectVote(await c.prepare(fresh), 'a prepare of the batched one')
      if (again !== 'yes') fail(`the batched prepare voted yes but a repeat voted "${again}"`)
      expectOk(await c.decide('abort', fresh), 'abort (clean-up)')
      return `${forged}signed: 200, results ${[p, cm, ab, bad].map(r => r.status).join(', ')}; applied`
    }
  },
  {
    id: 'batch-too-many-calls-refused',
    level: 'MUST',
    description: 'a batch of maxCalls + 1 calls is refused whole with 4xx (the SDK: 400) and changes nothing',
    async run (c) {
      const capability = batchOf(c)
      if (capability === undefined) return NOT_ADVERTISED
      const ids = Array.from({ length: capability.maxCalls + 1 }, () => c.newTx())
      const calls: BatchCall[] = ids.map(txid => ({ op: 'abort', body: { txid, participant: c.options.name } }))
      const a = await c.postBatch(calls)
      expect4xx(a, `a batch of ${calls.length} calls (maxCalls ${capability.maxCalls})`)
      if (c.vote !== 'yes') return `${a.status} ${codeOf(a) ?? '(no code)'} (state follow-ups need a yes vote for --payload)`
      // Its aborts left no tombstone: a prepare of the first and the last still votes yes.
      for (const txid of [ids[0] as string, ids[ids.length - 1] as string]) {
        const vote = expectVote(await c.prepare(txid), 'a prepare after the refused batch')
        if (vote !== 'yes') fail(`the refused batch was applied anyway: a prepare of one of its aborted txids voted "${vote}"`)
        expectOk(await c.decide('abort', txid), 'abort (clean-up)')
      }
      return `${a.status} ${codeOf(a) ?? '(no code)'}; nothing changed`
    }
  },
  // --- every answer of the run -----------------------------------------------------------------
  {
    id: 'answers-json-content-type',
    level: 'SHOULD',
    description: 'every answer of the run is JSON with content-type application/json',
    async run (c) {
      const bad = c.http.answers.filter(a => !a.isJson || !/^application\/json\b/i.test(a.contentType ?? ''))
      if (bad.length > 0) fail(`${bad.length} of ${c.http.answers.length} answers were not: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)} (content-type ${bad[0]?.contentType ?? 'none'})`)
      return `${c.http.answers.length} answers`
    }
  },
  {
    id: 'success-answers-documented-fields',
    level: 'SHOULD',
    description: '2xx answers carry only the documented fields ({vote, reason?, batch?}, {ok:true} or {results})',
    async run (c) {
      const allowed: Record<Route, string[]> = { prepare: ['vote', 'reason', 'batch'], commit: ['ok'], abort: ['ok'], batch: ['results'] }
      const ok = c.http.answers.filter(is2xx)
      const bad = ok.filter(a => !isObject(a.json) || Object.keys(a.json).some(k => !allowed[a.route].includes(k)))
      if (bad.length > 0) fail(`${bad.length} of ${ok.length} had other fields: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)}`)
      return `${ok.length} answers`
    }
  },
  {
    id: 'error-answers-documented-shape',
    level: 'SHOULD',
    description: 'error answers are {statusCode, code, error, message} with statusCode = the HTTP status',
    async run (c) {
      const errors = c.http.answers.filter(a => a.status >= 400)
      const bad = errors.filter(a => {
        if (!isObject(a.json)) return true
        const { statusCode, code, error, message } = a.json
        return statusCode !== a.status || typeof code !== 'string' || typeof error !== 'string' || typeof message !== 'string'
      })
      if (bad.length > 0) fail(`${bad.length} of ${errors.length} were not: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)}`)
      return `${errors.length} error answers`
    }
  },
  {
    id: 'no-server-errors',
    level: 'SHOULD',
    description: 'no answer of the run was a 5xx',
    async run (c) {
      const bad = c.http.answers.filter(a => a.status >= 500)
      if (bad.length > 0) fail(`${bad.length} of ${c.http.answers.length}: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)}`)
      return `${c.http.answers.length} answers`
    }
  }
]

/** Runs every check in order, then aborts whatever the run left prepared. */
export async function runConformance (options: ConformanceOptions): Promise<ConformanceReport> {
  const http = new ParticipantHttp({ baseUrl: options.url.replace(/\/+$/, ''), secret: options.secret, timeoutMs: options.timeoutMs })
  const c = new Context(http, options)
  const checks: CheckResult[] = []
  const cleanup = { aborted: 0, failed: [] as string[] }
  try {
    for (const def of CHECKS) {
      const base = { id: def.id, level: def.level, description: def.description }
      if (c.blocked !== undefined) {
        checks.push({ ...base, result: 'skip', detail: c.blocked })
        continue
      }
      if (def.needs === 'secret' && !c.signed) {
        checks.push({ ...base, result: 'skip', detail: SECRET_SKIP })
        continue
      }
      if (def.needs === 'yes' && c.vote !== 'yes') {
        checks.push({ ...base, result: 'skip', detail: yesSkip(c.vote) })
        continue
      }
      try {
        const detail = await def.run(c)
        checks.push({ ...base, result: 'pass', detail })
      } catch (err) {
        if (err instanceof Skip) {
          checks.push({ ...base, result: 'skip', detail: err.message })
          continue
        }
        const detail = err instanceof Fail || err instanceof TransportError ? err.message : `kit error: ${String((err as Error)?.stack ?? err)}`
        checks.push({ ...base, result: def.level === 'MUST' ? 'fail' : 'warn', detail })
        if (def.gate === true) {
          c.blocked = err instanceof TransportError
            ? 'skipped: the participant did not answer'
            : `skipped: ${def.id} failed`
        }
      }
    }
  } finally {
    // Leave nothing held: whatever voted yes and was not settled is aborted (signed).
    for (const txid of c.held) {
      try {
        const a = await http.post('abort', { txid, participant: options.name })
        if (is2xx(a)) cleanup.aborted++
        else cleanup.failed.push(`${txid}: ${show(a, 80)}`)
      } catch (err) {
        cleanup.failed.push(`${txid}: ${(err as Error).message}`)
      }
    }
    await http.close()
  }
  const count = (r: Result): number => checks.filter(x => x.result === r).length
  const summary = { passed: count('pass'), failed: count('fail'), warnings: count('warn'), skipped: count('skip') }
  return {
    participant: options.url,
    name: options.name,
    payload: options.payload,
    signed: c.signed,
    vote: c.vote,
    checks,
    summary,
    cleanup,
    ok: summary.failed === 0
  }
}
