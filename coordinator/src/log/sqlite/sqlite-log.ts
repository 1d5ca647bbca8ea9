/**
 * The coordinator's durable log on SQLite, through better-sqlite3 in WAL mode (LogStore). One
 * `save` = one step's whole state change, written with the other steps of the same event-loop
 * turn in ONE SQLite transaction (group commit: GroupCommit of @fastify-2pc/storage, the batch
 * written by batch-writer.ts).
 *
 * Durability is split from the write, so the event loop waits for the disk only when that is cheaper:
 * - the batch commits with `synchronous=NORMAL` (the WAL frames reach the OS, no fsync: a
 *   killed process loses nothing, a power loss may lose the tail);
 * - then one `fdatasync` of the WAL file covers every batch committed before it started, so
 *   concurrent steps share it. It runs on the event loop while syncs are quick (~0.1 ms) and
 *   none is running, else on libuv's thread pool (SyncPlacement).
 * A *forced* step (a commit decision, anything an API answer waits for) is reported only after
 * its sync. An unforced step (votes, acks, abort decisions: under presumed abort, losing them
 * to a power cut is harmless) is reported as soon as it is committed and is synced by the next
 * sync, at most `lazySyncMs` later.
 */
import Database from 'better-sqlite3'
import { closeSync, constants, fdatasyncSync, mkdirSync, openSync } from 'node:fs'
import { dirname } from 'node:path'
import type { Decision } from '@fastify-2pc/protocol'
import { GroupCommit, SyncPlacement, newPipelineStats, type BatchStore, type FailureKind } from '@fastify-2pc/storage'
import { migrations } from '../migrations.js'
import type { Transaction } from '../../core/machine.js'
import type {
  AttentionEntry, ListFilter, ListQuery, LogGauges, LogStore, NoticeRouting, OutboxRow, OutboxStats, PrunedCommit, StepWrites, TableCounts
} from '../log-store.js'
import { RecordImage } from '../record-image.js'
import { OperatorTables } from './operator-tables.js'
import { BatchWriter, type LogStep } from './batch-writer.js'
import { COUNTER_SQL, apiListQuery, listQuery, prepareStatements, type Statements } from './statements.js'
import { toAttention, toOutboxRow, toParticipant, toTransaction, type TxRow } from './rows.js'
import { Errors } from '../../errors.js'
import { LogLock } from '../lock.js'

/** SQLite's page cache for the log's connection, in KiB. */
const PAGE_CACHE_KIB = 4096
/** How often at most the outbox's queued rows are counted exactly (the guard of new messages). */
const OUTBOX_COUNT_MS = 1000

/** The LOG_UNAVAILABLE error the pipeline's latch gives every step once the disk refused one. */
function logUnavailable (kind: FailureKind, during: 'write' | 'sync', err: Error): Error {
  if (during === 'sync') {
    return new Errors.LOG_UNAVAILABLE(`the coordinator log could not be synced to disk: ${err.message}; restart the coordinator`, { cause: err })
  }
  const what = kind === 'full' ? 'the disk is full' : 'the disk refused a write'
  return new Errors.LOG_UNAVAILABLE(`the coordinator log cannot be written, ${what} (${(err as NodeJS.ErrnoException).code ?? 'error'}: ${err.message}); ` +
    `${kind === 'full' ? 'free space, then ' : ''}restart the coordinator`, { cause: err })
}

export class CoordinatorLog implements LogStore, BatchStore<LogStep> {
  readonly #db: Database.Database
  /** Held from open to close: one coordinator process per log file (lock.ts). */
  private readonly lock: LogLock | null
  /** Timeline events, the audit trail and attention resolutions (migration 3). */
  readonly operator: OperatorTables
  private readonly stmts: Statements
  private readonly writer: BatchWriter
  private readonly pipeline: GroupCommit<LogStep>
  private readonly image = new RecordImage(id => this.read(id))
  /** The WAL file, opened by us only to fdatasync it (null for an in-memory log). */
  private walFd: number | null = null
  /**
   * Outbox rows up to this id are synced: the publisher never sends a row a power cut could
   * still take back (a transactional message of a commit decision that then never was).
   */
  private syncedOutboxId = 0
  /** Queued outbox rows as last counted, plus the rows inserted since (see outboxQueued). */
  private outboxQueuedRows = 0
  private outboxCountedAt = -Infinity
  /** `merged`: steps written together with an earlier step of the same transaction in its batch. */
  readonly flushStats = { ...newPipelineStats(), merged: 0 }
  /** Whether each fdatasync runs on the event loop or the thread pool (replaceable by tests). */
  syncPlacement = new SyncPlacement()

