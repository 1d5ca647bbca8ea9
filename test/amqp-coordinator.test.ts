/**
 * Over 500 lines: one subtest per broker behaviour, each with its own prefix and clean-up.
 *
 * The coordinator's RabbitMQ side against the real broker: the outbox under a broker outage
 * (a TCP proxy the test cuts, black-holes and restores — the shared broker is never stopped),
 * transactional messages (published on commit, never on abort), acks over RabbitMQ, poison acks,
 * `coordinator.started`, and the refusals around transactional messages.
 *
 * Every subtest has its own name prefix and deletes what it and the coordinator declared; the
 * last one checks that nothing with this file's prefix is left on the broker.
 */
import t from 'tap'
import type { Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import {
  startParticipant, startCoordinator, tempDbPath, waitFor, type TestCoordinator, type HttpAnswer
} from '../coordinator/test/support/participant.js'
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.js'
import { checkBrokerClean, amqpUrl, amqpUrlVia } from './support/rabbit.js'
import { BrokerSide, type Received } from './support/broker-side.js'
import { signBody, signBodyV1, SIGNATURE_HEADER } from '@fastify-2pc/protocol'
import { verifyBrokerMessage } from '@fastify-2pc/amqp'

const SECRET = 'amqp-coordinator-secret-0123'

const root = `twopc-c-${randomBytes(3).toString('hex')}`
let seq = 0

/** A BrokerSide with a fresh prefix; its cleanup runs last (after the coordinators close). */
async function setup (tt: Test): Promise<BrokerSide | undefined> {
  return await BrokerSide.forTest(tt, `${root}-${++seq}`)
}

async function amqpStatus (c: TestCoordinator): Promise<{
  configured: boolean, connected: boolean, lastError: string | null, outboxDepth: number, outboxDead: number, outboxOldestAgeMs: number | null
}> {
  return (await c.api.get('/readyz')).body.amqp
}

async function proxyToBroker (tt: Test): Promise<TcpProxy> {
  const u = new URL(amqpUrl())
  const proxy = await startTcpProxy({ target: { host: u.hostname, port: Number(u.port === '' ? 5672 : u.port) } })
  tt.teardown(() => proxy.close())
  return proxy
}

/** Runs fn(0..n-1) with at most `width` at once. */
async function pool (n: number, width: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < n) {
      const i = next++
      await fn(i)
    }
  }))
}

function distinct (list: Received[]): Set<string> {
  return new Set(list.map(m => m.messageId))
}

