/**
 * Metrics (prom-client registry per participant, optional route), traceparent into handlers and
 * log lines, the initiator client's traceparent, and retention. Real SQLite, real HTTP.
 */
import t from 'tap'
import { join } from 'node:path'
import Fastify from 'fastify'
import Database from 'better-sqlite3'
import pino from 'pino'
import { Registry } from 'prom-client'
import { request } from 'undici'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import { createCoordinatorClient, twoPhaseParticipant } from '../src/index.js'
import type { TransactionContext } from '../src/index.js'
import { BATCH, buildInventory, callback, prepareBody, SECRET, txid } from './helpers.js'
import { waitFor } from '../../test/kit/wait.js'
import { listenLocal } from '../../test/kit/port.js'

const E2E_SECRET = 'observability-secret-0123456789'
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
const TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`

/** The value of one series in Prometheus text, or undefined when absent. */
function sample (text: string, series: string): number | undefined {
  const line = text.split('\n').find(l => l.startsWith(series + ' '))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

t.test('metrics: prepared gauge and oldest age from the log, callbacks by kind/source/outcome, flush histograms', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const registry = inv.app.twoPhase.metrics
  if (registry === undefined) throw new Error('metrics are on by default')
  const [held, committed, tomb] = [txid(), txid(), txid()]
  await inv.app.inject(callback('/2pc/prepare', prepareBody(held)))
  await inv.app.inject(callback('/2pc/prepare', prepareBody(committed)))
  await inv.app.inject(callback('/2pc/commit', { txid: committed }))
  await inv.app.inject(callback('/2pc/abort', { txid: tomb }))
  await inv.app.inject(callback('/2pc/commit', { txid: txid() }))
  inv.behaviour.prepare = () => 'no'
  await inv.app.inject(callback('/2pc/prepare', prepareBody(txid())))
  inv.behaviour.commitThrows = true
  await inv.app.inject(callback('/2pc/commit', { txid: held }))
  // An old prepared record: the age gauge reads the log.
  inv.db.prepare('UPDATE twopc_participant_log SET updated_at = ? WHERE txid = ?').run(Date.now() - 90_000, held)

  const text = await registry.metrics()
  const p = 'participant="inventory"'
  t.equal(sample(text, `twopc_participant_prepared{${p}}`), 1)
  const age = sample(text, `twopc_participant_prepared_oldest_age_seconds{${p}}`) ?? 0
  t.ok(age >= 89 && age < 120, `oldest prepared age ${age}`)
  t.equal(sample(text, `twopc_participant_callbacks_total{kind="prepare",source="http",outcome="yes",${p}}`), 2)
  t.equal(sample(text, `twopc_participant_callbacks_total{kind="prepare",source="http",outcome="no",${p}}`), 1)
  t.equal(sample(text, `twopc_participant_callbacks_total{kind="commit",source="http",outcome="ok",${p}}`), 1)
  t.equal(sample(text, `twopc_participant_callbacks_total{kind="commit",source="http",outcome="tx_unknown",${p}}`), 1)
  t.equal(sample(text, `twopc_participant_callbacks_total{kind="commit",source="http",outcome="handler_failed",${p}}`), 1)
  t.equal(sample(text, `twopc_participant_callbacks_total{kind="abort",source="http",outcome="ok",${p}}`), 1)
  const stats = inv.app.twoPhase.flushStats()
  t.equal(sample(text, `twopc_participant_log_flush_batch_size_count{${p}}`), stats.flushes)
  t.equal(sample(text, `twopc_participant_log_flush_batch_size_sum{${p}}`), stats.events)
  t.equal(sample(text, `twopc_participant_log_flush_duration_seconds_count{${p}}`), stats.flushes)
  t.equal(stats.events, 7)
  t.ok(stats.syncs > 0, 'a file database in WAL mode is synced by the SDK itself (fdatasync of the WAL)')
  t.equal(sample(text, `twopc_participant_log_sync_duration_seconds_count{${p}}`), stats.syncs)
  t.equal(sample(text, `twopc_participant_log_sync_batch_size_sum{${p}}`), stats.events, 'every callback was made durable by a sync')

  // The host merges it into its own registry (no name collides: no default metrics here).
  const host = new Registry()
  const merged = Registry.merge([host, registry])
  t.match(await merged.metrics(), /twopc_participant_prepared\{participant="inventory"\} 1/)
  t.equal(inv.app.printRoutes().includes('metrics'), false, 'no route unless metricsRoute')
})

t.test('metricsRoute serves the registry without a signature; metrics: false turns it all off', async t => {
  const inv = await buildInventory(t.testdir(), { secret: SECRET, metricsRoute: true })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const res = await request(`${base}/2pc/metrics`)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/plain/)
  t.match(await res.body.text(), /twopc_participant_prepared\{participant="inventory"\} 0/)
  const unsigned = await request(`${base}/2pc/prepare`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(prepareBody(txid())) })
  t.equal(unsigned.statusCode, 401, 'the callbacks still need their signature')
  await unsigned.body.dump()

  const custom = await buildInventory(t.testdir(), { metricsRoute: '/internal/2pc-metrics' })
  t.teardown(() => custom.app.close())
  t.equal((await custom.app.inject('/internal/2pc-metrics')).statusCode, 200)

  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(twoPhaseParticipant, { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', metrics: false, prepare: () => 'yes', commit: () => {}, abort: () => {} })
  t.equal(app.twoPhase.metrics, undefined)
  t.equal((await app.inject(callback('/2pc/prepare', prepareBody(txid())))).json().vote, 'yes', 'works without metrics')
  const bad = Fastify()
  await t.rejects(async () => { await bad.register(twoPhaseParticipant, { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', metrics: false, metricsRoute: true, prepare: () => 'yes', commit: () => {}, abort: () => {} }).ready() }, { code: 'TWOPC_INVALID_OPTION' })
  await bad.close()
})

t.test('metrics: in-doubt recoveries by result and the callbacks they apply', async t => {
  const coordinator = Fastify()
  const decisions = new Map<string, string>()
  coordinator.get<{ Params: { id: string } }>('/v1/transactions/:id/decision', async request => ({ decision: decisions.get(request.params.id) ?? 'pending' }))
  await coordinator.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => coordinator.close())
  const inv = await buildInventory(t.testdir(), { coordinatorUrl: `http://127.0.0.1:${(coordinator.server.address() as { port: number }).port}` })
  t.teardown(() => inv.app.close())
  const [yes, waiting] = [txid(), txid()]
  await inv.app.inject(callback('/2pc/prepare', prepareBody(yes)))
  await inv.app.inject(callback('/2pc/prepare', prepareBody(waiting)))
  decisions.set(yes, 'commit')
  t.same(await inv.app.twoPhase.recover(), { checked: 2, committed: 1, aborted: 0, pending: 1, failed: 0 })
  const text = await (inv.app.twoPhase.metrics as Registry).metrics()
  t.equal(sample(text, 'twopc_participant_recovery_queries_total{result="committed",participant="inventory"}'), 1)
  t.equal(sample(text, 'twopc_participant_recovery_queries_total{result="pending",participant="inventory"}'), 1)
  t.equal(sample(text, 'twopc_participant_callbacks_total{kind="commit",source="recovery",outcome="ok",participant="inventory"}'), 1)
  t.equal(sample(text, 'twopc_participant_prepared{participant="inventory"}'), 1)
})

