/**
 * The storage seam of the participant SDK: everything the engine, the in-doubt recovery, retention,
 * the routes and the metrics need from the database that keeps the participant records. The
 * engine talks to these interfaces only; all SQL lives in the store modules (SQLite: sqlite.ts).
 *
 * Synchronous or asynchronous: every operation returns `MaybePromise`. A synchronous database
 * (better-sqlite3) returns plain values, and the engine then runs a whole batch — BEGIN, every
 * callback in its savepoint, COMMIT — in one synchronous call, with no promise per callback (the
 * group-commit path is hot). A store whose client is asynchronous (a pg or mysql2 client,
 * `await client.query`) returns promises; the engine's steps (steps.ts) then continue
 * asynchronously, one batch at a time, with the same logic.
 *
 * Handlers: with SQLite the user's handlers are synchronous and get the store's `connection`
 * (the better-sqlite3 Database) — a handler returning a Promise is refused (it would outlive the
 * local transaction). A store with asynchronous transactions will declare that its handlers may
 * return promises: the engine yields the handler's result like any store operation, so the
 * driver awaits it inside the same savepoint (the seam is marked in engine.ts). The synchronous
 * parts of `app.twoPhase` (`stateOf`, `inDoubt`, `prune`) read through `mustBeSync` today.
 */
import type { RecordState } from '../state-machine.js'

export type MaybePromise<T> = T | PromiseLike<T>

/** One participant record. */
export interface LogRecord {
  txid: string
  state: Exclude<RecordState, 'none'>
  reason: string | null
  createdAt: number
  updatedAt: number
}

/**
 * Whether commits on the store can be made durable, checked at register before anything is
 * written: `unsafe` is refused (`TWOPC_DB_NOT_DURABLE`, the reason names the setting to change);
 * `warning` is logged (e.g. an in-memory database).
 */
export type StoreCheck = { unsafe: string } | { unsafe?: undefined, warning?: string }

export interface OpenOptions {
  /** See the plugin's `inlineSyncMaxMs` (stores that sync a file themselves). */
  inlineSyncMaxMs?: number
  /** After each sync that made committed batches durable: callbacks it covered, its duration (ms). */
  onSync?: (events: number, ms: number) => void
}

/** What `register` gets as `store` (`sqliteStore(db)`; the `db` option builds one). */
export interface ParticipantStore<Conn = unknown> {
  /** Short name for logs and errors (`sqlite`). */
  readonly kind: string
  /** The durability check at register (see StoreCheck). Synchronous: it reads settings only. */
  check (): StoreCheck
  /** Creates or upgrades the SDK's tables; safe on every start. */
  migrate (): MaybePromise<void>
  /** The records of one participant (several participants may share a database). */
  open (participant: string, options?: OpenOptions): ParticipantRecords<Conn>
}

export interface SyncStats {
  /** Syncs that made committed batches durable (0 when the database syncs at COMMIT). */
  syncs: number
  /** Of them (and of failed ones), those run on the event loop instead of the thread pool. */
  inlineSyncs: number
}

/** The records of one participant name, and the local transactions that write them. */
export interface ParticipantRecords<Conn = unknown> {
  /** False once the database is closed: readers (metrics) then report nothing. */
  readonly available: boolean
  get (txid: string): MaybePromise<LogRecord | undefined>
  stateOf (txid: string): MaybePromise<RecordState>
  /** Prepared records, in txid order after `afterTxid`, at most `limit` of them. */
  prepared (afterTxid: string, limit: number): MaybePromise<LogRecord[]>
  /** How many records are prepared and the oldest one's time. */
  preparedSummary (): MaybePromise<{ count: number, oldestUpdatedAt: number | null }>
  /**
   * Deletes at most `limit` settled records (committed, aborted, read-only, tombstone) not
   * touched since `before`. Prepared records are never deleted: they are still in doubt.
   */
  prune (before: number, limit: number): MaybePromise<number>
  /**
   * Opens the local transaction of one batch; the user's handlers join it through `connection`.
   * Fails (nothing of the batch written) when the database is closed, when the connection is in
   * a transaction the SDK did not open, or once a sync has failed (nothing is durable any more).
   */
  begin (): MaybePromise<StoreTransaction<Conn>>
  /**
   * Calls `done` once everything committed before this call is durable (at once when the commit
   * itself was). `urgent`: a caller waits for a vote, sync now; otherwise the store may wait
   * briefly to share a sync. `done(failure)`: not durable, nothing may be answered as such.
   */
  whenDurable (urgent: boolean, events: number, done: (failure: Error | undefined) => void): void
  /** Makes everything committed durable now, blocking, and calls the pending `done`s (close). */
  syncNow (): void
  syncStats (): SyncStats
  /** After `syncNow`: releases what the records hold (file descriptors). */
  close (): void
}

/** The open local transaction of a batch. */
export interface StoreTransaction<Conn = unknown> {
  /** What the user's handlers get to write their business change in this transaction. */
  readonly connection: Conn
  /** False once the database rolled the whole transaction back on its own. */
  readonly active: boolean
  stateOf (txid: string): MaybePromise<RecordState>
  /** Inserts or updates the record (`createdAt` is kept on update). */
  write (txid: string, state: LogRecord['state'], reason: string | null, now: number): MaybePromise<void>
  /** Savepoints nest: each callback, and inside it the handler's writes. */
  savepoint (): MaybePromise<void>
  release (): MaybePromise<void>
  /** Rolls back to the latest savepoint and releases it. */
  rollbackToSavepoint (): MaybePromise<void>
  /** Commits; on failure rolls back and rejects (nothing of the batch is visible). */
  commit (): MaybePromise<void>
  /** Rolls back whatever is still open. */
  rollback (): MaybePromise<void>
}
