/**
 * The driver's batching against a real HTTP participant on 127.0.0.1 whose answers each test
 * scripts: what goes out batched and what singly, how each call gets its own result, the limits
 * a participant advertises, and the fall-backs (no batch route, a garbled answer, a batch-level
 * error, a call's own timeout).
 */
import t, { type Test } from 'tap'
import Fastify, { type FastifyRequest } from 'fastify'
import { verifySignature, SIGNATURE_HEADER, type BatchCall, type SignedOperation } from '@fastify-2pc/protocol'
import { ParticipantDriver } from '../src/driver.js'

const SECRET = 'driver-batch-test-secret'

interface Received { path: string, body: any, signatureOk: boolean, traceparent: string | undefined }

interface Script {
  /** What a prepare answer advertises (undefined: no `batch` field). */
  advertise: { maxCalls: number, maxBytes: number } | undefined
  /** Whether `/batch` exists (false: 404, as a participant without it). */
  batchRoute: boolean
  /** Replaces the batch answer: status and raw body. */
  batchAnswer?: { status: number, body: string }
  batchDelayMs: number
  /** The vote of a prepare whose payload is `{vote}`; 'yes' otherwise. */
}

async function participant (t: Test, script: Partial<Script> = {}): Promise<{ url: string, received: Received[], batches: () => Received[], script: Script }> {
  const s: Script = { advertise: { maxCalls: 64, maxBytes: 1024 * 1024 }, batchRoute: true, batchDelayMs: 0, ...script }
  const received: Received[] = []
  const app = Fastify({ forceCloseConnections: true })
  const raw = new WeakMap<FastifyRequest, string>()
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    raw.set(req, body as string)
    try { done(null, JSON.parse(body as string)) } catch (err) { done(err as Error, undefined) }
  })
  const note = (req: FastifyRequest): void => {
    received.push({
      path: req.url.replace('/2pc', ''),
      body: req.body,
      signatureOk: verifySignature(SECRET, req.url.slice(req.url.lastIndexOf('/') + 1) as SignedOperation, req.headers[SIGNATURE_HEADER], raw.get(req) ?? '').ok,
      traceparent: req.headers.traceparent as string | undefined
    })
  }
  // One call's answer, the same whether it came alone or in a batch.
  const answer = (op: string, body: any): { status: number, body: unknown } => {
    if (op === 'prepare') {
      const vote = body.payload?.vote ?? 'yes'
      return { status: 200, body: s.advertise === undefined ? { vote } : { vote, batch: s.advertise } }
    }
    if (body.txid.endsWith('unknown')) return { status: 404, body: { statusCode: 404, code: 'TX_UNKNOWN', error: 'Not Found', message: 'unknown' } }
    return { status: 200, body: { ok: true } }
  }
  for (const op of ['prepare', 'commit', 'abort']) {
    app.post(`/2pc/${op}`, async (req, reply) => {
      note(req)
      const a = answer(op, req.body)
      return await reply.code(a.status).send(a.body)
    })
  }
  app.post('/2pc/batch', async (req, reply) => {
    note(req)
    if (!s.batchRoute) return await reply.code(404).send({ statusCode: 404, code: 'FST_ERR_NOT_FOUND', error: 'Not Found', message: 'no route' })
    if (s.batchDelayMs > 0) await new Promise(resolve => setTimeout(resolve, s.batchDelayMs))
    if (s.batchAnswer !== undefined) return await reply.code(s.batchAnswer.status).type('application/json').send(s.batchAnswer.body)
    const calls = (req.body as { calls: BatchCall[] }).calls
    return { results: calls.map(c => answer(c.op, c.body)) }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => { await app.close() })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no TCP address')
  return { url: `http://127.0.0.1:${address.port}/2pc`, received, batches: () => received.filter(r => r.path === '/batch'), script: s }
}

function driver (t: Test, batchMaxCalls = 64): { driver: ParticipantDriver, batchSizes: number[] } {
  const batchSizes: number[] = []
  const d = new ParticipantDriver({ secret: SECRET, maxResponseBytes: 64 * 1024, connectionsPerOrigin: 8, batchMaxCalls, onBatch: n => batchSizes.push(n) })
  t.teardown(async () => { await d.close() })
  return { driver: d, batchSizes }
}

const TX = (n: number | string): string => `c1.0000000000000000000000${String(n).padStart(4, '0')}`
const prepareBody = (n: number | string, vote = 'yes'): any => ({ txid: TX(n), participant: 'p', payload: { vote }, deadline: Date.now() + 10_000 })

