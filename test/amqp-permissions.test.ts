/**
 * The RabbitMQ permissions README.md documents ("RabbitMQ permissions"), applied for real with
 * rabbitmqctl on a vhost and users of the test's own (deleted at the end): the coordinator and a
 * participant (the SDK, `declareTopology: false`) do their whole job with exactly those
 * permissions — notice in, ack out, events — and the participant's user cannot publish a
 * decision or an event, reach a queue through the default exchange, read another participant's
 * queue, route another participant's notices into its own queue, or delete the acks queue.
 * The commands are rendered from `coordinatorPermissions` / `participantPermissions`, and the
 * README must show the same commands for the default names.
 *
 * Needs rabbitmqctl on the broker's machine (run as root): skipped, loudly, without it; failed under CI=true.
 */
import t from 'tap'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import amqp from 'amqplib'
import {
  amqpNames, coordinatorPermissions, participantPermissions, signBody, SIGNATURE_HEADER, type AmqpNames, type AmqpPermissions
} from '@fastify-2pc/protocol'
import { declareParticipantQueue } from '@fastify-2pc/amqp'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import { createCoordinatorClient } from '@fastify-2pc/participant-sdk'
import { buildService, readService } from './fixtures/sdk-services.js'
import { RABBITMQCTL_INSTALL, amqpUrl, amqpUrlAs, rabbitmqctl, requireRabbit, type TapLike } from './support/rabbit.js'
import { missingTool } from './kit/tools.js'
import { waitFor } from './kit/wait.js'
import { listenLocal } from './kit/port.js'

t.setTimeout(180_000)

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const SECRET = 'amqp-permissions-secret-0123'

function setPermissions (vhost: string, user: string, p: AmqpPermissions): string[][] {
  const out = [['set_permissions', '-p', vhost, user, p.configure, p.write, p.read]]
  if (p.topic !== undefined) out.push(['set_topic_permissions', '-p', vhost, user, p.topic.exchange, p.topic.write, p.topic.read])
  return out
}

/** As a shell line, the way the README shows it. */
function shell (args: string[]): string {
  return ['rabbitmqctl', ...args.map(a => /^[A-Za-z0-9_./-]+$/.test(a) ? a : `'${a}'`)].join(' ')
}

t.test('the README shows the commands the permissions functions render for the default names', async t => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  const names = amqpNames()
  const lines = [
    ...setPermissions('twopc', 'twopc-coordinator', coordinatorPermissions(names)),
    ...setPermissions('twopc', 'twopc-inventory', participantPermissions(names, 'inventory'))
  ].map(shell)
  for (const line of lines) t.ok(readme.includes(line), `README has: ${line}`)
  const withMessages = coordinatorPermissions(names, ['orders'])
  t.ok(readme.includes(`'${withMessages.write}'`), `README has the coordinator's write pattern with a message exchange: ${withMessages.write}`)
})

