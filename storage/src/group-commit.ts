/**
 * Group commit, split from durability: steps are added (pending), written together in one batch
 * (written: a killed process keeps them, a power cut may not), then made durable by one sync
 * that covers every batch written before it started (synced).
 *
 * - A *forced* step is reported (`done`) only after its sync; an unforced one as soon as it is
 *   written, and synced by the next sync, at most `lazySyncMs` later.
 * - Up to MAX_SYNCS_IN_FLIGHT syncs run at once, so a forced step never waits behind a lazy
 *   sync; they are settled in the order they started, and one that returns settles every
 *   earlier one too (it flushed everything written before it began).
 * - A failure latch: once the disk refused a write (`diskFailure`) or a sync, nothing is
 *   written or reported durable any more, until a restart (whose recovery reads what really is
 *   on disk). Another failure of a write (a constraint) fails that batch only.
 *
 * The store does the writing and syncing (BatchStore): `write` may be synchronous (SQLite
 * through better-sqlite3) or return a promise (a network database); then the next batch waits
 * for it, and steps added meanwhile join that next batch. A store whose writes are durable by
 * themselves answers `needsSync() === false`.
 */
import { performance } from 'node:perf_hooks'
import { diskFailure, type FailureKind } from './failure.js'

/** One step of a batch, as the pipeline sees it; a store's steps carry their own data. */
export interface PipelineStep {
  /** Reported only once synced (otherwise once written). */
  readonly forced: boolean
  /** Called once: written (unforced), synced (forced), or with the error that stopped it. */
  done: (err?: Error) => void
}

/** What a store implements for the pipeline. */
export interface BatchStore<S extends PipelineStep> {
  /** Writes one batch, all or nothing; throws (or rejects) when it was not written. */
  write: (batch: S[]) => void | Promise<void>
  /** Whether written steps still need `sync` to be durable (false: in memory, or writes durable by themselves). */
  needsSync: () => boolean
  /**
   * One sync of everything written so far; `running`: syncs already in flight. `done` runs on
   * a later tick (`inline`: the sync ran on the event loop).
   */
  sync: (running: number, done: (err: Error | null, ms: number, inline: boolean) => void) => void
  /** The same, blocking (a graceful stop). */
  syncNow: () => void
  /** A step of a batch just written (before it is reported). */
  stepWritten: (step: S) => void
  /** Steps just made durable, in order (before they are reported). */
  stepsSynced: (steps: S[]) => void
  /** A batch not written (rolled back, or refused by the latch): these steps never happened. */
  batchDropped: (batch: S[]) => void
  /** Called once the pipeline is closed and no sync runs any more (a descriptor can be closed). */
  closedIdle: () => void
}

/** Counters of the pipeline (a store may add its own fields). */
export interface PipelineStats {
  flushes: number
  steps: number
  maxBatch: number
  lastBatch: number
  lastFlushMs: number
  totalFlushMs: number
  syncs: number
  inlineSyncs: number
  totalSyncMs: number
}

export function newPipelineStats (): PipelineStats {
  return { flushes: 0, steps: 0, maxBatch: 0, lastBatch: 0, lastFlushMs: 0, totalFlushMs: 0, syncs: 0, inlineSyncs: 0, totalSyncMs: 0 }
}

export interface PipelineOptions {
  /** The error every step gets once the latch is set (`during`: what the disk refused). */
  failure: (kind: FailureKind, during: 'write' | 'sync', err: Error) => Error
  stats?: PipelineStats
}

/** Syncs at once (libuv's pool has 4 threads; other file work needs some). */
export const MAX_SYNCS_IN_FLIGHT = 2