t.test('after a prepare answer advertises batching, calls made in one turn go out as one signed batch; each gets its own result', async t => {
  const p = await participant(t)
  const { driver: d, batchSizes } = driver(t)
  t.equal(d.batches(p.url), false, 'nothing known before the first answer')
  const first = await d.prepare(p.url, prepareBody(0), 1000)
  t.same(first, { ok: true, vote: 'yes' })
  t.equal(d.batches(p.url), true, 'learnt from the prepare answer')
  t.equal(p.received[0]?.path, '/prepare', 'the first call went out singly')

  const tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  const outcomes = await Promise.all([
    d.prepare(p.url, prepareBody(1), 1000, tp),
    d.prepare(p.url, prepareBody(2, 'no'), 1000),
    d.decide(p.url, 'commit', TX(3), 'p', 1000),
    d.decide(p.url, 'commit', TX('unknown'), 'p', 1000),
    d.decide(p.url, 'abort', TX(5), 'p', 1000)
  ])
  t.same(outcomes[0], { ok: true, vote: 'yes' })
  t.same(outcomes[1], { ok: true, vote: 'no' })
  t.same(outcomes[2], { ok: true })
  t.match(outcomes[3], { ok: false, refused: true, error: /^commit answered 404: .*TX_UNKNOWN/ })
  t.same(outcomes[4], { ok: true })
  const batches = p.batches()
  t.equal(batches.length, 1, 'one request for the five calls')
  t.same(batchSizes, [5])
  t.ok(batches[0]?.signatureOk, 'the batch body is signed')
  t.same(batches[0]?.body.calls.map((c: BatchCall) => [c.op, c.body.txid]),
    [['prepare', TX(1)], ['prepare', TX(2)], ['commit', TX(3)], ['commit', TX('unknown')], ['abort', TX(5)]], 'in the order made')
  t.equal(batches[0]?.body.calls[0].traceparent, tp, 'each call carries its own traceparent')
  t.notOk('traceparent' in batches[0]?.body.calls[1], 'none where the call has none')
  t.same(batches[0]?.body.calls[2].body, { txid: TX(3), participant: 'p' }, 'the body the single route would get')
})

t.test('a lone call goes out singly, also to a participant that batches', async t => {
  const p = await participant(t)
  const { driver: d } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  t.same(await d.decide(p.url, 'commit', TX(0), 'p', 1000), { ok: true })
  t.same(p.received.map(r => r.path), ['/prepare', '/commit'])
  t.ok(p.received.every(r => r.signatureOk))
})

t.test('batches keep to the calls and bytes the participant advertises, and to the coordinator\'s own limit', async t => {
  const p = await participant(t, { advertise: { maxCalls: 3, maxBytes: 1024 * 1024 } })
  const { driver: d, batchSizes } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  const all = await Promise.all(Array.from({ length: 7 }, (_, i) => d.decide(p.url, 'commit', TX(i), 'p', 1000)))
  t.ok(all.every(o => o.ok))
  t.same(batchSizes, [3, 3], 'two full batches; the seventh call went out singly')
  t.same(p.received.slice(1).map(r => r.path), ['/batch', '/batch', '/commit'])

  // Bytes: a payload of ~600 bytes per prepare, 1,500 bytes per batch at most -> two calls per batch.
  p.script.advertise = { maxCalls: 64, maxBytes: 1500 }
  await d.prepare(p.url, prepareBody(100), 1000) // re-learns the new limits
  const big = (n: number): any => ({ ...prepareBody(n), payload: { vote: 'yes', pad: 'x'.repeat(600) } })
  const before = batchSizes.length
  const votes = await Promise.all([1, 2, 3, 4].map(n => d.prepare(p.url, big(n), 1000)))
  t.ok(votes.every(v => v.ok && v.vote === 'yes'))
  t.same(batchSizes.slice(before), [2, 2])
  for (const b of p.batches().slice(-2)) t.ok(JSON.stringify(b.body).length <= 1500, 'within maxBytes')

  // A single call larger than maxBytes is sent singly (the single route decides about it).
  const huge = { ...prepareBody(9), payload: { vote: 'yes', pad: 'x'.repeat(3000) } }
  const n = p.received.length
  const [hugeVote, smallVote] = await Promise.all([d.prepare(p.url, huge, 1000), d.prepare(p.url, prepareBody(10), 1000)])
  t.same([hugeVote, smallVote], [{ ok: true, vote: 'yes' }, { ok: true, vote: 'yes' }])
  t.same(p.received.slice(n).map(r => r.path).sort(), ['/prepare', '/prepare'])

  // The coordinator's own limit applies whatever the participant offers.
  const q = await participant(t, { advertise: { maxCalls: 200, maxBytes: 1024 * 1024 } })
  const small = driver(t, 4)
  await small.driver.prepare(q.url, prepareBody(0), 1000)
  await Promise.all(Array.from({ length: 8 }, (_, i) => small.driver.decide(q.url, 'commit', TX(i), 'p', 1000)))
  t.same(small.batchSizes, [4, 4])
})

