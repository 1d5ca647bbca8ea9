import t from 'tap'
import type { Test } from 'tap'
import { request } from 'undici'
import { signBody, SIGNATURE_MAX_AGE_MS, type SignedOperation } from '@fastify-2pc/protocol'
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
