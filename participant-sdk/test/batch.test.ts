/**
 * The batch callback route `POST {prefix}/batch`: several prepare/commit/abort calls in one
 * signed request, each answered what its single route would have answered, all applied in one
 * group-committed local transaction. Real SQLite files, real HTTP on 127.0.0.1.
 */
import t from 'tap'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import pino from 'pino'
import type { Registry } from 'prom-client'
import { request } from 'undici'
import { MAX_BATCH_CALLS, signBody, type SignedOperation } from '@fastify-2pc/protocol'
import type { BatchAnswer } from '@fastify-2pc/protocol'
import { twoPhaseParticipant } from '../src/index.js'
import type { TransactionContext } from '../src/index.js'
import { BATCH, buildInventory, inventoryHandlers, prepareBody, SECRET, txid } from './helpers.js'
import { listenLocal } from '../../test/kit/port.js'

const TRACE_A = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
const TRACE_B = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'

interface Sent { status: number, body: Record<string, unknown> }

/** POSTs `body` signed with `secret` (unless `signature` says otherwise), like the coordinator. */
async function post (url: string, body: unknown, options: { secret?: string, signature?: string | null, headers?: Record<string, string> } = {}): Promise<Sent> {
  const raw = typeof body === 'string' ? body : JSON.stringify(body)
  const headers: Record<string, string> = { 'content-type': 'application/json', ...options.headers }
  if (options.signature !== undefined && options.signature !== null) headers['x-2pc-signature'] = options.signature
  else if (options.signature === undefined && options.secret !== undefined) headers['x-2pc-signature'] = signBody(options.secret, url.slice(url.lastIndexOf('/') + 1) as SignedOperation, raw)
  const res = await request(url, { method: 'POST', headers, body: raw })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

/** A batch that must be answered 200; signed with `secret` (null: unsigned). */
async function batch (base: string, calls: unknown[], secret: string | null = SECRET): Promise<BatchAnswer['results']> {
  const res = await post(`${base}/2pc/batch`, { calls }, secret === null ? {} : { secret })
  if (res.status !== 200) throw new Error(`batch answered ${res.status}: ${JSON.stringify(res.body)}`)
  return (res.body as unknown as BatchAnswer).results
}

const prepareCall = (id: string, qty = 3, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ op: 'prepare', body: prepareBody(id, qty, extra) })
const decisionCall = (op: 'commit' | 'abort', id: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ op, body: { txid: id, participant: 'inventory', ...extra } })

t.test('a mixed batch: every call answered in order, as its single route would, and applied', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const [committed, aborted, fresh, refused, unknown] = [txid(), txid(), txid(), txid(), txid()]
  t.equal((await post(`${base}/2pc/prepare`, prepareBody(committed, 1), { secret: SECRET })).status, 200)
  t.equal((await post(`${base}/2pc/prepare`, prepareBody(aborted, 2), { secret: SECRET })).status, 200)
  t.same(inv.stock('apple'), { available: 7, reserved: 3 })
  // The handler votes no to a quantity of 4 (after writing: its writes must be rolled back).
  inv.behaviour.prepare = payload => (payload as { qty: number }).qty === 4 ? 'no' : 'yes'

  const results = await batch(base, [
    decisionCall('commit', committed),
    prepareCall(fresh, 3),
    decisionCall('commit', unknown),
    prepareCall(refused, 4),
    decisionCall('abort', aborted)
  ])
  t.same(results, [
    { status: 200, body: { ok: true } },
    { status: 200, body: { vote: 'yes', batch: BATCH } },
    { status: 404, body: { statusCode: 404, code: 'TX_UNKNOWN', error: 'Not Found', message: 'commit for a transaction this participant never prepared' } },
    { status: 200, body: { vote: 'no', reason: 'prepare handler voted no', batch: BATCH } },
    { status: 200, body: { ok: true } }
  ])
  t.equal(inv.app.twoPhase.stateOf(committed), 'committed')
  t.equal(inv.app.twoPhase.stateOf(fresh), 'prepared')
  t.equal(inv.app.twoPhase.stateOf(unknown), 'none', 'nothing recorded for the unknown commit')
  t.equal(inv.app.twoPhase.stateOf(refused), 'aborted')
  t.equal(inv.app.twoPhase.stateOf(aborted), 'aborted')
  // 10 - 1 (committed, spent) - 3 (fresh, reserved); the aborted one's 2 are back, the no vote's 4 rolled back.
  t.same(inv.stock('apple'), { available: 6, reserved: 3 })
  t.same(inv.reservations().map(r => r.txid), [fresh])
  t.same(inv.calls, { prepare: 4, commit: 1, abort: 1 })

  // The same calls again are idempotent, still in order (the handlers do not run twice).
  const again = await batch(base, [decisionCall('commit', committed), prepareCall(fresh, 3), decisionCall('abort', aborted)])
  t.same(again.map(r => r.status), [200, 200, 200])
  t.same(again[1]?.body, { vote: 'yes', batch: BATCH })
  t.same(inv.calls, { prepare: 4, commit: 1, abort: 1 })
  t.same(inv.stock('apple'), { available: 6, reserved: 3 })
})

