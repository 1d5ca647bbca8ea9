/**
 * The participant's RabbitMQ side against the real broker (and, for `coordinator.started`, the
 * real coordinator). Every subtest has its own name prefix and deletes what it declared; broker
 * outages go through a TCP proxy the test controls, never by stopping the shared broker.
 */
import t from 'tap'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import amqp from 'amqplib'
import pino from 'pino'
import { amqpNames, signBody, signBodyV1, SIGNATURE_HEADER, type AckNotice } from '@fastify-2pc/protocol'
import { topologyObjects, verifyBrokerMessage } from '@fastify-2pc/amqp'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import type { FastifyInstance } from 'fastify'
import { buildInventory, callback, prepareBody, SECRET, txid } from './helpers.js'
import type { Inventory } from './helpers.js'
import type { TwoPhaseParticipantOptions } from '../src/index.js'
import { amqpUrl, amqpUrlVia, cleanupPrefix, listBrokerNames, requireRabbit, testPrefix } from '../../test/support/rabbit.js'
import { startTcpProxy } from '../../test/support/tcp-proxy.js'
import { waitFor } from '../../test/kit/wait.js'
import { listenLocal } from '../../test/kit/port.js'

interface Teardown { teardown (fn: () => unknown): void }

const LINK = { heartbeat: 5, connectTimeoutMs: 3000, setupTimeoutMs: 10_000, publishTimeoutMs: 5000, reconnectInitialDelayMs: 50, reconnectMaxDelayMs: 300, retryDelayMs: 50 }

/** A broker connection of the test's own (to publish notices and inspect queues); deletes the prefix's topology at the end. */
async function brokerFor (t: Teardown, prefix: string) {
  const conn = await amqp.connect(amqpUrl())
  conn.on('error', () => {})
  const ch = await conn.createConfirmChannel()
  const names = amqpNames(prefix)
  // Teardowns run last-in first-out: registered first, this runs after the apps closed.
  t.teardown(async () => {
    await conn.close().catch(() => {})
    const failed = await cleanupPrefix(topologyObjects(names, ['inventory']))
    if (failed.length > 0) throw new Error(`could not delete ${failed.join(', ')}`)
    const left = await listBrokerNames(prefix)
    if (left !== undefined && left.queues.length + left.exchanges.length > 0) throw new Error(`left on the broker: ${JSON.stringify(left)}`)
  })
  return {
    names,
    /** To the decisions exchange (or, with `straight`, to the queue through the default exchange). */
    async publish (body: unknown, messageId: string, headers?: Record<string, unknown>, straight = false): Promise<void> {
      const content = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body))
      const [exchange, routingKey] = straight ? ['', names.participantQueue('inventory')] : [names.decisionsExchange, names.participantRoutingKey('inventory')]
      ch.publish(exchange, routingKey, content, { persistent: true, messageId, contentType: 'application/json', ...(headers !== undefined ? { headers } : {}) })
      await ch.waitForConfirms()
    },
    async publishEvent (content: Buffer, messageId: string, headers?: Record<string, unknown>): Promise<void> {
      ch.publish(names.eventsExchange, '', content, { persistent: true, messageId, contentType: 'application/json', ...(headers !== undefined ? { headers } : {}) })
      await ch.waitForConfirms()
    },
    async count (queue: string): Promise<number> {
      return (await ch.checkQueue(queue)).messageCount
    },
    /** Takes every message now in `queue` (acked: removed). */
    async drain (queue: string): Promise<Array<{ body: string, raw: Buffer, messageId: string | undefined, headers: Record<string, unknown> }>> {
      const out: Array<{ body: string, raw: Buffer, messageId: string | undefined, headers: Record<string, unknown> }> = []
      for (;;) {
        const msg = await ch.get(queue, { noAck: true })
        if (msg === false) return out
        out.push({ body: msg.content.toString(), raw: msg.content, messageId: msg.properties.messageId as string | undefined, headers: msg.properties.headers ?? {} })
      }
    }
  }
}