t.test('maxBytes counts UTF-8 bytes, not characters', async t => {
  const p = await participant(t, { advertise: { maxCalls: 64, maxBytes: 1500 } })
  const { driver: d, batchSizes } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  // 300 euro signs: 300 characters, 900 bytes. Two such calls fit by characters, not by bytes.
  const euro = (n: number): any => ({ ...prepareBody(n), payload: { vote: 'yes', pad: '€'.repeat(300) } })
  const votes = await Promise.all([1, 2, 3, 4].map(n => d.prepare(p.url, euro(n), 1000)))
  t.ok(votes.every(v => v.ok && v.vote === 'yes'))
  t.same(batchSizes, [], 'no two of them fit in 1,500 bytes: each went out singly')
  t.same(p.received.slice(1).map(r => r.path), ['/prepare', '/prepare', '/prepare', '/prepare'])
})

t.test('batchMaxCalls 1 never batches', async t => {
  const p = await participant(t)
  const { driver: d, batchSizes } = driver(t, 1)
  await d.prepare(p.url, prepareBody(0), 1000)
  t.equal(d.batches(p.url), false)
  await Promise.all([1, 2, 3].map(i => d.decide(p.url, 'commit', TX(i), 'p', 1000)))
  t.same(batchSizes, [])
  t.same(p.received.map(r => r.path), ['/prepare', '/commit', '/commit', '/commit'])
})

t.test('a prepare answer without (valid) `batch` ends batching to that participant', async t => {
  const p = await participant(t)
  const { driver: d } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  t.equal(d.batches(p.url), true)
  p.script.advertise = { maxCalls: 1, maxBytes: 1024 * 1024 }
  await d.prepare(p.url, prepareBody(1), 1000)
  t.equal(d.batches(p.url), false, 'maxCalls 1 is no batching')
  p.script.advertise = { maxCalls: 8, maxBytes: 1024 * 1024 }
  await d.prepare(p.url, prepareBody(2), 1000)
  t.equal(d.batches(p.url), true)
  p.script.advertise = undefined
  await d.prepare(p.url, prepareBody(3), 1000)
  t.equal(d.batches(p.url), false, 'no field: no batching')
})

t.test('no batch route (404): every call is resent singly, and the participant is called singly from then on', async t => {
  const p = await participant(t, { batchRoute: false })
  const { driver: d } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  const outcomes = await Promise.all([d.decide(p.url, 'commit', TX(1), 'p', 1000), d.decide(p.url, 'commit', TX('unknown'), 'p', 1000)])
  t.same(outcomes[0], { ok: true })
  t.match(outcomes[1], { ok: false, refused: true, error: /TX_UNKNOWN/ })
  t.equal(d.batches(p.url), false)
  t.same(p.received.map(r => r.path), ['/prepare', '/batch', '/commit', '/commit'])
  await Promise.all([d.decide(p.url, 'abort', TX(2), 'p', 1000), d.decide(p.url, 'abort', TX(3), 'p', 1000)])
  t.same(p.received.slice(4).map(r => r.path), ['/abort', '/abort'], 'no second try of the batch route')
})

t.test('a garbled batch answer is not trusted: the calls are resent singly', async t => {
  const p = await participant(t)
  const { driver: d } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  for (const body of ['{"results":[{"status":200,"body":{"ok":true}}]}', '{"results":[{"status":"ok"},{"status":200}]}', 'not json']) {
    p.script.batchAnswer = { status: 200, body }
    p.script.advertise = { maxCalls: 64, maxBytes: 1024 * 1024 }
    await d.prepare(p.url, prepareBody(0), 1000) // batching again
    const n = p.received.length
    const outcomes = await Promise.all([d.decide(p.url, 'commit', TX(1), 'p', 1000), d.decide(p.url, 'commit', TX(2), 'p', 1000)])
    t.same(outcomes, [{ ok: true }, { ok: true }], `answer ${body}`)
    t.same(p.received.slice(n).map(r => r.path), ['/batch', '/commit', '/commit'])
  }
})

