/**
 * Applies state-machine steps to the participant log and the user's handlers. Each event (a
 * prepare, commit or abort callback over HTTP, a RabbitMQ decision notice, a decision learned by
 * in-doubt recovery) runs in ONE local unit: read the record, decide, run the handler, write the
 * new record — all or nothing.
 *
 * Group commit (default): events are queued, and at the end of the event-loop turn
 * (`setImmediate`, or as soon as `maxBatch` are queued) they are all run in ONE SQLite
 * transaction (`BEGIN IMMEDIATE` ... `COMMIT`: one fsync), each event inside its own SAVEPOINT —
 * a handler that throws rolls back its savepoint only. Every caller is answered only after the
 * COMMIT returned; if the COMMIT (or the BEGIN) fails, the whole batch is rolled back and every
 * caller gets `LogWriteFailed` (retryable). The transaction is opened and committed within one
 * synchronous flush, so no other code of the process — the service's own routes on the same
 * connection — ever runs while it is open: nothing of theirs joins a batch.
 * With `groupCommit: false` each event is flushed alone, at once (a batch of one).
 * better-sqlite3 is synchronous, so nothing else in this process interleaves with a flush;
 * `BEGIN IMMEDIATE` keeps other processes on the same file out as well.
 *
 * Durability split from the write (a file database in WAL mode): the batch commits with
 * `synchronous=NORMAL` (the service's own setting is restored right after), then one
 * `fdatasync` of the WAL file runs — on the event loop while syncs are quick (~0.1 ms) and none
 * is running, else on libuv's thread pool (SyncPlacement) — and only then are the batch's
 * callers answered; batches committed while a sync runs share the next one. So a vote or an ack is
 * never sent before its record is on disk, whatever `synchronous` the service chose for its own
 * writes. A file database with a rollback journal (DELETE, TRUNCATE, PERSIST): the batch commits
 * with `synchronous=EXTRA` (restored right after), so SQLite syncs the journal, the database and,
 * in DELETE mode, the directory of the deleted journal before the COMMIT returns. A database on
 * which no commit can be made durable (`synchronous=OFF`, `journal_mode` MEMORY or OFF) is refused
 * at register (`logDurability`). An in-memory database keeps nothing across a restart.
 */
import type { Database, Statement, Transaction } from 'better-sqlite3'
import { closeSync, constants, fdatasyncSync, openSync } from 'node:fs'
import type { FastifyBaseLogger } from 'fastify'
import { crashPoint, SyncPlacement } from '@fastify-2pc/protocol'
import type { PrepareRequest, Vote } from '@fastify-2pc/protocol'
import { performance } from 'node:perf_hooks'
import { ParticipantLog } from './log.js'
import { traceFields } from './trace.js'
import { transition } from './state-machine.js'
import type { PrepareOutcome, RecordState, Reply, Step } from './state-machine.js'

export interface TransactionContext {
  /** The coordinator's transaction id. */
  readonly id: string
  /** This participant's name. */
  readonly participant: string
  /**
   * The W3C `traceparent` of the callback that carries this event (the coordinator sends a child
   * span of the initiator's trace); undefined for RabbitMQ notices, in-doubt recovery, or a
   * callback without a valid one.
   */
  readonly traceparent?: string
}

export interface PrepareContext extends TransactionContext {
  /** Unix ms after which the coordinator stops waiting for the vote. */
  readonly deadline: number
  /** True when a yes vote also commits (the commit handler runs in the same local transaction). */
  readonly onePhase: boolean
}

/**
 * Makes the change tentative and durable (reserve, don't spend) and votes. Runs inside the
 * local SQLite transaction that also records the vote, so it must be synchronous: a Promise is
 * treated as a failure (vote no).
 */
export type PrepareHandler = (tx: PrepareContext, payload: unknown, db: Database) => Vote
/** Turns the tentative change into the final one. Synchronous, inside the local transaction. */
export type CommitHandler = (tx: TransactionContext, db: Database) => void
/** Undoes the tentative change. Synchronous, inside the local transaction. */
export type AbortHandler = (tx: TransactionContext, db: Database) => void

