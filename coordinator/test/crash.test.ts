/**
 * Crash recovery with a real coordinator process: it ends itself with SIGKILL at a named crash
 * point (TWOPC_CRASH_AT), is started again on the same log, and must finish what it began.
 * Also: SIGTERM lets a request in flight finish before the log closes.
 */
import t from 'tap'
import { join } from 'node:path'
import { startParticipant, waitFor, http, type TestParticipant } from './support/participant.js'
import { COORDINATOR_BIN as BIN, freePort, startCoordinatorProcess, type CoordinatorChild } from './support/process.js'
import { spawnNode } from '../../test/kit/child.js'

/** The crash tests' coordinator: its own id, fast retries. */
async function startChild (dbPath: string, port: number, env: Record<string, string> = {}): Promise<CoordinatorChild> {
  return await startCoordinatorProcess({ dbPath, port, env: { TWOPC_COORDINATOR_ID: 'crashy', ...env } })
}

function txidOf (p: TestParticipant): string {
  const prepare = p.callsTo('prepare')[0]
  if (prepare === undefined) throw new Error('participant was never asked to prepare')
  return prepare.body.txid as string
}

t.test('crash after the commit decision is logged, before phase 2: the restart commits everyone', async t => {
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()
  const first = await startChild(dbPath, port, { TWOPC_CRASH_AT: 'coordinator.after-decision-before-phase2' })
  t.teardown(() => { first.proc.kill('SIGKILL') })

  const answer = http(first.url).post('/v1/transactions', {
    participants: [{ name: 'a', url: a.url }, { name: 'b', url: b.url }],
    commit: true
  })
  await t.rejects(answer, 'the initiator loses its connection: the coordinator died')
  const exit = await first.exited
  t.equal(exit.signal, 'SIGKILL')
  t.match(first.stderr(), /crashing at coordinator\.after-decision-before-phase2/)
  const txid = txidOf(a)
  t.equal(a.state(txid), 'prepared', 'a voted yes and waits')
  t.equal(b.state(txid), 'prepared', 'b voted yes and waits')
  t.equal(a.callsTo('commit').length + b.callsTo('commit').length, 0, 'nobody heard the decision before the crash')

  const second = await startChild(dbPath, port)
  t.teardown(() => { second.proc.kill('SIGKILL') })
  await waitFor(() => a.state(txid) === 'committed' && b.state(txid) === 'committed', 10_000, 'both participants committed')
  const record = await waitFor(async () => {
    const r = await http(second.url).get(`/v1/transactions/${txid}`)
    return r.body.completed === true ? r.body : undefined
  }, 10_000, 'transaction completed')
  t.equal(record.state, 'committed')
  t.same(record.participants.map((p: { ack: string }) => p.ack), ['acked', 'acked'])
  t.same((await http(second.url).get(`/v1/transactions/${txid}/decision`)).body, { decision: 'commit' })
})

t.test('crash after the votes, before the decision: the restart aborts every prepared participant', async t => {
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()
  const first = await startChild(dbPath, port, { TWOPC_CRASH_AT: 'coordinator.after-votes-before-decision' })
  t.teardown(() => { first.proc.kill('SIGKILL') })

  const answer = http(first.url).post('/v1/transactions', {
    participants: [{ name: 'a', url: a.url }, { name: 'b', url: b.url }],
    commit: true
  })
  await t.rejects(answer)
  t.equal((await first.exited).signal, 'SIGKILL')
  const txid = txidOf(a)
  t.equal(a.state(txid), 'prepared')
  t.equal(b.state(txid), 'prepared')

  const second = await startChild(dbPath, port)
  t.teardown(() => { second.proc.kill('SIGKILL') })
  await waitFor(() => a.state(txid) === 'aborted' && b.state(txid) === 'aborted', 10_000, 'both participants aborted')
  const record = (await http(second.url).get(`/v1/transactions/${txid}`)).body
  t.equal(record.state, 'aborted')
  t.equal(record.reason, 'coordinator-restarted')
  t.equal(a.callsTo('commit').length + b.callsTo('commit').length, 0, 'nobody was ever told commit')
  t.same((await http(second.url).get(`/v1/transactions/${txid}/decision`)).body, { decision: 'abort' })
})