t.test('broker cut, then black-holed, while transactions commit over HTTP: HTTP stays fast, the outbox grows, then drains and everything arrives', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { names, prefix } = broker
  const proxy = await proxyToBroker(t)
  const userX = `${prefix}.orders`
  const userQ = `${prefix}.orders.audit`
  await broker.exchange(userX, 'topic')
  await broker.queueBoundTo(userQ, userX, 'order.#')
  broker.participants.add('a')
  broker.participants.add('b')

  const a = await startParticipant(t)
  // b fails every phase-2 call until the test lets it through: each transaction's first failure
  // writes a decision notice for b to the outbox.
  const b = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const c = await startCoordinator(t, { amqpUrl: amqpUrlVia(proxy.port), amqpPrefix: prefix, retryBudget: 1000 })
  await waitFor(async () => {
    const s = await amqpStatus(c)
    return s.connected && s.outboxDepth === 0
  }, 10_000, 'connected, coordinator.started published')

  const latencies: number[] = []
  const bad: string[] = []
  async function timed (what: string, expected: number, call: () => Promise<HttpAnswer>): Promise<HttpAnswer> {
    const start = performance.now()
    const res = await call()
    latencies.push(performance.now() - start)
    if (res.status !== expected) bad.push(`${what}: ${res.status} ${res.text}`)
    return res
  }
  /** n transactions a+b, each with one message; even ones one-shot, odd ones step by step. */
  async function run (n: number, tag: string): Promise<Map<string, number>> {
    const txids = new Map<string, number>()
    await pool(n, 10, async i => {
      const participants = [{ name: 'a', url: a.url }, { name: 'b', url: b.url }]
      const message = { exchange: userX, routingKey: `order.${tag}`, body: { tag, i }, headers: { 'x-test': tag } }
      let outcome: HttpAnswer
      if (i % 2 === 0) {
        outcome = await timed('one-shot', 200, () => c.api.post('/v1/transactions', { participants, messages: [message], commit: true }))
      } else {
        const begun = await timed('begin', 201, () => c.api.post('/v1/transactions', { participants }))
        const id = begun.body.id as string
        await timed('message', 201, () => c.api.post(`/v1/transactions/${id}/messages`, message))
        outcome = await timed('commit', 200, () => c.api.post(`/v1/transactions/${id}/commit`))
      }
      if (outcome.body?.state !== 'committed') bad.push(`not committed: ${outcome.text}`)
      else txids.set(outcome.body.id as string, i)
    })
    // Every b got its first (failing) phase-2 call, so every notice is in the outbox; then let b through.
    await waitFor(() => [...txids.keys()].every(id => b.callsTo('commit', id).length >= 1), 10_000, 'first phase-2 call to b of every transaction')
    return txids
  }

  // ---- cut ------------------------------------------------------------------------------------
  proxy.cut()
  await waitFor(async () => (await amqpStatus(c)).connected === false, 5000, 'the coordinator notices the cut')
  const N = 50
  const cutStart = performance.now()
  const txids = await run(N, 'cut')
  t.same(bad, [], 'every HTTP request answered as usual during the cut')
  t.equal(txids.size, N, `${N} transactions committed during the cut`)
  const maxCut = Math.max(...latencies)
  t.ok(maxCut < 2000, `every HTTP request answered in < 2 s during the cut (max ${maxCut.toFixed(1)} ms over ${latencies.length} requests)`)
  const readyStart = performance.now()
  const during = await amqpStatus(c)
  const readyMs = performance.now() - readyStart
  t.ok(readyMs < 1000, `/readyz answers during the cut (${readyMs.toFixed(1)} ms)`)
  t.equal(during.connected, false, 'readyz: not connected')
  t.equal(during.outboxDepth, 2 * N, 'readyz: the outbox holds one notice and one message per transaction')
  t.ok(during.outboxOldestAgeMs !== null && during.outboxOldestAgeMs >= 0, 'readyz: age of the oldest outbox row')
  t.not(during.lastError, null, 'readyz: the link error is reported')
  t.ok([...txids.keys()].every(id => a.state(id) === 'committed'), 'phase 2 over HTTP is unaffected by the broker: a committed every transaction')
  const before = await c.api.get(`/v1/transactions/${[...txids.keys()][0] as string}`)
  t.same(before.body.outbox.map((o: { kind: string, publishedAt: string | null }) => [o.kind, o.publishedAt]).sort(),
    [['decision', null], ['message', null]], 'GET shows the notice and the message waiting in the outbox')
  if (b.behaviour.phase2Failure !== undefined) b.behaviour.phase2Failure.times = 0
  t.comment(`cut: ${N} transactions, ${latencies.length} HTTP requests, max ${maxCut.toFixed(1)} ms, ` +
    `mean ${(latencies.reduce((x, y) => x + y, 0) / latencies.length).toFixed(1)} ms, outbox depth ${during.outboxDepth}, ` +
    `${((performance.now() - cutStart) / 1000).toFixed(2)} s cut`)

  // ---- restore: the outbox drains, every notification arrives exactly once ---------------------
  const restoredAt = performance.now()
  proxy.restore()
  await waitFor(async () => {
    const s = await amqpStatus(c)
    return s.connected && s.outboxDepth === 0
  }, 20_000, 'outbox drained after restore')
  t.comment(`outbox drained ${((performance.now() - restoredAt) / 1000).toFixed(2)} s after restore`)
  const notices = await broker.drain(names.participantQueue('b'))
  const messages = await broker.drain(userQ)
  t.equal(notices.length, N, `${N} decision notices on ${names.participantQueue('b')}`)
  t.equal(distinct(notices).size, N, 'distinct notice messageIds')
  t.same(new Set(notices.map(m => m.body.txid)), new Set(txids.keys()), 'one notice per transaction')
  t.ok(notices.every(m => m.persistent && m.messageId === `${m.body.txid as string}:b:commit` &&
    m.body.participant === 'b' && m.body.decision === 'commit' && m.routingKey === 'participant.b'), 'notices: persistent, {txid, participant, decision}, stable messageId')
  t.equal(messages.length, N, `${N} transactional messages on ${userQ}`)
  t.equal(distinct(messages).size, N, 'distinct message messageIds')
  t.same(new Set(messages.map(m => m.messageId)), new Set([...txids.keys()].map(id => `${id}:m0`)), 'messageId <txid>:m0 of every transaction')
  t.ok(messages.every(m => m.persistent && m.body.tag === 'cut' && txids.get(m.headers['x-twopc-txid'] as string) === m.body.i && m.headers['x-test'] === 'cut'),
    'messages: persistent, the enlisted body and headers, x-twopc-txid')
  t.equal((await broker.count(names.participantQueue('a'))) ?? 0, 0, 'no notice for a (its phase 2 succeeded over HTTP)')
  await waitFor(async () => {
    const list = await Promise.all([...txids.keys()].map(async id => (await c.api.get(`/v1/transactions/${id}`)).body.completed === true))
    return list.every(Boolean)
  }, 10_000, 'every transaction completed once b answers')

  // ---- black-hole: the connection looks alive but nothing passes ------------------------------
  if (b.behaviour.phase2Failure !== undefined) b.behaviour.phase2Failure.times = Infinity
  latencies.length = 0
  proxy.blackhole()
  const M = 10
  const held = await run(M, 'hole')
  t.same(bad, [], 'every HTTP request answered as usual during the black hole')
  const maxHole = Math.max(...latencies)
  t.ok(maxHole < 2000, `every HTTP request answered in < 2 s during the black hole (max ${maxHole.toFixed(1)} ms)`)
  const hole = await amqpStatus(c)
  t.equal(hole.outboxDepth, 2 * M, 'nothing is confirmed through a black hole: the outbox holds it all')
  if (b.behaviour.phase2Failure !== undefined) b.behaviour.phase2Failure.times = 0
  proxy.restore()
  await waitFor(async () => {
    const s = await amqpStatus(c)
    return s.connected && s.outboxDepth === 0
  }, 20_000, 'outbox drained after the black hole')
  const notices2 = await broker.drain(names.participantQueue('b'))
  const messages2 = await broker.drain(userQ)
  t.equal(notices2.length, M, `${M} notices after the black hole`)
  t.same(new Set(notices2.map(m => m.body.txid)), new Set(held.keys()))
  t.equal(messages2.length, M, `${M} messages after the black hole`)
  t.same(new Set(messages2.map(m => m.messageId)), new Set([...held.keys()].map(id => `${id}:m0`)))
  t.comment(`black hole: ${M} transactions, max HTTP ${maxHole.toFixed(1)} ms, outbox depth ${hole.outboxDepth}`)
})

