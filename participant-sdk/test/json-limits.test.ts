/**
 * The callback routes' input limits: a prepare whose payload nests deeper than 32 levels or has
 * more than 10,000 keys and array items is refused 400 JSON_TOO_DEEP / JSON_TOO_MANY_KEYS (alone
 * in a batch) without calling the handler or writing a record; a body in another charset than
 * UTF-8 is refused 415. Real SQLite file, real HTTP on 127.0.0.1, signed like the coordinator.
 */
import t from 'tap'
import { request } from 'undici'
import { signBody, type SignedOperation } from '@fastify-2pc/protocol'
import { buildInventory, SECRET, txid } from './helpers.js'
import { listenLocal } from '../../test/kit/port.js'
import { nestedJson as nested } from '../../test/kit/json.js'

interface Sent { status: number, body: any }

async function post (base: string, path: string, raw: string, contentType = 'application/json'): Promise<Sent> {
  const headers = {
    'content-type': contentType,
    'x-2pc-signature': signBody(SECRET, path.slice(path.lastIndexOf('/') + 1) as SignedOperation, raw)
  }
  const res = await request(base + path, { method: 'POST', headers, body: raw })
  return { status: res.statusCode, body: await res.body.json() }
}

const prepareRaw = (id: string, payload: string): string =>
  `{"txid":"${id}","participant":"inventory","deadline":${Date.now() + 60_000},"payload":${payload}}`

t.test('a payload too deep or too wide: 400, the handler not called, nothing recorded; alone in a batch', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)

  for (const levels of [33, 1_000, 100_000]) {
    const id = txid()
    const res = await post(base, '/2pc/prepare', prepareRaw(id, nested(levels)))
    t.equal(res.status, 400, `${levels} deep: 400`)
    t.same(res.body, { statusCode: 400, code: 'JSON_TOO_DEEP', error: 'Bad Request', message: 'body/payload nests deeper than 32 levels' }, `${levels} deep: JSON_TOO_DEEP`)
    t.equal(inv.app.twoPhase.stateOf(id), 'none', 'nothing recorded')
  }
  const wideId = txid()
  const wide = await post(base, '/2pc/prepare', prepareRaw(wideId, `{"sku":"apple","qty":1,"lines":[${Array(10_000).fill('0').join(',')}]}`))
  t.equal(wide.status, 400)
  t.match(wide.body, { statusCode: 400, code: 'JSON_TOO_MANY_KEYS', message: 'body/payload has more than 10000 keys and array items' })
  t.equal(inv.app.twoPhase.stateOf(wideId), 'none')
  t.equal(inv.calls.prepare, 0, 'the handler was never called')

  // At the limits: the handler decides (no such sku: no).
  const atLimit = await post(base, '/2pc/prepare', prepareRaw(txid(), nested(32)))
  t.equal(atLimit.status, 200, '32 deep is accepted')
  t.equal(atLimit.body.vote, 'no')
  t.equal(inv.calls.prepare, 1)

  const [deepId, goodId] = [txid(), txid()]
  const batchRaw = `{"calls":[{"op":"prepare","body":${prepareRaw(deepId, nested(40))}},{"op":"prepare","body":${prepareRaw(goodId, '{"sku":"apple","qty":1}')}}]}`
  const batch = await post(base, '/2pc/batch', batchRaw)
  t.equal(batch.status, 200)
  t.match(batch.body.results[0], { status: 400, body: { statusCode: 400, code: 'JSON_TOO_DEEP', message: 'body/payload nests deeper than 32 levels' } }, 'the deep call alone is refused')
  t.match(batch.body.results[1], { status: 200, body: { vote: 'yes' } }, 'the other one is applied')
  t.equal(inv.app.twoPhase.stateOf(deepId), 'none')
  t.equal(inv.app.twoPhase.stateOf(goodId), 'prepared')
})

t.test('a charset other than UTF-8: 415, nothing applied', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  for (const charset of ['utf-16', 'latin1', 'klingon', '"utf-16le"']) {
    const id = txid()
    const res = await post(base, '/2pc/prepare', prepareRaw(id, '{"sku":"apple","qty":1}'), `application/json; charset=${charset}`)
    t.equal(res.status, 415, `charset=${charset}: 415`)
    t.match(res.body, { statusCode: 415, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE', error: 'Unsupported Media Type', message: /charset/ })
    t.equal(inv.app.twoPhase.stateOf(id), 'none')
    const commit = await post(base, '/2pc/commit', `{"txid":"${id}"}`, `application/json; charset=${charset}`)
    t.equal(commit.status, 415, `commit, charset=${charset}: 415`)
  }
  t.equal(inv.calls.prepare, 0)
  for (const charset of ['utf-8', 'UTF-8', '"utf-8"']) {
    const res = await post(base, '/2pc/prepare', prepareRaw(txid(), '{"sku":"apple","qty":1}'), `application/json; charset=${charset}`)
    t.equal(res.status, 200, `charset=${charset} is accepted`)
  }
})