t.test('a batch-level error the single calls would also get (503, 401) fails each call, retryable, without giving up batching', async t => {
  const p = await participant(t)
  const { driver: d } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  p.script.batchAnswer = { status: 503, body: '{"statusCode":503,"code":"LOG_WRITE_FAILED","error":"Service Unavailable","message":"retry"}' }
  const outcomes = await Promise.all([d.decide(p.url, 'commit', TX(1), 'p', 1000), d.prepare(p.url, prepareBody(2), 1000)])
  t.match(outcomes[0], { ok: false, refused: false, error: /^commit answered 503: .*LOG_WRITE_FAILED/ })
  t.match(outcomes[1], { ok: false, error: /^prepare answered 503/ })
  t.equal(d.batches(p.url), true)
  p.script.batchAnswer = { status: 401, body: '{"statusCode":401,"code":"BAD_SIGNATURE"}' }
  const unauthorized = await Promise.all([d.decide(p.url, 'commit', TX(1), 'p', 1000), d.decide(p.url, 'abort', TX(3), 'p', 1000)])
  t.same(unauthorized, [
    { ok: false, refused: false, attention: 'unauthorized', error: 'commit answered 401: BAD_SIGNATURE' },
    { ok: false, refused: false, attention: 'unauthorized', error: 'abort answered 401: BAD_SIGNATURE' }
  ])
  t.same(p.received.slice(1).map(r => r.path), ['/batch', '/batch'], 'nothing resent singly')
})

t.test('each call in a batch keeps its own timeout; a connection failure fails every call', async t => {
  const p = await participant(t, { batchDelayMs: 400 })
  const { driver: d } = driver(t)
  await d.prepare(p.url, prepareBody(0), 1000)
  const started = Date.now()
  const [short, long] = await Promise.all([d.decide(p.url, 'commit', TX(1), 'p', 100), d.decide(p.url, 'commit', TX(2), 'p', 2000)])
  t.match(short, { ok: false, refused: false, error: 'commit got no answer within 100 ms' })
  t.same(long, { ok: true }, 'the other call waited for the answer')
  t.ok(Date.now() - started >= 390)

  const { url } = p
  const closed = url.replace(/:\d+\//, ':1/') // nothing listens on port 1
  const q = driver(t)
  // Teach the driver that `closed` batches (a prepare answer from it is impossible: fake the learning).
  ;(q.driver as unknown as { learnBatching: (u: string, a: unknown) => void }).learnBatching(closed, { vote: 'yes', batch: { maxCalls: 8, maxBytes: 4096 } })
  const failed = await Promise.all([q.driver.decide(closed, 'commit', TX(1), 'p', 1000), q.driver.decide(closed, 'abort', TX(2), 'p', 1000)])
  t.match(failed, [{ ok: false, refused: false, error: /^commit failed: ECONNREFUSED/ }, { ok: false, refused: false, error: /^abort failed: ECONNREFUSED/ }])
  t.same(q.batchSizes, [2])
})

t.test('calls queued when the driver closes still go out; later calls fail at once', async t => {
  const p = await participant(t)
  const d = new ParticipantDriver({ secret: SECRET, maxResponseBytes: 64 * 1024, connectionsPerOrigin: 8 })
  await d.prepare(p.url, prepareBody(0), 1000)
  const pending = [d.decide(p.url, 'commit', TX(1), 'p', 1000), d.decide(p.url, 'commit', TX(2), 'p', 1000)]
  const closing = d.close()
  t.same(await Promise.all(pending), [{ ok: true }, { ok: true }])
  await closing
  t.match(await d.decide(p.url, 'commit', TX(3), 'p', 1000), { ok: false, error: /driver is closed/ })
})

t.test('with the end of the turn owned by the engine (onQueued), calls queued when the driver closes still go out', async t => {
  const p = await participant(t)
  const d = new ParticipantDriver({ secret: SECRET, maxResponseBytes: 64 * 1024, connectionsPerOrigin: 8 })
  const queuedSignals: number[] = []
  d.onQueued = () => { queuedSignals.push(1) } // the owner's turn has not ended yet when the driver closes
  await d.prepare(p.url, prepareBody(0), 1000)
  const pending = [d.decide(p.url, 'commit', TX(1), 'p', 1000), d.decide(p.url, 'commit', TX(2), 'p', 1000)]
  t.ok(queuedSignals.length >= 2, 'the owner was told of each queued call')
  const closing = d.close()
  t.same(await Promise.all(pending), [{ ok: true }, { ok: true }])
  await closing
  t.same(p.batches().length, 1, 'as one batch')
})