t.test('transactional messages: committed transactions publish exactly their messages, aborted ones none', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { prefix } = broker
  const userX = `${prefix}.shop`
  const userQ = `${prefix}.shop.all`
  await broker.exchange(userX, 'topic')
  await broker.queueBoundTo(userQ, userX, '#')
  broker.participants.add('yes')
  broker.participants.add('nay')
  const yes = await startParticipant(t)
  const nay = await startParticipant(t, { vote: 'no' })
  const c = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix })

  const msg = (txTag: string, k: number): { exchange: string, routingKey: string, body: unknown, headers: Record<string, string> } =>
    ({ exchange: userX, routingKey: `shop.${txTag}.${k}`, body: { txTag, k, text: 'ünïcødé' }, headers: { 'x-k': String(k) } })

  const N = 20
  const committed = new Map<string, string>() // txid -> tag
  await pool(N, 5, async i => {
    const tag = `c${i}`
    let res: HttpAnswer
    if (i % 2 === 0) {
      res = await c.api.post('/v1/transactions', { participants: [{ name: 'yes', url: yes.url }], messages: [msg(tag, 0), msg(tag, 1)], commit: true })
    } else {
      const id = (await c.api.post('/v1/transactions', { participants: [{ name: 'yes', url: yes.url }] })).body.id as string
      for (const k of [0, 1]) t.equal((await c.api.post(`/v1/transactions/${id}/messages`, msg(tag, k))).body.messageCount, k + 1)
      res = await c.api.post(`/v1/transactions/${id}/commit`)
    }
    t.equal(res.body.state, 'committed', `${tag} committed`)
    committed.set(res.body.id as string, tag)
  })

  const aborted = new Map<string, string>() // txid -> reason
  // A participant votes no.
  for (let i = 0; i < 4; i++) {
    const res = await c.api.post('/v1/transactions', {
      participants: [{ name: 'yes', url: yes.url }, { name: 'nay', url: nay.url }], messages: [msg(`n${i}`, 0), msg(`n${i}`, 1)], commit: true
    })
    t.same([res.body.state, res.body.reason], ['aborted', 'vote-no'])
    aborted.set(res.body.id as string, 'vote-no')
  }
  // Explicit abort.
  for (let i = 0; i < 4; i++) {
    const id = (await c.api.post('/v1/transactions', { participants: [{ name: 'yes', url: yes.url }] })).body.id as string
    await c.api.post(`/v1/transactions/${id}/messages`, msg(`x${i}`, 0))
    t.equal((await c.api.post(`/v1/transactions/${id}/abort`)).body.state, 'aborted')
    t.equal((await c.api.post(`/v1/transactions/${id}/messages`, msg(`x${i}`, 1))).body.code, 'TX_ALREADY_DECIDED', 'no message after the decision')
    aborted.set(id, 'requested')
  }
  // Timeout.
  const timedOut: string[] = []
  for (let i = 0; i < 2; i++) {
    const res = await c.api.post('/v1/transactions', { timeoutMs: 150, participants: [{ name: 'yes', url: yes.url }], messages: [msg(`t${i}`, 0)] })
    t.equal(res.status, 201)
    timedOut.push(res.body.id as string)
  }
  for (const id of timedOut) {
    await waitFor(async () => (await c.api.get(`/v1/transactions/${id}`)).body.reason === 'timeout', 5000, `${id} aborted by timeout`)
    aborted.set(id, 'timeout')
  }

  // A last committed transaction after every abort: once its message is out, anything queued
  // before it (in outbox order) is out too.
  const last = await c.api.post('/v1/transactions', { participants: [{ name: 'yes', url: yes.url }], messages: [msg('last', 0)], commit: true })
  t.equal(last.body.state, 'committed')
  committed.set(last.body.id as string, 'last')
  await waitFor(async () => (await amqpStatus(c)).outboxDepth === 0, 10_000, 'outbox empty')
  const lastView = (await c.api.get(`/v1/transactions/${last.body.id as string}`)).body
  t.ok(lastView.outbox[0]?.publishedAt !== null, 'the last message is confirmed')

  const received = await broker.drain(userQ)
  const expected = new Set<string>()
  for (const [id, tag] of committed) {
    expected.add(`${id}:m0`)
    if (tag !== 'last') expected.add(`${id}:m1`)
  }
  t.equal(received.length, 2 * N + 1, `exactly ${2 * N + 1} messages for ${N + 1} committed transactions`)
  t.same(new Set(received.map(m => m.messageId)), expected, 'exactly the committed transactions\' messages, messageId <txid>:m<position>')
  t.notOk(received.some(m => aborted.has(m.headers['x-twopc-txid'] as string)), `none of the ${aborted.size} aborted transactions published`)
  for (const m of received) {
    const txid = m.messageId.replace(/:m\d+$/, '')
    const k = Number(m.messageId.slice(txid.length + 2))
    const tag = committed.get(txid)
    if (tag === undefined) continue // counted as a failure above
    if (!(m.persistent && m.contentType === 'application/json' && m.headers['x-twopc-txid'] === txid && m.headers['x-k'] === String(k) &&
      m.routingKey === `shop.${tag}.${k}` && m.exchange === userX)) {
      t.fail(`message ${m.messageId} has the wrong properties: ${JSON.stringify({ ...m, raw: undefined })}`)
    }
    t.same(m.body, { txTag: tag, k, text: 'ünïcødé' }, `${m.messageId}: the enlisted body`)
  }
  const order = received.filter(m => committed.get(m.headers['x-twopc-txid'] as string) === 'c0').map(m => m.messageId.slice(-2))
  t.same(order, ['m0', 'm1'], 'a transaction\'s messages are published in position order')

  for (const [id, reason] of aborted) {
    const v = (await c.api.get(`/v1/transactions/${id}`)).body
    if (v.state !== 'aborted' || v.reason !== reason || v.outbox.length !== 0 || v.messageCount < 1) {
      t.fail(`aborted ${id}: ${JSON.stringify({ state: v.state, reason: v.reason, outbox: v.outbox, messageCount: v.messageCount })}`)
    }
  }
  t.pass(`${aborted.size} aborted transactions (4 vote-no, 4 explicit, 2 timeout) have messages enlisted and an empty outbox`)
  t.comment(`${N + 1} committed -> ${received.length} messages; ${aborted.size} aborted -> 0`)
})

