/**
 * A full disk under the coordinator's log: a real tmpfs of a few MiB (mount(8); root), the log's
 * SQLite file on it, a filler file that takes the rest. Writes that cannot go to the log answer
 * 503 LOG_UNAVAILABLE (never 500), /readyz answers 503, nothing new is accepted, freeing the
 * space does not un-latch the running coordinator, and a restart on the same file finds every
 * transaction the API answered 2xx for, in the state it answered.
 */
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import fs, { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeSync } from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startCoordinator, startParticipant, waitFor, type HttpAnswer } from './support/participant.js'
import { missingTool } from '../../test/kit/tools.js'
import { CoordinatorLog, diskFailure } from '../src/log/store.js'
import { newTransaction } from '../src/core/machine.js'

/**
 * Mounts a tmpfs of `sizeKiB` on a new directory under the system's temp dir (not tap's fixture
 * directory, which tap removes by itself); unmounted and removed in teardown.
 */
function mountTmpfs (t: Test, sizeKiB: number): string | undefined {
  const dir = mkdtempSync(join(tmpdir(), 'twopc-disk-full-'))
  // Not root (a CI runner's user): through passwordless sudo, the tmpfs owned by this user.
  const root = process.getuid?.() === 0
  const run = (cmd: string, args: string[]): void => {
    if (root) execFileSync(cmd, args, { stdio: 'pipe' })
    else execFileSync('sudo', ['-n', cmd, ...args], { stdio: 'pipe' })
  }
  const owner = root ? '' : `,uid=${process.getuid?.() ?? 0},gid=${process.getgid?.() ?? 0}`
  try {
    run('mount', ['-t', 'tmpfs', '-o', `size=${sizeKiB}k${owner}`, 'tmpfs', dir])
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    const reason = `cannot mount a tmpfs (root, or passwordless sudo, and mount(8) needed): ${String((err as Error).message).trim()}`
    missingTool(t, reason, 'run as root, or give passwordless sudo for mount(8) and umount(8)')
    return undefined
  }
  t.teardown(() => {
    try { run('umount', [dir]) } catch { run('umount', ['-l', dir]) }
    rmSync(dir, { recursive: true, force: true })
  })
  return dir
}

/** Writes `path` until the file system refuses (ENOSPC); bounded by `maxBytes`. Returns the bytes written. */
function fill (path: string, maxBytes: number): number {
  const fd = openSync(path, 'a')
  const chunk = Buffer.alloc(16 * 1024, 0x5a)
  let written = 0
  try {
    while (written < maxBytes) {
      try {
        written += writeSync(fd, chunk)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') return written
        throw err
      }
    }
  } finally {
    closeSync(fd)
  }
  throw new Error(`the file system took ${maxBytes} bytes without ENOSPC`)
}

const SIZE_KIB = 3072

t.test('a full disk: 503 LOG_UNAVAILABLE and /readyz 503, nothing answered 2xx is lost, a restart after freeing space carries on', async t => {
  const dir = mountTmpfs(t, SIZE_KIB)
  if (dir === undefined) return
  const dbPath = join(dir, 'log', 'coordinator.db')
  const filler = join(dir, 'filler')
  const p = await startParticipant(t)
  const c = await startCoordinator(t, { dbPath, coordinatorId: 'c-disk' })

  // Before the disk fills: a committed transaction, and an active one.
  const committed = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
  t.equal(committed.status, 200, 'a one-shot commits while there is space')
  t.equal(committed.body.state, 'committed')
  const before = await c.api.post('/v1/transactions', { timeoutMs: 600_000 })
  t.equal(before.status, 201)
  const answered = new Map<string, string>([[committed.body.id as string, 'committed'], [before.body.id as string, 'active']])

  const filled = fill(filler, SIZE_KIB * 1024)
  t.ok(filled > 256 * 1024, 'the filler took the rest of the disk')
  // Some room back: a few more transactions fit before the log runs out.
  truncateSync(filler, filled - 256 * 1024)

  // Transactions with large metadata until the log cannot take one more; groups of 4 at once,
  // so a failed write fails a batch of several requests.
  const pad = 'x'.repeat(60_000)
  const failures: HttpAnswer[] = []
  for (let round = 0; round < 200 && failures.length === 0; round++) {
    const answers = await Promise.all([0, 1, 2, 3].map(async () =>
      await c.api.post('/v1/transactions', { timeoutMs: 600_000, metadata: { pad } })))
    for (const a of answers) {
      if (a.status === 201) answered.set(a.body.id as string, 'active')
      else failures.push(a)
    }
  }
  t.ok(failures.length > 0, 'the log ran out of space')
  t.ok(answered.size > 2, `${answered.size - 2} large transactions fit before it did`)
  for (const f of failures) {
    t.equal(f.status, 503, 'a write the disk refused answers 503, not 500')
    t.match(f.body, { statusCode: 503, code: 'LOG_UNAVAILABLE', error: 'Service Unavailable', message: String })
  }

  const ready = await c.api.get('/readyz')
  t.equal(ready.status, 503, '/readyz fails once the log cannot be written')
  t.match(ready.body, { ready: false, log: 'full', logError: /full/i })

  // New work is refused at once, before the state machine: no prepare goes out.
  const prepares = p.callsTo('prepare').length
  const refused = [
    await c.api.post('/v1/transactions', {}),
    await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true }),
    await c.api.post(`/v1/transactions/${before.body.id as string}/participants`, { name: 'p', url: p.url }),
    await c.api.post(`/v1/transactions/${before.body.id as string}/commit`),
    await c.api.post(`/v1/transactions/${before.body.id as string}/abort`)
  ]
  for (const r of refused) t.match({ status: r.status, code: r.body.code }, { status: 503, code: 'LOG_UNAVAILABLE' })
  t.equal(p.callsTo('prepare').length, prepares, 'the refused one-shot sent no prepare')
  const read = await c.api.get(`/v1/transactions/${before.body.id as string}`)
  t.equal(read.status, 200, 'reads still work')
  t.equal(read.body.state, 'active', 'and show what the log holds')

  // Freeing space does not clear the latch: the running coordinator may have dropped steps
  // (votes, acks) it would not redo by itself; a restart's recovery does.
  rmSync(filler)
  t.equal((await c.api.post('/v1/transactions', {})).status, 503, 'still refused after the space is freed (latched)')
  t.equal((await c.api.get('/readyz')).status, 503, '/readyz still 503 until a restart')

  await c.close()
  const again = await startCoordinator(t, { dbPath, coordinatorId: 'c-disk' })
  t.equal((await again.api.get('/readyz')).body.log, 'open', 'the restarted coordinator is ready')
  for (const [id, state] of answered) {
    const got = await again.api.get(`/v1/transactions/${id}`)
    t.equal(got.status, 200, `${id} answered 2xx is in the log`)
    // Presumed abort: the restart aborts what was still active; a commit stays a commit.
    t.equal(got.body.state, state === 'committed' ? 'committed' : 'aborted', `${id}: ${state} before, ${got.body.state as string} after the restart`)
  }
  const fresh = await again.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
  t.equal(fresh.status, 200, 'with space again, new work is accepted')
  t.equal(fresh.body.state, 'committed')
  await waitFor(async () => (await again.api.get(`/v1/transactions/${fresh.body.id as string}`)).body.completed === true, 5000, 'phase 2 completes')
  await again.close()
})

