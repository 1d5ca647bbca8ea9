/**
 * One coordinator process per log file. Two on the same log would each recover it, each run
 * phase 2 from it and each write decisions into it: two lives of one state machine. So the log
 * is locked for the whole life of the process that opens it.
 *
 * The lock is SQLite's own, on a companion file `<log>.lock` (an empty SQLite database): held in
 * `locking_mode=EXCLUSIVE` inside `BEGIN EXCLUSIVE`, it is a POSIX advisory lock the kernel drops
 * when the process ends however it ends (SIGKILL included), so a crash never leaves a stale lock
 * behind, and no native dependency is needed. A companion file rather than the log itself: an
 * exclusive lock on the log in WAL mode would also shut out readers (a backup, `sqlite3` for a
 * look, the tests' read-only checks). Within one process SQLite's locks hold between
 * connections too, so a second `CoordinatorLog` on the same file is refused the same way.
 */
import Database from 'better-sqlite3'
import createError from '@fastify/error'

export const LogErrors = {
  LOG_LOCKED: createError('LOG_LOCKED',
    'the coordinator log %s is in use by another coordinator process (lock %s): one coordinator process per log file', 500)
} as const

export class LogLock {
  private constructor (private readonly db: Database.Database) {}

  /** Takes the log's lock at once (no waiting), or throws LOG_LOCKED. */
  static acquire (logPath: string): LogLock {
    const lockPath = `${logPath}.lock`
    // timeout 0: a held lock is reported now, not after better-sqlite3's default 5 s busy wait.
    const db = new Database(lockPath, { timeout: 0 })
    try {
      db.pragma('locking_mode = EXCLUSIVE')
      db.exec('BEGIN EXCLUSIVE')
    } catch (err) {
      db.close()
      if ((err as { code?: string }).code === 'SQLITE_BUSY') throw new LogErrors.LOG_LOCKED(logPath, lockPath)
      throw err
    }
    return new LogLock(db)
  }

  /** Drops the lock (on close, so a test can open the log again in the same process). */
  release (): void {
    if (this.db.open) this.db.close()
  }
}
