/**
 * A commit decision outlives retention while a participant may not have applied it: a committed
 * transaction pruned with a participant that never acked (an operator `resolve`d it) leaves a
 * compact decision record, and the decision endpoint answers `commit` from it (not the presumed
 * abort a participant restored from a backup would otherwise hear). A fully acked one leaves
 * nothing. Only an operator forgets a record (`POST /v1/transactions/:id/forget`, audited).
 * Real coordinator on a real SQLite file, real participant servers, restarts on the same file.
 */
import t, { type Test } from 'tap'
import Database from 'better-sqlite3'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { join } from 'node:path'
import { CoordinatorLog, KEEP_PRUNED_COMMITS_SQL, PRUNE_BATCH_SQL } from '../src/log/store.js'
import { startCoordinator, startParticipant, waitFor, logFile, type HttpClient, type TestCoordinator } from './support/participant.js'

async function commitWith (api: HttpClient, participants: Array<{ name: string, url: string }>): Promise<string> {
  const res = await api.post<{ id: string, state: string }>('/v1/transactions', { participants, commit: true })
  if (res.status !== 200 || res.body.state !== 'committed') throw new Error(`commit: ${res.status} ${res.text}`)
  return res.body.id
}

async function decisionOf (api: HttpClient, id: string): Promise<unknown> {
  const res = await api.get(`/v1/transactions/${id}/decision`)
  if (res.status !== 200) throw new Error(`decision of ${id}: ${res.status} ${res.text}`)
  return res.body.decision
}

function records (dbPath: string): Array<{ id: string, decided_at: number, pruned_at: number }> {
  const db = new Database(dbPath, { readonly: true })
  try {
    return db.prepare('SELECT id, decided_at, pruned_at FROM pruned_commits ORDER BY id').all() as any
  } finally { db.close() }
}

/** A committed transaction whose participant `b` refused the commit (heuristic), then resolved by an operator. */
async function resolvedCommit (t: Test, c: TestCoordinator): Promise<{ id: string, decidedAt: number }> {
  const a = await startParticipant(t)
  const b = await startParticipant(t, { phase2Failure: { status: 409, times: Infinity, body: { code: 'TX_ALREADY_ABORTED' } } })
  const id = await commitWith(c.api, [{ name: 'a', url: a.url }, { name: 'b', url: b.url }])
  await waitFor(async () => (await c.api.get(`/v1/transactions/${id}`)).body.participants?.[1]?.ack === 'heuristic', 5000, 'b heuristic')
  const resolved = await c.api.post(`/v1/transactions/${id}/resolve`, { reason: 'b restored from a backup; will ask again' })
  t.equal(resolved.status, 200, resolved.text)
  t.equal(resolved.body.completed, true)
  return { id, decidedAt: Date.parse(resolved.body.decidedAt) }
}

t.test('a resolved commit pruned by retention still answers commit, across a restart; a fully acked one answers abort and leaves nothing', async t => {
  const c = await startCoordinator(t, { retentionMs: 50, pruneIntervalMs: 3_600_000 })
  const ok = await startParticipant(t)
  const acked = await commitWith(c.api, [{ name: 'ok', url: ok.url }])
  await waitFor(async () => (await c.api.get(`/v1/transactions/${acked}`)).body.completed === true, 5000, 'acked: completed')
  const { id, decidedAt } = await resolvedCommit(t, c)
  const aborted = (await c.api.post('/v1/transactions', { participants: [{ name: 'ok', url: ok.url }], timeoutMs: 60_000 })).body.id as string
  t.equal((await c.api.post(`/v1/transactions/${aborted}/abort`)).status, 200)
  await waitFor(async () => (await c.api.get(`/v1/transactions/${aborted}`)).body.completed === true, 5000, 'aborted: completed')

  const pruner = c.app.coordinator.pruner
  let deleted = 0
  await waitFor(() => (deleted += pruner.run()) >= 3, 5000, 'the three age past the retention')
  t.equal(deleted, 3)
  t.equal((await c.api.get(`/v1/transactions/${id}`)).status, 404, 'the record itself is pruned')
  t.equal(await decisionOf(c.api, id), 'commit', 'b may still ask: the commit decision is kept')
  t.equal(await decisionOf(c.api, acked), 'abort', 'every participant acked: presumed abort, nobody is in doubt')
  t.equal(await decisionOf(c.api, aborted), 'abort')
  const kept = records(c.dbPath)
  t.same(kept.map(r => r.id), [id], 'one compact record: only the commit some participant never acked')
  t.equal(kept[0]?.decided_at, decidedAt)
  t.type(kept[0]?.pruned_at, 'number')
  t.equal(pruner.run(), 0, 'retention never prunes the compact records')
  t.same(records(c.dbPath).map(r => r.id), [id])

  await c.close()
  const again = await startCoordinator(t, { dbPath: c.dbPath, retentionMs: 50, pruneIntervalMs: 3_600_000 })
  t.equal(await decisionOf(again.api, id), 'commit', 'still commit after a restart on the same log')
  t.equal(await decisionOf(again.api, acked), 'abort')
  t.equal(again.app.coordinator.pruner.run(), 0)
  t.equal(await decisionOf(again.api, id), 'commit')
})

