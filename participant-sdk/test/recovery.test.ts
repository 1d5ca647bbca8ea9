import t from 'tap'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { BATCH, buildInventory, callback, prepareBody, txid } from './helpers.js'
import { waitFor } from '../../test/kit/wait.js'

/** A real HTTP server standing in for the coordinator's decision endpoint. */
async function decisionServer (t: { teardown: (fn: () => unknown) => void }, token?: string): Promise<{ app: FastifyInstance, url: string, decisions: Map<string, string>, asked: string[], auth: Array<string | undefined> }> {
  const decisions = new Map<string, string>()
  const asked: string[] = []
  const auth: Array<string | undefined> = []
  const app = Fastify()
  app.get<{ Params: { id: string } }>('/v1/transactions/:id/decision', async (request, reply) => {
    asked.push(request.params.id)
    auth.push(request.headers.authorization)
    if (token !== undefined && request.headers.authorization !== `Bearer ${token}`) {
      return await reply.code(401).send({ statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized', message: 'token' })
    }
    return { decision: decisions.get(request.params.id) ?? 'pending' }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return { app, url: `http://127.0.0.1:${port}`, decisions, asked, auth }
}

t.test('after listen, prepared transactions are resolved from the coordinator, each applied once', async t => {
  const coordinator = await decisionServer(t, 'tok')
  const inv = await buildInventory(t.testdir(), {
    coordinatorUrl: coordinator.url, coordinatorToken: 'tok', inDoubtAfterMs: 50, recoveryBaseDelayMs: 20, recoveryMaxDelayMs: 40
  })
  t.teardown(() => inv.app.close())
  const [toCommit, toAbort, stillPending] = [txid(), txid(), txid()]
  for (const id of [toCommit, toAbort, stillPending]) {
    t.same((await inv.app.inject(callback('/2pc/prepare', prepareBody(id, 2)))).json(), { vote: 'yes', batch: BATCH })
  }
  t.same(inv.stock('apple'), { available: 4, reserved: 6 })
  t.equal(inv.app.twoPhase.inDoubt().length, 3)
  coordinator.decisions.set(toCommit, 'commit')
  coordinator.decisions.set(toAbort, 'abort')
  t.equal(coordinator.asked.length, 0, 'nothing is asked before the server listens')

  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  await waitFor('the first pass', () => inv.app.twoPhase.stateOf(toCommit) === 'committed' && inv.app.twoPhase.stateOf(toAbort) === 'aborted')
  t.same(inv.stock('apple'), { available: 6, reserved: 2 }, 'one reservation spent, one released, one still held')
  t.equal(inv.app.twoPhase.stateOf(stillPending), 'prepared')
  t.ok(coordinator.auth.every(header => header === 'Bearer tok'), 'the coordinator token is sent')

  // The pending one is asked again on its backoff and resolved once the coordinator decides.
  await waitFor('a repeated question', () => coordinator.asked.filter(id => id === stillPending).length >= 2)
  const [entry] = inv.app.twoPhase.inDoubt()
  t.match(entry, { txid: stillPending, lastResult: 'pending' })
  t.ok((entry?.attempts ?? 0) >= 1)
  coordinator.decisions.set(stillPending, 'commit')
  await waitFor('the repeat pass', () => inv.app.twoPhase.stateOf(stillPending) === 'committed')
  t.same(inv.stock('apple'), { available: 6, reserved: 0 })
  t.same(inv.calls, { prepare: 3, commit: 2, abort: 1 }, 'each decision applied exactly once')
  t.same(inv.app.twoPhase.inDoubt(), [])

  // A late callback for an already resolved transaction is a no-op.
  t.same((await inv.app.inject(callback('/2pc/commit', { txid: toCommit }))).json(), { ok: true })
  t.equal(inv.calls.commit, 2)
})

t.test('an unreachable coordinator leaves transactions in doubt; recover() resolves them when it is back', async t => {
  const inv = await buildInventory(t.testdir(), { coordinatorUrl: 'http://127.0.0.1:9', inDoubtAfterMs: 60_000 })
  t.teardown(() => inv.app.close())
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  const report = await inv.app.twoPhase.recover()
  t.same(report, { checked: 1, committed: 0, aborted: 0, pending: 0, failed: 1 })
  const [entry] = inv.app.twoPhase.inDoubt()
  t.equal(entry?.txid, id)
  t.equal(entry?.attempts, 1)
  t.type(entry?.lastResult, 'string')
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared', 'never guessed: still prepared')
})

t.test('a coordinator that does not know the id (404) is not taken as a decision', async t => {
  const coordinator = await decisionServer(t)
  coordinator.app.log.level = 'silent'
  const inv = await buildInventory(t.testdir(), { coordinatorUrl: coordinator.url })
  t.teardown(() => inv.app.close())
  // An id the stub answers with 404 through a route it does not have (another coordinator).
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  await coordinator.app.close()
  const other = Fastify()
  other.get('/v1/transactions/:id/decision', async (_req, reply) => await reply.code(404).send({ statusCode: 404, code: 'TX_NOT_FOUND', error: 'Not Found', message: 'not ours' }))
  await other.listen({ port: Number(new URL(coordinator.url).port), host: '127.0.0.1' })
  t.teardown(() => other.close())
  const report = await inv.app.twoPhase.recover()
  t.match(report, { checked: 1, failed: 1 })
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
  t.match(inv.app.twoPhase.inDoubt()[0], { lastResult: 'not ours' })
})

t.test('a commit handler failing during recovery keeps the record prepared and is retried', async t => {
  const coordinator = await decisionServer(t)
  const inv = await buildInventory(t.testdir(), { coordinatorUrl: coordinator.url })
  t.teardown(() => inv.app.close())
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  coordinator.decisions.set(id, 'commit')
  inv.behaviour.commitThrows = true
  t.match(await inv.app.twoPhase.recover(), { checked: 1, failed: 1 })
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
  inv.behaviour.commitThrows = false
  t.match(await inv.app.twoPhase.recover(), { checked: 1, committed: 1 })
  t.equal(inv.app.twoPhase.stateOf(id), 'committed')
})

t.test('close stops the recovery loop: no question is asked after close', async t => {
  const coordinator = await decisionServer(t)
  const inv = await buildInventory(t.testdir(), { coordinatorUrl: coordinator.url, inDoubtAfterMs: 1, recoveryBaseDelayMs: 20, recoveryMaxDelayMs: 20 })
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  await waitFor('a few questions', () => coordinator.asked.length >= 3)
  const started = Date.now()
  await inv.app.close()
  t.ok(Date.now() - started < 1000, 'close is prompt')
  const askedAtClose = coordinator.asked.length
  await new Promise(resolve => setTimeout(resolve, 150))
  t.equal(coordinator.asked.length, askedAtClose)
})

t.test('settled records are pruned after the retention time; prepared ones never are', async t => {
  const inv = await buildInventory(t.testdir(), { retentionMs: 1 })
  t.teardown(() => inv.app.close())
  const [settled, prepared] = [txid(), txid()]
  await inv.app.inject(callback('/2pc/abort', { txid: settled }))
  await inv.app.inject(callback('/2pc/prepare', prepareBody(prepared)))
  const count = (): number => (inv.db.prepare('SELECT count(*) AS n FROM twopc_participant_log').get() as { n: number }).n
  t.equal(count(), 2)
  await new Promise(resolve => setTimeout(resolve, 5))
  const { SqliteRecords } = await import('../src/store/sqlite.js')
  const records = new SqliteRecords(inv.db, 'inventory')
  t.teardown(() => records.close())
  t.equal(records.prune(Date.now() - 1, 100), 1)
  t.equal(inv.app.twoPhase.stateOf(settled), 'none')
  t.equal(inv.app.twoPhase.stateOf(prepared), 'prepared')
})
