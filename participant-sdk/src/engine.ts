/**
 * Applies state-machine steps to the participant records and the user's handlers. Each event (a
 * prepare, commit or abort callback over HTTP, a RabbitMQ decision notice, a decision learned by
 * in-doubt recovery) runs in ONE local unit: read the record, decide, run the handler, write the
 * new record — all or nothing.
 *
 * Group commit (default): events are queued, and at the end of the event-loop turn
 * (`setImmediate`, or as soon as `maxBatch` are queued) they are all run in ONE local
 * transaction of the store (SQLite: `BEGIN IMMEDIATE` ... `COMMIT`, one fsync), each event inside
 * its own savepoint — a handler that throws rolls back its savepoint only. Every caller is
 * answered only after the COMMIT returned and the store made it durable (`whenDurable`); if the
 * COMMIT (or the BEGIN) fails, the whole batch is rolled back and every caller gets
 * `LogWriteFailed` (retryable). With `groupCommit: false` each event is flushed alone, at once (a
 * batch of one).
 *
 * The engine talks to the store's interfaces only (store/store.ts); its logic is written as steps
 * (store/steps.ts) that run synchronously on a synchronous store (SQLite: a batch is opened and
 * committed within one synchronous flush, so no other code of the process — the service's own
 * routes on the same connection — ever runs while it is open: nothing of theirs joins a batch),
 * and continue asynchronously on a store that answers with promises.
 */
import type { Database } from 'better-sqlite3'
import type { FastifyBaseLogger } from 'fastify'
import { crashPoint } from '@fastify-2pc/protocol'
import type { PrepareRequest, Vote } from '@fastify-2pc/protocol'
import { performance } from 'node:perf_hooks'
import { traceFields } from './trace.js'
import { transition } from './state-machine.js'
import type { PrepareOutcome, RecordState, Reply, Step } from './state-machine.js'
import type { ParticipantRecords, ParticipantStore, StoreTransaction } from './store/store.js'
import { drive, isThenable } from './store/steps.js'
import type { Steps } from './store/steps.js'

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
 * treated as a failure (vote no). (A store with asynchronous transactions would pass its client
 * instead of `db` and await the handler: see store/store.ts.)
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

/** What one batch's local transaction came to: a result per event, or a failure of the whole. */
interface BatchOutcome { results: Settled[], failure: unknown }

type Tx = StoreTransaction<Database>

interface Job {
  kind: EventKind
  context: EventContext
  txid: string
  /** The event's steps inside the batch transaction (its own savepoint). */
  work: (tx: Tx) => Steps<unknown>
  /** The metrics outcome of a successful result. */
  outcome: (value: unknown) => string
  /** Runs after the COMMIT, before the caller is answered (crash points). */
  afterCommit?: (() => void) | undefined
  resolve: (value: unknown) => void
  reject: (error: unknown) => void
}

type DecisionEvent = { type: 'commit' } | { type: 'abort' } | { type: 'decision-answer', decision: 'commit' | 'abort' | 'pending' }

const VOTES: ReadonlySet<unknown> = new Set(['yes', 'no', 'read-only'])

export class ParticipantEngine {
  readonly name: string
  /** The participant's records in the store (reads outside callbacks: recovery, metrics, stateOf). */
  readonly records: ParticipantRecords<Database>
  readonly groupCommit: boolean
  readonly maxBatch: number
  readonly #handlers: Handlers
  readonly #logger: FastifyBaseLogger
  readonly #now: () => number
  readonly #observer: EngineObserver
  #queue: Job[] = []
  #flushScheduled = false
  /** A batch of an asynchronous store is being written (never set on SQLite: flush() writes at once). */
  #writing = false
  readonly #stats: Omit<FlushStats, 'pending' | 'syncs' | 'inlineSyncs'> = { flushes: 0, events: 0, failedFlushes: 0, lastBatch: 0, maxBatch: 0, lastFlushMs: 0, totalFlushMs: 0 }

  /** Opens `name`'s records in `store` (SQLite: refuses a database on which nothing is durable). */
  constructor (store: ParticipantStore<Database>, name: string, handlers: Handlers, options: EngineOptions) {
    this.name = name
    this.#handlers = handlers
    this.#logger = options.logger
    this.#now = options.now ?? Date.now
    this.#observer = options.observer ?? {}
    this.groupCommit = options.groupCommit ?? true
    this.maxBatch = options.maxBatch ?? 128
    this.records = store.open(name, {
      ...(options.inlineSyncMaxMs !== undefined ? { inlineSyncMaxMs: options.inlineSyncMaxMs } : {}),
      onSync: (events, ms) => this.#observer.onSync?.(events, ms)
    })
  }