export interface Handlers {
  prepare: PrepareHandler
  commit: CommitHandler
  abort: AbortHandler
}

/** Thrown out of the handler savepoint to roll back its writes while keeping the step. */
class DiscardHandlerWrites {
  constructor (readonly step: Step) {}
}

/** A commit or abort handler threw; the local transaction was rolled back. */
export class HandlerThrew extends Error {
  constructor (readonly handler: 'commit' | 'abort', cause: unknown) {
    super(`${handler} handler threw`, { cause })
  }
}

/**
 * The batch's local transaction could not be written (BEGIN or COMMIT failed, the database is
 * closed, or SQLite rolled the transaction back): nothing of the batch is visible, retry.
 */
export class LogWriteFailed extends Error {
  constructor (cause: unknown) {
    super(`the participant log could not be written: ${(cause as Error)?.message ?? String(cause)}`, { cause })
    this.name = 'LogWriteFailed'
  }
}

/** Where an event came from (a metrics label). */
export type EventSource = 'http' | 'amqp' | 'recovery'
export type EventKind = 'prepare' | 'commit' | 'abort'

/** Per-event context: where it came from, its trace, the logger of its request. */
export interface EventContext {
  source: EventSource
  traceparent?: string | undefined
  /** A child logger that already carries `txid` (and `traceId`); default: the engine's, with them. */
  logger?: FastifyBaseLogger | undefined
}

export interface FlushStats {
  /** Local transactions committed (or attempted) for callbacks. */
  flushes: number
  /** fdatasyncs of the WAL that made committed batches durable (0 when SQLite syncs itself). */
  syncs: number
  /** Of them (and of failed ones), those run on the event loop instead of the thread pool (SyncPlacement). */
  inlineSyncs: number
  /** Events written by them. */
  events: number
  /** Flushes whose transaction failed (every event of it got `LogWriteFailed`). */
  failedFlushes: number
  lastBatch: number
  maxBatch: number
  lastFlushMs: number
  totalFlushMs: number
  /** Events queued for the next flush right now. */
  pending: number
}

export interface EngineObserver {
  /** After each flush: events in it, its duration (ms), whether it committed. */
  onFlush?: (events: number, ms: number, ok: boolean) => void
  /** After each fdatasync of the WAL: callbacks it made durable, its duration (ms). */
  onSync?: (events: number, ms: number) => void
  /** Once per event, when its caller is answered. `outcome`: the vote, `ok`, an error code in lower case, `handler_failed`, `log_failed`. */
  onEvent?: (kind: EventKind, source: EventSource, outcome: string) => void
}

export interface EngineOptions {
  logger: FastifyBaseLogger
  /** Group commit (default true). */
  groupCommit?: boolean
  /** Events per flush at most (default 128). */
  maxBatch?: number
  /** See the plugin's `inlineSyncMaxMs` (default 1; 0: every sync on the thread pool). */
  inlineSyncMaxMs?: number
  observer?: EngineObserver
  now?: () => number
}

type Settled = { ok: true, value: unknown } | { ok: false, error: unknown }

/**
 * How the SDK's transactions are made durable on `db`:
 * - `wal`: committed with `synchronous=NORMAL`, then the SDK's own fdatasync of the WAL;
 * - `rollback`: committed with `synchronous=EXTRA` (SQLite syncs before the COMMIT returns);
 * - `memory`: an in-memory database, nothing survives a restart anyway;
 * - `{ unsafe }`: no commit on it can be made durable; the reason names the setting to change.
 * `synchronous=OFF` is refused in WAL mode too: the service's own commits would then run SQLite's
 * checkpoints without their fsyncs, and a checkpoint that restarts the WAL can lose records the
 * SDK had synced.
 */
