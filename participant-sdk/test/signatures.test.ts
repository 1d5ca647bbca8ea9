import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import type { FastifyBaseLogger } from 'fastify'
import { signBody, signBodyV1, SIGNATURE_MAX_AGE_MS, type SignedOperation } from '@fastify-2pc/protocol'
import { BATCH, buildInventory, callback, prepareBody, SECRET, txid } from './helpers.js'
import type { Inventory } from './helpers.js'

function assertUntouched (t: Test, inv: Inventory, id: string): void {
  t.equal(inv.app.twoPhase.stateOf(id), 'none', 'no record')
  t.same(inv.calls, { prepare: 0, commit: 0, abort: 0 }, 'no handler called')
  t.same(inv.stock('apple'), { available: 10, reserved: 0 }, 'business tables untouched')
}

t.test('with a secret, bad signatures get 401 BAD_SIGNATURE and change nothing', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const id = txid()
  const body = JSON.stringify(prepareBody(id))
  const otherBody = JSON.stringify(prepareBody(id, 9))
  // Each case is signed for the route it is sent to: only the defect named is wrong.
  const cases: Array<[string, (op: SignedOperation) => Record<string, string>, string]> = [
    ['missing', () => ({}), body],
    ['wrong secret', op => ({ 'x-2pc-signature': signBody('not-the-secret', op, body) }), body],
    ['stale (older than 5 minutes)', op => ({ 'x-2pc-signature': signBody(SECRET, op, body, Date.now() - SIGNATURE_MAX_AGE_MS - 1000) }), body],
    ['from the future', op => ({ 'x-2pc-signature': signBody(SECRET, op, body, Date.now() + SIGNATURE_MAX_AGE_MS + 60_000) }), body],
    ['valid signature replayed over a different body', op => ({ 'x-2pc-signature': signBody(SECRET, op, body) }), otherBody],
    ['malformed', () => ({ 'x-2pc-signature': 'v2=deadbeef' }), body]
  ]
  for (const [label, headersFor, payload] of cases) {
    for (const op of ['prepare', 'abort', 'commit'] as const) {
      const path = `/2pc/${op}`
      const res = await inv.app.inject({ method: 'POST', url: path, headers: { 'content-type': 'application/json', ...headersFor(op) }, payload })
      t.equal(res.statusCode, 401, `${label} ${path}`)
      t.match(res.json(), { statusCode: 401, code: 'BAD_SIGNATURE', error: 'Unauthorized' }, `${label} ${path}`)
    }
  }
  const noBody = await inv.app.inject({ method: 'POST', url: '/2pc/abort' })
  t.equal(noBody.statusCode, 401, 'a request with no body is unsigned too')
  assertUntouched(t, inv, id)

  // The same request, correctly signed, goes through: the 401s were about the signature.
  const ok = await inv.app.inject(callback('/2pc/prepare', prepareBody(id), SECRET))
  t.same(ok.json(), { vote: 'yes', batch: BATCH })
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
})

t.test('signature checks over real HTTP: the exact raw bytes are what is verified', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = inv.app.server.address() as { port: number }
  const id = txid()
  // Same JSON value, different bytes (whitespace): a signature over one does not cover the other.
  const signed = JSON.stringify(prepareBody(id))
  const reformatted = JSON.stringify(JSON.parse(signed), null, 2)
  const replay = await request(`http://127.0.0.1:${port}/2pc/prepare`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-2pc-signature': signBody(SECRET, 'prepare', signed) },
    body: reformatted
  })
  t.equal(replay.statusCode, 401)
  t.equal((await replay.body.json() as { code: string }).code, 'BAD_SIGNATURE')
  t.equal(inv.app.twoPhase.stateOf(id), 'none')

  const good = await request(`http://127.0.0.1:${port}/2pc/prepare`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-2pc-signature': signBody(SECRET, 'prepare', reformatted) },
    body: reformatted
  })
  t.equal(good.statusCode, 200)
  t.same(await good.body.json(), { vote: 'yes', batch: BATCH })
})

t.test('without a secret, unsigned callbacks are accepted', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const res = await inv.app.inject(callback('/2pc/prepare', prepareBody(txid())))
  t.same(res.json(), { vote: 'yes', batch: BATCH })
})