t.test('an ack over RabbitMQ marks a participant acked; malformed and mismatched acks do not', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { names, prefix } = broker
  broker.participants.add('p')
  const p = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const c = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix, retryBudget: 1000 })
  const res = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
  t.equal(res.body.state, 'committed')
  const txid = res.body.id as string

  // The first failed phase-2 call put the decision on p's queue.
  await waitFor(async () => (await broker.count(names.participantQueue('p'))) === 1, 10_000, 'decision notice on p\'s queue')
  const [notice] = await broker.drain(names.participantQueue('p'))
  t.same(notice?.body, { txid, participant: 'p', decision: 'commit' })
  t.equal(notice?.messageId, `${txid}:p:commit`)

  const ack = (body: unknown, messageId: string): Promise<void> =>
    broker.publish(names.acksExchange, names.acksRoutingKey, typeof body === 'string' ? body : JSON.stringify(body), { messageId, contentType: 'application/json' })
  // Acks that must change nothing, then two poison messages.
  await ack({ txid, participant: 'p', decision: 'abort' }, 'wrong-decision')
  await ack({ txid: `${c.id}.0000000000000-nope`, participant: 'p', decision: 'commit' }, 'unknown-tx')
  await ack({ txid, participant: 'someone-else', decision: 'commit' }, 'unknown-participant')
  await ack('this is not JSON', 'poison-text')
  await ack({ txid: 5, participant: 'p' }, 'poison-shape')
  const dlq = names.deadLetterQueue(names.acksQueue)
  await waitFor(async () => (await broker.count(dlq)) === 2, 10_000, 'two poison acks dead-lettered')
  const dead = await broker.drain(dlq)
  t.same(dead.map(m => m.messageId).sort(), ['poison-shape', 'poison-text'], 'the malformed acks (and only they) are dead-lettered')
  t.equal(dead.find(m => m.messageId === 'poison-text')?.raw.toString(), 'this is not JSON', 'dead-lettered as sent')
  // Deliveries are handled in order: the acks before the poison were seen, and changed nothing.
  let view = (await c.api.get(`/v1/transactions/${txid}`)).body
  t.equal(view.participants[0].ack, 'pending', 'an ack with the wrong decision (and one for an unknown tx or participant) is ignored')
  t.equal(view.completed, false)

  await ack({ txid, participant: 'p', decision: 'commit' }, 'the-ack')
  view = await waitFor(async () => {
    const v = (await c.api.get(`/v1/transactions/${txid}`)).body
    return v.completed === true ? v : undefined
  }, 10_000, 'acked over RabbitMQ')
  t.equal(view.participants[0].ack, 'acked', 'acked over RabbitMQ')
  t.equal(view.state, 'committed')
  t.ok(p.callsTo('commit').length >= 1 && p.callsTo('commit').every(call => call.status === 503), 'HTTP phase 2 never succeeded')
  t.equal(await broker.count(names.acksQueue), 0, 'nothing left on the acks queue (nothing requeued)')
  t.equal(await broker.count(dlq), 0, 'and nothing more dead-lettered: the poison was not redelivered')
  // Retries over HTTP stop once acked.
  const calls = p.callsTo('commit').length
  await waitFor(async () => (await c.api.get(`/v1/transactions/${txid}`)).body.participants[0].nextAttemptAt === null, 2000, 'no retry scheduled')
  t.ok(p.callsTo('commit').length <= calls + 1, 'at most the call already in flight after the ack')
})