t.test('traceparent: handed to the handlers, logged with the txid on the callback\'s lines', async t => {
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'debug' }, { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } })
  const seen: Array<{ handler: string, traceparent: string | undefined }> = []
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const app = Fastify()
  t.teardown(() => app.close())
  const record = (handler: string) => (tx: TransactionContext): void => { seen.push({ handler, traceparent: tx.traceparent }) }
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: 'http://127.0.0.1:9',
    logger,
    prepare (tx, payload) {
      record('prepare')(tx)
      if ((payload as { fail?: boolean } | undefined)?.fail === true) throw new Error('boom in prepare')
      return 'yes'
    },
    commit: record('commit'),
    abort: record('abort')
  })
  const base = await listenLocal(app)
  const send = async (path: string, body: unknown, traceparent?: string): Promise<unknown> => {
    const res = await request(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(traceparent !== undefined ? { traceparent } : {}) }, body: JSON.stringify(body) })
    return await res.body.json()
  }
  const [a, b, c] = [txid(), txid(), txid()]
  t.same(await send('/2pc/prepare', prepareBody(a), TRACEPARENT), { vote: 'yes', batch: BATCH })
  t.same(await send('/2pc/commit', { txid: a }, TRACEPARENT.toUpperCase()), { ok: true })
  t.same(await send('/2pc/prepare', { ...prepareBody(b), payload: { fail: true } }, TRACEPARENT), { vote: 'no', reason: 'prepare handler failed', batch: BATCH })
  t.same(await send('/2pc/prepare', prepareBody(c), 'not-a-traceparent'), { vote: 'yes', batch: BATCH })
  t.same(seen, [
    { handler: 'prepare', traceparent: TRACEPARENT },
    { handler: 'commit', traceparent: TRACEPARENT },
    { handler: 'prepare', traceparent: TRACEPARENT },
    { handler: 'prepare', traceparent: undefined }
  ])
  const failure = lines.find(l => l.msg === 'prepare handler failed: voting no, its writes rolled back')
  t.match(failure, { txid: b, traceId: TRACE_ID, spanId: '00f067aa0ba902b7' })
  t.ok(typeof failure?.reqId === 'string', 'and the request id')
  const applied = lines.filter(l => l.msg === '2pc event applied')
  t.match(applied.find(l => l.txid === a && l.event === 'prepare'), { traceId: TRACE_ID, outcome: 'yes', source: 'http' })
  t.match(applied.find(l => l.txid === a && l.event === 'commit'), { traceId: TRACE_ID, outcome: 'ok' })
  const untraced = applied.find(l => l.txid === c)
  t.ok(untraced !== undefined && !('traceId' in untraced), 'an invalid traceparent is ignored')
})

