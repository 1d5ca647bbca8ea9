/**
 * Crash tests: a participant process is SIGKILLed (by the test, or by TWOPC_CRASH_AT at a named
 * point) and started again on the same port and database. Whatever happens, its database ends
 * consistent with the coordinator's decision, with each handler applied exactly once.
 */
import t from 'tap'
import type { Test } from 'tap'
import type { ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { signBody } from '@fastify-2pc/protocol'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import type { CoordinatorOptions } from '@fastify-2pc/coordinator'
import { createCoordinatorClient } from '@fastify-2pc/participant-sdk'
import { buildService, readService } from './fixtures/sdk-services.js'
import { waitFor } from './kit/wait.js'
import { listeningPort, spawnNode, typeScriptLoader } from './kit/child.js'
import { listenLocal } from './kit/port.js'

const SECRET = 'sdk-crash-secret-0123456789'
const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const FIXTURE = join(ROOT, 'test', 'fixtures', 'sdk-participant.ts')

interface Child { process: ChildProcess, port: number, stderr: () => string, exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }> }

/** Starts the participant fixture as its own process; resolves once it listens. */
async function startParticipant (env: Record<string, string>): Promise<Child> {
  const proc = spawnNode(FIXTURE, { name: 'participant', nodeArgs: typeScriptLoader(), cwd: ROOT, env: { TWOPC_CRASH_AT: '', ...env } })
  return { process: proc.child, port: await listeningPort(proc, 20_000), exited: proc.exited, stderr: proc.stderr }
}

async function setup (t: Test, coordinatorOptions: Partial<CoordinatorOptions>) {
  const dir = t.testdir()
  const coordinator = await buildCoordinator({ dbPath: join(dir, 'coordinator.db'), coordinatorId: 'c1', secret: SECRET, ...coordinatorOptions })
  const coordinatorUrl = await listenLocal(coordinator)
  const paymentDb = join(dir, 'payment.db')
  const payment = await buildService({ name: 'payment', dbPath: paymentDb, coordinatorUrl, secret: SECRET })
  await payment.app.listen({ port: 0, host: '127.0.0.1' })
  const paymentUrl = `http://127.0.0.1:${(payment.app.server.address() as { port: number }).port}/2pc`
  const client = createCoordinatorClient({ url: coordinatorUrl })
  const children: Child[] = []
  t.teardown(async () => {
    for (const child of children) child.process.kill('SIGKILL')
    await Promise.all(children.map(async child => await child.exited))
    await client.close()
    await payment.app.close()
    await coordinator.close()
  })
  const inventoryDb = join(dir, 'inventory.db')
  const start = async (env: Record<string, string> = {}, port = 0): Promise<Child> => {
    const child = await startParticipant({ SDK_NAME: 'inventory', SDK_DB: inventoryDb, SDK_PORT: String(port), SDK_COORDINATOR_URL: coordinatorUrl, SDK_SECRET: SECRET, ...env })
    children.push(child)
    return child
  }
  const commitOrder = async (inventoryPort: number) => {
    const tx = await client.begin({ timeoutMs: 5000 })
    tx.enlist({ name: 'inventory', url: `http://127.0.0.1:${inventoryPort}/2pc`, payload: { item: 'apple', amount: 3 } })
    tx.enlist({ name: 'payment', url: paymentUrl, payload: { item: 'alice', amount: 30 } })
    return await tx.commit()
  }
  const decision = async (id: string): Promise<string> => (await client.decision(id)).decision
  return { coordinator, inventoryDb, paymentDb, start, commitOrder, decision }
}