export class GroupCommit<S extends PipelineStep> {
  /** Steps added but not yet written, in order; written together. */
  private pending: S[] = []
  /** Steps written but not yet synced, in write order. */
  private unsynced: S[] = []
  /** Syncs running, in the order they started. */
  private syncsInFlight: Array<{ covered: S[] }> = []
  private lazySync: NodeJS.Timeout | undefined
  private scheduled = false
  /** An asynchronous write is running: the next batch waits for it. */
  private writing = false
  private closed = false
  /** Set when the disk refused a write or a sync: every later step fails with it. */
  failure: Error | undefined
  failureKind: FailureKind | undefined
  /** A sync was refused: nothing is reported durable after that, not even what was written before. */
  private syncFailed = false
  readonly stats: PipelineStats
  /** Steps a batch holds at most: a full batch is written at once. */
  maxBatch = 256
  /** How long unforced steps may wait for a sync when no forced step brings one sooner. */
  lazySyncMs = 20
  /**
   * Who writes pending steps: called when a batch starts (`full` false: write it at the end of
   * this turn) and when it is full (`full` true: write it now); it calls `flush`. Unset, the
   * pipeline writes at the end of the turn itself (`setImmediate`), or at once when full.
   */
  writeDue: ((full: boolean) => void) | undefined
  /** Observer of each write (steps in the batch, ms to write it). */
  onFlush: ((steps: number, ms: number) => void) | undefined
  /** Observer of each sync (steps it made durable, ms it took). */
  onSync: ((steps: number, ms: number) => void) | undefined

  constructor (private readonly store: BatchStore<S>, private readonly options: PipelineOptions) {
    this.stats = options.stats ?? newPipelineStats()
  }

  get pendingSteps (): number {
    return this.pending.length
  }

  /** Queues a step for the next batch. */
  add (step: S): void {
    this.pending.push(step)
    if (this.pending.length >= this.maxBatch) this.due(true)
    else if (this.pending.length === 1) this.due(false)
  }