t.test('an invalid call and a misrouted call fail alone; the others are applied', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const [held, fresh, tomb, extra] = [txid(), txid(), txid(), txid()]
  t.equal((await post(`${base}/2pc/prepare`, prepareBody(held, 1), { secret: SECRET })).status, 200)
  const badBody = { ...prepareBody(txid()), txid: 'not-an-id' }

  const results = await batch(base, [
    { op: 'prepare', body: badBody },
    prepareCall(fresh, 2),
    decisionCall('commit', held, { participant: 'payment' }),
    decisionCall('abort', tomb),
    prepareCall(extra, 1, { surprise: true }),
    { op: 'commit', body: { participant: 'inventory' } }
  ])
  t.same(results.map(r => r.status), [400, 200, 400, 200, 400, 400])
  // The invalid call's answer is exactly what the single route answers for the same body.
  const single = await post(`${base}/2pc/prepare`, badBody, { secret: SECRET })
  t.equal(single.status, 400)
  t.same(results[0]?.body, single.body)
  t.match(results[0]?.body, { statusCode: 400, code: 'FST_ERR_VALIDATION', error: 'Bad Request', message: /^body\/txid must match pattern/ })
  t.match(results[2]?.body, { statusCode: 400, code: 'PARTICIPANT_MISMATCH', error: 'Bad Request', message: 'This is participant "inventory", the request is for "payment"' })
  t.match(results[4]?.body, { statusCode: 400, code: 'FST_ERR_VALIDATION', message: 'body must NOT have additional properties' })
  t.match(results[5]?.body, { statusCode: 400, code: 'FST_ERR_VALIDATION', message: 'body must have required property \'txid\'' })
  t.same(results[1]?.body, { vote: 'yes', batch: BATCH })
  t.same(results[3]?.body, { ok: true })

  t.equal(inv.app.twoPhase.stateOf(fresh), 'prepared')
  t.equal(inv.app.twoPhase.stateOf(held), 'prepared', 'the misrouted commit was not applied')
  t.equal(inv.app.twoPhase.stateOf(tomb), 'tombstone')
  t.equal(inv.app.twoPhase.stateOf(extra), 'none', 'the call with an undocumented field was not applied')
  t.same(inv.calls, { prepare: 2, commit: 0, abort: 0 })
  t.same(inv.stock('apple'), { available: 7, reserved: 3 })
})

t.test('the calls of one batch share ONE flush of the participant log (one local transaction)', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  inv.db.prepare("UPDATE stock SET available = 1000 WHERE sku = 'apple'").run()
  const base = await listenLocal(inv.app)
  const prepared = Array.from({ length: 10 }, () => txid())
  await batch(base, prepared.map(id => prepareCall(id, 1)))

  const ids = Array.from({ length: 40 }, () => txid())
  const before = inv.app.twoPhase.flushStats()
  const results = await batch(base, [...ids.map(id => prepareCall(id, 2)), ...prepared.map(id => decisionCall('commit', id))])
  const after = inv.app.twoPhase.flushStats()
  t.equal(after.flushes - before.flushes, 1, '50 calls, one flush')
  t.equal(after.events - before.events, 50)
  t.equal(after.lastBatch, 50)
  t.same(results.map(r => r.status), Array(50).fill(200))
  t.same(results.slice(0, 40).map(r => (r.body as { vote: string }).vote), Array(40).fill('yes'))
  t.ok(ids.every(id => inv.app.twoPhase.stateOf(id) === 'prepared'))
  t.ok(prepared.every(id => inv.app.twoPhase.stateOf(id) === 'committed'))
  t.same(inv.stock('apple'), { available: 1000 - 10 - 80, reserved: 80 })
})