async function startInventory (t: Teardown, dir: string, options: Partial<TwoPhaseParticipantOptions>): Promise<Inventory> {
  const inv = await buildInventory(dir, { amqpOptions: LINK, inDoubtAfterMs: 600_000, ...options })
  t.teardown(() => inv.app.close())
  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  return inv
}

async function prepared (app: FastifyInstance, id: string, secret?: string): Promise<void> {
  const res = await app.inject(callback('/2pc/prepare', prepareBody(id, 2), secret))
  if (res.json().vote !== 'yes') throw new Error(`prepare of ${id} answered ${res.body}`)
}

t.test('without amqpUrl: HTTP only, said once at start', async t => {
  const lines: string[] = []
  const logger = pino({ level: 'info' }, new Writable({ write (chunk, _enc, done) { lines.push(String(chunk)); done() } }))
  const inv = await buildInventory(t.testdir(), { logger })
  t.teardown(() => inv.app.close())
  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  t.equal(inv.app.twoPhase.amqpStatus(), undefined)
  const said = lines.filter(line => line.includes('WITHOUT RabbitMQ'))
  t.equal(said.length, 1, 'one line says the participant runs without RabbitMQ')
})

t.test('a bad amqpUrl or amqpPrefix is refused at register', async t => {
  await t.rejects(buildInventory(t.testdir(), { amqpUrl: 'http://127.0.0.1:5672' }), { code: 'TWOPC_INVALID_OPTION' })
  await t.rejects(buildInventory(t.testdir(), { amqpUrl: amqpUrl(), amqpPrefix: 'bad prefix' }), { code: 'TWOPC_INVALID_OPTION' })
})

