/**
 * One coordinator process per log file: the log is locked (`<log>.lock`) while a coordinator has
 * it open. A second coordinator on the same file exits at once with LOG_LOCKED and touches
 * nothing; a SIGKILLed holder leaves no stale lock. Real child processes (the built bin).
 */
import t from 'tap'
import { join } from 'node:path'
import { CoordinatorLog } from '../src/log/store.js'
import { http } from './support/participant.js'
import { COORDINATOR_BIN, freePort, startCoordinatorProcess } from './support/process.js'
import { spawnNode } from '../../test/kit/child.js'

t.test('in one process: a second log on the same file is refused until the first is closed', async t => {
  const path = join(t.testdir(), 'coordinator.db')
  const first = new CoordinatorLog(path)
  t.teardown(() => first.close())
  t.throws(() => new CoordinatorLog(path), { code: 'LOG_LOCKED', message: new RegExp(`coordinator log ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by another coordinator process`) })
  t.equal(first.open, true, 'the holder is unaffected')
  first.close()
  const again = new CoordinatorLog(path)
  t.teardown(() => again.close())
  t.equal(again.open, true, 'closed: the lock is released')
  t.ok(new CoordinatorLog(join(t.testdir(), 'other.db')).close() === undefined, 'another file is another lock')
})

/** Runs the coordinator bin; resolves with its exit and stderr, or 'running' after `ms` (then killed). */
async function runToExit (dbPath: string, ms: number): Promise<{ code: number | null, stderr: string } | 'running'> {
  const port = await freePort()
  const proc = spawnNode(COORDINATOR_BIN, { env: { PORT: String(port), HOST: '127.0.0.1', TWOPC_DB: dbPath, LOG_LEVEL: 'warn' } })
  let running = false
  const timer = setTimeout(() => { running = true; void proc.kill() }, ms)
  const { code } = await proc.exited
  clearTimeout(timer)
  return running ? 'running' : { code, stderr: proc.stderr() }
}

t.test('a second coordinator process on a held log exits with LOG_LOCKED; after a SIGKILL of the holder a new one starts', async t => {
  const dbPath = join(t.testdir(), 'coordinator.db')
  const first = await startCoordinatorProcess({ dbPath, port: await freePort() })
  t.teardown(() => { first.proc.kill('SIGKILL') })
  const begun = await http(first.url).post('/v1/transactions', { timeoutMs: 600_000 })
  t.equal(begun.status, 201)

  const second = await runToExit(dbPath, 20_000)
  if (second === 'running') {
    t.fail('the second coordinator is running on the same log')
  } else {
    t.not(second.code, 0, 'exits non-zero')
    t.match(second.stderr, /cannot start: LOG_LOCKED: the coordinator log .*coordinator\.db is in use by another coordinator process/)
  }
  const still = await http(first.url).get(`/v1/transactions/${begun.body.id as string}`)
  t.equal(still.body.state, 'active', 'the holder goes on, its transaction untouched (no recovery by the second)')

  first.proc.kill('SIGKILL')
  t.equal((await first.exited).signal, 'SIGKILL')
  const third = await startCoordinatorProcess({ dbPath, port: await freePort() })
  t.teardown(() => { third.proc.kill('SIGKILL') })
  const after = await http(third.url).get(`/v1/transactions/${begun.body.id as string}`)
  t.equal(after.body.state, 'aborted', 'the new holder recovered the log: the undecided transaction aborted')
  t.equal(after.body.reason, 'coordinator-restarted')
})