t.test('with a secret: notices and coordinator.started go out signed; forged, replayed and legacy acks are refused (dead-lettered, counted), phase 2 goes on; a signed ack is applied', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { names, prefix } = broker
  broker.participants.add('p')
  await broker.exchange(names.eventsExchange, 'fanout')
  const events = await broker.collect(await broker.tempQueue(names.eventsExchange))
  const p = await startParticipant(t, { secret: SECRET, phase2Failure: { status: 503, times: Infinity } })
  const c = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix, secret: SECRET, retryBudget: 1000 })
  await waitFor(() => events.length === 1, 10_000, 'coordinator.started')
  const started = events[0] as Received
  t.ok(verifyBrokerMessage(SECRET, 'amqp.event', started.headers, started.raw).ok, 'coordinator.started signed for amqp.event over its exact bytes')

  const res = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
  t.equal(res.body.state, 'committed')
  const txid = res.body.id as string
  await waitFor(async () => (await broker.count(names.participantQueue('p'))) === 1, 10_000, 'decision notice on p\'s queue')
  const [notice] = await broker.drain(names.participantQueue('p'))
  if (notice === undefined) throw new Error('no notice')
  t.same(notice.body, { txid, participant: 'p', decision: 'commit' })
  t.ok(verifyBrokerMessage(SECRET, 'amqp.decision', notice.headers, notice.raw).ok, 'the notice is signed for amqp.decision over its exact bytes')
  t.match(verifyBrokerMessage(SECRET, 'amqp.ack', notice.headers, notice.raw), { ok: false, reason: 'mismatch' }, 'and is no ack')

  const content = Buffer.from(JSON.stringify({ txid, participant: 'p', decision: 'commit' }))
  const ack = (body: Buffer, messageId: string, signature?: unknown): Promise<void> =>
    broker.publish(names.acksExchange, names.acksRoutingKey, body, { messageId, contentType: 'application/json', ...(signature !== undefined ? { headers: { [SIGNATURE_HEADER]: signature } } : {}) })
  await ack(content, 'unsigned')
  await ack(content, 'wrong-secret', signBody('not-the-secret', 'amqp.ack', content))
  await ack(notice.raw, 'notice-as-ack', notice.headers[SIGNATURE_HEADER]) // the same body shape, signed for amqp.decision
  await ack(content, 'legacy-v1', signBodyV1(SECRET, content))
  await ack(content, 'garbage-signature', 'v2=0')
  const forged = ['garbage-signature', 'legacy-v1', 'notice-as-ack', 'unsigned', 'wrong-secret']
  const dlq = names.deadLetterQueue(names.acksQueue)
  await waitFor(async () => (await broker.count(dlq)) === forged.length, 10_000, 'the forged acks dead-lettered')
  const dead = await broker.drain(dlq)
  t.same(dead.map(m => m.messageId).sort(), forged, 'each forged ack dead-lettered once')
  let view = (await c.api.get(`/v1/transactions/${txid}`)).body
  t.equal(view.participants[0].ack, 'pending', 'no forged ack marked the participant acked')
  t.equal(view.completed, false)
  const metrics = (await c.api.get('/metrics')).text
  const series = (name: string): number | undefined => {
    const line = metrics.split('\n').find(l => l.startsWith(name + ' '))
    return line === undefined ? undefined : Number(line.slice(name.length + 1))
  }
  t.equal(series('twopc_amqp_rejected_total{reason="missing"}'), 1)
  t.equal(series('twopc_amqp_rejected_total{reason="mismatch"}'), 2)
  t.equal(series('twopc_amqp_rejected_total{reason="legacy-scheme"}'), 1)
  t.equal(series('twopc_amqp_rejected_total{reason="malformed"}'), 1)

  // Phase 2 goes on: once p answers, the real participant gets the decision over HTTP.
  delete p.behaviour.phase2Failure
  view = await waitFor(async () => {
    const v = (await c.api.get(`/v1/transactions/${txid}`)).body
    return v.completed === true ? v : undefined
  }, 10_000, 'acked over HTTP')
  t.equal(view.participants[0].ack, 'acked')
  t.equal(p.state(txid), 'committed', 'the participant got the decision')
  t.ok(p.callsTo('commit', txid).some(call => call.status === 200 && call.signatureOk === true), 'a signed commit callback answered ok')

  // A signed ack (however old: no age limit on broker messages) is applied.
  const p2 = await startParticipant(t, { secret: SECRET, phase2Failure: { status: 503, times: Infinity } })
  const res2 = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p2.url }], commit: true })
  const txid2 = res2.body.id as string
  await waitFor(async () => (await broker.count(names.participantQueue('p'))) === 1, 10_000, 'second notice on p\'s queue')
  const content2 = Buffer.from(JSON.stringify({ txid: txid2, participant: 'p', decision: 'commit' }))
  await ack(content2, 'signed', signBody(SECRET, 'amqp.ack', content2, Date.now() - 3_600_000))
  view = await waitFor(async () => {
    const v = (await c.api.get(`/v1/transactions/${txid2}`)).body
    return v.completed === true ? v : undefined
  }, 10_000, 'acked over RabbitMQ')
  t.equal(view.participants[0].ack, 'acked', 'a signed ack marks the participant acked')
  t.equal(await broker.count(dlq), 0, 'nothing more dead-lettered')
  t.equal(await broker.count(names.acksQueue), 0)
})