t.test('decision notices: applied once, acked to the coordinator; poison and heuristic ones dead-lettered once', async t => {
  if (!(await requireRabbit(t))) return
  const prefix = testPrefix('t')
  const broker = await brokerFor(t, prefix)
  const { names } = broker
  const inv = await startInventory(t, t.testdir(), { amqpUrl: amqpUrl(), amqpPrefix: prefix })
  const status = () => inv.app.twoPhase.amqpStatus()!
  await waitFor('the link', () => status().connected)

  const committed = txid()
  const neverPrepared = txid()
  const abortedUnknown = txid()
  await prepared(inv.app, committed)
  t.same(inv.stock('apple'), { available: 8, reserved: 2 })

  await broker.publish(Buffer.from('{not json'), 'garbage')
  await broker.publish({ txid: committed, participant: 'payment', decision: 'commit' }, 'wrong-participant')
  await broker.publish({ txid: committed, participant: 'inventory', decision: 'commit' }, 'first')
  await broker.publish({ txid: committed, participant: 'inventory', decision: 'commit' }, 'duplicate')
  await broker.publish({ txid: neverPrepared, participant: 'inventory', decision: 'commit' }, 'unknown-commit')
  await broker.publish({ txid: abortedUnknown, participant: 'inventory', decision: 'abort' }, 'unknown-abort')

  const queue = names.participantQueue('inventory')
  const dlq = names.deadLetterQueue(queue)
  await waitFor('every notice handled', async () => status().received >= 6 && await broker.count(dlq) === 3 && await broker.count(names.acksQueue) === 3)
  t.equal(await broker.count(queue), 0, 'the participant queue is empty')

  t.equal(inv.calls.commit, 1, 'the commit handler ran once for two commit notices')
  t.equal(inv.app.twoPhase.stateOf(committed), 'committed')
  t.same(inv.stock('apple'), { available: 8, reserved: 0 }, 'the reservation is spent once')
  t.equal(inv.app.twoPhase.stateOf(neverPrepared), 'none', 'a commit of an unknown transaction applies nothing')
  t.equal(inv.app.twoPhase.stateOf(abortedUnknown), 'tombstone', 'an abort of an unknown transaction leaves a tombstone')
  t.equal((await inv.app.inject(callback('/2pc/prepare', prepareBody(abortedUnknown)))).json().vote, 'no', 'so a late prepare votes no')

  const dead = await broker.drain(dlq)
  t.same(dead.map(m => m.messageId).sort(), ['garbage', 'unknown-commit', 'wrong-participant'], 'each poison or heuristic notice dead-lettered exactly once')
  const acks = (await broker.drain(names.acksQueue)).map(m => JSON.parse(m.body) as AckNotice)
  t.same(acks.sort((a, b) => a.txid.localeCompare(b.txid) || 0), [
    { txid: committed, participant: 'inventory', decision: 'commit' },
    { txid: committed, participant: 'inventory', decision: 'commit' },
    { txid: abortedUnknown, participant: 'inventory', decision: 'abort' }
  ].sort((a, b) => a.txid.localeCompare(b.txid)), 'an ack for each applied (or repeated) decision, none for the rest')
  t.match(status(), { received: 6, applied: 2, repeated: 1, deadLettered: 3, failed: 0, acksPublished: 3, ackPublishFailures: 0 },
    'six deliveries for six messages: nothing was redelivered')

  // The same counts in the participant's metrics, and the notices' callbacks by source.
  const metrics = await inv.app.twoPhase.metrics!.metrics()
  const series = (name: string): number | undefined => {
    const line = metrics.split('\n').find(l => l.startsWith(name + ' '))
    return line === undefined ? undefined : Number(line.slice(name.length + 1))
  }
  t.equal(series('twopc_participant_amqp_notices_total{result="applied",participant="inventory"}'), 2)
  t.equal(series('twopc_participant_amqp_notices_total{result="repeated",participant="inventory"}'), 1)
  t.equal(series('twopc_participant_amqp_notices_total{result="dead_lettered",participant="inventory"}'), 3)
  t.equal(series('twopc_participant_amqp_acks_total{result="published",participant="inventory"}'), 3)
  t.equal(series('twopc_participant_callbacks_total{kind="commit",source="amqp",outcome="ok",participant="inventory"}'), 2)
  t.equal(series('twopc_participant_callbacks_total{kind="commit",source="amqp",outcome="tx_unknown",participant="inventory"}'), 1)
  t.equal(series('twopc_participant_callbacks_total{kind="abort",source="amqp",outcome="ok",participant="inventory"}'), 1)
})