t.test('crash right after begin: the restart aborts the transaction, nobody was asked anything', async t => {
  const a = await startParticipant(t)
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()
  const first = await startChild(dbPath, port, { TWOPC_CRASH_AT: 'coordinator.after-begin' })
  t.teardown(() => { first.proc.kill('SIGKILL') })
  await t.rejects(http(first.url).post('/v1/transactions', { participants: [{ name: 'a', url: a.url }] }))
  t.equal((await first.exited).signal, 'SIGKILL')
  t.equal(a.calls.length, 0)

  const second = await startChild(dbPath, port)
  t.teardown(() => { second.proc.kill('SIGKILL') })
  const list = (await http(second.url).get('/v1/transactions')).body
  t.equal(list.items.length, 1)
  t.equal(list.items[0].state, 'aborted')
  t.equal(list.items[0].reason, 'coordinator-restarted')
  t.equal(a.calls.length, 0, 'a participant never asked to prepare is not told anything')
})

t.test('crash after a one-shot begin: the restart aborts, and the enlisted participant hears abort (it may have prepared)', async t => {
  const a = await startParticipant(t)
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()
  const first = await startChild(dbPath, port, { TWOPC_CRASH_AT: 'coordinator.after-begin' })
  t.teardown(() => { first.proc.kill('SIGKILL') })
  await t.rejects(http(first.url).post('/v1/transactions', { participants: [{ name: 'a', url: a.url }], commit: true }))
  t.equal((await first.exited).signal, 'SIGKILL')
  // A one-shot's prepares go out while its begin is written: the crash (once it is written)
  // may come before or after the participant got its prepare.
  t.ok(a.calls.every(c => c.path === 'prepare'), 'nothing but a prepare was sent before the crash')
  const preparedBefore = a.callsTo('prepare').length

  const second = await startChild(dbPath, port)
  t.teardown(() => { second.proc.kill('SIGKILL') })
  await waitFor(() => a.callsTo('abort').length === 1, 10_000, 'abort delivered')
  const txid = a.callsTo('abort')[0]?.body.txid as string
  t.equal(a.state(txid), 'aborted', 'aborted (or a tombstone: a late prepare would vote no)')
  t.equal(a.callsTo('prepare').length, preparedBefore, 'the restart asks nobody to prepare')
  t.equal(a.callsTo('commit').length, 0, 'nobody is told commit')
  t.equal((await http(second.url).get(`/v1/transactions/${txid}`)).body.reason, 'coordinator-restarted')
})

t.test('SIGTERM: the request in flight finishes, then the process exits cleanly', async t => {
  const slow = await startParticipant(t, { prepareDelayMs: 600 })
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()
  const child = await startChild(dbPath, port)
  t.teardown(() => { child.proc.kill('SIGKILL') })
  const answer = http(child.url).post('/v1/transactions', { participants: [{ name: 'slow', url: slow.url }], commit: true })
  await waitFor(() => slow.callsTo('prepare').length === 1, 5000, 'prepare in flight')
  child.proc.kill('SIGTERM')
  const res = await answer
  t.equal(res.status, 200)
  t.equal(res.body.state, 'committed')
  const exit = await child.exited
  t.equal(exit.code, 0, 'clean exit')

  // The log was closed cleanly and holds the outcome.
  const again = await startChild(dbPath, port)
  t.teardown(() => { again.proc.kill('SIGKILL') })
  t.equal((await http(again.url).get(`/v1/transactions/${res.body.id as string}`)).body.state, 'committed')
})

t.test('a bad environment stops start-up with a message naming the variable', async t => {
  const proc = spawnNode(BIN, { nodeArgs: [], env: { TWOPC_DEFAULT_TIMEOUT_MS: 'soon', TWOPC_DB: join(t.testdir(), 'x.db') } })
  const { code } = await proc.exited
  t.equal(code, 78)
  t.match(proc.stderr(), /TWOPC_DEFAULT_TIMEOUT_MS/)
})