t.test('an ack that arrives while the coordinator is closing is left on the queue, and applied by the next start', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { names, prefix } = broker
  broker.participants.add('p')
  broker.participants.add('slow')
  const p = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const slow = await startParticipant(t, { prepareDelayMs: 1500 })
  const dbPath = tempDbPath(t)
  const c1 = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix, dbPath, retryBudget: 1000 })
  const res = await c1.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
  const txid = res.body.id as string
  await waitFor(async () => (await broker.count(names.participantQueue('p'))) === 1, 10_000, 'p has its notice: the transaction waits for p\'s ack')

  // A commit in flight keeps the closing coordinator open (it answers before it closes its log).
  const inflight = c1.api.post('/v1/transactions', { participants: [{ name: 'slow', url: slow.url }], commit: true })
  await waitFor(() => slow.callsTo('prepare').length === 1, 5000, 'slow prepare in flight')
  const closed = c1.close()
  await waitFor(async () => (await c1.api.get('/readyz').then(r => r.status, () => 0)) !== 200, 5000, 'the coordinator is closing')
  await broker.publish(names.acksExchange, names.acksRoutingKey, JSON.stringify({ txid, participant: 'p', decision: 'commit' }), { messageId: 'late-ack' })
  t.equal((await inflight).body.state, 'committed', 'the request in flight is answered')
  await closed
  t.equal(await broker.count(names.acksQueue), 1, 'the ack is back on the queue, not consumed and dropped')

  const c2 = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix, dbPath, retryBudget: 1000 })
  const view = await waitFor(async () => {
    const v = (await c2.api.get(`/v1/transactions/${txid}`)).body
    return v.completed === true ? v : undefined
  }, 10_000, 'the ack applied after the restart')
  t.equal(view.participants[0].ack, 'acked')
})