// The four callback routes and a correctly signed request for each: its signature binds its route.
const ROUTES = ['prepare', 'commit', 'abort', 'batch'] as const
type CallbackRoute = typeof ROUTES[number]

t.test('a correctly signed callback replayed onto another route gets 401 and changes nothing', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const held = txid()
  const ok = await inv.app.inject(callback('/2pc/prepare', prepareBody(held), SECRET))
  t.same(ok.json(), { vote: 'yes', batch: BATCH }, 'a prepared transaction for the decisions to be replayed about')
  const fresh = txid()
  const bodies: Record<CallbackRoute, string> = {
    prepare: JSON.stringify(prepareBody(fresh)),
    commit: JSON.stringify({ txid: held, participant: 'inventory' }),
    // A signed abort has the same body as a commit: only the signed route tells them apart.
    abort: JSON.stringify({ txid: held, participant: 'inventory' }),
    batch: JSON.stringify({ calls: [{ op: 'abort', body: { txid: held, participant: 'inventory' } }] })
  }
  for (const signedFor of ROUTES) {
    const header = signBody(SECRET, signedFor, bodies[signedFor])
    for (const sentTo of ROUTES.filter(r => r !== signedFor)) {
      const res = await inv.app.inject({ method: 'POST', url: `/2pc/${sentTo}`, headers: { 'content-type': 'application/json', 'x-2pc-signature': header }, payload: bodies[signedFor] })
      t.equal(res.statusCode, 401, `signed for /${signedFor}, sent to /${sentTo}: 401`)
      t.match(res.json(), { statusCode: 401, code: 'BAD_SIGNATURE', error: 'Unauthorized', message: /mismatch/ }, `signed for /${signedFor}, sent to /${sentTo}`)
    }
  }
  t.equal(inv.app.twoPhase.stateOf(held), 'prepared', 'the held transaction is neither committed nor aborted')
  t.equal(inv.app.twoPhase.stateOf(fresh), 'none', 'the replayed prepare left no record')
  t.same(inv.calls, { prepare: 1, commit: 0, abort: 0 }, 'no handler ran for a replay')
  t.same(inv.stock('apple'), { available: 7, reserved: 3 }, 'still reserved, not spent')

  // The signed abort, sent where it was signed for, does what the coordinator decided.
  const abort = await inv.app.inject({ method: 'POST', url: '/2pc/abort', headers: { 'content-type': 'application/json', 'x-2pc-signature': signBody(SECRET, 'abort', bodies.abort) }, payload: bodies.abort })
  t.same(abort.json(), { ok: true })
  t.equal(inv.app.twoPhase.stateOf(held), 'aborted')
  t.same(inv.stock('apple'), { available: 10, reserved: 0 }, 'released')
})

t.test('v1 signatures (no operation bound) are refused by default: 401 legacy-scheme', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const id = txid()
  const bodies: Record<CallbackRoute, string> = {
    prepare: JSON.stringify(prepareBody(id)),
    commit: JSON.stringify({ txid: id, participant: 'inventory' }),
    abort: JSON.stringify({ txid: id, participant: 'inventory' }),
    batch: JSON.stringify({ calls: [{ op: 'prepare', body: prepareBody(id) }] })
  }
  for (const route of ROUTES) {
    const res = await inv.app.inject({ method: 'POST', url: `/2pc/${route}`, headers: { 'content-type': 'application/json', 'x-2pc-signature': signBodyV1(SECRET, bodies[route]) }, payload: bodies[route] })
    t.equal(res.statusCode, 401, `/${route}`)
    t.match(res.json(), { statusCode: 401, code: 'BAD_SIGNATURE', message: /legacy-scheme/ }, `/${route}`)
  }
  assertUntouched(t, inv, id)
})

/** A logger that keeps what it is given (the SDK logs through options.logger). */
function recordingLogger (): { logger: FastifyBaseLogger, lines: Array<{ level: string, msg: string }> } {
  const lines: Array<{ level: string, msg: string }> = []
  const make = (): FastifyBaseLogger => {
    const at = (level: string) => (...args: unknown[]): void => {
      const msg = args.find(a => typeof a === 'string')
      lines.push({ level, msg: typeof msg === 'string' ? msg : '' })
    }
    return {
      level: 'info',
      fatal: at('fatal'),
      error: at('error'),
      warn: at('warn'),
      info: at('info'),
      debug: at('debug'),
      trace: at('trace'),
      silent: () => {},
      child: () => make()
    } as unknown as FastifyBaseLogger
  }
  return { logger: make(), lines }
}