t.test('a commit handler that throws fails its call only (500 HANDLER_FAILED); the others commit and stay consistent', async t => {
  const lines: Array<Record<string, unknown>> = []
  const base0 = inventoryHandlers({ prepare: 0, commit: 0, abort: 0 }, {})
  let failing = ''
  const inv = await buildInventory(t.testdir(), {
    secret: SECRET,
    logger: pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } }),
    commit (tx, db) {
      if (tx.id === failing) throw new Error('commit handler blew up')
      base0.commit(tx, db)
    }
  })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const [a, b, c] = [txid(), txid(), txid()]
  failing = b
  t.same((await batch(base, [prepareCall(a, 1), prepareCall(b, 2), prepareCall(c, 3)])).map(r => (r.body as { vote: string }).vote), ['yes', 'yes', 'yes'])
  t.same(inv.stock('apple'), { available: 4, reserved: 6 })

  const results = await batch(base, [decisionCall('commit', a), decisionCall('commit', b), decisionCall('abort', c)])
  t.same(results, [
    { status: 200, body: { ok: true } },
    { status: 500, body: { statusCode: 500, code: 'HANDLER_FAILED', error: 'Internal Server Error', message: 'The commit handler failed; the decision was not applied and will be retried' } },
    { status: 200, body: { ok: true } }
  ])
  t.equal(inv.app.twoPhase.stateOf(a), 'committed')
  t.equal(inv.app.twoPhase.stateOf(b), 'prepared', 'the failed commit left its record prepared')
  t.equal(inv.app.twoPhase.stateOf(c), 'aborted')
  t.same(inv.stock('apple'), { available: 7, reserved: 2 }, 'a spent, c released, b still reserved')
  t.same(inv.reservations().map(r => r.txid), [b])
  const logged = lines.find(l => l.msg === '2pc callback failed')
  t.match(logged, { level: 50, txid: b, op: 'commit', call: 1, url: '/2pc/batch', err: { code: 'HANDLER_FAILED' } }, 'the failed call is logged at error with its txid')
  t.ok(lines.some(l => JSON.stringify(l).includes('commit handler blew up')), 'with its cause')

  // The coordinator's retry (here in a batch again) applies it.
  failing = ''
  t.same(await batch(base, [decisionCall('commit', b)]), [{ status: 200, body: { ok: true } }])
  t.equal(inv.app.twoPhase.stateOf(b), 'committed')
  t.same(inv.stock('apple'), { available: 7, reserved: 0 })
  t.same(inv.reservations(), [])
})

t.test('a missing or wrong signature refuses the whole batch with 401; nothing is applied', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const [p, tomb] = [txid(), txid()]
  const raw = JSON.stringify({ calls: [prepareCall(p), decisionCall('abort', tomb)] })
  const other = JSON.stringify({ calls: [prepareCall(p, 4), decisionCall('abort', tomb)] })
  for (const [label, signature, body] of [
    ['missing', null, raw],
    ['wrong secret', signBody('not-the-secret', 'batch', raw), raw],
    ['valid for other bytes', signBody(SECRET, 'batch', other), raw],
    ['malformed', 'v1=deadbeef', raw]
  ] as const) {
    const res = await post(`${base}/2pc/batch`, body, { signature })
    t.equal(res.status, 401, label)
    t.match(res.body, { statusCode: 401, code: 'BAD_SIGNATURE', error: 'Unauthorized' }, label)
  }
  t.equal(inv.app.twoPhase.stateOf(p), 'none')
  t.equal(inv.app.twoPhase.stateOf(tomb), 'none')
  t.same(inv.calls, { prepare: 0, commit: 0, abort: 0 })
  t.same(inv.stock('apple'), { available: 10, reserved: 0 })

  // The very same bytes, signed, go through: the 401s were about the signature.
  const ok = await post(`${base}/2pc/batch`, raw, { secret: SECRET })
  t.equal(ok.status, 200)
  t.equal(inv.app.twoPhase.stateOf(p), 'prepared')
  t.equal(inv.app.twoPhase.stateOf(tomb), 'tombstone')
})