  /** A copy of the flush counters (group commit: fewer flushes than events). */
  flushStats (): FlushStats {
    return { ...this.#stats, ...this.records.syncStats(), pending: this.#queue.length }
  }

  /** Events queued for the next flush. */
  get pendingEvents (): number {
    return this.#queue.length
  }

  /** Resolves with the vote once the record (and the handler's writes) are committed. */
  async prepare (request: PrepareRequest, context: EventContext = { source: 'http' }): Promise<Reply> {
    const onePhase = request.onePhase === true
    return await this.#enqueue<Reply>('prepare', request.txid, context, tx => this.#prepareSteps(tx, request, onePhase, context), replyOutcome,
      () => { crashPoint('participant.after-prepare-before-reply') })
  }

  * #prepareSteps (tx: Tx, request: PrepareRequest, onePhase: boolean, context: EventContext): Steps<Reply> {
    const state = (yield tx.stateOf(request.txid)) as RecordState
    const first = transition(state, { type: 'prepare', now: this.#now(), deadline: request.deadline, onePhase })
    const step = first.effects.some(effect => effect.type === 'run-prepare-handler')
      ? yield * this.#runPrepareHandlers(tx, state, request, onePhase, context)
      : first
    if (step.next !== undefined) {
      yield tx.write(request.txid, step.next as Exclude<RecordState, 'none'>, step.reply.type === 'vote' ? step.reply.reason ?? null : null, this.#now())
    }
    crashPoint('participant.in-prepare-before-local-commit')
    return step.reply
  }

  /** Runs the prepare (and for one-phase, commit) handler in a savepoint; returns the step. */
  * #runPrepareHandlers (tx: Tx, state: RecordState, request: PrepareRequest, onePhase: boolean, event: EventContext): Steps<Step> {
    const context: PrepareContext = Object.freeze({
      id: request.txid,
      participant: this.name,
      deadline: request.deadline,
      onePhase,
      ...(event.traceparent !== undefined ? { traceparent: event.traceparent } : {})
    })
    try {
      yield tx.savepoint()
      try {
        const step = this.#callPrepareHandler(tx, state, request, onePhase, context)
        yield tx.release()
        return step
      } catch (err) {
        if (tx.active) yield tx.rollbackToSavepoint()
        throw err
      }
    } catch (err) {
      if (err instanceof DiscardHandlerWrites) return err.step
      this.#loggerFor(request.txid, event).error({ err }, 'prepare handler failed: voting no, its writes rolled back')
      return transition(state, { type: 'prepare-handled', outcome: 'threw', onePhase })
    }
  }

  /**
   * The handler seam: SQLite handlers are synchronous (a Promise would outlive the local
   * transaction), so this is a plain call. A store whose transactions are asynchronous would make
   * this a step that yields the handler's result, so that the driver awaits it inside the
   * handler's savepoint (store/store.ts).
   */
  #callPrepareHandler (tx: Tx, state: RecordState, request: PrepareRequest, onePhase: boolean, context: PrepareContext): Step {
    const vote: unknown = this.#handlers.prepare(context, request.payload, tx.connection)
    if (!VOTES.has(vote)) {
      throw new TypeError(isThenable(vote)
        ? 'prepare handler returned a Promise: it must be synchronous, it runs inside a SQLite transaction'
        : `prepare handler returned ${String(vote)}, not 'yes' | 'no' | 'read-only'`)
    }
    if (vote === 'yes' && onePhase) this.#callDecisionHandler('commit', context, tx)
    const step = transition(state, { type: 'prepare-handled', outcome: vote as PrepareOutcome, onePhase })
    if (step.effects.some(effect => effect.type === 'discard-handler-writes')) throw new DiscardHandlerWrites(step)
    return step
  }