t.test('with a secret: forged, replayed and legacy-signed notices and events are refused (dead-lettered, counted); signed ones are applied, however old, and acks go out signed', async t => {
  if (!(await requireRabbit(t))) return
  const prefix = testPrefix('t')
  const broker = await brokerFor(t, prefix)
  const { names } = broker
  const inv = await startInventory(t, t.testdir(), { amqpUrl: amqpUrl(), amqpPrefix: prefix, secret: SECRET })
  const status = () => inv.app.twoPhase.amqpStatus()!
  await waitFor('the link and its first re-check', () => status().connected && status().rechecks === 1)

  const id = txid()
  const old = txid()
  await prepared(inv.app, id, SECRET)
  await prepared(inv.app, old, SECRET)
  t.same(inv.stock('apple'), { available: 6, reserved: 4 })

  const commit = Buffer.from(JSON.stringify({ txid: id, participant: 'inventory', decision: 'commit' }))
  const abort = Buffer.from(JSON.stringify({ txid: id, participant: 'inventory', decision: 'abort' }))
  const sig = (value: unknown): Record<string, unknown> => ({ [SIGNATURE_HEADER]: value })
  // Anyone who can publish on the vhost, without the secret, or with a signature for something else:
  await broker.publish(commit, 'unsigned')
  await broker.publish(abort, 'unsigned-straight-to-the-queue', undefined, true)
  await broker.publish(commit, 'wrong-secret', sig(signBody('not-the-secret', 'amqp.decision', commit)))
  await broker.publish(commit, 'garbage-signature', sig('t=1,v2=nope'))
  await broker.publish(commit, 'bytes-signature', sig(Buffer.from(signBody(SECRET, 'amqp.decision', commit))))
  await broker.publish(commit, 'legacy-v1', sig(signBodyV1(SECRET, commit)))
  // A genuine ack (same body shape as a notice) republished onto the decision queue:
  await broker.publish(abort, 'ack-as-notice', sig(signBody(SECRET, 'amqp.ack', abort)))
  // The HTTP callback's signature over the same bytes:
  await broker.publish(commit, 'http-commit-signature', sig(signBody(SECRET, 'commit', commit)))
  // Signed for another body:
  await broker.publish(commit, 'signature-of-another-body', sig(signBody(SECRET, 'amqp.decision', abort)))
  const forged = ['ack-as-notice', 'bytes-signature', 'garbage-signature', 'http-commit-signature', 'legacy-v1', 'signature-of-another-body', 'unsigned', 'unsigned-straight-to-the-queue', 'wrong-secret']

  const queue = names.participantQueue('inventory')
  const dlq = names.deadLetterQueue(queue)
  await waitFor('every forged notice refused', async () => status().rejected === forged.length && await broker.count(dlq) === forged.length, 15_000, { state: status })
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared', 'no forged notice committed or aborted the prepared transaction')
  t.same(inv.calls, { prepare: 2, commit: 0, abort: 0 }, 'no handler ran')
  t.same(inv.stock('apple'), { available: 6, reserved: 4 })
  t.equal(await broker.count(names.acksQueue), 0, 'nothing acked')
  const dead = await broker.drain(dlq)
  t.same(dead.map(m => m.messageId).sort(), forged, 'each forged notice dead-lettered once, as sent')
  t.same(dead.find(m => m.messageId === 'unsigned')?.raw, commit)

  // A forged coordinator.started does not start a re-check (its private queue has no dead-letter queue: dropped).
  const event = Buffer.from(JSON.stringify({ type: 'coordinator.started', coordinatorId: 'c1', at: Date.now() }))
  await broker.publishEvent(event, 'event-unsigned')
  await broker.publishEvent(event, 'event-signed-as-notice', sig(signBody(SECRET, 'amqp.decision', event)))
  await waitFor('the forged events refused', () => status().rejected === forged.length + 2, 15_000, { state: status })
  t.equal(status().rechecks, 1, 'no re-check from a forged event')
  await broker.publishEvent(event, 'event-signed', sig(signBody(SECRET, 'amqp.event', event)))
  await waitFor('the signed event', () => status().rechecks === 2, 15_000, { state: status })

  // Genuine notices: applied, acked with a signature for amqp.ack. One was signed an hour ago
  // (a participant down for an hour still accepts what waited in its queue).
  await broker.publish(commit, 'signed', sig(signBody(SECRET, 'amqp.decision', commit)))
  const oldCommit = Buffer.from(JSON.stringify({ txid: old, participant: 'inventory', decision: 'commit' }))
  await broker.publish(oldCommit, 'signed-an-hour-ago', sig(signBody(SECRET, 'amqp.decision', oldCommit, Date.now() - 3_600_000)))
  await waitFor('both applied and acked', async () => status().acksPublished === 2 && await broker.count(names.acksQueue) === 2, 15_000, { state: status })
  t.equal(inv.app.twoPhase.stateOf(id), 'committed')
  t.equal(inv.app.twoPhase.stateOf(old), 'committed')
  t.same(inv.stock('apple'), { available: 6, reserved: 0 })
  const acks = await broker.drain(names.acksQueue)
  for (const ack of acks) {
    t.ok(verifyBrokerMessage(SECRET, 'amqp.ack', ack.headers, ack.raw).ok, `ack ${ack.messageId ?? ''} signed for amqp.ack over its exact bytes`)
    t.match(verifyBrokerMessage(SECRET, 'amqp.decision', ack.headers, ack.raw), { ok: false, reason: 'mismatch' }, 'and not usable as a notice')
  }
  t.equal(await broker.count(dlq), 0, 'nothing more dead-lettered')
  t.match(status(), { rejected: forged.length + 2, deadLettered: 0, applied: 2, failed: 0 })

  const metrics = await inv.app.twoPhase.metrics!.metrics()
  const series = (name: string): number | undefined => {
    const line = metrics.split('\n').find(l => l.startsWith(name + ' '))
    return line === undefined ? undefined : Number(line.slice(name.length + 1))
  }
  const rejected = (kind: string, reason: string): number | undefined =>
    series(`twopc_participant_amqp_rejected_total{kind="${kind}",reason="${reason}",participant="inventory"}`)
  t.equal(rejected('decision', 'missing'), 2)
  t.equal(rejected('decision', 'mismatch'), 4)
  t.equal(rejected('decision', 'malformed'), 2)
  t.equal(rejected('decision', 'legacy-scheme'), 1)
  t.equal(rejected('event', 'missing'), 1)
  t.equal(rejected('event', 'mismatch'), 1)
})