t.test('the initiator client sends begin({ traceparent }) (or its traceparent option) on every request of the transaction', async t => {
  const seen: Array<{ url: string, traceparent: string | undefined }> = []
  const stub = Fastify()
  const id = 'c1.0123456789abcdefghjkmnpqrs'
  stub.post('/*', async (request, reply) => {
    seen.push({ url: request.url, traceparent: request.headers.traceparent as string | undefined })
    if (request.url === '/v1/transactions') {
      return (request.body as { commit?: boolean }).commit === true ? { id, state: 'committed' } : await reply.code(201).send({ id, state: 'active', expiresAt: Date.now() + 1000 })
    }
    if (request.url.endsWith('/commit')) return { id, state: 'committed' }
    return await reply.code(201).send({})
  })
  await stub.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => stub.close())
  const url = `http://127.0.0.1:${(stub.server.address() as { port: number }).port}`
  const client = createCoordinatorClient({ url })
  t.teardown(() => client.close())
  const enlist = { name: 'inventory', url: 'http://127.0.0.1:3001/2pc' }

  const oneShot = await client.begin({ traceparent: TRACEPARENT })
  t.equal(oneShot.traceparent, TRACEPARENT)
  await oneShot.enlist(enlist).commit()
  const interactive = await client.begin({ traceparent: TRACEPARENT })
  await interactive.start()
  interactive.enlist(enlist).publish({ exchange: 'orders', routingKey: 'placed', body: {} })
  await interactive.commit()
  t.same(seen.map(s => s.traceparent), Array(5).fill(TRACEPARENT), 'one-shot, begin, enlist, message, commit')
  seen.length = 0
  await (await client.begin()).enlist(enlist).commit()
  t.same(seen, [{ url: '/v1/transactions', traceparent: undefined }], 'none given: none sent')
  await t.rejects(client.begin({ traceparent: '00-abc' }), { code: 'CLIENT_INVALID_ARGUMENT' })

  const fromContext = createCoordinatorClient({ url, traceparent: () => TRACEPARENT })
  t.teardown(() => fromContext.close())
  seen.length = 0
  await (await fromContext.begin()).enlist(enlist).commit()
  t.same(seen.map(s => s.traceparent), [TRACEPARENT], 'from the client option')
})