t.test('coordinator.started is published to the events fanout after recovery, on every start', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { names, prefix } = broker
  broker.participants.add('p')
  // Declared like the coordinator declares it, so the test's queue is bound before the first start.
  await broker.exchange(names.eventsExchange, 'fanout')
  const events = await broker.collect(await broker.tempQueue(names.eventsExchange))
  const dbPath = tempDbPath(t)
  const t0 = Date.now()
  const c1 = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix, dbPath })
  await waitFor(() => events.length === 1, 10_000, 'first coordinator.started')
  const first = events[0] as Received
  t.same(Object.keys(first.body).sort(), ['at', 'coordinatorId', 'type'])
  t.equal(first.body.type, 'coordinator.started')
  t.equal(first.body.coordinatorId, c1.id)
  t.ok(first.body.at >= t0 && first.body.at <= Date.now(), 'at: when it started')
  t.equal(first.messageId, `${c1.id}:started:${first.body.at as number}`)
  t.ok(first.persistent)

  // An undecided transaction in the log; the restart's recovery aborts it before the event.
  const p = await startParticipant(t)
  const begun = await c1.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }] })
  t.equal(begun.status, 201)
  await c1.close()
  const c2 = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix, dbPath })
  await waitFor(() => events.length === 2, 10_000, 'second coordinator.started')
  const second = events[1] as Received
  t.equal(second.body.coordinatorId, c1.id, 'same coordinator id (same log)')
  t.ok(second.body.at > first.body.at)
  t.not(second.messageId, first.messageId, 'a new messageId per start')
  const tx = (await c2.api.get(`/v1/transactions/${begun.body.id as string}`)).body
  t.same([tx.state, tx.reason], ['aborted', 'coordinator-restarted'])
  t.ok(second.body.at >= Date.parse(tx.decidedAt), 'the event comes after the recovery decided the leftover transaction')
  t.equal(events.length, 2, 'one event per start')
})

