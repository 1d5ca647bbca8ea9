/**
 * The SQLite participant store (better-sqlite3): the SDK's records live in the service's own
 * database, and a batch's local transaction is the one the user's synchronous handlers write
 * their business change in. Every operation completes synchronously (plain values), so the
 * engine runs a whole batch in one synchronous flush: no other code of the process — the
 * service's own routes on the same connection — runs while it is open, and `BEGIN IMMEDIATE`
 * keeps other processes on the same file out.
 *
 * Durability: a file database in WAL mode commits with `synchronous=NORMAL` (the service's own
 * setting is restored right after), then the SDK fdatasyncs the WAL itself (wal-sync.ts) before
 * the batch's callers are answered. A rollback journal (DELETE, TRUNCATE, PERSIST) commits with
 * `synchronous=EXTRA` (restored right after): SQLite syncs the journal, the database and, in
 * DELETE mode, the directory of the deleted journal before the COMMIT returns. A database on
 * which no commit can be made durable (`synchronous=OFF`, `journal_mode` MEMORY or OFF) is
 * refused at register (`check`). An in-memory database keeps nothing across a restart.
 */
import type { Database, Statement } from 'better-sqlite3'
import type { RecordState } from '../state-machine.js'
import {
  GET_SQL, logDurability, migrate, PREPARED_PAGE_SQL, PREPARED_SUMMARY_SQL, PRUNE_SQL, UPSERT_SQL
} from './sqlite-schema.js'
import type { LogRecord, OpenOptions, ParticipantRecords, ParticipantStore, StoreCheck, StoreTransaction, SyncStats } from './store.js'
import { WalSync } from './wal-sync.js'

export {
  logDurability, migrate, PARTICIPANT_LOG_TABLE, PREPARED_PAGE_SQL, PRUNE_SQL, SCHEMA_VERSION_TABLE, SchemaTooNewError
} from './sqlite-schema.js'

/** `PRAGMA synchronous` levels the SDK commits its batches with. */
const SYNC_NORMAL = 1
const SYNC_EXTRA = 3

interface Row { txid: string, state: LogRecord['state'], reason: string | null, created_at: number, updated_at: number }

const toRecord = (row: Row): LogRecord => ({
  txid: row.txid, state: row.state, reason: row.reason, createdAt: row.created_at, updatedAt: row.updated_at
})

/** The participant records in a better-sqlite3 Database (the `db` option builds one). */
export class SqliteStore implements ParticipantStore<Database> {
  readonly kind = 'sqlite'
  readonly db: Database

  constructor (db: Database) {
    this.db = db
  }

  check (): StoreCheck {
    const durability = logDurability(this.db)
    if (typeof durability === 'object') return durability
    if (durability === 'memory') return { warning: 'db is an in-memory database: the participant log (votes, decisions, tombstones) does not survive a restart' }
    return {}
  }

  migrate (): void {
    migrate(this.db)
  }

  open (participant: string, options: OpenOptions = {}): SqliteRecords {
    return new SqliteRecords(this.db, participant, options)
  }
}

/** `store: sqliteStore(db)`: the SQLite store over the service's own better-sqlite3 Database. */
export function sqliteStore (db: Database): SqliteStore {
  return new SqliteStore(db)
}

/** Prepared statements over the log for one participant name. All calls are synchronous. */
export class SqliteRecords implements ParticipantRecords<Database> {
  readonly db: Database
  readonly participant: string
  readonly #get: Statement
  readonly #upsert: Statement
  readonly #prepared: Statement
  readonly #prune: Statement
  readonly #summary: Statement
  readonly #begin: Statement
  readonly #commit: Statement
  readonly #rollback: Statement
  readonly #savepoint: Statement
  readonly #release: Statement
  readonly #rollbackTo: Statement
  readonly #getSynchronous: Statement
  /** One prepared statement per level (0-3): `db.pragma()` would compile one on every batch. */
  readonly #setSynchronous = new Map<number, Statement>()
  /** `synchronous` of the SDK's own COMMITs (WAL: NORMAL; rollback journal: EXTRA); undefined: in memory. */
  readonly #commitLevel: number | undefined
  /** WAL mode: the SDK's own fdatasync after each commit; null: SQLite syncs at COMMIT (or in memory). */
  readonly #wal: WalSync | null = null

  constructor (db: Database, participant: string, options: OpenOptions = {}) {
    this.db = db
    this.participant = participant
    this.#get = db.prepare(GET_SQL)
    this.#upsert = db.prepare(UPSERT_SQL)
    this.#prepared = db.prepare(PREPARED_PAGE_SQL)
    this.#prune = db.prepare(PRUNE_SQL)
    this.#summary = db.prepare(PREPARED_SUMMARY_SQL)
    this.#begin = db.prepare('BEGIN IMMEDIATE')
    this.#commit = db.prepare('COMMIT')
    this.#rollback = db.prepare('ROLLBACK')
    this.#savepoint = db.prepare('SAVEPOINT twopc')
    this.#release = db.prepare('RELEASE twopc')
    this.#rollbackTo = db.prepare('ROLLBACK TO twopc')
    this.#getSynchronous = db.prepare('PRAGMA synchronous').pluck()
    const durability = logDurability(db)
    if (typeof durability === 'object') throw new Error(`the participant log would not be durable: ${durability.unsafe}`)
    if (durability === 'wal') {
      this.#commitLevel = SYNC_NORMAL
      this.#wal = new WalSync(`${db.name}-wal`, options.inlineSyncMaxMs, options.onSync)
    } else if (durability === 'rollback') {
      this.#commitLevel = SYNC_EXTRA
    }
  }

