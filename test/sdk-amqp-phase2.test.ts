/**
 * A participant down during phase 2 (real coordinator, real RabbitMQ, real SQLite files):
 * the coordinator's commit callback fails, so it queues the decision on the participant's
 * queue; the participant comes back on ANOTHER port (HTTP phase 2 can never reach it: the
 * enlisted address stays dead) and unable to reach the coordinator over HTTP either (its
 * in-doubt recovery cannot help): only RabbitMQ can bring the decision in and carry the ack out.
 *
 * The second test crashes the restarted participant (TWOPC_CRASH_AT) between the local commit
 * of the notice and its AMQP ack: the broker redelivers it, the next start answers it as already
 * applied, and the ack still reaches the coordinator.
 */
import t from 'tap'
import type { Test } from 'tap'
import type { ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import amqp from 'amqplib'
import { amqpNames } from '@fastify-2pc/protocol'
import { topologyObjects } from '@fastify-2pc/amqp'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import { createCoordinatorClient } from '@fastify-2pc/participant-sdk'
import { buildService, readService } from './fixtures/sdk-services.js'
import { amqpUrl, cleanupPrefix, listBrokerNames, requireRabbit, testPrefix } from './support/rabbit.js'
import { startTcpProxy } from './support/tcp-proxy.js'
import { waitFor } from './kit/wait.js'
import { listeningPort, spawnNode, typeScriptLoader } from './kit/child.js'
import { listenLocal } from './kit/port.js'

// Two child processes that load TypeScript (slow, much slower on a loaded machine): more than
// the default per-file timeout of .taprc.
t.setTimeout(360_000)

const SECRET = 'sdk-amqp-phase2-secret-0123'
const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const FIXTURE = join(ROOT, 'test', 'fixtures', 'sdk-participant.ts')

interface Participant { name: string, ack: string, attempts: number, lastError?: string | null }

/**
 * Coordinator (RabbitMQ on, HTTP retries slow), payment (in-process, HTTP only) and a first
 * inventory (in-process) that dies the moment the commit callback reaches it.
 */
async function setup (t: Test) {
  const prefix = testPrefix('t')
  const names = amqpNames(prefix)
  const conn = await amqp.connect(amqpUrl())
  conn.on('error', () => {})
  const ch = await conn.createChannel()
  ch.on('error', () => {})
  // Teardowns run last-in first-out: this one, registered first, runs after everything closed.
  t.teardown(async () => {
    await conn.close().catch(() => {})
    const failed = await cleanupPrefix(topologyObjects(names, ['inventory', 'payment']))
    if (failed.length > 0) throw new Error(`could not delete ${failed.join(', ')}`)
    const left = await listBrokerNames(prefix)
    if (left !== undefined && left.queues.length + left.exchanges.length > 0) throw new Error(`left on the broker: ${JSON.stringify(left)}`)
  })
  /** Ready messages in a queue (0 while it does not exist yet). */
  const queued = async (queue: string): Promise<number> => {
    const probe = await conn.createChannel()
    probe.on('error', () => {})
    try {
      return (await probe.checkQueue(queue)).messageCount
    } catch {
      return 0
    } finally {
      await probe.close().catch(() => {})
    }
  }

  const dir = t.testdir()
  const coordinator = await buildCoordinator({
    dbPath: join(dir, 'coordinator.db'),
    coordinatorId: 'c1',
    secret: SECRET,
    amqpUrl: amqpUrl(),
    amqpPrefix: prefix,
    // The first phase-2 failure queues the notice at once; HTTP retries after that are slow
    // (and can never reach the restarted participant anyway).
    retryBaseMs: 5_000,
    retryMaxMs: 600_000,
    phase2TimeoutMs: 2_000
  })
  t.teardown(() => coordinator.close())
  const coordinatorUrl = await listenLocal(coordinator)
  await waitFor('the coordinator ready and on RabbitMQ', async () => {
    const ready = (await coordinator.inject('/readyz')).json()
    return ready.ready === true && ready.amqp.connected === true
  })
  const client = createCoordinatorClient({ url: coordinatorUrl })
  t.teardown(() => client.close())

  const paymentDb = join(dir, 'payment.db')
  const payment = await buildService({ name: 'payment', dbPath: paymentDb, coordinatorUrl, secret: SECRET })
  t.teardown(() => payment.app.close())
  await payment.app.listen({ port: 0, host: '127.0.0.1' })
  const paymentUrl = `http://127.0.0.1:${(payment.app.server.address() as { port: number }).port}/2pc`

  // The enlisted inventory address is a proxy: cut when the commit callback arrives, it stays
  // cut — nothing answers at that address again.
  const inventoryDb = join(dir, 'inventory.db')
  let commitCallbacks = 0
  let proxyTarget = 0
  const httpProxy = await startTcpProxy({ target: { host: '127.0.0.1', get port () { return proxyTarget } } })
  t.teardown(() => httpProxy.close())
  const first = await buildService({
    name: 'inventory',
    dbPath: inventoryDb,
    coordinatorUrl,
    secret: SECRET,
    beforeRoutes: app => {
      app.addHook('onRequest', async request => {
        if (!request.url.endsWith('/commit')) return
        commitCallbacks++
        httpProxy.cut() // the participant "dies" with the commit callback in flight
        throw new Error('participant down')
      })
    }
  })
  await first.app.listen({ port: 0, host: '127.0.0.1' })
  proxyTarget = (first.app.server.address() as { port: number }).port

  // A path to the coordinator that is down for the whole test: the restarted participant's
  // in-doubt recovery (HTTP) cannot resolve anything.
  const coordinatorPartition = await startTcpProxy({ target: { host: '127.0.0.1', port: 9 } })
  t.teardown(() => coordinatorPartition.close())
  coordinatorPartition.cut()

  const tx = await client.begin({ timeoutMs: 10_000 })
  tx.enlist({ name: 'inventory', url: `http://${httpProxy.address}/2pc`, payload: { item: 'apple', amount: 3 } })
  tx.enlist({ name: 'payment', url: paymentUrl, payload: { item: 'alice', amount: 30 } })
  const outcome = await tx.commit()
  const status = async (): Promise<{ state: string, participants: Participant[] }> =>
    (await coordinator.inject(`/v1/transactions/${outcome.id}`)).json()
  const participant = async (name: string): Promise<Participant | undefined> => (await status()).participants.find(p => p.name === name)

  return {
    prefix,
    names,
    coordinator,
    outcome,
    status,
    participant,
    queued,
    inventoryDb,
    paymentDb,
    first,
    coordinatorPartitionUrl: `http://${coordinatorPartition.address}`,
    commitCallbacks: () => commitCallbacks,
    httpProxy
  }
}

/** Phase 1 done, the inventory's commit callback lost, its notice queued; then the inventory is stopped. */
async function toParticipantDown (t: Test, s: Awaited<ReturnType<typeof setup>>): Promise<void> {
  t.equal(s.outcome.state, 'committed')
  await waitFor('payment acked over HTTP and the inventory commit failed', async () => {
    const [payment, inventory] = [await s.participant('payment'), await s.participant('inventory')]
    return payment?.ack === 'acked' && (inventory?.attempts ?? 0) >= 1
  }, 20_000, { state: s.status })
  t.equal(s.commitCallbacks(), 1, 'the commit callback reached the first inventory once, and was lost')
  await waitFor('the decision notice queued for the inventory', async () => await s.queued(s.names.participantQueue('inventory')) === 1)
  await s.first.app.close()
  const down = readService(s.inventoryDb)
  t.same(down.log, { [s.outcome.id]: 'prepared' }, 'the inventory is in doubt')
  t.same(down.calls, { prepare: 1 })
  t.match(await s.participant('inventory'), { ack: 'pending' })
}

async function checkApplied (t: Test, s: Awaited<ReturnType<typeof setup>>): Promise<void> {
  await waitFor('the coordinator to record the inventory ack', async () => (await s.participant('inventory'))?.ack === 'acked', 20_000, { state: s.status })
  const inventory = readService(s.inventoryDb)
  t.same(inventory.log, { [s.outcome.id]: 'committed' })
  t.same(inventory.calls, { prepare: 1, commit: 1 }, 'the commit applied exactly once')
  t.same(inventory.balance.apple, { available: 7, held: 0, spent: 3 })
  t.equal(inventory.holds, 0)
  t.same(readService(s.paymentDb).balance.alice, { available: 70, held: 0, spent: 30 }, 'both databases agree with the decision')
  t.equal(s.commitCallbacks(), 1, 'no commit callback ever reached an inventory again')
  t.equal(s.httpProxy.mode, 'cut', 'the enlisted address stayed dead: the ack came over RabbitMQ')
  t.equal(await s.queued(s.names.participantQueue('inventory')), 0, 'the notice is consumed')
  t.equal(await s.queued(s.names.acksQueue), 0, 'the coordinator consumed the ack')
  t.equal(await s.queued(s.names.deadLetterQueue(s.names.participantQueue('inventory'))), 0, 'nothing dead-lettered')
}

t.test('participant down during phase 2: the decision reaches it through its queue, the ack reaches the coordinator over RabbitMQ', async t => {
  if (!(await requireRabbit(t))) return
  const s = await setup(t)
  await toParticipantDown(t, s)

  const restarted = await buildService({
    name: 'inventory',
    dbPath: s.inventoryDb,
    coordinatorUrl: s.coordinatorPartitionUrl,
    secret: SECRET,
    amqpUrl: amqpUrl(),
    amqpPrefix: s.prefix,
    beforeRoutes: app => {
      app.addHook('onRequest', async request => { if (request.url.endsWith('/commit')) throw new Error('no commit callback expected here') })
    }
  })
  t.teardown(() => restarted.app.close())
  await restarted.app.listen({ port: 0, host: '127.0.0.1' })
  t.not((restarted.app.server.address() as { port: number }).port, s.httpProxy.port, 'listening on another port than the enlisted one')

  await checkApplied(t, s)
  t.match(restarted.app.twoPhase.amqpStatus(), { received: 1, applied: 1, repeated: 0, deadLettered: 0, acksPublished: 1 },
    'the commit came in as one notice over RabbitMQ and its ack went out there')
})

interface Child { process: ChildProcess, port: number, exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>, stderr: () => string }

async function startChild (env: Record<string, string>): Promise<Child> {
  const proc = spawnNode(FIXTURE, { name: 'participant', nodeArgs: typeScriptLoader(), cwd: ROOT, env: { TWOPC_CRASH_AT: '', ...env } })
  return { process: proc.child, port: await listeningPort(proc, 120_000), exited: proc.exited, stderr: proc.stderr }
}

t.test('restarted participant crashes after its local commit, before the AMQP ack: redelivered, applied once, acked', async t => {
  if (!(await requireRabbit(t))) return
  const s = await setup(t)
  const children: Child[] = []
  t.teardown(async () => {
    for (const child of children) child.process.kill('SIGKILL')
    await Promise.all(children.map(async child => await child.exited))
  })
  await toParticipantDown(t, s)

  const env = {
    SDK_NAME: 'inventory',
    SDK_DB: s.inventoryDb,
    SDK_PORT: '0',
    SDK_COORDINATOR_URL: s.coordinatorPartitionUrl,
    SDK_SECRET: SECRET,
    SDK_AMQP_URL: amqpUrl(),
    SDK_AMQP_PREFIX: s.prefix
  }
  const crashing = await startChild({ ...env, TWOPC_CRASH_AT: 'participant.after-local-commit-before-amqp-ack' })
  children.push(crashing)
  t.same((await crashing.exited).signal, 'SIGKILL', 'crashed at participant.after-local-commit-before-amqp-ack')
  t.match(crashing.stderr(), /crashing at participant\.after-local-commit-before-amqp-ack/)
  const crashed = readService(s.inventoryDb)
  t.same(crashed.log, { [s.outcome.id]: 'committed' }, 'the local commit is durable')
  t.same(crashed.calls, { prepare: 1, commit: 1 })
  t.match(await s.participant('inventory'), { ack: 'pending' }, 'no ack was sent')
  await waitFor('the unacked notice back in the queue', async () => await s.queued(s.names.participantQueue('inventory')) === 1)

  const second = await startChild(env)
  children.push(second)
  await checkApplied(t, s)
  t.equal(second.process.exitCode, null, 'the second start keeps running')
})
