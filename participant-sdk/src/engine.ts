/**
 * Applies state-machine steps to the participant log and the user's handlers, each event in ONE
 * local SQLite transaction: read the record, decide, run the handlers, write the new record.
 * better-sqlite3 is synchronous, so nothing else in this process interleaves with that
 * transaction; `BEGIN IMMEDIATE` keeps other processes on the same file out as well.
 */
import type { Database } from 'better-sqlite3'
import type { FastifyBaseLogger } from 'fastify'
import { crashPoint } from '@fastify-2pc/protocol'
import type { PrepareRequest, Vote } from '@fastify-2pc/protocol'
import { ParticipantLog } from './log.js'
import { transition } from './state-machine.js'
import type { PrepareOutcome, RecordState, Reply, Step } from './state-machine.js'

export interface TransactionContext {
  /** The coordinator's transaction id. */
  readonly id: string
  /** This participant's name. */
  readonly participant: string
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

const VOTES: ReadonlySet<unknown> = new Set(['yes', 'no', 'read-only'])

function isThenable (value: unknown): boolean {
  return typeof (value as { then?: unknown } | null)?.then === 'function'
}

export class ParticipantEngine {
  readonly name: string
  readonly log: ParticipantLog
  readonly #db: Database
  readonly #handlers: Handlers
  readonly #logger: FastifyBaseLogger
  readonly #now: () => number

  constructor (db: Database, name: string, handlers: Handlers, logger: FastifyBaseLogger, now: () => number = Date.now) {
    this.name = name
    this.#db = db
    this.#handlers = handlers
    this.#logger = logger
    this.#now = now
    this.log = new ParticipantLog(db, name)
  }

  prepare (request: PrepareRequest): Reply {
    const onePhase = request.onePhase === true
    const run = this.#db.transaction((): Reply => {
      const state = this.log.stateOf(request.txid)
      const first = transition(state, { type: 'prepare', now: this.#now(), deadline: request.deadline, onePhase })
      const step = first.effects.some(effect => effect.type === 'run-prepare-handler')
        ? this.#runPrepareHandlers(state, request, onePhase)
        : first
      if (step.next !== undefined) {
        this.log.write(request.txid, step.next as Exclude<RecordState, 'none'>, step.reply.type === 'vote' ? step.reply.reason ?? null : null, this.#now())
      }
      crashPoint('participant.in-prepare-before-local-commit')
      return step.reply
    })
    const reply = run.immediate()
    crashPoint('participant.after-prepare-before-reply')
    return reply
  }

  /** Runs the prepare (and for one-phase, commit) handler in a savepoint; returns the step. */
  #runPrepareHandlers (state: RecordState, request: PrepareRequest, onePhase: boolean): Step {
    const context: PrepareContext = Object.freeze({ id: request.txid, participant: this.name, deadline: request.deadline, onePhase })
    const savepoint = this.#db.transaction((): Step => {
      const vote: unknown = this.#handlers.prepare(context, request.payload, this.#db)
      if (!VOTES.has(vote)) {
        throw new TypeError(isThenable(vote)
          ? 'prepare handler returned a Promise: it must be synchronous, it runs inside a SQLite transaction'
          : `prepare handler returned ${String(vote)}, not 'yes' | 'no' | 'read-only'`)
      }
      if (vote === 'yes' && onePhase) this.#callDecisionHandler('commit', { id: request.txid, participant: this.name })
      const step = transition(state, { type: 'prepare-handled', outcome: vote as PrepareOutcome, onePhase })
      if (step.effects.some(effect => effect.type === 'discard-handler-writes')) throw new DiscardHandlerWrites(step)
      return step
    })
    try {
      return savepoint()
    } catch (err) {
      if (err instanceof DiscardHandlerWrites) return err.step
      this.#logger.error({ err, txid: request.txid }, 'prepare handler failed: voting no, its writes rolled back')
      return transition(state, { type: 'prepare-handled', outcome: 'threw', onePhase })
    }
  }

  /**
   * Applies commit or abort from the coordinator (an HTTP callback or a RabbitMQ notice: one
   * path); throws `HandlerThrew` (nothing changed). `observe` sees the step inside the local
   * transaction (e.g. to tell a first application from a repeat).
   */
  decide (txid: string, decision: 'commit' | 'abort', observe?: (step: Step) => void): Reply {
    const reply = this.#apply(txid, { type: decision }, observe)
    if (decision === 'commit') crashPoint('participant.after-commit-before-reply')
    return reply
  }

  /** Applies a decision learned by in-doubt recovery; true when it changed the record. */
  applyRecovered (txid: string, decision: 'commit' | 'abort' | 'pending'): boolean {
    let changed = false
    this.#apply(txid, { type: 'decision-answer', decision }, step => { changed = step.next !== undefined })
    return changed
  }

  #apply (txid: string, event: { type: 'commit' } | { type: 'abort' } | { type: 'decision-answer', decision: 'commit' | 'abort' | 'pending' }, observe?: (step: Step) => void): Reply {
    const run = this.#db.transaction((): Reply => {
      const step = transition(this.log.stateOf(txid), event)
      const context: TransactionContext = Object.freeze({ id: txid, participant: this.name })
      for (const effect of step.effects) {
        if (effect.type === 'run-commit-handler') this.#callDecisionHandler('commit', context)
        if (effect.type === 'run-abort-handler') this.#callDecisionHandler('abort', context)
      }
      if (step.next !== undefined) this.log.write(txid, step.next as Exclude<RecordState, 'none'>, null, this.#now())
      observe?.(step)
      return step.reply
    })
    return run.immediate()
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
}