  get available (): boolean {
    return this.db.open
  }

  preparedSummary (): { count: number, oldestUpdatedAt: number | null } {
    const row = this.#summary.get(this.participant) as { n: number, oldest: number | null }
    return { count: row.n, oldestUpdatedAt: row.oldest }
  }

  get (txid: string): LogRecord | undefined {
    const row = this.#get.get(this.participant, txid) as Row | undefined
    return row === undefined ? undefined : toRecord(row)
  }

  stateOf (txid: string): RecordState {
    return this.get(txid)?.state ?? 'none'
  }

  write (txid: string, state: LogRecord['state'], reason: string | null, now: number): void {
    // Positional parameters: binding an object by name costs more, on every callback.
    this.#upsert.run(this.participant, txid, state, reason, now, now)
  }

  prepared (afterTxid: string, limit: number): LogRecord[] {
    return (this.#prepared.all(this.participant, afterTxid, limit) as Row[]).map(toRecord)
  }

  prune (before: number, limit: number): number {
    return this.#prune.run({ participant: this.participant, before, limit }).changes
  }

  begin (): SqliteTransaction {
    let restore: number | undefined
    try {
      if (!this.db.open) throw new Error('the database is closed')
      // Only possible if code of the service holds a transaction of its own open across an
      // await on this connection: joining it would make our records depend on its COMMIT.
      if (this.db.inTransaction) throw new Error('the database connection is inside a transaction the SDK did not open')
      if (this.#wal?.failure !== undefined) throw this.#wal.failure
      if (this.#commitLevel !== undefined) {
        // WAL: NORMAL, the fdatasync makes it durable. Rollback journal: EXTRA, SQLite syncs the
        // journal, the database and the journal's directory before COMMIT returns.
        restore = this.#getSynchronous.get() as number
        if (restore !== this.#commitLevel) this.#setLevel(this.#commitLevel)
      }
      this.#begin.run()
    } catch (err) {
      try { this.restoreLevel(restore) } catch { /* the first failure is the one reported */ }
      throw err
    }
    return new SqliteTransaction(this, restore)
  }

  /** Statement runners of the open transaction (SqliteTransaction). */
  runCommit (): void { this.#commit.run() }
  runSavepoint (): void { this.#savepoint.run() }
  runRelease (): void { this.#release.run() }
  runRollbackTo (): void {
    this.#rollbackTo.run()
    this.#release.run()
  }

  /** Rolls back whatever is open; never throws (a broken connection fails the next BEGIN). */
  runRollback (): void {
    if (!this.db.open || !this.db.inTransaction) return
    try { this.#rollback.run() } catch { /* the connection is unusable; the next BEGIN says so */ }
  }

  /** Puts the service's own `synchronous` back after a batch. */
  restoreLevel (restore: number | undefined): void {
    if (restore !== undefined && restore !== this.#commitLevel && this.db.open) this.#setLevel(restore)
  }

  #setLevel (level: number): void {
    let stmt = this.#setSynchronous.get(level)
    if (stmt === undefined) {
      if (!Number.isInteger(level) || level < 0 || level > 3) throw new RangeError(`synchronous level ${level}`)
      stmt = this.db.prepare(`PRAGMA synchronous = ${level}`)
      this.#setSynchronous.set(level, stmt)
    }
    stmt.run()
  }

  whenDurable (urgent: boolean, events: number, done: (failure: Error | undefined) => void): void {
    if (this.#wal === null) done(undefined)
    else this.#wal.add(urgent, events, done)
  }

  syncNow (): void {
    this.#wal?.syncNow()
  }

  syncStats (): SyncStats {
    return this.#wal === null ? { syncs: 0, inlineSyncs: 0 } : { ...this.#wal.stats }
  }

  close (): void {
    this.#wal?.close()
  }
}

/** The open batch transaction on the connection (one at a time: better-sqlite3 is synchronous). */
export class SqliteTransaction implements StoreTransaction<Database> {
  readonly #records: SqliteRecords
  /** The service's `synchronous`, put back when the transaction ends. */
  readonly #restore: number | undefined

  constructor (records: SqliteRecords, restore: number | undefined) {
    this.#records = records
    this.#restore = restore
  }

  get connection (): Database {
    return this.#records.db
  }

  get active (): boolean {
    return this.#records.db.inTransaction
  }

  stateOf (txid: string): RecordState {
    return this.#records.stateOf(txid)
  }

  write (txid: string, state: LogRecord['state'], reason: string | null, now: number): void {
    this.#records.write(txid, state, reason, now)
  }

  savepoint (): void { this.#records.runSavepoint() }
  release (): void { this.#records.runRelease() }
  rollbackToSavepoint (): void { this.#records.runRollbackTo() }

  commit (): void {
    let failure: unknown
    try {
      this.#records.runCommit()
    } catch (err) {
      failure = err
      this.#records.runRollback()
    }
    try { this.#records.restoreLevel(this.#restore) } catch (err) { failure ??= err }
    if (failure !== undefined) throw failure
  }

  rollback (): void {
    this.#records.runRollback()
    this.#records.restoreLevel(this.#restore)
  }
}