t.test('forget: an operator drops a compact record (audited); then the id is presumed aborted', async t => {
  const c = await startCoordinator(t, { retentionMs: 50, pruneIntervalMs: 3_600_000, apiToken: 'forget-token-0123456789' })
  const { id, decidedAt } = await resolvedCommit(t, c)

  const early = await c.api.post(`/v1/transactions/${id}/forget`, { reason: 'too early' })
  t.equal(early.status, 409, early.text)
  t.equal(early.body.code, 'TX_NOT_PRUNED', 'the transaction is still in the log: nothing to forget yet')

  await waitFor(() => c.app.coordinator.pruner.run() === 1, 5000, 'pruned')
  t.equal(await decisionOf(c.api, id), 'commit')

  const anonymous = await fetch(`${c.url}/v1/transactions/${id}/forget`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"reason":"x"}' })
  t.equal(anonymous.status, 401, 'behind the API token like all of /v1')
  const noReason = await c.api.post(`/v1/transactions/${id}/forget`, {})
  t.equal(noReason.status, 400)
  t.equal(noReason.body.code, 'VALIDATION_FAILED')
  t.equal(await decisionOf(c.api, id), 'commit', 'refusals change nothing')

  const res = await c.api.post(`/v1/transactions/${id}/forget`, { reason: 'b confirmed it applied the commit (ticket 7)' }, { 'x-twopc-actor': 'alice' })
  t.equal(res.status, 200, res.text)
  t.equal(res.body.id, id)
  t.equal(res.body.decision, 'commit')
  t.equal(Date.parse(res.body.decidedAt), decidedAt)
  t.type(res.body.prunedAt, 'string')
  t.type(res.body.forgottenAt, 'string')
  t.equal(await decisionOf(c.api, id), 'abort', 'forgotten: presumed abort again')
  t.same(records(c.dbPath), [])
  const audit = logFile(c.dbPath).prepare('SELECT action, reason, actor FROM audit WHERE tx_id = ? ORDER BY id').all(id)
  t.same(audit, [
    { action: 'resolve', reason: 'b restored from a backup; will ask again', actor: 'api' },
    { action: 'forget', reason: 'b confirmed it applied the commit (ticket 7)', actor: 'alice' }
  ])

  const twice = await c.api.post(`/v1/transactions/${id}/forget`, { reason: 'again' })
  t.equal(twice.status, 404)
  t.equal(twice.body.code, 'NO_DECISION_RECORD')
  const unknown = await c.api.post(`/v1/transactions/${c.id}.00000000000000000000000000/forget`, { reason: 'x' })
  t.equal(unknown.status, 404)
  t.equal(unknown.body.code, 'NO_DECISION_RECORD')
  const bad = await c.api.post('/v1/transactions/nope/forget', { reason: 'x' })
  t.equal(bad.status, 400)
  t.equal(bad.body.code, 'INVALID_ID')
  t.same(logFile(c.dbPath).prepare("SELECT count(*) AS n FROM audit WHERE action = 'forget'").get(), { n: 1 }, 'refusals are not audited')
})

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url))

/** The `twopc` CLI in a child process (built: `npx tsc -b`), asynchronously (the coordinator runs in this process). */
async function twopc (args: string[], env: Record<string, string>): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise(resolve => {
    execFile(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

t.test('twopc forget <id> --reason: the CLI forgets a kept record; refusals exit 1 with the code, a missing reason 2', async t => {
  const c = await startCoordinator(t, { retentionMs: 50, pruneIntervalMs: 3_600_000 })
  const { id } = await resolvedCommit(t, c)
  const env = { TWOPC_URL: c.url }
  const early = await twopc(['forget', id, '--reason', 'x'], env)
  t.equal(early.code, 1)
  t.match(early.stderr, /^twopc: TX_NOT_PRUNED: /)
  await waitFor(() => c.app.coordinator.pruner.run() === 1, 5000, 'pruned')
  const usage = await twopc(['forget', id], env)
  t.equal(usage.code, 2)
  t.match(usage.stderr, /forget needs --reason/)
  const done = await twopc(['forget', id, '--reason', 'every participant confirmed', '--actor', 'ops'], env)
  t.equal(done.code, 0, done.stderr)
  t.match(done.stdout, new RegExp(`^forgot the decision record of ${id} \\(commit, decided .*\\): its decision endpoint now answers a presumed abort`))
  t.equal(await decisionOf(c.api, id), 'abort')
  t.same(logFile(c.dbPath).prepare("SELECT actor, reason FROM audit WHERE tx_id = ? AND action = 'forget'").all(id), [{ actor: 'ops', reason: 'every participant confirmed' }])
  const again = await twopc(['forget', id, '--reason', 'x', '--json'], env)
  t.equal(again.code, 1)
  t.match(JSON.parse(again.stdout), { error: { status: 404, code: 'NO_DECISION_RECORD' } })
})

t.test('retention\'s batch reads what it deletes: the compact records are found by key, not by walking every commit', async t => {
  const path = join(t.testdir(), 'c.db')
  const log = new CoordinatorLog(path)
  t.teardown(() => log.close())
  const plan = (sql: string, ...args: unknown[]): string[] => (logFile(path).prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as Array<{ detail: string }>).map(r => r.detail)
  const batch = plan(PRUNE_BATCH_SQL, 1, 1)
  t.ok(batch.some(d => /^SEARCH transactions USING INDEX transactions_completed /.test(d)), batch.join('; '))
  const keep = plan(KEEP_PRUNED_COMMITS_SQL, 1, '["x"]')
  t.notOk(keep.some(d => /^SCAN t\b|transactions_by_state/.test(d)), keep.join('; '))
  t.ok(keep.some(d => /^SEARCH t USING (INDEX sqlite_autoindex_transactions_1|PRIMARY KEY) \(id=\?\)$/.test(d)), keep.join('; '))
})