t.test('acceptLegacySignatures: v1 is accepted (with a warning at register), v2 still works', async t => {
  const { logger, lines } = recordingLogger()
  const inv = await buildInventory(t.testdir(), { secret: SECRET, acceptLegacySignatures: true, logger })
  t.teardown(() => inv.app.close())
  const warnings = lines.filter(l => l.level === 'warn' && /acceptLegacySignatures/.test(l.msg))
  t.equal(warnings.length, 1, 'warned once, at register')
  t.match(warnings[0]?.msg, /v1 does not bind the route/, 'the warning says v1 does not bind the route')

  const a = txid()
  const prepareA = JSON.stringify(prepareBody(a))
  const v1 = await inv.app.inject({ method: 'POST', url: '/2pc/prepare', headers: { 'content-type': 'application/json', 'x-2pc-signature': signBodyV1(SECRET, prepareA) }, payload: prepareA })
  t.same(v1.json(), { vote: 'yes', batch: BATCH }, 'a v1-signed prepare is accepted')
  const b = txid()
  const v2 = await inv.app.inject(callback('/2pc/prepare', prepareBody(b), SECRET))
  t.same(v2.json(), { vote: 'yes', batch: BATCH }, 'a v2-signed prepare too')
  // And still bound when v2: a v2 abort replayed onto /commit is refused.
  const decision = JSON.stringify({ txid: b, participant: 'inventory' })
  const replayV2 = await inv.app.inject({ method: 'POST', url: '/2pc/commit', headers: { 'content-type': 'application/json', 'x-2pc-signature': signBody(SECRET, 'abort', decision) }, payload: decision })
  t.equal(replayV2.statusCode, 401, 'a v2 signature stays bound to its route')
  t.equal(inv.app.twoPhase.stateOf(b), 'prepared')
  // What the option costs: a v1-signed abort verifies on /commit too (why it is off by default).
  const abortOfA = JSON.stringify({ txid: a, participant: 'inventory' })
  const replayV1 = await inv.app.inject({ method: 'POST', url: '/2pc/commit', headers: { 'content-type': 'application/json', 'x-2pc-signature': signBodyV1(SECRET, abortOfA) }, payload: abortOfA })
  t.same(replayV1.json(), { ok: true }, 'with v1 accepted, a signed abort replayed onto /commit commits: the risk the option takes')
  t.equal(inv.app.twoPhase.stateOf(a), 'committed')
})

t.test('acceptLegacySignatures is checked at register', async t => {
  for (const [label, bad] of [
    ['not a boolean', { secret: SECRET, acceptLegacySignatures: 'yes' }],
    ['without a secret (nothing is verified)', { acceptLegacySignatures: true }]
  ] as const) {
    await t.rejects(buildInventory(t.testdir(), bad as never), { code: 'TWOPC_INVALID_OPTION', message: /acceptLegacySignatures/ }, label)
  }
  const { logger, lines } = recordingLogger()
  const inv = await buildInventory(t.testdir(), { secret: SECRET, acceptLegacySignatures: false, logger })
  t.teardown(() => inv.app.close())
  t.equal(lines.filter(l => /acceptLegacySignatures/.test(l.msg)).length, 0, 'false: no warning')
})

t.test('the worked example of a v2 signature in docs/protocol.md (known answers)', async t => {
  const secret = 'example-secret-0123456789'
  const body = '{"txid":"c1.0123456789abcdefghjkmnpqrs","participant":"inventory"}'
  const at = 1767225600000
  t.equal(signBody(secret, 'abort', body, at), 't=1767225600000,v2=d83f86ee287a84e785f8741bf7e6f77d2ce1f7527c461ba78c0c3d9b82c6ebe4')
  t.equal(signBody(secret, 'commit', body, at), 't=1767225600000,v2=31e77ca5fca0e43b84e9122d779f16e755275b14098f16d05ddf64c763c15fdc')
})