t.test('only errors of the disk latch the log: a batch failing otherwise (a duplicate key) leaves it writable', async t => {
  t.equal(diskFailure(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })), 'full')
  t.equal(diskFailure(Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' })), 'failed')
  t.equal(diskFailure(Object.assign(new Error('UNIQUE constraint failed'), { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })), undefined)
  t.equal(diskFailure(Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' })), undefined)
  t.equal(diskFailure(new Error('no code')), undefined)

  const log = new CoordinatorLog(join(t.testdir(), 'coordinator.db'))
  t.teardown(() => log.close())
  const save = async (id: string): Promise<Error | undefined> => {
    const now = Date.now()
    return await new Promise(resolve => {
      log.save(null, newTransaction(id, now, now + 60_000), { attention: [], messages: [], notices: [] }, now, true, resolve)
      log.flush()
    })
  }
  t.equal(await save('c-test.0000000001aaaaaaaaaaaaaaaa'), undefined)
  t.match(await save('c-test.0000000001aaaaaaaaaaaaaaaa'), { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' }, 'the same new record twice fails its batch')
  t.equal(log.failure, undefined, 'not latched')
  t.equal(await save('c-test.0000000002aaaaaaaaaaaaaaaa'), undefined, 'the next batch is written')
})

t.test('a refused fsync: 503 LOG_UNAVAILABLE and /readyz 503 log failed, latched although the disk works again', async t => {
  // node:fs itself is made to fail (syncBuiltinESMExports updates every module's named
  // imports), as a disk answering EIO would; restored at once after.
  const real = { fdatasync: fs.fdatasync, fdatasyncSync: fs.fdatasyncSync }
  const restore = (): void => { Object.assign(fs, real); syncBuiltinESMExports() }
  t.teardown(restore)
  const c = await startCoordinator(t)
  t.equal((await c.api.post('/v1/transactions', {})).status, 201)
  const eio = (): NodeJS.ErrnoException => Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' })
  fs.fdatasyncSync = () => { throw eio() }
  fs.fdatasync = ((_fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => { setImmediate(cb, eio()) }) as typeof fs.fdatasync
  syncBuiltinESMExports()
  const refused = await c.api.post('/v1/transactions', {})
  restore()
  t.match({ status: refused.status, code: refused.body.code }, { status: 503, code: 'LOG_UNAVAILABLE' }, 'the begin waiting for the sync')
  t.match(refused.body.message, /could not be synced to disk: EIO/)
  const ready = await c.api.get('/readyz')
  t.equal(ready.status, 503)
  t.match(ready.body, { ready: false, log: 'failed', logError: /synced to disk/ })
  const after = await c.api.post('/v1/transactions', {})
  t.match({ status: after.status, code: after.body.code }, { status: 503, code: 'LOG_UNAVAILABLE' }, 'the disk works again, the log stays failed')
})