t.test('a handler that throws: the notice is requeued, then applied once it succeeds', async t => {
  if (!(await requireRabbit(t))) return
  const prefix = testPrefix('t')
  const broker = await brokerFor(t, prefix)
  const inv = await startInventory(t, t.testdir(), { amqpUrl: amqpUrl(), amqpPrefix: prefix })
  const status = () => inv.app.twoPhase.amqpStatus()!
  await waitFor('the link', () => status().connected)
  const id = txid()
  await prepared(inv.app, id)
  inv.behaviour.commitThrows = true
  await broker.publish({ txid: id, participant: 'inventory', decision: 'commit' }, 'n1')
  await waitFor('two failed attempts', () => status().failed >= 2)
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared', 'nothing applied while the handler throws')
  t.same(inv.stock('apple'), { available: 8, reserved: 2 })
  inv.behaviour.commitThrows = false
  await waitFor('the commit', () => inv.app.twoPhase.stateOf(id) === 'committed' && status().acksPublished === 1)
  t.same(inv.stock('apple'), { available: 8, reserved: 0 })
  t.equal(await broker.count(broker.names.deadLetterQueue(broker.names.participantQueue('inventory'))), 0, 'a failing handler is not poison')
})

t.test('coordinator.started makes the participant re-check its in-doubt transactions', async t => {
  if (!(await requireRabbit(t))) return
  const prefix = testPrefix('t')
  await brokerFor(t, prefix)
  const dir = t.testdir()
  const coordinatorOptions = { dbPath: join(dir, 'coordinator.db'), coordinatorId: 'c1', amqpUrl: amqpUrl(), amqpPrefix: prefix }
  let coordinator = await buildCoordinator(coordinatorOptions)
  t.teardown(() => coordinator.close())
  await coordinator.listen({ port: 0, host: '127.0.0.1' })
  const { port } = coordinator.server.address() as { port: number }
  // Its own coordinator.started is out before the participant starts listening for events.
  await waitFor('the first coordinator.started published', async () => {
    const ready = (await coordinator.inject('/readyz')).json()
    return ready.ready === true && ready.amqp.connected === true && ready.amqp.outboxDepth === 0
  })

  const inv = await startInventory(t, dir, { amqpUrl: amqpUrl(), amqpPrefix: prefix, coordinatorUrl: `http://127.0.0.1:${port}` })
  const status = () => inv.app.twoPhase.amqpStatus()!
  await waitFor('the link and its first re-check', () => status().connected && status().rechecks === 1)
  await inv.app.twoPhase.recover() // the start-up passes are over (passes are serialized)

  // Prepared after every automatic pass: only the periodic re-check (in 10 min) or a notice can resolve it.
  const id = txid('c1')
  await prepared(inv.app, id)
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
  t.equal(inv.app.twoPhase.inDoubt().length, 1)

  // The coordinator restarts (same log, same port): its recovery publishes coordinator.started;
  // it never issued this id's decision, so it answers abort (presumed abort).
  await coordinator.close()
  coordinator = await buildCoordinator(coordinatorOptions)
  await coordinator.listen({ port, host: '127.0.0.1' })
  await waitFor('the in-doubt transaction resolved', () => inv.app.twoPhase.stateOf(id) === 'aborted')
  t.equal(status().rechecks, 2, 'one more re-check, from the event')
  t.equal(status().connects, 1, 'the participant\'s link never reconnected: the event did it')
  t.equal(inv.calls.abort, 1)
  t.same(inv.stock('apple'), { available: 10, reserved: 0 }, 'the reservation is released')
})

