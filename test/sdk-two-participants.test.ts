/**
 * The SDK against the real coordinator: two participants, each with its own SQLite file,
 * driven by the initiator client; after commit or abort both databases agree with the decision.
 */
import t from 'tap'
import type { Test } from 'tap'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import { createCoordinatorClient, CoordinatorError } from '@fastify-2pc/participant-sdk'
import { buildService, readService } from './fixtures/sdk-services.js'
import { waitFor } from './kit/wait.js'
import { listenLocal } from './kit/port.js'

const SECRET = 'sdk-test-secret-0123456789'
const TOKEN = 'sdk-test-token-0123456789'

async function setup (t: Test) {
  const dir = t.testdir()
  const coordinator = await buildCoordinator({ dbPath: join(dir, 'coordinator.db'), coordinatorId: 'c1', secret: SECRET, apiToken: TOKEN, retryBaseMs: 20, retryMaxMs: 200 })
  const coordinatorUrl = await listenLocal(coordinator)
  const services: Array<{ app: FastifyInstance, dbPath: string, url: string }> = []
  for (const name of ['inventory', 'payment'] as const) {
    const dbPath = join(dir, `${name}.db`)
    const { app } = await buildService({ name, dbPath, coordinatorUrl, secret: SECRET, coordinatorToken: TOKEN })
    await app.listen({ port: 0, host: '127.0.0.1' })
    services.push({ app, dbPath, url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}/2pc` })
  }
  const client = createCoordinatorClient({ url: coordinatorUrl, token: TOKEN })
  t.teardown(async () => {
    await client.close()
    for (const s of services) await s.app.close()
    await coordinator.close()
  })
  const [inventory, payment] = services as [typeof services[number], typeof services[number]]
  const status = async (id: string): Promise<{ state: string, completed: boolean, participants: Array<{ name: string, vote: string | null, ack: string }> }> => {
    const res = await coordinator.inject({ url: `/v1/transactions/${id}`, headers: { authorization: `Bearer ${TOKEN}` } })
    return res.json()
  }
  const until = async (what: string, check: () => boolean | Promise<boolean>): Promise<void> => { await waitFor(what, check, 5000) }
  return { client, coordinatorUrl, inventory, payment, status, until }
}

t.test('commit between two SDK participants: both databases spend their holds', async t => {
  const { client, inventory, payment, status, until } = await setup(t)
  const tx = await client.begin({ timeoutMs: 5000 })
  tx.enlist({ name: 'inventory', url: inventory.url, payload: { item: 'apple', amount: 3 } })
  tx.enlist({ name: 'payment', url: payment.url, payload: { item: 'alice', amount: 30 } })
  const outcome = await tx.commit()
  t.equal(outcome.state, 'committed')
  t.match(outcome.id, /^c1\./)
  // Phase 2 goes on after the answer: wait until both participants acked.
  await until('both acks', async () => (await status(outcome.id)).completed)
  const inv = readService(inventory.dbPath)
  const pay = readService(payment.dbPath)
  t.same(inv.balance.apple, { available: 7, held: 0, spent: 3 })
  t.same(pay.balance.alice, { available: 70, held: 0, spent: 30 })
  t.same([inv.holds, pay.holds], [0, 0])
  t.same(inv.calls, { prepare: 1, commit: 1 })
  t.same(pay.calls, { prepare: 1, commit: 1 })
  t.same([inv.log[outcome.id], pay.log[outcome.id]], ['committed', 'committed'])
})

t.test('abort between two SDK participants: a no vote releases the other one\'s hold', async t => {
  const { client, inventory, payment, status, until } = await setup(t)
  const tx = await client.begin({ timeoutMs: 5000 })
  tx.enlist({ name: 'inventory', url: inventory.url, payload: { item: 'apple', amount: 3 } })
  tx.enlist({ name: 'payment', url: payment.url, payload: { item: 'alice', amount: 1000 } }) // more than alice has
  const outcome = await tx.commit()
  t.equal(outcome.state, 'aborted')
  await until('phase 2 done', async () => (await status(outcome.id)).completed || readService(inventory.dbPath).log[outcome.id] === 'aborted')
  const inv = readService(inventory.dbPath)
  const pay = readService(payment.dbPath)
  t.same(inv.balance.apple, { available: 10, held: 0, spent: 0 })
  t.same(pay.balance.alice, { available: 100, held: 0, spent: 0 })
  t.same([inv.holds, pay.holds], [0, 0])
  t.equal(pay.log[outcome.id], 'aborted', 'the no vote is recorded')
  t.equal(inv.log[outcome.id], 'aborted')
  t.equal(inv.calls.commit ?? 0, 0)
  t.same(pay.calls, {}, 'a no vote rolls back all the handler wrote (its call count too): nothing to undo')
  t.equal(inv.calls.abort, 1, 'the yes voter released its hold once')
})

t.test('an explicit abort after start: nothing is prepared, nothing changes', async t => {
  const { client, inventory, payment } = await setup(t)
  const tx = await client.begin({ timeoutMs: 5000 })
  const id = await tx.start()
  tx.enlist({ name: 'inventory', url: inventory.url, payload: { item: 'apple', amount: 3 } })
  t.same(await tx.abort(), { id, state: 'aborted' })
  t.same(readService(inventory.dbPath).balance.apple, { available: 10, held: 0, spent: 0 })
  t.same(readService(payment.dbPath).calls, {})
})

t.test('start() then commit: enlistments sent one by one reach the same outcome', async t => {
  const { client, inventory, payment, status, until } = await setup(t)
  const tx = await client.begin({ timeoutMs: 5000, metadata: { order: 1 } })
  const id = await tx.start()
  tx.enlist({ name: 'inventory', url: inventory.url, payload: { item: 'apple', amount: 2 } })
  tx.enlist({ name: 'payment', url: payment.url, payload: { item: 'alice', amount: 20 } })
  t.same(await tx.commit(), { id, state: 'committed' })
  await until('both acks', async () => (await status(id)).completed)
  t.same(readService(inventory.dbPath).balance.apple, { available: 8, held: 0, spent: 2 })
  t.same(readService(payment.dbPath).balance.alice, { available: 80, held: 0, spent: 20 })
})

t.test('one-phase: a single opted-in participant commits in its prepare', async t => {
  const { client, inventory, status, until } = await setup(t)
  const tx = await client.begin({ timeoutMs: 5000 })
  tx.enlist({ name: 'inventory', url: inventory.url, payload: { item: 'apple', amount: 4 }, onePhase: true })
  const outcome = await tx.commit()
  t.equal(outcome.state, 'committed')
  await until('completed', async () => (await status(outcome.id)).completed)
  const inv = readService(inventory.dbPath)
  t.same(inv.balance.apple, { available: 6, held: 0, spent: 4 })
  t.same(inv.calls, { prepare: 1, commit: 1 }, 'prepare and commit ran once each')
  t.equal(inv.log[outcome.id], 'committed')
})

t.test('coordinator errors reach the initiator as typed CoordinatorErrors', async t => {
  const { client } = await setup(t)
  const tx = await client.begin({ timeoutMs: 5000 })
  tx.enlist({ name: 'inventory', url: 'http://192.0.2.1:1/2pc' }) // not loopback: outside the default allowlist
  const err = await tx.commit().catch((e: unknown) => e)
  t.ok(err instanceof CoordinatorError)
  t.match(err, { code: 'PARTICIPANT_URL_NOT_ALLOWED', statusCode: 403 }, 'the coordinator\'s own code and status are carried')
  t.equal(tx.status, 'failed')
})

t.test('many transactions at once: callbacks go out batched, each gets its own outcome, both databases agree', async t => {
  const { client, coordinatorUrl, inventory, payment, status, until } = await setup(t)
  // 40 orders for 1 apple each; inventory has 10: exactly 10 commit, 30 abort on its no vote.
  const outcomes = await Promise.all(Array.from({ length: 40 }, async () => {
    const tx = await client.begin({ timeoutMs: 5000 })
    tx.enlist({ name: 'inventory', url: inventory.url, payload: { item: 'apple', amount: 1 } })
    tx.enlist({ name: 'payment', url: payment.url, payload: { item: 'alice', amount: 1 } })
    return await tx.commit()
  }))
  const committed = outcomes.filter(o => o.state === 'committed')
  t.equal(committed.length, 10, 'as many commits as there were apples')
  t.equal(outcomes.filter(o => o.state === 'aborted').length, 30)
  await until('phase 2 of every transaction', async () => (await Promise.all(outcomes.map(async o => (await status(o.id)).completed))).every(Boolean))
  const inv = readService(inventory.dbPath)
  const pay = readService(payment.dbPath)
  t.same(inv.balance.apple, { available: 0, held: 0, spent: 10 })
  t.same(pay.balance.alice, { available: 90, held: 0, spent: 10 })
  t.same([inv.holds, pay.holds], [0, 0])
  for (const o of outcomes) {
    t.equal(inv.log[o.id], o.state, `inventory agrees on ${o.id}`)
    t.equal(pay.log[o.id], o.state, `payment agrees on ${o.id}`)
  }
  // Batching happened on both sides (the counts of the histograms), and each call ran once.
  const coordinatorMetrics = await (await fetch(`${coordinatorUrl}/metrics`)).text()
  const batches = Number(/^twopc_callback_batch_size_count (\d+)/m.exec(coordinatorMetrics)?.[1] ?? 0)
  const batched = Number(/^twopc_callback_batch_size_sum (\d+)/m.exec(coordinatorMetrics)?.[1] ?? 0)
  t.ok(batches > 0 && batched > batches, `the coordinator sent ${batched} callbacks in ${batches} batch requests`)
  const participantMetrics = await inventory.app.twoPhase.metrics?.getSingleMetricAsString('twopc_participant_batch_calls') ?? ''
  t.match(participantMetrics, /twopc_participant_batch_calls_count\{[^}]*\} [1-9]/, 'inventory served batch requests')
  // Handler calls: a no vote rolls back what its handler wrote, its call count included.
  t.same(inv.calls, { prepare: 10, commit: 10 }, 'inventory: ten holds, ten spent; the no voters have nothing to undo')
  t.same(pay.calls, { prepare: 40, commit: 10, abort: 30 }, 'payment: each decision applied exactly once')
})