t.test('transactional messages: refused without RabbitMQ, limited per transaction, parked when the exchange does not exist', async t => {
  await t.test('no amqpUrl: 400 AMQP_NOT_CONFIGURED', async t => {
    const c = await startCoordinator(t)
    const begun = await c.api.post('/v1/transactions', {})
    const id = begun.body.id as string
    const res = await c.api.post(`/v1/transactions/${id}/messages`, { exchange: 'x', routingKey: 'k', body: {} })
    t.equal(res.status, 400)
    t.equal(res.body.code, 'AMQP_NOT_CONFIGURED')
    const oneShot = await c.api.post('/v1/transactions', { messages: [{ exchange: 'x', routingKey: 'k', body: 1 }], commit: true })
    t.same([oneShot.status, oneShot.body.code], [400, 'AMQP_NOT_CONFIGURED'])
    const begin = await c.api.post('/v1/transactions', { messages: [{ exchange: 'x', routingKey: 'k', body: 1 }] })
    t.same([begin.status, begin.body.code], [400, 'AMQP_NOT_CONFIGURED'])
    t.equal((await c.api.get(`/v1/transactions/${id}`)).body.messageCount, 0, 'nothing enlisted')
    t.same((await c.api.get('/readyz')).body.amqp, { configured: false })
  })

  await t.test('TOO_MANY_MESSAGES', async t => {
    const broker = await setup(t)
    if (broker === undefined) return
    const c = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: broker.prefix, maxMessages: 2 })
    const m = { exchange: 'amq.topic', routingKey: 'k', body: {} }
    const id = (await c.api.post('/v1/transactions', {})).body.id as string
    t.equal((await c.api.post(`/v1/transactions/${id}/messages`, m)).status, 201)
    t.equal((await c.api.post(`/v1/transactions/${id}/messages`, m)).status, 201)
    const third = await c.api.post(`/v1/transactions/${id}/messages`, m)
    t.same([third.status, third.body.code], [400, 'TOO_MANY_MESSAGES'])
    t.equal((await c.api.get(`/v1/transactions/${id}`)).body.messageCount, 2)
    const oneShot = await c.api.post('/v1/transactions', { messages: [m, m, m], commit: true })
    t.same([oneShot.status, oneShot.body.code], [400, 'TOO_MANY_MESSAGES'])
  })

  await t.test('an exchange that does not exist: the message is parked, the others are published', async t => {
    const broker = await setup(t)
    if (broker === undefined) return
    const { prefix } = broker
    const userX = `${prefix}.real`
    const userQ = `${prefix}.real.q`
    const missing = `${prefix}.missing`
    await broker.exchange(userX, 'direct')
    await broker.queueBoundTo(userQ, userX, 'k')
    const c = await startCoordinator(t, { amqpUrl: amqpUrl(), amqpPrefix: prefix })
    const m = (exchange: string, n: number): unknown => ({ exchange, routingKey: 'k', body: { n } })
    const one = await c.api.post('/v1/transactions', { messages: [m(missing, 0), m(userX, 1)], commit: true })
    t.equal(one.body.state, 'committed')
    const two = await c.api.post('/v1/transactions', { messages: [m(userX, 2)], commit: true })
    t.equal(two.body.state, 'committed')
    await waitFor(async () => {
      const s = await amqpStatus(c)
      return s.outboxDepth === 0 && s.outboxDead === 1
    }, 10_000, 'outbox: nothing waiting, one parked')
    const view = (await c.api.get(`/v1/transactions/${one.body.id as string}`)).body
    const parked = view.outbox.find((o: { exchange: string }) => o.exchange === missing)
    t.ok(parked?.deadAt !== null && parked?.deadAt !== undefined, 'deadAt set')
    t.match(parked?.lastError, /EXCHANGE_NOT_FOUND/, 'lastError says why')
    t.equal(parked?.publishedAt, null)
    t.equal(parked?.messageId, `${one.body.id as string}:m0`)
    t.ok(view.outbox.find((o: { exchange: string }) => o.exchange === userX)?.publishedAt !== null, 'the same transaction\'s other message is published')
    // Later messages are not blocked either.
    const three = await c.api.post('/v1/transactions', { messages: [m(userX, 3)], commit: true })
    await waitFor(async () => (await c.api.get(`/v1/transactions/${three.body.id as string}`)).body.outbox[0]?.publishedAt !== null, 10_000, 'a later message is published')
    const got = await broker.drain(userQ)
    t.same(got.map(x => x.body.n).sort(), [1, 2, 3], 'every message to the existing exchange arrived, once')
    const s = await amqpStatus(c)
    t.same([s.outboxDepth, s.outboxDead, s.connected], [0, 1, true], 'readyz: one parked, none waiting, still connected')
    t.equal((await c.api.get(`/v1/transactions/${one.body.id as string}`)).body.outbox.find((o: { exchange: string }) => o.exchange === missing)?.attempts, 1,
      'a parked message is not retried')
  })
})

t.test('nothing with this file\'s prefix is left on the broker', async t => {
  await checkBrokerClean(t, root)
})