t.test('a broker cut: the participant reconnects, consumes what queued meanwhile and re-checks its in-doubt transactions', async t => {
  if (!(await requireRabbit(t))) return
  const prefix = testPrefix('t')
  const broker = await brokerFor(t, prefix)
  const { names } = broker
  const u = new URL(amqpUrl())
  const proxy = await startTcpProxy({ target: { host: u.hostname, port: Number(u.port === '' ? 5672 : u.port) } })
  t.teardown(() => proxy.close())
  const dir = t.testdir()
  const coordinator = await buildCoordinator({ dbPath: join(dir, 'coordinator.db'), coordinatorId: 'c1' })
  t.teardown(() => coordinator.close())
  const coordinatorUrl = await listenLocal(coordinator)

  const inv = await startInventory(t, dir, { amqpUrl: amqpUrlVia(proxy.port), amqpPrefix: prefix, coordinatorUrl })
  const status = () => inv.app.twoPhase.amqpStatus()!
  await waitFor('the link', () => status().connected && status().rechecks === 1)
  await inv.app.twoPhase.recover()
  const toCommit = txid('c1')
  await prepared(inv.app, toCommit)

  proxy.cut()
  await waitFor('the link to notice the cut', () => !status().connected)
  // While cut: a decision queues up for it, and another transaction becomes in doubt.
  await broker.publish({ txid: toCommit, participant: 'inventory', decision: 'commit' }, 'during-cut')
  const inDoubt = txid('c1')
  await prepared(inv.app, inDoubt)
  t.equal(await broker.count(names.participantQueue('inventory')), 1, 'the notice waits in the queue')
  t.equal(inv.app.twoPhase.stateOf(toCommit), 'prepared')
  t.equal(status().received, 0)

  proxy.restore()
  await waitFor('the queued commit applied and acked', () => inv.app.twoPhase.stateOf(toCommit) === 'committed' && status().acksPublished === 1, 15_000, { state: status })
  await waitFor('the reconnect re-check to resolve the in-doubt one', () => inv.app.twoPhase.stateOf(inDoubt) === 'aborted')
  t.ok(status().connects >= 2, 'reconnected')
  t.ok(status().rechecks >= 2, 'the reconnect triggered a re-check')
  t.equal(inv.calls.commit, 1)
  t.equal(inv.calls.abort, 1)
  t.same(inv.stock('apple'), { available: 8, reserved: 0 })
  const acks = (await broker.drain(names.acksQueue)).map(m => JSON.parse(m.body) as AckNotice)
  t.same(acks, [{ txid: toCommit, participant: 'inventory', decision: 'commit' }])

  // Still consuming after the restore.
  const later = txid('c1')
  await prepared(inv.app, later)
  await broker.publish({ txid: later, participant: 'inventory', decision: 'commit' }, 'after-restore')
  await waitFor('a notice after the restore', () => inv.app.twoPhase.stateOf(later) === 'committed')
  t.equal(inv.calls.commit, 2)
})