t.test('a malformed envelope refuses the whole batch with 400: too many calls, none, an unknown op, extra fields', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET, batchMaxCalls: 3 })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const ids = Array.from({ length: 4 }, () => txid())
  const cases: Array<[string, unknown]> = [
    ['4 calls, batchMaxCalls 3', { calls: ids.map(id => decisionCall('abort', id)) }],
    ['no calls', { calls: [] }],
    ['an unknown op', { calls: [decisionCall('abort', ids[0] as string), { op: 'forget', body: { txid: ids[1] } }] }],
    ['a call with an extra field', { calls: [{ ...decisionCall('abort', ids[0] as string), extra: 1 }] }],
    ['an envelope with an extra field', { calls: [decisionCall('abort', ids[0] as string)], extra: 1 }],
    ['a body that is not an object', { calls: [decisionCall('abort', ids[0] as string), { op: 'abort', body: 'x' }] }],
    ['a traceparent too long', { calls: [{ ...decisionCall('abort', ids[0] as string), traceparent: 'x'.repeat(129) }] }],
    ['no calls field', { prepare: prepareBody(ids[0] as string) }]
  ]
  for (const [label, body] of cases) {
    const res = await post(`${base}/2pc/batch`, body, { secret: SECRET })
    t.equal(res.status, 400, label)
    t.match(res.body, { statusCode: 400, code: 'FST_ERR_VALIDATION', error: 'Bad Request' }, label)
  }
  t.ok(ids.every(id => inv.app.twoPhase.stateOf(id) === 'none'), 'no call of a refused batch was applied (no tombstone)')
  t.same(inv.calls, { prepare: 0, commit: 0, abort: 0 })

  const three = await batch(base, ids.slice(0, 3).map(id => decisionCall('abort', id)))
  t.same(three.map(r => r.status), [200, 200, 200], 'batchMaxCalls calls are accepted')
  t.same(ids.map(id => inv.app.twoPhase.stateOf(id)), ['tombstone', 'tombstone', 'tombstone', 'none'])
})

t.test('prepare answers advertise the batch route, single and batched, with the configured limits', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET, batchMaxCalls: 7, bodyLimit: 4096 })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const advert = { maxCalls: 7, maxBytes: 4096 }
  const [yes, no, batched] = [txid(), txid(), txid()]
  t.same((await post(`${base}/2pc/prepare`, prepareBody(yes), { secret: SECRET })).body, { vote: 'yes', batch: advert })
  inv.behaviour.prepare = () => 'no'
  t.same((await post(`${base}/2pc/prepare`, prepareBody(no), { secret: SECRET })).body, { vote: 'no', reason: 'prepare handler voted no', batch: advert })
  t.same(await batch(base, [prepareCall(batched)]), [{ status: 200, body: { vote: 'no', reason: 'prepare handler voted no', batch: advert } }])
  t.same((await post(`${base}/2pc/commit`, { txid: yes }, { secret: SECRET })).body, { ok: true }, 'decision answers carry nothing more')
  // maxBytes is the body limit of the batch route too.
  const big = await post(`${base}/2pc/batch`, { calls: [prepareCall(txid(), 1, { payload: { sku: 'apple', qty: 1, pad: 'x'.repeat(4096) } })] }, { secret: SECRET })
  t.equal(big.status, 413)
  t.same(inv.stock('apple'), { available: 7, reserved: 0 }, 'the yes reserved and was committed; the no votes rolled back, the 413 applied nothing')
  t.equal(inv.app.twoPhase.stateOf(batched), 'aborted')
})

t.test('batchMaxCalls: 0 mounts no batch route and advertises nothing', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET, batchMaxCalls: 0 })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const [id, other] = [txid(), txid()]
  const res = await post(`${base}/2pc/batch`, { calls: [prepareCall(other)] }, { secret: SECRET })
  t.equal(res.status, 404)
  t.equal(inv.app.twoPhase.stateOf(other), 'none')
  t.same((await post(`${base}/2pc/prepare`, prepareBody(id), { secret: SECRET })).body, { vote: 'yes' }, 'exactly the vote, no batch field')
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
})