t.test('end to end: the initiator\'s trace reaches the participant\'s handlers through the real coordinator', async t => {
  const dir = t.testdir()
  const coordinator = await buildCoordinator({ dbPath: join(dir, 'coordinator.db'), coordinatorId: 'c1', secret: E2E_SECRET })
  await coordinator.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => coordinator.close())
  const coordinatorUrl = `http://127.0.0.1:${(coordinator.server.address() as { port: number }).port}`
  const traces: Array<{ handler: string, traceparent: string | undefined }> = []
  const db = new Database(join(dir, 'participant.db'))
  t.teardown(() => db.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl,
    secret: E2E_SECRET,
    prepare: tx => { traces.push({ handler: 'prepare', traceparent: tx.traceparent }); return 'yes' },
    commit: tx => { traces.push({ handler: 'commit', traceparent: tx.traceparent }) },
    abort: () => {}
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const client = createCoordinatorClient({ url: coordinatorUrl })
  t.teardown(() => client.close())
  const tx = await client.begin({ traceparent: TRACEPARENT, timeoutMs: 5000 })
  tx.enlist({ name: 'inventory', url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}/2pc` })
  const outcome = await tx.commit()
  t.equal(outcome.state, 'committed')
  await waitFor('commit applied', () => app.twoPhase.stateOf(outcome.id) === 'committed')
  t.same(traces.map(x => x.handler), ['prepare', 'commit'])
  for (const { handler, traceparent } of traces) {
    t.match(traceparent, new RegExp(`^00-${TRACE_ID}-[0-9a-f]{16}-01$`), `${handler}: the initiator's trace id`)
    t.not(traceparent, TRACEPARENT, `${handler}: a child span of the initiator's`)
  }
})

t.test('retention: settled records and tombstones older than retentionMs are pruned in bounded batches; prepared and young ones are kept', async t => {
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } })
  const retentionMs = 24 * 60 * 60 * 1000
  const inv = await buildInventory(t.testdir(), { retentionMs, logger })
  t.teardown(() => inv.app.close())
  t.notOk(lines.some(l => String(l.msg).startsWith('retentionMs is shorter')), 'a day is long enough: no warning')
  const old = Date.now() - retentionMs - 60_000
  const insert = inv.db.prepare('INSERT INTO twopc_participant_log (participant, txid, state, reason, created_at, updated_at) VALUES (?, ?, ?, NULL, ?, ?)')
  const states = ['committed', 'aborted', 'read-only', 'tombstone'] as const
  inv.db.transaction(() => {
    for (let i = 0; i < 1200; i++) insert.run('inventory', txid(), states[i % 4], old, old)
  })()
  const oldPrepared = txid()
  insert.run('inventory', oldPrepared, 'prepared', old, old)
  const youngTombstone = txid()
  await inv.app.inject(callback('/2pc/abort', { txid: youngTombstone }))
  const otherParticipant = txid()
  insert.run('payment', otherParticipant, 'committed', old, old)

  t.same([inv.app.twoPhase.prune(), inv.app.twoPhase.prune(), inv.app.twoPhase.prune(), inv.app.twoPhase.prune()], [500, 500, 200, 0], 'at most 500 per batch')
  t.equal(inv.app.twoPhase.stateOf(oldPrepared), 'prepared', 'an in-doubt record is never pruned')
  t.equal(inv.app.twoPhase.stateOf(youngTombstone), 'tombstone', 'a tombstone within the retention is kept')
  t.same((await inv.app.inject(callback('/2pc/prepare', prepareBody(youngTombstone)))).json(), { vote: 'no', reason: 'abort arrived before prepare', batch: BATCH }, 'and still refuses a late prepare')
  t.equal((inv.db.prepare("SELECT count(*) AS n FROM twopc_participant_log WHERE participant = 'payment'").get() as { n: number }).n, 1, 'another participant\'s records are its own business')
  t.equal(sample(await (inv.app.twoPhase.metrics as Registry).metrics(), 'twopc_participant_log_pruned_total{participant="inventory"}'), 1200)
})

t.test('retention: the recovery timer prunes on its own once the server listens; a too short retention is warned about', async t => {
  const lines: Array<Record<string, unknown>> = []
  const logger = pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } })
  const inv = await buildInventory(t.testdir(), { retentionMs: 1500, recoveryBaseDelayMs: 20, inDoubtAfterMs: 20, logger })
  t.teardown(() => inv.app.close())
  t.match(lines.find(l => String(l.msg).startsWith('retentionMs is shorter')), { level: 40, retentionMs: 1500 })
  const [settled, prepared] = [txid(), txid()]
  await inv.app.inject(callback('/2pc/abort', { txid: settled }))
  await inv.app.inject(callback('/2pc/prepare', prepareBody(prepared)))
  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  await new Promise(resolve => setTimeout(resolve, 100))
  t.equal(inv.app.twoPhase.stateOf(settled), 'tombstone', 'not before its retention')
  await waitFor('the tombstone pruned', () => inv.app.twoPhase.stateOf(settled) === 'none')
  t.equal(inv.app.twoPhase.stateOf(prepared), 'prepared')
})