t.test('SIGKILLed after voting yes, restarted: resolves the commit from the coordinator on its own, applied once', async t => {
  // Phase-2 retries an hour apart: within this test only the participant's own recovery can commit it.
  const { inventoryDb, paymentDb, start, commitOrder } = await setup(t, { retryBaseMs: 3_600_000, retryMaxMs: 3_600_000 })
  const first = await start({ SDK_STALL_COMMIT: '1' })
  const outcome = await commitOrder(first.port)
  t.equal(outcome.state, 'committed')
  await waitFor('payment committed', () => readService(paymentDb).log[outcome.id] === 'committed')

  // Voted yes, the commit callback is stuck in the network: in doubt. Kill it there.
  t.same(readService(inventoryDb).log, { [outcome.id]: 'prepared' })
  first.process.kill('SIGKILL')
  t.same((await first.exited).signal, 'SIGKILL')
  const afterCrash = readService(inventoryDb)
  t.same(afterCrash.balance.apple, { available: 7, held: 3, spent: 0 }, 'the hold survived the crash')
  t.same(afterCrash.calls, { prepare: 1 })

  const second = await start({}, first.port)
  await waitFor('inventory resolved', () => readService(inventoryDb).log[outcome.id] === 'committed')
  const resolved = readService(inventoryDb)
  t.same(resolved.balance.apple, { available: 7, held: 0, spent: 3 })
  t.same(resolved.calls, { prepare: 1, commit: 1 }, 'commit applied exactly once')
  t.equal(resolved.holds, 0)

  // The coordinator's own phase-2 retry arrives later: idempotent, still applied once.
  const body = JSON.stringify({ txid: outcome.id, participant: 'inventory' })
  const late = await request(`http://127.0.0.1:${second.port}/2pc/commit`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-2pc-signature': signBody(SECRET, 'commit', body) }, body
  })
  t.equal(late.statusCode, 200)
  t.same(await late.body.json(), { ok: true })
  t.same(readService(inventoryDb).calls, { prepare: 1, commit: 1 })
  t.same(readService(paymentDb).balance.alice, { available: 70, held: 0, spent: 30 }, 'both databases agree with the decision')
})

t.test('crash after the prepared record is durable but before the vote is sent: coordinator aborts, restart releases the hold once', async t => {
  const { inventoryDb, paymentDb, start, commitOrder } = await setup(t, { retryBaseMs: 3_600_000, retryMaxMs: 3_600_000 })
  const first = await start({ TWOPC_CRASH_AT: 'participant.after-prepare-before-reply' })
  const outcome = await commitOrder(first.port)
  t.equal(outcome.state, 'aborted', 'no vote received: presumed abort')
  t.same((await first.exited).signal, 'SIGKILL')
  t.same(readService(inventoryDb).log, { [outcome.id]: 'prepared' }, 'the participant is in doubt')

  await start({}, first.port)
  await waitFor('inventory resolved', () => readService(inventoryDb).log[outcome.id] === 'aborted')
  const inv = readService(inventoryDb)
  t.same(inv.balance.apple, { available: 10, held: 0, spent: 0 })
  t.same(inv.calls, { prepare: 1, abort: 1 })
  await waitFor('payment aborted', () => readService(paymentDb).log[outcome.id] === 'aborted')
  t.same(readService(paymentDb).balance.alice, { available: 100, held: 0, spent: 0 })
})

t.test('crash inside the local prepare transaction: nothing of it survives', async t => {
  const { inventoryDb, start, commitOrder } = await setup(t, { retryBaseMs: 3_600_000, retryMaxMs: 3_600_000 })
  const first = await start({ TWOPC_CRASH_AT: 'participant.in-prepare-before-local-commit' })
  const outcome = await commitOrder(first.port)
  t.equal(outcome.state, 'aborted')
  t.same((await first.exited).signal, 'SIGKILL')
  const inv = readService(inventoryDb)
  t.same(inv.log, {}, 'no participant record')
  t.same(inv.calls, {}, 'the handler\'s writes were never committed')
  t.same(inv.balance.apple, { available: 10, held: 0, spent: 0 })
})

t.test('crash after applying commit but before answering: the coordinator\'s retry is answered ok, nothing applied twice', async t => {
  const { coordinator, inventoryDb, start, commitOrder } = await setup(t, { retryBaseMs: 50, retryMaxMs: 300, retryBudget: 1000 })
  const first = await start({ TWOPC_CRASH_AT: 'participant.after-commit-before-reply' })
  const outcome = await commitOrder(first.port)
  t.equal(outcome.state, 'committed')
  t.same((await first.exited).signal, 'SIGKILL')
  t.same(readService(inventoryDb).log, { [outcome.id]: 'committed' })

  await start({}, first.port)
  await waitFor('the coordinator sees every ack', async () => {
    const res = await coordinator.inject(`/v1/transactions/${outcome.id}`)
    return (res.json() as { completed: boolean }).completed
  })
  const inv = readService(inventoryDb)
  t.same(inv.calls, { prepare: 1, commit: 1 })
  t.same(inv.balance.apple, { available: 7, held: 0, spent: 3 })
})