t.test('with the documented permissions: the coordinator and a participant work, and the participant cannot forge, eavesdrop or delete', async t => {
  if (!(await requireRabbit(t))) return
  const u = new URL(amqpUrl())
  const probe = await rabbitmqctl(['list_vhosts'])
  if (!probe.ok || !['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)) {
    missingTool(t as unknown as TapLike, `needs rabbitmqctl for the local broker (${probe.ok ? `AMQP_URL is not local: ${u.hostname}` : probe.stderr.trim().split('\n')[0] || 'unavailable'})`, RABBITMQCTL_INSTALL)
    return
  }
  const id = randomBytes(4).toString('hex')
  const vhost = `twopc-perm-${id}`
  const users = { coordinator: `twopc-perm-${id}-coordinator`, inventory: `twopc-perm-${id}-inventory` }
  const passwords = { coordinator: randomBytes(12).toString('hex'), inventory: randomBytes(12).toString('hex') }
  const names: AmqpNames = amqpNames()
  const ctl = async (args: string[]): Promise<void> => {
    const r = await rabbitmqctl(args)
    if (!r.ok) throw new Error(`rabbitmqctl ${args.slice(0, 3).join(' ')} failed: ${r.stderr}`)
  }
  // Registered first: runs last, after every connection below closed.
  t.teardown(async () => {
    await rabbitmqctl(['delete_vhost', vhost])
    await rabbitmqctl(['delete_user', users.coordinator])
    await rabbitmqctl(['delete_user', users.inventory])
  })
  await ctl(['add_vhost', vhost])
  await ctl(['add_user', users.coordinator, passwords.coordinator])
  await ctl(['add_user', users.inventory, passwords.inventory])
  for (const args of [
    ...setPermissions(vhost, users.coordinator, coordinatorPermissions(names)),
    ...setPermissions(vhost, users.inventory, participantPermissions(names, 'inventory'))
  ]) await ctl(args)
  const coordinatorUrl = amqpUrlAs(users.coordinator, passwords.coordinator, vhost)
  const inventoryUrl = amqpUrlAs(users.inventory, passwords.inventory, vhost)

  // The coordinator (declares the topology) and, as the coordinator's user, payment's queue.
  const dir = t.testdir()
  const coordinator = await buildCoordinator({
    dbPath: join(dir, 'coordinator.db'),
    coordinatorId: 'c1',
    secret: SECRET,
    amqpUrl: coordinatorUrl,
    retryBaseMs: 5_000,
    retryMaxMs: 600_000,
    phase2TimeoutMs: 2_000,
    logger: false
  })
  t.teardown(() => coordinator.close())
  const httpUrl = await listenLocal(coordinator)
  await waitFor('the coordinator ready on RabbitMQ, coordinator.started out', async () => {
    const ready = (await coordinator.inject('/readyz')).json()
    return ready.ready === true && ready.amqp.connected === true && ready.amqp.outboxDepth === 0
  })
  const asCoordinator = await amqp.connect(coordinatorUrl)
  asCoordinator.on('error', () => {})
  t.teardown(() => asCoordinator.close().catch(() => {}))
  const coordinatorCh = await asCoordinator.createConfirmChannel()
  await declareParticipantQueue(coordinatorCh, names, 'payment')

  // The participant: its commit callback always fails, so only RabbitMQ can bring the decision.
  const inventory = await buildService({
    name: 'inventory',
    dbPath: join(dir, 'inventory.db'),
    coordinatorUrl: httpUrl,
    secret: SECRET,
    amqpUrl: inventoryUrl,
    amqpOptions: { declareTopology: false, reconnectInitialDelayMs: 50, reconnectMaxDelayMs: 300, retryDelayMs: 100 },
    beforeRoutes: app => {
      app.addHook('onRequest', async (request, reply) => {
        if (request.url.endsWith('/commit')) await reply.code(503).send({ code: 'DOWN' })
      })
    }
  })
  t.teardown(() => inventory.app.close())
  await inventory.app.listen({ port: 0, host: '127.0.0.1' })
  const status = () => inventory.app.twoPhase.amqpStatus()!
  await waitFor('the participant on RabbitMQ', () => status().connected && status().rechecks === 1, 20_000, { state: status })

  const client = createCoordinatorClient({ url: httpUrl })
  t.teardown(() => client.close())
  const tx = await client.begin({ timeoutMs: 10_000 })
  tx.enlist({ name: 'inventory', url: `http://127.0.0.1:${(inventory.app.server.address() as { port: number }).port}/2pc`, payload: { item: 'apple', amount: 3 } })
  const outcome = await tx.commit()
  t.equal(outcome.state, 'committed')
  await waitFor('the notice applied and the ack recorded over RabbitMQ', async () => {
    const view = (await coordinator.inject(`/v1/transactions/${outcome.id}`)).json()
    return view.participants[0].ack === 'acked'
  }, 20_000, { state: status })
  t.same(readService(join(dir, 'inventory.db')).log, { [outcome.id]: 'committed' })
  t.match(status(), { applied: 1, acksPublished: 1, rejected: 0, deadLettered: 0 }, 'in through its queue, out through the acks exchange')

  // The events queue works too: a coordinator.started (published by the coordinator's user) makes it re-check.
  const event = Buffer.from(JSON.stringify({ type: 'coordinator.started', coordinatorId: 'c1', at: Date.now() }))
  coordinatorCh.publish(names.eventsExchange, '', event, { headers: { [SIGNATURE_HEADER]: signBody(SECRET, 'amqp.event', event) } })
  await coordinatorCh.waitForConfirms()
  await waitFor('the re-check from the event', () => status().rechecks === 2, 20_000, { state: status })

  // What the participant's user must not be able to do: each on a fresh channel (a refusal closes it).
  const asInventory = await amqp.connect(inventoryUrl)
  asInventory.on('error', () => {})
  t.teardown(() => asInventory.close().catch(() => {}))
  /** `op` must be refused for `resource` (e.g. `exchange 'twopc.decisions'`, `topic '#'`). */
  const refused = async (what: string, resource: string, op: (ch: amqp.ConfirmChannel) => Promise<unknown>): Promise<void> => {
    const ch = await asInventory.createConfirmChannel()
    // The broker closes the channel with 403 ACCESS_REFUSED; a publish's confirm only hears "channel closed".
    let channelError = ''
    ch.on('error', (err: Error) => { channelError = err.message })
    try {
      await op(ch)
      t.fail(`${what}: allowed`)
      await ch.close().catch(() => {})
    } catch (err) {
      await waitFor('the channel error', () => channelError !== '' || /ACCESS_REFUSED/.test(String((err as Error).message)), 5000).catch(() => {})
      t.ok(`${String((err as Error).message)} ${channelError}`.includes(`ACCESS_REFUSED - access to ${resource} in vhost '${vhost}'`), `${what}: refused (${resource})`)
    }
  }
  const publish = (ch: amqp.ConfirmChannel, exchange: string, routingKey: string): Promise<void> => new Promise((resolve, reject) => {
    ch.publish(exchange, routingKey, Buffer.from('{}'), {}, (err: unknown) => { if (err === null || err === undefined) resolve(); else reject(err) })
  })
  await refused('publish to the decisions exchange', `exchange '${names.decisionsExchange}'`, ch => publish(ch, names.decisionsExchange, names.participantRoutingKey('inventory')))
  await refused('publish to the events exchange', `exchange '${names.eventsExchange}'`, ch => publish(ch, names.eventsExchange, ''))
  await refused('publish into its own queue through the default exchange', 'exchange \'amq.default\'', ch => publish(ch, '', names.participantQueue('inventory')))
  await refused('consume another participant\'s queue', `queue '${names.participantQueue('payment')}'`, ch => ch.consume(names.participantQueue('payment'), () => {}))
  await refused('read the acks queue', `queue '${names.acksQueue}'`, ch => ch.get(names.acksQueue))
  await refused('bind its queue to another participant\'s notices', `topic '${names.participantRoutingKey('payment')}' in exchange '${names.decisionsExchange}'`, ch => ch.bindQueue(names.participantQueue('inventory'), names.decisionsExchange, names.participantRoutingKey('payment')))
  await refused('bind its queue to every notice', `topic '#' in exchange '${names.decisionsExchange}'`, ch => ch.bindQueue(names.participantQueue('inventory'), names.decisionsExchange, '#'))
  await refused('delete the acks queue', `queue '${names.acksQueue}'`, ch => ch.deleteQueue(names.acksQueue))
  await refused('delete the decisions exchange', `exchange '${names.decisionsExchange}'`, ch => ch.deleteExchange(names.decisionsExchange))
  await refused('declare the topology (declareTopology: true needs configure on it)', `exchange '${names.decisionsExchange}'`, ch => ch.assertExchange(names.decisionsExchange, 'topic', { durable: true }))
  // And what it does need, it has: publishing an ack.
  const ok = await asInventory.createConfirmChannel()
  await publish(ok, names.acksExchange, names.acksRoutingKey).then(() => t.pass('publish to the acks exchange: allowed'), err => t.fail(`ack publish refused: ${String(err)}`))
  await ok.close().catch(() => {})
})