  private due (full: boolean): void {
    if (this.writeDue !== undefined) { this.writeDue(full); return }
    if (full) { this.flush(); return }
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => { this.scheduled = false; this.flush() })
  }

  /** Steps written and not yet synced (syncs running first), oldest first. */
  * writtenNotSynced (): Iterable<S> {
    for (const running of this.syncsInFlight) yield * running.covered
    yield * this.unsynced
  }

  /** Writes every pending step in one batch, then reports or syncs them. */
  flush (): void {
    if (this.pending.length === 0 || this.writing) return
    const batch = this.pending
    this.pending = []
    if (this.failure !== undefined) {
      this.store.batchDropped(batch)
      for (const step of batch) step.done(this.failure)
      return
    }
    const started = performance.now()
    let result: void | Promise<void>
    try {
      result = this.store.write(batch)
    } catch (err) {
      this.writeFailed(batch, err as Error)
      return
    }
    if (result === undefined) { this.written(batch, started); return }
    this.writing = true
    result.then(() => { this.writing = false; this.written(batch, started) }, (err: unknown) => { this.writing = false; this.writeFailed(batch, err as Error) })
      .finally(() => { if (this.pending.length > 0) this.due(this.pending.length >= this.maxBatch) })
  }

  /** Rolled back: these steps never happened; the disk refusing it sets the latch. */
  private writeFailed (batch: S[], err: Error): void {
    this.store.batchDropped(batch)
    const kind = diskFailure(err)
    if (kind !== undefined) this.failWrite(err, kind)
    for (const step of batch) step.done(kind !== undefined ? this.failure : err)
  }

  private written (batch: S[], started: number): void {
    const ms = performance.now() - started
    const stats = this.stats
    stats.flushes++
    stats.steps += batch.length
    stats.lastBatch = batch.length
    stats.maxBatch = Math.max(stats.maxBatch, batch.length)
    stats.lastFlushMs = ms
    stats.totalFlushMs += ms
    this.onFlush?.(batch.length, ms)
    let forced = false
    for (const step of batch) {
      this.store.stepWritten(step)
      this.unsynced.push(step)
      if (step.forced) forced = true
      else step.done()
    }
    if (!this.store.needsSync()) this.markSynced(this.unsynced.splice(0))
    else if (forced) this.sync()
    else this.lazySync ??= setTimeout(() => { this.lazySync = undefined; this.sync() }, this.lazySyncMs)
  }

  /** Starts a sync of every written step (up to MAX_SYNCS_IN_FLIGHT at once; a returning sync starts the next). */
  private sync (): void {
    if (!this.store.needsSync() || this.syncsInFlight.length >= MAX_SYNCS_IN_FLIGHT) return
    clearTimeout(this.lazySync)
    this.lazySync = undefined
    const covered = this.unsynced
    if (covered.length === 0) return
    this.unsynced = []
    const sync = { covered }
    this.syncsInFlight.push(sync)
    this.store.sync(this.syncsInFlight.length - 1, (err, ms, inline) => {
      if (inline) this.stats.inlineSyncs++
      this.settle(sync, err, ms)
    })
  }

  private settle (sync: { covered: S[] }, err: Error | null, ms: number): void {
    // Not in the list any more: a later sync returned first and settled this one's steps.
    const index = this.syncsInFlight.indexOf(sync)
    const settled = index < 0 ? [] : this.syncsInFlight.splice(0, index + 1)
    if (err !== null) {
      this.failSync(err, settled.flatMap(s => s.covered))
      if (this.closed && this.syncsInFlight.length === 0) this.store.closedIdle()
      return
    }
    this.stats.syncs++
    this.stats.totalSyncMs += ms
    for (const earlier of settled) {
      this.onSync?.(earlier.covered.length, ms)
      this.markSynced(earlier.covered)
    }
    if (this.closed) {
      if (this.syncsInFlight.length === 0) this.store.closedIdle()
      return
    }
    if (this.unsynced.length === 0) return
    if (this.unsynced.some(s => s.forced)) this.sync()
    else this.lazySync ??= setTimeout(() => { this.lazySync = undefined; this.sync() }, this.lazySyncMs)
  }

  private markSynced (steps: S[]): void {
    if (this.syncFailed) { // a sync failed meanwhile: nothing is reported durable any more
      for (const step of steps) if (step.forced) step.done(this.failure)
      return
    }
    this.store.stepsSynced(steps)
    for (const step of steps) if (step.forced) step.done()
  }

  /**
   * The disk refused a sync: whether those steps are on disk is unknown (and Linux may have
   * dropped the dirty pages), so nothing is reported durable any more; only a restart, which
   * reads what really is on disk, can go on. Callers waiting for these steps get the error.
   */
  private failSync (err: Error, covered: S[]): void {
    if (!this.syncFailed) {
      this.syncFailed = true
      this.failure = this.options.failure('failed', 'sync', err)
      this.failureKind = 'failed'
    }
    const waiting = [...covered, ...this.unsynced]
    this.unsynced = []
    for (const step of waiting) if (step.forced) step.done(this.failure)
  }

  /**
   * The disk refused a write. Latched until a restart, like a failed sync: the batch was rolled
   * back, so what is written stays good and steps written before are still synced and
   * reported; but the refused steps are gone and nobody would redo them (a vote, an ack, a
   * retry's schedule) — a restart's recovery reads the log and does. Until then every new step
   * fails at once.
   */
  private failWrite (err: Error, kind: FailureKind): void {
    if (this.failure !== undefined) return
    this.failure = this.options.failure(kind, 'write', err)
    this.failureKind = kind
  }

  /** Writes and syncs everything added so far, blocking (a synchronous store; a graceful stop). */
  flushAndSync (): void {
    this.flush()
    if (this.unsynced.length === 0 || this.syncFailed) return
    clearTimeout(this.lazySync)
    this.lazySync = undefined
    // The syncs still running cover earlier steps; this one covers them too, in order (their
    // callbacks then find nothing left to settle).
    const covered: S[] = []
    for (const running of this.syncsInFlight) {
      covered.push(...running.covered)
      running.covered = []
    }
    covered.push(...this.unsynced)
    this.unsynced = []
    try {
      this.store.syncNow()
    } catch (err) {
      this.failSync(err as Error, covered)
      return
    }
    this.markSynced(covered)
  }

  /** Stops the timers; `closedIdle` runs now, or once the last running sync returns. */
  close (): void {
    clearTimeout(this.lazySync)
    this.closed = true
    if (this.syncsInFlight.length === 0) this.store.closedIdle()
  }
}