t.test('batchMaxCalls outside 0 .. MAX_BATCH_CALLS is refused at register time', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const base = { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', prepare: () => 'yes' as const, commit: () => {}, abort: () => {} }
  for (const bad of [1000, MAX_BATCH_CALLS + 1, -1, 1.5, Number.NaN, '8']) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(twoPhaseParticipant, { ...base, batchMaxCalls: bad as number }).ready() },
      { code: 'TWOPC_INVALID_OPTION', message: /batchMaxCalls/ }, `batchMaxCalls: ${String(bad)}`)
    await app.close()
  }
  for (const good of [1, MAX_BATCH_CALLS]) {
    const app = Fastify()
    await app.register(twoPhaseParticipant, { ...base, batchMaxCalls: good })
    const res = await app.inject({ method: 'POST', url: '/2pc/prepare', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(prepareBody(txid())) })
    t.same(res.json(), { vote: 'yes', batch: { maxCalls: good, maxBytes: 1024 * 1024 } }, `batchMaxCalls: ${good}`)
    await app.close()
  }
})

t.test('each call\'s traceparent reaches its handler (tx.traceparent) and its log lines', async t => {
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'debug' }, { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } })
  const seen = new Map<string, string | undefined>()
  const record = (handler: string) => (tx: TransactionContext): void => { seen.set(`${handler} ${tx.id}`, tx.traceparent) }
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: 'http://127.0.0.1:9',
    secret: SECRET,
    logger,
    prepare: tx => { record('prepare')(tx); return 'yes' },
    commit: record('commit'),
    abort: record('abort')
  })
  const base = await listenLocal(app)
  const [a, b, c, d] = [txid(), txid(), txid(), txid()]
  await batch(base, [prepareCall(a), prepareCall(b), prepareCall(c), prepareCall(d)])
  // The request's own traceparent header is not any call's: each call carries its own.
  const res = await post(`${base}/2pc/batch`, {
    calls: [
      { ...decisionCall('commit', a), traceparent: TRACE_A },
      { ...decisionCall('commit', b), traceparent: TRACE_B.toUpperCase() },
      decisionCall('abort', c),
      { ...decisionCall('abort', d), traceparent: 'not-a-traceparent' }
    ]
  }, { secret: SECRET, headers: { traceparent: TRACE_B } })
  t.equal(res.status, 200)
  t.same(Object.fromEntries(seen), {
    [`prepare ${a}`]: undefined,
    [`prepare ${b}`]: undefined,
    [`prepare ${c}`]: undefined,
    [`prepare ${d}`]: undefined,
    [`commit ${a}`]: TRACE_A,
    [`commit ${b}`]: TRACE_B,
    [`abort ${c}`]: undefined,
    [`abort ${d}`]: undefined
  })
  const applied = lines.filter(l => l.msg === '2pc event applied' && l.event !== 'prepare')
  t.match(applied.find(l => l.txid === a), { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', outcome: 'ok' })
  t.match(applied.find(l => l.txid === b), { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331' })
  const untraced = applied.filter(l => l.txid === c || l.txid === d)
  t.equal(untraced.length, 2)
  t.ok(untraced.every(l => !('traceId' in l) && typeof l.reqId === 'string'), 'no trace, but the request id')
})

t.test('metrics: calls per batch request', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  await batch(base, [decisionCall('abort', txid()), decisionCall('abort', txid()), decisionCall('abort', txid())], null)
  await batch(base, Array.from({ length: 5 }, () => decisionCall('abort', txid())), null)
  const text = await (inv.app.twoPhase.metrics as Registry).metrics()
  t.match(text, /^twopc_participant_batch_calls_count\{participant="inventory"\} 2$/m)
  t.match(text, /^twopc_participant_batch_calls_sum\{participant="inventory"\} 8$/m)
  t.match(text, /^twopc_participant_batch_calls_bucket\{le="4",participant="inventory"\} 1$/m)
  t.match(text, /^twopc_participant_callbacks_total\{kind="abort",source="http",outcome="ok",participant="inventory"\} 8$/m)
})