export function logDurability (db: Database): 'wal' | 'rollback' | 'memory' | { unsafe: string } {
  if (db.memory) return 'memory'
  const journal = String(db.pragma('journal_mode', { simple: true })).toLowerCase()
  if (journal !== 'wal' && journal !== 'delete' && journal !== 'truncate' && journal !== 'persist') {
    return { unsafe: `journal_mode=${journal}: a crash in the middle of a commit can leave the database half written. Needed: journal_mode=WAL (db.pragma('journal_mode = WAL'), recommended), or DELETE, TRUNCATE or PERSIST` }
  }
  if (db.pragma('synchronous', { simple: true }) === 0) {
    return { unsafe: "synchronous=OFF: SQLite skips the fsyncs of commits and checkpoints, so a yes vote could be lost in a power cut. Needed: synchronous=NORMAL or higher (db.pragma('synchronous = NORMAL'); FULL is fine too)" }
  }
  return journal === 'wal' ? 'wal' : 'rollback'
}

/** `PRAGMA synchronous` levels the SDK commits its batches with. */
const SYNC_NORMAL = 1
const SYNC_EXTRA = 3

/** How long a batch of commits and aborts may wait for a sync a prepare would start anyway. */
const DECISION_SYNC_DELAY_MS = 2

/** A committed batch whose callers wait for the next sync. */
interface Committed { batch: Job[], results: Settled[] }

interface Job {
  kind: EventKind
  context: EventContext
  txid: string
  /** Runs inside the batch transaction (its own savepoint). */
  work: () => unknown
  /** The metrics outcome of a successful result. */
  outcome: (value: unknown) => string
  /** Runs after the COMMIT, before the caller is answered (crash points). */
  afterCommit?: (() => void) | undefined
  resolve: (value: unknown) => void
  reject: (error: unknown) => void
}

type DecisionEvent = { type: 'commit' } | { type: 'abort' } | { type: 'decision-answer', decision: 'commit' | 'abort' | 'pending' }

const VOTES: ReadonlySet<unknown> = new Set(['yes', 'no', 'read-only'])

function isThenable (value: unknown): boolean {
  return typeof (value as { then?: unknown } | null)?.then === 'function'
}

export class ParticipantEngine {
  readonly name: string
  readonly log: ParticipantLog
  readonly groupCommit: boolean
  readonly maxBatch: number
  readonly #db: Database
  readonly #handlers: Handlers
  readonly #logger: FastifyBaseLogger
  readonly #now: () => number
  readonly #observer: EngineObserver
  readonly #begin
  readonly #commit
  readonly #rollback
  #queue: Job[] = []
  #flushScheduled = false
  readonly #stats: Omit<FlushStats, 'pending'> = { flushes: 0, syncs: 0, inlineSyncs: 0, events: 0, failedFlushes: 0, lastBatch: 0, maxBatch: 0, lastFlushMs: 0, totalFlushMs: 0 }
  /** Our own descriptor of the WAL file, only to fdatasync it; null: SQLite syncs at COMMIT. */
  #walFd: number | null = null
  /** `synchronous` of the SDK's own COMMITs (WAL: NORMAL; rollback journal: EXTRA); undefined: in memory. */
  #commitLevel: number | undefined
  /** Whether each fdatasync runs on the event loop or the thread pool. */
  readonly #syncPlacement: SyncPlacement
  #unsynced: Committed[] = []
  #syncsInFlight: Array<{ covered: Committed[] }> = []
  #lazySync: NodeJS.Timeout | undefined
  #closed = false
  /** Set when an fdatasync failed: nothing is answered as durable any more (restart). */
  #syncFailure: Error | undefined
  readonly #getSynchronous
  readonly #setSynchronous
  readonly #prepareTx: Transaction<(request: PrepareRequest, onePhase: boolean, context: EventContext) => Reply>
  readonly #handlerTx: Transaction<(state: RecordState, request: PrepareRequest, onePhase: boolean, context: PrepareContext) => Step>
  readonly #applyTx: Transaction<(txid: string, event: DecisionEvent, eventContext: EventContext, observe: ((step: Step) => void) | undefined) => Reply>