  constructor (path: string, noticeRouting: NoticeRouting | null = null) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    // Before anything reads or writes the log: a second process on it stops here (LOG_LOCKED).
    this.lock = path === ':memory:' ? null : LogLock.acquire(path)
    const db = this.#db = new Database(path)
    db.pragma('journal_mode = WAL')
    // FULL while migrating and for anything written outside `save` (outbox bookkeeping,
    // retention, metadata); the batch writer switches to NORMAL for its own batches, synced here.
    db.pragma('synchronous = FULL')
    db.pragma('foreign_keys = ON')
    db.pragma('busy_timeout = 5000')
    // better-sqlite3 builds SQLite with a 16 MB page cache per connection; the log's writes touch
    // the right-hand edge of its B-trees (ids and times grow) and the transactions in flight are
    // kept in memory anyway, so 4 MB is plenty: the rest of the file is read from the OS's cache.
    db.pragma(`cache_size = -${PAGE_CACHE_KIB}`)
    // Statement journals in memory: a multi-row upsert on a table with a RAISE trigger needs one,
    // and past 64 KiB SQLite spilled it to a new temp file under /var/tmp (created, written and
    // unlinked ~10 times a second at 64 clients: ~4 KB of the ~20 KB written per transaction).
    // A statement journal holds at most one batch statement's pages, so memory stays bounded.
    db.pragma('temp_store = MEMORY')
    try {
      this.migrate()
    } catch (err) { // e.g. a log of a newer coordinator: refused, and the lock with it
      db.close()
      this.lock?.release()
      throw err
    }
    // Our own descriptor of the WAL file (it exists once the database is in WAL mode and stays
    // while this connection is open): fdatasync through it flushes every frame written to it.
    if (path !== ':memory:' && db.pragma('journal_mode', { simple: true }) === 'wal') {
      this.walFd = openSync(`${path}-wal`, constants.O_RDWR | constants.O_CREAT)
      // What a killed process left in the OS's cache is made durable before anyone acts on it.
      fdatasyncSync(this.walFd)
    }
    this.stmts = prepareStatements(db)
    this.operator = new OperatorTables(db)
    this.syncedOutboxId = this.stmts.maxOutboxId.get()?.id ?? 0
    this.writer = new BatchWriter(db, this.stmts, this.operator, noticeRouting, this.flushStats, rows => { this.outboxQueuedRows += rows })
    this.pipeline = new GroupCommit<LogStep>(this, { failure: logUnavailable, stats: this.flushStats })
  }

  private migrate (): void {
    const db = this.#db
    db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`)
    const applied = new Set(db.prepare<[], { version: number }>('SELECT version FROM schema_migrations').all().map(r => r.version))
    const known = new Set(migrations.map(m => m.version))
    for (const version of applied) {
      if (!known.has(version)) {
        throw new Error(`The coordinator log has migration ${version}, which this version does not know: it was written by a newer coordinator`)
      }
    }
    for (const m of migrations) {
      if (applied.has(m.version)) continue
      db.transaction(() => {
        db.exec(m.sql)
        db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, Date.now())
      })()
    }
  }

  // ---- the pipeline's settings and state -------------------------------------------------------

  get open (): boolean { return this.#db.open }
  get failure (): Error | undefined { return this.pipeline.failure }
  get failureKind (): FailureKind | undefined { return this.pipeline.failureKind }
  get pendingSteps (): number { return this.pipeline.pendingSteps }
  /** Group commit: steps saved in one event-loop turn share one SQLite transaction, up to this many. */
  get maxBatch (): number { return this.pipeline.maxBatch }
  set maxBatch (n: number) { this.pipeline.maxBatch = n }
  /** How long unforced steps may wait for a sync when no forced step brings one sooner. */
  get lazySyncMs (): number { return this.pipeline.lazySyncMs }
  set lazySyncMs (ms: number) { this.pipeline.lazySyncMs = ms }
  get writeDue (): ((full: boolean) => void) | undefined { return this.pipeline.writeDue }
  set writeDue (f: ((full: boolean) => void) | undefined) { this.pipeline.writeDue = f }
  get onFlush (): ((steps: number, ms: number) => void) | undefined { return this.pipeline.onFlush }
  set onFlush (f: ((steps: number, ms: number) => void) | undefined) { this.pipeline.onFlush = f }
  get onSync (): ((steps: number, ms: number) => void) | undefined { return this.pipeline.onSync }
  set onSync (f: ((steps: number, ms: number) => void) | undefined) { this.pipeline.onSync = f }

  // ---- BatchStore: what the pipeline calls -----------------------------------------------------

  write (batch: LogStep[]): void {
    this.writer.write(batch, this.walFd !== null)
  }

  needsSync (): boolean {
    return this.walFd !== null
  }

  sync (running: number, done: (err: Error | null, ms: number, inline: boolean) => void): void {
    this.syncPlacement.sync(this.walFd as number, running, done)
  }

  syncNow (): void {
    if (this.walFd !== null) fdatasyncSync(this.walFd)
  }

  stepWritten (step: LogStep): void {
    this.image.stepWritten(step.next)
  }

  stepsSynced (steps: LogStep[]): void {
    for (const step of steps) {
      if (step.outboxMax > this.syncedOutboxId) this.syncedOutboxId = step.outboxMax
      this.image.stepSynced(step.next)
    }
  }

  batchDropped (batch: LogStep[]): void {
    for (const step of batch) this.image.dropped(step.next, this.pipeline.writtenNotSynced())
  }

  closedIdle (): void {
    if (this.walFd !== null) closeSync(this.walFd)
    this.walFd = null
  }

  // ---- records ---------------------------------------------------------------------------------

  bindCoordinatorId (wanted: string | undefined, generate: () => string): string {
    const stored = this.stmts.getMeta.get('coordinator_id')?.value
    if (stored !== undefined) {
      if (wanted !== undefined && wanted !== stored) {
        throw new Error(`TWOPC_COORDINATOR_ID is "${wanted}" but the log was created by coordinator "${stored}": ` +
          'its transaction ids carry that prefix, so it cannot change')
      }
      return stored
    }
    const id = wanted ?? generate()
    this.stmts.setMeta.run('coordinator_id', id)
    return id
  }

  /**
   * Saves a step's outcome. Group commit: the steps saved during one event-loop turn (at most
   * `maxBatch`) are written in ONE SQLite transaction; `done` runs once the step is committed
   * (unforced) or once it is fsynced (forced). `prev` null: a new record.
   */
  save (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number, forced: boolean, done: (err?: Error) => void): void {
    this.image.saved(prev, next)
    this.pipeline.add({ prev, next, writes, now, forced, done, outboxMax: 0 })
  }

  /** Writes every pending step in one transaction, then reports or syncs them. */
  flush (): void {
    this.pipeline.flush()
  }

  flushAndSync (): void {
    this.pipeline.flushAndSync()
  }

  load (id: string): Transaction | undefined { return this.image.load(id) }
  loadLatest (id: string): Transaction | undefined { return this.image.loadLatest(id) }
  view (id: string): Transaction | undefined { return this.image.view(id) }
  unsyncedCommits (): Array<{ written: Transaction, before: Transaction | null }> { return this.image.unsyncedCommits() }
  hasUnsynced (id: string): boolean { return this.image.hasUnsynced(id) }
  /** What the cache of synced unfinished records holds (for tests and the bench). */
  recentStats (): { records: number, bytes: number } { return this.image.recentStats() }

  private read (id: string): Transaction | undefined {
    const row = this.stmts.getTx.get(id)
    if (row === undefined) return undefined
    return toTransaction(row, this.stmts.getParticipants.all(id).map(toParticipant))
  }

  attention (txId: string): AttentionEntry[] {
    return this.stmts.attentionFor.all(txId).map(toAttention)
  }

  expiredIds (now: number, limit: number): string[] {
    return this.stmts.openIds.all(now, limit).map(r => r.id)
  }

  /** Undecided transactions, a page at a time (keyset on id). */
  undecidedIds (afterId: string, limit: number): string[] {
    return this.stmts.undecidedIds.all(afterId, limit).map(r => r.id)
  }

  /** Decided transactions whose phase 2 is not finished, a page at a time. */
  unfinishedIds (afterId: string, limit: number): string[] {
    return this.stmts.unfinishedIds.all(afterId, limit).map(r => r.id)
  }

  list (query: ListQuery): Transaction[] {
    const { sql, params } = apiListQuery(query)
    const rows = this.#db.prepare<unknown[], TxRow>(sql).all(...params)
    const out: Transaction[] = []
    for (const row of rows) {
      // A transaction with unwritten or unsynced steps is shown as `view` shows it (the filter
      // matched the written row, so a page may show a state it did not ask for, for a few ms).
      const tx = this.image.hasUnsynced(row.id) ? this.view(row.id) : toTransaction(row, this.stmts.getParticipants.all(row.id).map(toParticipant))
      if (tx !== undefined) out.push(tx)
    }
    return out
  }

  decisionRow (id: string): { decision: Decision, decided_at: number } | undefined {
    return this.stmts.decisionRow.get(id)
  }

  // ---- retention and pruned commits ------------------------------------------------------------

  /**
   * Retention's delete of one batch (see PRUNE_BATCH_SQL), in one SQLite transaction: a pruned
   * commit some participant never acked keeps its compact record. Returns how many it deleted.
   */
  pruneCompleted (before: number, limit: number, now: number): number {
    return this.#db.transaction(() => {
      const ids = this.stmts.pruneBatch.all(before, limit).map(r => r.id)
      if (ids.length === 0) return 0
      const json = JSON.stringify(ids)
      this.stmts.keepPrunedCommits.run(now, json)
      return this.stmts.deleteTransactions.run(json).changes
    })()
  }

  pruneOutbox (before: number, limit: number): number {
    return this.stmts.pruneOutbox.run(before, limit).changes
  }

  /** The compact record of a pruned commit (its decision is still `commit`), if one is kept. */
  prunedCommit (id: string): PrunedCommit | undefined {
    const row = this.stmts.prunedCommit.get(id)
    return row === undefined ? undefined : { id: row.id, decidedAt: row.decided_at, prunedAt: row.pruned_at }
  }

  /**
   * Operator: drops a pruned commit's compact record, with its audit row, in one SQLite
   * transaction (synchronous=FULL: durable when this returns). From then on the id answers a
   * presumed abort. Undefined when no record is kept for it.
   */
  forgetPrunedCommit (id: string, audit: { actor: string, reason: string }, now: number): PrunedCommit | undefined {
    return this.#db.transaction(() => {
      const kept = this.prunedCommit(id)
      if (kept === undefined) return undefined
      this.stmts.deletePrunedCommit.run(id)
      this.operator.insertAudit(id, 'forget', audit.reason, audit.actor, now)
      return kept
    })()
  }

  // ---- the outbox ------------------------------------------------------------------------------

  /** Queues a message that belongs to no transaction (e.g. `coordinator.started`). */
  enqueueEvent (exchange: string, routingKey: string, messageId: string, body: unknown, now: number): void {
    // A FULL commit: the fsync covers this row and every row committed before it.
    const info = this.stmts.insertOutbox.run(null, 'event', exchange, routingKey, messageId, JSON.stringify(body), null, now)
    if (info.changes > 0) this.syncedOutboxId = Math.max(this.syncedOutboxId, Number(info.lastInsertRowid))
    this.outboxQueuedRows += info.changes
  }

  /** The next unpublished, synced outbox rows after `afterId`, oldest first. */
  outboxBatch (afterId: number, limit: number): OutboxRow[] {
    return this.stmts.outboxBatch.all(afterId, this.syncedOutboxId, limit).map(toOutboxRow)
  }

  /** Records a batch's confirms and failures in one transaction. */
  readonly settleOutbox = (published: number[], failed: Array<{ id: number, error: string, permanent: boolean }>, now: number): void => {
    this.#db.transaction(() => {
      for (const id of published) this.stmts.markPublished.run(now, id)
      for (const f of failed) this.stmts.markFailed.run(f.error.slice(0, 1000), f.permanent ? now : null, f.id)
    })()
    this.outboxQueuedRows = Math.max(0, this.outboxQueuedRows - published.length - failed.filter(f => f.permanent).length)
  }

  outboxStats (): OutboxStats {
    const row = this.stmts.outboxStats.get() as { depth: number, dead: number, oldest: number | null }
    this.outboxQueuedRows = row.depth
    this.outboxCountedAt = Date.now()
    return { depth: row.depth, dead: row.dead, oldestCreatedAt: row.oldest }
  }

  /**
   * Outbox rows waiting to be published (not parked), for the guard of new messages: counted
   * exactly at most once a second (through the queued rows' partial index), kept up to date
   * between counts by the rows this log inserts and settles. A batch rolled back after counting
   * its rows leaves the number too high until the next count, never too low.
   */
  outboxQueued (): number {
    const now = Date.now()
    if (now - this.outboxCountedAt >= OUTBOX_COUNT_MS) {
      this.outboxQueuedRows = this.stmts.outboxQueued.get()?.n ?? 0
      this.outboxCountedAt = now
    }
    return this.outboxQueuedRows
  }

  outboxFor (txId: string): OutboxRow[] {
    return this.stmts.outboxFor.all(txId).map(toOutboxRow)
  }

  // ---- the console and the metrics -------------------------------------------------------------

  listIds (filter: ListFilter, now: number): string[] {
    const { sql, params } = listQuery(filter, now)
    return this.#db.prepare<unknown[], { id: string }>(sql).all(...params).map(r => r.id)
  }

  tableCounts (cap: number): TableCounts {
    const one = (sql: string, ...params: unknown[]): number => this.stmts.counter(sql).get(...params)?.n ?? 0
    return {
      active: one(COUNTER_SQL.inState, 'active'),
      preparing: one(COUNTER_SQL.inState, 'preparing'),
      committed: one(COUNTER_SQL.inStateCapped, 'committed', cap),
      aborted: one(COUNTER_SQL.inStateCapped, 'aborted', cap),
      oldestInDoubtAt: this.stmts.counter(COUNTER_SQL.oldestInDoubt).get()?.n ?? null,
      unfinished: one(COUNTER_SQL.unfinished),
      needsAttention: one(COUNTER_SQL.needsAttention),
      heuristics: one(COUNTER_SQL.heuristics)
    }
  }

  gauges (): LogGauges {
    const row = this.stmts.gauges.get()
    return {
      inDoubt: row?.in_doubt ?? 0,
      oldestInDoubt: row?.oldest_in_doubt ?? null,
      attention: row?.attention ?? 0,
      oldestAttention: row?.oldest_attention ?? null
    }
  }

  /** Test-only: one of the connection's settings (`PRAGMA <name>`), e.g. temp_store. */
  setting (name: string): unknown {
    return this.#db.pragma(name, { simple: true })
  }

  close (): void {
    if (this.#db.open) {
      this.flushAndSync() // nothing saved is dropped by a graceful close
      this.#db.close()
      this.lock?.release()
      this.pipeline.close() // closes the WAL descriptor now, or once the last running sync returns
    }
  }
}