  /**
   * Applies commit or abort from the coordinator (an HTTP callback or a RabbitMQ notice: one
   * path); rejects with `HandlerThrew` (nothing changed) or `LogWriteFailed`. `observe` sees the
   * step inside the local transaction (e.g. to tell a first application from a repeat).
   */
  async decide (txid: string, decision: 'commit' | 'abort', observe?: (step: Step) => void, context: EventContext = { source: 'http' }): Promise<Reply> {
    return await this.#enqueue<Reply>(decision, txid, context, tx => this.#applySteps(tx, txid, { type: decision }, context, observe), replyOutcome,
      decision === 'commit' ? () => { crashPoint('participant.after-commit-before-reply') } : undefined)
  }

  /** Applies a decision learned by in-doubt recovery; resolves true when it changed the record. */
  async applyRecovered (txid: string, decision: 'commit' | 'abort'): Promise<boolean> {
    let changed = false
    const context: EventContext = { source: 'recovery' }
    await this.#enqueue<Reply>(decision, txid, context, tx => this.#applySteps(tx, txid, { type: 'decision-answer', decision }, context, step => { changed = step.next !== undefined }), () => 'ok')
    return changed
  }

  * #applySteps (tx: Tx, txid: string, event: DecisionEvent, eventContext: EventContext, observe: ((step: Step) => void) | undefined): Steps<Reply> {
    const step = transition((yield tx.stateOf(txid)) as RecordState, event)
    const context: TransactionContext = Object.freeze({
      id: txid, participant: this.name, ...(eventContext.traceparent !== undefined ? { traceparent: eventContext.traceparent } : {})
    })
    for (const effect of step.effects) {
      if (effect.type === 'run-commit-handler') this.#callDecisionHandler('commit', context, tx)
      if (effect.type === 'run-abort-handler') this.#callDecisionHandler('abort', context, tx)
    }
    if (step.next !== undefined) yield tx.write(txid, step.next as Exclude<RecordState, 'none'>, null, this.#now())
    observe?.(step)
    return step.reply
  }

  /** Synchronous, like the prepare handler (the same seam for an asynchronous store). */
  #callDecisionHandler (handler: 'commit' | 'abort', context: TransactionContext, tx: Tx): void {
    let result: unknown
    try {
      result = this.#handlers[handler](context, tx.connection)
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

  async #enqueue<T> (kind: EventKind, txid: string, context: EventContext, work: (tx: Tx) => Steps<T>, outcome: (value: T) => string, afterCommit?: () => void): Promise<T> {
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
   * answers each caller once the store made it durable. Never throws. Called at the end of the
   * turn, when the batch is full, and on close (nothing queued is dropped by a graceful close).
   * On a synchronous store (SQLite) the batch is written before flush() returns.
   */
  flush (): void {
    this.#flushScheduled = false
    // An asynchronous store's batch is still open: one local transaction at a time; what is
    // queued meanwhile is flushed when it ends.
    if (this.#writing) return
    const batch = this.#queue
    if (batch.length === 0) return
    this.#queue = []
    const started = performance.now()
    const outcome = drive(this.#batchSteps(batch))
    if (!isThenable(outcome)) {
      this.#flushed(batch, started, outcome)
      return
    }
    // An asynchronous store: one promise for the whole batch (its steps never reject).
    this.#writing = true
    void outcome.then(done => {
      this.#writing = false
      this.#flushed(batch, started, done)
      this.flush()
    })
  }

  * #batchSteps (batch: Job[]): Steps<BatchOutcome> {
    const results: Settled[] = []
    let tx: Tx
    try {
      tx = (yield this.records.begin()) as Tx
    } catch (failure) {
      return { results, failure }
    }
    let failure: unknown
    for (const job of batch) {
      // Each event in its own savepoint: a throw rolls back that event only. (Written out here
      // rather than delegated to a helper: one generator less per callback on the hot path.)
      try {
        yield tx.savepoint()
        try {
          const value = yield * job.work(tx)
          yield tx.release()
          results.push({ ok: true, value })
        } catch (error) {
          if (tx.active) yield tx.rollbackToSavepoint()
          throw error
        }
      } catch (error) {
        results.push({ ok: false, error })
      }
      if (!tx.active) {
        failure = new Error('SQLite rolled the batch transaction back')
        break
      }
    }
    try {
      yield failure === undefined ? tx.commit() : tx.rollback()
    } catch (err) {
      failure ??= err
    }
    return { results, failure }
  }

  #flushed (batch: Job[], started: number, { results, failure }: BatchOutcome): void {
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
    if (failure !== undefined) {
      this.#answer(batch, results, failure)
      return
    }
    // A batch with a prepare is urgent: a coordinator waits for the vote.
    this.records.whenDurable(batch.some(job => job.kind === 'prepare'), batch.length, syncFailure => { this.#answer(batch, results, syncFailure) })
  }

  /** Writes what is queued and makes everything committed durable, blocking (graceful close). */
  flushAndSync (): void {
    this.flush()
    this.records.syncNow()
  }

  /** Flushes, syncs and releases what the records hold (the plugin's onClose). */
  close (): void {
    this.flush()
    this.records.close()
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