  constructor (db: Database, name: string, handlers: Handlers, options: EngineOptions) {
    this.name = name
    this.#db = db
    this.#handlers = handlers
    this.#logger = options.logger
    this.#now = options.now ?? Date.now
    this.#observer = options.observer ?? {}
    this.groupCommit = options.groupCommit ?? true
    this.maxBatch = options.maxBatch ?? 128
    this.#syncPlacement = new SyncPlacement(options.inlineSyncMaxMs)
    this.log = new ParticipantLog(db, name)
    this.#begin = db.prepare('BEGIN IMMEDIATE')
    this.#commit = db.prepare('COMMIT')
    this.#rollback = db.prepare('ROLLBACK')
    this.#getSynchronous = db.prepare('PRAGMA synchronous').pluck()
    // One prepared statement per level (0-3): `db.pragma()` would compile one on every batch.
    const setLevel = new Map<number, Statement>()
    this.#setSynchronous = (level: number) => {
      let stmt = setLevel.get(level)
      if (stmt === undefined) {
        if (!Number.isInteger(level) || level < 0 || level > 3) throw new RangeError(`synchronous level ${level}`)
        stmt = db.prepare(`PRAGMA synchronous = ${level}`)
        setLevel.set(level, stmt)
      }
      stmt.run()
    }
    // The local transactions, created once (better-sqlite3 builds four wrapper functions per
    // db.transaction() call: per event that was a tenth of a participant's CPU under load).
    // Inside a batch's open transaction each one runs as a savepoint.
    this.#prepareTx = db.transaction((request: PrepareRequest, onePhase: boolean, context: EventContext): Reply => {
      const state = this.log.stateOf(request.txid)
      const first = transition(state, { type: 'prepare', now: this.#now(), deadline: request.deadline, onePhase })
      const step = first.effects.some(effect => effect.type === 'run-prepare-handler')
        ? this.#runPrepareHandlers(state, request, onePhase, context)
        : first
      if (step.next !== undefined) {
        this.log.write(request.txid, step.next as Exclude<RecordState, 'none'>, step.reply.type === 'vote' ? step.reply.reason ?? null : null, this.#now())
      }
      crashPoint('participant.in-prepare-before-local-commit')
      return step.reply
    })
    this.#handlerTx = db.transaction((state: RecordState, request: PrepareRequest, onePhase: boolean, context: PrepareContext): Step => {
      const vote: unknown = this.#handlers.prepare(context, request.payload, this.#db)
      if (!VOTES.has(vote)) {
        throw new TypeError(isThenable(vote)
          ? 'prepare handler returned a Promise: it must be synchronous, it runs inside a SQLite transaction'
          : `prepare handler returned ${String(vote)}, not 'yes' | 'no' | 'read-only'`)
      }
      if (vote === 'yes' && onePhase) this.#callDecisionHandler('commit', context)
      const step = transition(state, { type: 'prepare-handled', outcome: vote as PrepareOutcome, onePhase })
      if (step.effects.some(effect => effect.type === 'discard-handler-writes')) throw new DiscardHandlerWrites(step)
      return step
    })
    this.#applyTx = db.transaction((txid: string, event: DecisionEvent, eventContext: EventContext, observe: ((step: Step) => void) | undefined): Reply => {
      const step = transition(this.log.stateOf(txid), event)
      const context: TransactionContext = Object.freeze({
        id: txid, participant: this.name, ...(eventContext.traceparent !== undefined ? { traceparent: eventContext.traceparent } : {})
      })
      for (const effect of step.effects) {
        if (effect.type === 'run-commit-handler') this.#callDecisionHandler('commit', context)
        if (effect.type === 'run-abort-handler') this.#callDecisionHandler('abort', context)
      }
      if (step.next !== undefined) this.log.write(txid, step.next as Exclude<RecordState, 'none'>, null, this.#now())
      observe?.(step)
      return step.reply
    })
    const durability = logDurability(db)
    if (typeof durability === 'object') throw new Error(`the participant log would not be durable: ${durability.unsafe}`)
    if (durability === 'wal') {
      this.#commitLevel = SYNC_NORMAL
      this.#walFd = openSync(`${db.name}-wal`, constants.O_RDWR | constants.O_CREAT)
    } else if (durability === 'rollback') {
      this.#commitLevel = SYNC_EXTRA
    }
  }

  /** A copy of the flush counters (group commit: fewer flushes than events). */
  flushStats (): FlushStats {
    return { ...this.#stats, pending: this.#queue.length }
  }

  /** Events queued for the next flush. */
  get pendingEvents (): number {
    return this.#queue.length
  }

  /** Resolves with the vote once the record (and the handler's writes) are committed. */
  async prepare (request: PrepareRequest, context: EventContext = { source: 'http' }): Promise<Reply> {
    const onePhase = request.onePhase === true
    return await this.#enqueue<Reply>('prepare', request.txid, context, () => this.#prepareTx.immediate(request, onePhase, context), replyOutcome,
      () => { crashPoint('participant.after-prepare-before-reply') })
  }

  /** Runs the prepare (and for one-phase, commit) handler in a savepoint; returns the step. */
  #runPrepareHandlers (state: RecordState, request: PrepareRequest, onePhase: boolean, event: EventContext): Step {
    const context: PrepareContext = Object.freeze({
      id: request.txid,
      participant: this.name,
      deadline: request.deadline,
      onePhase,
      ...(event.traceparent !== undefined ? { traceparent: event.traceparent } : {})
    })
    try {
      return this.#handlerTx(state, request, onePhase, context)
    } catch (err) {
      if (err instanceof DiscardHandlerWrites) return err.step
      this.#loggerFor(request.txid, event).error({ err }, 'prepare handler failed: voting no, its writes rolled back')
      return transition(state, { type: 'prepare-handled', outcome: 'threw', onePhase })
    }
  }

  /**
   * Applies commit or abort from the coordinator (an HTTP callback or a RabbitMQ notice: one
   * path); rejects with `HandlerThrew` (nothing changed) or `LogWriteFailed`. `observe` sees the
   * step inside the local transaction (e.g. to tell a first application from a repeat).
   */
  async decide (txid: string, decision: 'commit' | 'abort', observe?: (step: Step) => void, context: EventContext = { source: 'http' }): Promise<Reply> {
    return await this.#enqueue<Reply>(decision, txid, context, () => this.#apply(txid, { type: decision }, context, observe), replyOutcome,
      decision === 'commit' ? () => { crashPoint('participant.after-commit-before-reply') } : undefined)
  }

  /** Applies a decision learned by in-doubt recovery; resolves true when it changed the record. */
  async applyRecovered (txid: string, decision: 'commit' | 'abort'): Promise<boolean> {
    let changed = false
    const context: EventContext = { source: 'recovery' }
    await this.#enqueue<Reply>(decision, txid, context, () => this.#apply(txid, { type: 'decision-answer', decision }, context, step => { changed = step.next !== undefined }), () => 'ok')
    return changed
  }

  #apply (txid: string, event: DecisionEvent, eventContext: EventContext, observe?: (step: Step) => void): Reply {
    return this.#applyTx.immediate(txid, event, eventContext, observe)
  }

  #callDecisionHandler (handler: 'commit' | 'abort', context: TransactionContext): void {
    let result: unknown
    try {
      result = this.#handlers[handler](context, this.#db)
    } catch (err) {
      throw new HandlerThrew(handler, err)
    }
    if (isThenable(result)) {
      throw new HandlerThrew(handler, new TypeError(`${handler} handler returned a Promise: it must be synchronous, it runs inside a SQLite transaction`))
    }
  }

  #loggerFor (txid: string, context: EventContext): FastifyBaseLogger {
    return context.logger ?? this.#logger.child({ txid, ...traceFields(context.traceparent) })
  }

  async #enqueue<T> (kind: EventKind, txid: string, context: EventContext, work: () => T, outcome: (value: T) => string, afterCommit?: () => void): Promise<T> {
    return await new Promise<T>((resolve, reject) => {
      this.#queue.push({
        kind,
        txid,
        context,
        work,
        afterCommit,
        outcome: outcome as (value: unknown) => string,
        resolve: resolve as (value: unknown) => void,
        reject
      })
      if (!this.groupCommit || this.#queue.length >= this.maxBatch) {
        this.flush()
      } else if (!this.#flushScheduled) {
        this.#flushScheduled = true
        setImmediate(() => { this.flush() })
      }
    })
  }

  /**
   * Runs every queued event in ONE local transaction (each in its own savepoint), commits, then
   * answers each caller. Never throws. Called at the end of the turn, when the batch is full,
   * and on close (nothing queued is dropped by a graceful close).
   */
  flush (): void {
    this.#flushScheduled = false
    const batch = this.#queue
    if (batch.length === 0) return
    this.#queue = []
    const started = performance.now()
    const results: Settled[] = []
    let failure: unknown
    let restore: number | undefined
    try {
      if (!this.#db.open) throw new Error('the database is closed')
      // Only possible if code of the service holds a transaction of its own open across an
      // await on this connection: joining it would make our records depend on its COMMIT.
      if (this.#db.inTransaction) throw new Error('the database connection is inside a transaction the SDK did not open')
      if (this.#syncFailure !== undefined) throw this.#syncFailure
      if (this.#commitLevel !== undefined) {
        // WAL: NORMAL, the fdatasync below makes it durable. Rollback journal: EXTRA, SQLite
        // syncs the journal, the database and the journal's directory before COMMIT returns.
        restore = this.#getSynchronous.get() as number
        if (restore !== this.#commitLevel) this.#setSynchronous(this.#commitLevel)
      }
      this.#begin.run()
    } catch (err) {
      failure = err
    }
    if (failure === undefined) {
      for (const job of batch) {
        // Inside the open transaction, better-sqlite3 runs each event's transaction function
        // as a SAVEPOINT: a throw rolls back that event only.
        try {
          results.push({ ok: true, value: job.work() })
        } catch (error) {
          results.push({ ok: false, error })
        }
        if (!this.#db.inTransaction) {
          failure = new Error('SQLite rolled the batch transaction back')
          break
        }
      }
      if (failure === undefined) {
        try {
          this.#commit.run()
        } catch (err) {
          failure = err
        }
      }
      if (failure !== undefined && this.#db.open && this.#db.inTransaction) {
        try { this.#rollback.run() } catch { /* the connection is unusable; the next BEGIN says so */ }
      }
    }
    if (restore !== undefined && restore !== this.#commitLevel && this.#db.open) {
      try { this.#setSynchronous(restore) } catch (err) { failure ??= err }
    }
    const ms = performance.now() - started
    this.#stats.flushes++
    this.#stats.events += batch.length
    this.#stats.lastBatch = batch.length
    this.#stats.maxBatch = Math.max(this.#stats.maxBatch, batch.length)
    this.#stats.lastFlushMs = ms
    this.#stats.totalFlushMs += ms
    if (failure !== undefined) {
      this.#stats.failedFlushes++
      this.#logger.error({ err: failure, events: batch.length }, 'participant log flush failed: nothing of the batch was written, every caller gets a retryable error')
    }
    this.#observer.onFlush?.(batch.length, ms, failure === undefined)
    if (failure === undefined && this.#walFd !== null) {
      this.#unsynced.push({ batch, results })
      this.#syncSoon()
      return
    }
    this.#answer(batch, results, failure)
  }

  /**
   * One fdatasync of the WAL for every batch committed before it starts: inline while syncs are
   * quick and none is running, else on the thread pool (SyncPlacement). Two
   * may run at once (a prepare does not wait behind the sync of a commit that just started);
   * they are settled in the order they started, and one that returns settles the earlier ones
   * too (it flushed everything written before it began).
   */
  #sync (): void {
    if (this.#walFd === null || this.#unsynced.length === 0 || this.#syncsInFlight.length >= 2) return
    clearTimeout(this.#lazySync)
    this.#lazySync = undefined
    const sync = { covered: this.#unsynced }
    this.#unsynced = []
    this.#syncsInFlight.push(sync)
    const settle = (err: NodeJS.ErrnoException | null, ms: number): void => {
      const index = this.#syncsInFlight.indexOf(sync)
      const settled = index < 0 ? [] : this.#syncsInFlight.splice(0, index + 1)
      if (err !== null) this.#syncFailure ??= new Error(`the participant log could not be synced to disk: ${err.message}`, { cause: err })
      else this.#stats.syncs++
      for (const earlier of settled) {
        if (err === null) this.#observer.onSync?.(earlier.covered.reduce((n, c) => n + c.batch.length, 0), ms)
        for (const c of earlier.covered) this.#answer(c.batch, c.results, this.#syncFailure)
      }
      if (this.#closed) {
        if (this.#syncsInFlight.length === 0) this.#closeWal()
      } else {
        this.#syncSoon()
      }
    }
    // Inline while syncs are quick, else on the pool (SyncPlacement); settled on a later tick.
    this.#syncPlacement.sync(this.#walFd, this.#syncsInFlight.length - 1, (err, ms, inline) => {
      if (inline) this.#stats.inlineSyncs++
      settle(err, ms)
    })
  }

  /**
   * A batch with a prepare is synced at once: a coordinator waits for the vote. A batch of
   * commits and aborts only may wait up to DECISION_SYNC_DELAY_MS for the next sync (its callers
   * are still answered only after it): phase 2 runs after the initiator has its answer, and a
   * prepare arriving meanwhile (the next transaction) carries it in its own sync — one fsync
   * instead of two, and no second sync competing for the disk with the prepare's.
   */
  #syncSoon (): void {
    if (this.#unsynced.length === 0) return
    if (this.#unsynced.some(c => c.batch.some(job => job.kind === 'prepare'))) this.#sync()
    else this.#lazySync ??= setTimeout(() => { this.#lazySync = undefined; this.#sync() }, DECISION_SYNC_DELAY_MS)
  }

  /** Writes what is queued and makes everything committed durable, blocking (graceful close). */
  flushAndSync (): void {
    this.flush()
    if (this.#walFd === null) return
    // The syncs still running cover earlier batches; this one covers them too, in order.
    const covered: Committed[] = []
    for (const running of this.#syncsInFlight) {
      covered.push(...running.covered)
      running.covered = []
    }
    covered.push(...this.#unsynced)
    this.#unsynced = []
    if (covered.length === 0) return
    let failure: unknown
    try { fdatasyncSync(this.#walFd) } catch (err) { failure = err }
    if (failure !== undefined) this.#syncFailure ??= new Error(`the participant log could not be synced to disk: ${(failure as Error).message}`, { cause: failure })
    for (const c of covered) this.#answer(c.batch, c.results, this.#syncFailure)
  }

  /** Flushes, syncs and releases the WAL descriptor (the plugin's onClose). */
  close (): void {
    clearTimeout(this.#lazySync)
    this.#lazySync = undefined
    this.flushAndSync()
    this.#closed = true
    if (this.#syncsInFlight.length === 0) this.#closeWal() // else the last running sync's callback closes it
  }

  #closeWal (): void {
    if (this.#walFd !== null) closeSync(this.#walFd)
    this.#walFd = null
  }

  #answer (batch: Job[], results: Settled[], failure: unknown): void {
    for (let i = 0; i < batch.length; i++) {
      const job = batch[i] as Job
      const result = failure === undefined ? results[i] as Settled : { ok: false as const, error: new LogWriteFailed(failure) }
      if (result.ok) {
        job.afterCommit?.()
        this.#settled(job, job.outcome(result.value))
        job.resolve(result.value)
      } else {
        this.#settled(job, result.error instanceof HandlerThrew ? 'handler_failed' : result.error instanceof LogWriteFailed ? 'log_failed' : 'error')
        job.reject(result.error)
      }
    }
  }

  #settled (job: Job, outcome: string): void {
    this.#observer.onEvent?.(job.kind, job.context.source, outcome)
    const level = (job.context.logger ?? this.#logger).level
    if (level === 'debug' || level === 'trace') {
      this.#loggerFor(job.txid, job.context).debug({ event: job.kind, source: job.context.source, outcome }, '2pc event applied')
    }
  }
}

/** The metrics outcome of a reply: the vote, `ok`, or the error code in lower case. */
function replyOutcome (reply: Reply): string {
  switch (reply.type) {
    case 'vote': return reply.vote
    case 'error': return reply.code.toLowerCase()
    default: return 'ok'
  }
}
