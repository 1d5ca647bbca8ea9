import t from 'tap'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import { CoordinatorLog, OUTBOX_STATS_SQL } from '../src/log/store.js'
import { PRUNE_OUTBOX_SQL } from '../src/log/sqlite/statements.js'
import { startCoordinator, startParticipant, waitFor, logFile } from './support/participant.js'

t.test('retention prunes completed transactions only, in bounded batches', async t => {
  const c = await startCoordinator(t, { retentionMs: 50, pruneIntervalMs: 3_600_000 })
  const ok = await startParticipant(t)
  const stuck = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const done = (await c.api.post('/v1/transactions', { participants: [{ name: 'ok', url: ok.url }], commit: true })).body
  const unacked = (await c.api.post('/v1/transactions', { participants: [{ name: 'ok', url: ok.url }, { name: 'stuck', url: stuck.url }], commit: true })).body
  const active = (await c.api.post('/v1/transactions', { timeoutMs: 60_000 })).body
  t.equal(done.state, 'committed')
  t.equal(unacked.state, 'committed')
  await waitFor(async () => (await c.api.get(`/v1/transactions/${done.id as string}`)).body.completed === true)

  const pruner = c.app.coordinator.pruner
  const deleted = await waitFor(() => pruner.run(), 5000, 'the completed transaction ages past the retention')
  t.equal(deleted, 1, 'only the completed one')
  t.equal((await c.api.get(`/v1/transactions/${done.id as string}`)).status, 404)
  t.same((await c.api.get(`/v1/transactions/${done.id as string}/decision`)).body, { decision: 'abort' }, 'presumed abort for a pruned id: nobody is in doubt about it')
  t.equal((await c.api.get(`/v1/transactions/${unacked.id as string}`)).body.completed, false, 'unacked: kept')
  t.equal((await c.api.get(`/v1/transactions/${active.id as string}`)).body.state, 'active', 'undecided: kept')
  t.equal(pruner.run(), 0)

  const db = new Database(c.dbPath, { readonly: true })
  t.teardown(() => db.close())
  t.equal(db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM participants WHERE tx_id = ?').get(done.id)?.n, 0, 'its rows went with it')
  t.equal(db.prepare<[string], { n: number }>('SELECT count(*) AS n FROM decisions WHERE tx_id = ?').get(done.id)?.n, 0)
})

t.test('retention and the outbox counts seek by index: their cost is what they touch, not the outbox size', async t => {
  // Published rows stay in the outbox until retention: with transactional messages that is
  // every message of the retention window. Before migration 7 retention's delete (every minute)
  // and the parked count (every /readyz, every scrape) read the whole table on the event loop.
  const path = join(t.testdir(), 'c.db')
  const log = new CoordinatorLog(path)
  t.teardown(() => log.close())
  const plan = (sql: string): string[] => (logFile(path).prepare(`EXPLAIN QUERY PLAN ${sql}`).all(1, 1) as Array<{ detail: string }>).map(r => r.detail)
  const prune = plan(PRUNE_OUTBOX_SQL)
  t.ok(prune.some(d => /^SEARCH outbox USING (COVERING )?INDEX outbox_published \((published_at>\? AND )?published_at<\?\)$/.test(d)), prune.join('; '))
  const stats = logFile(path).prepare(`EXPLAIN QUERY PLAN ${OUTBOX_STATS_SQL}`).all().map(r => (r as { detail: string }).detail)
  t.notOk(stats.some(d => /^SCAN outbox$/.test(d)), stats.join('; '))
  t.ok(stats.some(d => /outbox_parked/.test(d)), 'the parked count reads the parked rows only')
})
