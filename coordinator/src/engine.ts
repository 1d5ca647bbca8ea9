/**
 * Over 500 lines: it is the one place where the machine's effects meet the log, the driver, the
 * phase-2 scheduler and the timers, and splitting it would spread the ordering rules it keeps
 * (write before effects, wait for a commit's sync) over several files.
 *
 * The imperative shell around the state machine. For every event: load the record, `step`,
 * save the result, and only once it is written carry out the effects (HTTP calls, timers,
 * answers to waiting initiators). Load-step-save is synchronous, so two events for one
 * transaction never interleave; the effects are asynchronous and come back as new events.
 *
 * Presumed abort decides what must be on disk (fsynced) before the effects run: a commit
 * decision, and whatever an API answer confirms (begin, enlist, abort, operator actions,
 * recovery). Everything else — the one-shot begin, votes, abort decisions, acks — only has to be
 * written (a killed process keeps it); if a power cut takes it back, the transaction is
 * undecided or unknown after the restart and so aborted, which is what anyone was told or
 * would be told.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Decision } from '@fastify-2pc/protocol'
import { crashPoint as defaultCrashPoint, type CrashPoint } from '@fastify-2pc/storage'
import {
  step, newTransaction, isDecided, decisionOf,
  type Effect, type Event, type NewParticipant, type Policy, type RejectCode, type StepResult, type Transaction, type TxMessage
} from './core/machine.js'
import type { LogStore, StepWrites } from './log/log-store.js'
import { TurnEnd } from './turn-end.js'
import type { ParticipantDriver } from './driver.js'
import { newTransactionId } from './ids.js'
import { childTraceparent, traceIdOf } from './trace.js'
import { Errors } from './errors.js'
import { FairScheduler, PHASE2_MAX_IN_FLIGHT_PER_PARTICIPANT, PHASE2_MAX_QUEUED_PER_PARTICIPANT } from './phase2-scheduler.js'

export interface Outcome {
  id: string
  state: 'committed' | 'aborted'
  reason?: string
}

export interface EngineOptions {
  coordinatorId: string
  policy: Policy
  prepareTimeoutMs: number
  phase2TimeoutMs: number
  sweepIntervalMs: number
  /** Phase-2 calls in flight at once; the rest wait their turn (recovery can find thousands). */
  maxConcurrentPhase2: number
  /** Phase-2 calls in flight at once to one participant url (default PHASE2_MAX_IN_FLIGHT_PER_PARTICIPANT). */
  maxConcurrentPhase2PerParticipant?: number
  /** Phase-2 deliveries queued for one participant url; beyond, left to the retry timer (default PHASE2_MAX_QUEUED_PER_PARTICIPANT). */
  maxQueuedPhase2PerParticipant?: number
  logger: FastifyBaseLogger
  now?: () => number
  random?: () => number
  crashPoint?: CrashPoint
  /**
   * Unpublished outbox rows at most: work that would add messages beyond it is refused (503
   * OUTBOX_FULL). Unset: no outbox (no broker), no bound.
   */
  outboxMaxRows?: number
  /** Called after a step wrote to the outbox, so the publisher can flush soon. */
  onOutboxWrite?: () => void
  observer?: EngineObserver
}

/** What the engine reports as it goes (metrics); called only for durable steps. */
export interface EngineObserver {
  begun: () => void
  decided: (decision: Decision, reason: string | null, phase1Ms: number | null) => void
  completed: (phase2Ms: number) => void
  retry: () => void
  attention: (kind: string) => void
}

interface Waiter {
  resolve: (o: Outcome) => void
  reject: (err: Error) => void
}

export class Rejected extends Error {
  constructor (readonly code: RejectCode, readonly tx: Transaction) {
    super(code)
  }
}

/** The side writes of a step that has none (shared: nobody adds to it). */
const NO_WRITES: StepWrites = Object.freeze({ attention: Object.freeze([]) as never[], messages: Object.freeze([]) as never[], notices: Object.freeze([]) as never[] }) as StepWrites

/** Recovery and sweeps work in pages so a large log never blocks the event loop for long. */
const PAGE = 200

export class Engine {
  private readonly waiters = new Map<string, Waiter[]>()
  /** When each transaction in phase 1 started preparing (for the phase-1 latency metric). */
  private readonly preparingSince = new Map<string, number>()
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly inflight = new Set<Promise<void>>()
  /**
   * Commit decisions saved but not yet synced, by transaction: settles with their sync. A request
   * that touches such a transaction waits for it (its answer — "already committed", "nothing to
   * retry", the record — would tell of a commit a power cut could still take back). A failed
   * sync latches the log failed and its entry stays, so later requests hear that failure too.
   */
  private readonly commitsNotSynced = new Map<string, Promise<void>>()
  /** Requests waiting now for a commit decision's sync (read by tests). */
  syncWaits = 0
  /** Phase-2 deliveries: per participant url, taking turns (phase2-scheduler.ts). */
  private readonly phase2: FairScheduler<Phase2Job>
  private sweeper: NodeJS.Timeout | undefined
  private stopped = false
  private readonly now: () => number
  private readonly random: () => number
  private readonly crash: CrashPoint
  recovered = false
  /** The end of each event-loop turn: callbacks out, then the log's write and sync (turn-end.ts). */
  private readonly turn: TurnEnd

  constructor (
    private readonly log: LogStore,
    private readonly driver: ParticipantDriver,
    private readonly options: EngineOptions
  ) {
    this.now = options.now ?? Date.now
    this.random = options.random ?? Math.random
    this.crash = options.crashPoint ?? defaultCrashPoint
    this.turn = new TurnEnd(driver, log)
    this.phase2 = new FairScheduler<Phase2Job>({
      maxInFlight: options.maxConcurrentPhase2,
      maxInFlightPerKey: options.maxConcurrentPhase2PerParticipant ?? PHASE2_MAX_IN_FLIGHT_PER_PARTICIPANT,
      maxQueuedPerKey: options.maxQueuedPhase2PerParticipant ?? PHASE2_MAX_QUEUED_PER_PARTICIPANT
    }, async job => {
      const sent = this.sendDecision(job.id, job.name, job.decision, job.url, job.traceparent)
      this.track(sent)
      await sent
    })
  }

  get logger (): FastifyBaseLogger { return this.options.logger }

  // ---- requests ---------------------------------------------------------------------------

  /** Begins a transaction; with `participants` enlists them in the same forced write. Resolves once it is durable. */
  async begin (timeoutMs: number, metadata: unknown, participants: NewParticipant[] = [], messages: TxMessage[] = [], traceparent: string | null = null): Promise<Transaction> {
    const started = this.start(timeoutMs, metadata, participants, messages, false, traceparent)
    await started.durable
    return started.tx
  }

  /**
   * The one-shot form: begin, enlist and commit-requested folded into one step, saved with one
   * (unforced) write, its prepares sent at once; resolves once the decision is durable.
   */
  async beginAndCommit (timeoutMs: number, metadata: unknown, participants: NewParticipant[], messages: TxMessage[] = [], traceparent: string | null = null): Promise<Outcome> {
    const started = this.start(timeoutMs, metadata, participants, messages, true, traceparent)
    started.durable.catch(() => {}) // a failed write rejects `decided` too
    return await (started.decided as Promise<Outcome>)
  }

  private start (timeoutMs: number, metadata: unknown, participants: NewParticipant[], messages: TxMessage[], commit: boolean, traceparent: string | null):
  { tx: Transaction, durable: Promise<void>, decided?: Promise<Outcome> } {
    this.admit(messages.length)
    const now = this.now()
    const initial = newTransaction(newTransactionId(this.options.coordinatorId, now), now, now + timeoutMs, metadata ?? null, traceparent)
    const events: Event[] = participants.map(p => ({ type: 'enlist', participant: p, now }))
    for (const message of messages) events.push({ type: 'add-message', message, now })
    if (commit) events.push({ type: 'commit-requested', now })
    const result = this.fold(initial, events)
    if (!result.ok) throw new Rejected(result.code, result.tx)
    // Registered before the effects run: an empty transaction is decided as soon as it is durable.
    const waiter = commit ? this.waitForDecision(initial.id) : undefined
    // A one-shot answers only with the decision, which is forced by itself. Its prepares go out
    // now, while the begin is written: the record is in the log's newest view at once (so the
    // decision endpoint says "pending"); the write runs at the end of this event-loop turn or
    // the next (turn-end.ts), so a vote that comes back first is saved after it and
    // written in the same batch, and acted on only once that batch is written; if the write
    // fails or the process dies first, the id is unknown: presumed abort, which is what the
    // participants would hear. Not for a one-phase prepare: that one commits by itself.
    const forced = !commit || isCommitted(result.tx)
    const early = commit && !forced && result.effects.every(e => e.type === 'send-prepare' && !e.onePhase)
    const durable = this.persist(null, result.tx, early ? [] : result.effects, now, forced, early, () => {
      this.crash('coordinator.after-begin')
      this.logger.info({ txid: initial.id, traceId: traceIdOf(traceparent), participants: participants.length, commit }, 'transaction begun')
    })
    if (isCommitted(result.tx)) this.noteCommit(initial.id, durable)
    if (early) this.run(result.tx, result.effects)
    return waiter === undefined ? { tx: result.tx, durable } : { tx: result.tx, durable, decided: waiter.decided }
  }

  /** Registers a waiter for the decision; `cancel` removes this waiter only. */
  private waitForDecision (id: string): { decided: Promise<Outcome>, cancel: () => void } {
    let waiter: Waiter = { resolve: () => {}, reject: () => {} }
    const decided = new Promise<Outcome>((resolve, reject) => { waiter = { resolve, reject } })
    const list = this.waiters.get(id) ?? []
    list.push(waiter)
    this.waiters.set(id, list)
    const cancel = (): void => {
      const rest = (this.waiters.get(id) ?? []).filter(w => w !== waiter)
      if (rest.length === 0) this.waiters.delete(id)
      else this.waiters.set(id, rest)
    }
    return { decided, cancel }
  }

  /**
   * Settles once the commit decision of `id` that is saved but not yet synced is synced; rejects
   * with the log's error if that sync failed. Undefined when there is none (nothing to wait for).
   */
  decisionSynced (id: string): Promise<void> | undefined {
    const pending = this.commitsNotSynced.get(id)
    return pending === undefined ? undefined : this.counted(pending)
  }

  /** Like `decisionSynced`, for every transaction of a page (a list: each one shown as synced). */
  decisionsSynced (ids: Iterable<string>): Promise<void> | undefined {
    let pending: Array<Promise<void>> | undefined
    for (const id of ids) {
      const p = this.commitsNotSynced.get(id)
      if (p !== undefined) (pending ??= []).push(p)
    }
    return pending === undefined ? undefined : this.counted(Promise.all(pending).then(() => {}))
  }

  // A failed sync latched the log: 503 LOG_UNAVAILABLE, as any request now. A batch SQLite
  // refused without latching was rolled back: the decision was never written, nothing to wait for.
  private async counted (p: Promise<void>): Promise<void> {
    this.syncWaits++
    try {
      await p
    } catch (err) {
      const failure = this.log.failure
      if (failure !== undefined) throw new Errors.LOG_UNAVAILABLE(failure.message)
    } finally {
      this.syncWaits--
    }
  }

  /** Keeps a commit decision's durability until it is synced (see commitsNotSynced). */
  private noteCommit (id: string, durable: Promise<void>): void {
    const entry: Promise<void> = durable.then(() => {
      if (this.commitsNotSynced.get(id) === entry) this.commitsNotSynced.delete(id)
    }, (err: unknown) => {
      // A batch SQLite refused is rolled back (the transaction goes on from what is written);
      // a failed sync latches the log: the entry stays, rejected, for later requests.
      if (this.log.failure === undefined && this.commitsNotSynced.get(id) === entry) this.commitsNotSynced.delete(id)
      throw err
    })
    entry.catch(() => {})
    this.commitsNotSynced.set(id, entry)
  }

  /**
   * Refuses new work before it reaches the state machine (nothing is sent, nothing changes in
   * memory): 503 LOG_UNAVAILABLE while the log cannot be written (latched until a restart),
   * 503 OUTBOX_FULL when the outbox could not take `messages` more rows. Decision notices are
   * not new work and never pass here: they are written beyond the bound (see the README).
   */
  private admit (messages: number): void {
    const failure = this.log.failure
    if (failure !== undefined) throw new Errors.LOG_UNAVAILABLE(failure.message)
    const max = this.options.outboxMaxRows
    if (messages > 0 && max !== undefined) {
      const queued = this.log.outboxQueued()
      if (queued + messages > max) throw new Errors.OUTBOX_FULL(queued, max)
    }
  }

  /** The messages a transaction carries (0 if unknown: the step then answers TX_NOT_FOUND). */
  private messagesOf (id: string): number {
    return this.log.loadLatest(id)?.messageCount ?? 0
  }

  /** Applies a request's event; resolves with the new record once it is durable. */
  private async request (id: string, event: Event, messages = 0): Promise<Transaction> {
    const unsynced = this.decisionSynced(id)
    if (unsynced !== undefined) await unsynced
    this.admit(messages)
    // The clock value of the step is the time it is applied (later, when it waited).
    const result = this.apply(id, unsynced === undefined ? event : { ...event, now: this.now() }, true)
    if (!result.ok) throw new Rejected(result.code, result.tx)
    await result.durable
    // Expired before this request: the step aborted it (reason timeout) and refuses the request.
    if (result.refused !== undefined) throw new Rejected(result.refused, result.tx)
    return result.tx
  }

  async enlist (id: string, participant: NewParticipant): Promise<Transaction> {
    return await this.request(id, { type: 'enlist', participant, now: this.now() })
  }

  async addMessage (id: string, message: TxMessage): Promise<Transaction> {
    // Checked against its commit's need: all of its messages, this one included.
    return await this.request(id, { type: 'add-message', message, now: this.now() }, this.messagesOf(id) + 1)
  }

  async abort (id: string): Promise<Transaction> {
    return await this.request(id, { type: 'abort-requested', now: this.now() })
  }

  /** Phase 1 and the decision; resolves once the decision is durable. */
  async commit (id: string): Promise<Outcome> {
    const unsynced = this.decisionSynced(id)
    if (unsynced !== undefined) await unsynced
    this.admit(this.messagesOf(id))
    const waiter = this.waitForDecision(id)
    let result: ReturnType<Engine['apply']>
    try {
      result = this.apply(id, { type: 'commit-requested', now: this.now() }) // the waiter waits for the (forced) decision
    } catch (err) {
      waiter.cancel()
      throw err
    }
    if (!result.ok) {
      waiter.cancel()
      throw new Rejected(result.code, result.tx)
    }
    if (result.refused !== undefined) {
      // Expired before this request: aborted for timeout by this step, and the commit refused.
      waiter.cancel()
      await result.durable
      throw new Rejected(result.refused, result.tx)
    }
    result.durable?.catch(() => {}) // a failed write rejects the waiter too
    return await waiter.decided
  }

  /**
   * Operator: deliver the decision now to every pending or heuristic participant (cancels their
   * backoff timers; a heuristic one restarts as pending). Resolves with the record once durable.
   */
  async operatorRetry (id: string, actor: string): Promise<Transaction> {
    const unsynced = this.decisionSynced(id)
    if (unsynced !== undefined) await unsynced
    this.admit(0)
    const result = this.apply(id, { type: 'operator-retry', actor, now: this.now() }, true)
    if (!result.ok) throw new Rejected(result.code, result.tx)
    // Synchronously, before a timer could fire: the send is already queued by the step.
    for (const p of result.tx.participants) {
      const key = `${id}\u0000${p.name}`
      clearTimeout(this.timers.get(key))
      this.timers.delete(key)
    }
    await result.durable
    this.logger.warn({ txid: id, actor }, 'operator retry')
    return result.tx
  }

  /** Operator: mark a decided transaction handled (see the machine's `operator-resolve`). */
  async operatorResolve (id: string, reason: string, actor: string): Promise<Transaction> {
    const unsynced = this.decisionSynced(id)
    if (unsynced !== undefined) await unsynced
    this.admit(0)
    const result = this.apply(id, { type: 'operator-resolve', actor, reason, now: this.now() }, true)
    if (!result.ok) throw new Rejected(result.code, result.tx)
    for (const p of result.tx.participants) {
      const key = `${id}\u0000${p.name}`
      clearTimeout(this.timers.get(key))
      this.timers.delete(key)
    }
    await result.durable
    this.logger.warn({ txid: id, actor, reason }, 'operator resolved a transaction')
    return result.tx
  }

  /** A participant's ack that came over RabbitMQ: the same event as an HTTP ack. Resolves once durable. */
  async acknowledge (id: string, participant: string, decision: Decision): Promise<'applied' | 'ignored'> {
    const tx = this.log.loadLatest(id)
    if (tx === undefined || decisionOf(tx) !== decision) {
      this.logger.warn({ txid: id, participant, decision, state: tx?.state }, 'ack over RabbitMQ does not match the log; ignored')
      return 'ignored'
    }
    const result = this.apply(id, { type: 'phase2-acked', participant, now: this.now() })
    if (result.ok) {
      await result.durable
      if (result.changed) this.logger.info({ txid: id, participant, decision }, 'phase 2 acked over RabbitMQ')
    }
    return 'applied'
  }

  /**
   * Loads the newest record, steps, and saves; the effects run once the save is written — and
   * fsynced when `forced` or when the step decides commit.
   * Load-step-save is synchronous, so events for one transaction never interleave.
   */
  apply (id: string, event: Event, forced = false): StepResult & { durable?: Promise<void> } {
    const prev = this.log.loadLatest(id)
    if (prev === undefined) throw new NotFound(id)
    const result = step(prev, event, this.options.policy)
    if (!result.ok) return result
    if (!result.changed) {
      this.run(result.tx, result.effects)
      return { ...result, durable: Promise.resolve() }
    }
    if (event.type === 'vote' && !isDecided(prev) && isDecided(result.tx)) this.crash('coordinator.after-votes-before-decision')
    const decidesCommit = !isDecided(prev) && isCommitted(result.tx)
    // A refused request's step (the abort of an expired transaction) is answered: forced too.
    const durable = this.persist(prev, result.tx, result.effects, event.now, forced || decidesCommit || result.refused !== undefined)
    if (decidesCommit) this.noteCommit(id, durable)
    return { ...result, durable }
  }

  private fold (start: Transaction, events: Event[]): StepResult {
    let tx = start
    const effects: Effect[] = []
    for (const event of events) {
      const r = step(tx, event, this.options.policy)
      if (!r.ok) return r
      tx = r.tx
      effects.push(...r.effects)
    }
    return { ok: true, tx, effects, changed: true }
  }

  /**
   * Saves a step (group-committed with the others of this event-loop turn) and, once it is
   * written (`forced`: on disk), carries out its effects. Resolves then; rejects — and fails
   * whoever waits for this transaction's decision — when the log cannot be written.
   */
  private persist (prev: Transaction | null, next: Transaction, effects: Effect[], now: number, forced: boolean, sendsFirst = false, onDurable?: () => void): Promise<void> {
    // Most steps (votes, acks, decisions without messages) write nothing beside the record:
    // they share one empty, frozen set of side writes instead of allocating their own.
    let writes = NO_WRITES
    for (const e of effects) {
      if (e.type !== 'record-attention' && e.type !== 'record-message' && e.type !== 'notify' && e.type !== 'record-audit' && e.type !== 'resolve-attention') continue
      if (writes === NO_WRITES) writes = { attention: [], messages: [], notices: [] }
      if (e.type === 'record-attention') writes.attention.push({ participant: e.participant, kind: e.kind, detail: e.detail })
      else if (e.type === 'record-message') writes.messages.push({ position: e.position, message: e.message })
      else if (e.type === 'notify') writes.notices.push({ participant: e.participant, decision: e.decision })
      else if (e.type === 'record-audit') (writes.audit ??= []).push({ action: e.action, actor: e.actor, reason: e.reason })
      else writes.resolveAttention = e.resolution
    }
    const sideWrites = writes
    // Counted before the save: a save that fills the batch writes it at once.
    if (sendsFirst) this.turn.noteSendsFirst()
    return new Promise<void>((resolve, reject) => {
      this.log.save(prev, next, sideWrites, now, forced, (err?: Error) => {
        if (err !== undefined) {
          this.logger.error({ txid: next.id, err }, 'could not write the log')
          const list = this.waiters.get(next.id)
          this.waiters.delete(next.id)
          for (const w of list ?? []) w.reject(err)
          reject(err)
          return
        }
        onDurable?.()
        this.afterDurable(prev, next, sideWrites, effects)
        resolve()
      })
    })
  }

  private afterDurable (prev: Transaction | null, next: Transaction, writes: StepWrites, effects: Effect[]): void {
    const newlyDecided = (prev === null || !isDecided(prev)) && isDecided(next)
    const observer = this.options.observer
    if (prev === null) observer?.begun()
    if (next.state === 'preparing' && prev?.state !== 'preparing') this.preparingSince.set(next.id, next.updatedAt)
    if (newlyDecided) {
      this.logger.info({ txid: next.id, decision: next.state, reason: next.reason }, 'decision logged')
      const since = this.preparingSince.get(next.id)
      this.preparingSince.delete(next.id)
      observer?.decided(next.state === 'committed' ? 'commit' : 'abort', next.reason, since === undefined ? null : (next.decidedAt ?? 0) - since)
      this.crash('coordinator.after-decision-before-phase2')
    }
    if (next.completedAt !== null && prev?.completedAt == null && next.decidedAt !== null) observer?.completed(next.completedAt - next.decidedAt)
    for (const e of effects) if (e.type === 'record-attention') observer?.attention(e.kind)
    for (const a of writes.attention) {
      this.logger.warn({ txid: next.id, participant: a.participant, kind: a.kind, detail: a.detail }, 'transaction needs attention')
    }
    if (writes.notices.length > 0 || (newlyDecided && next.state === 'committed' && next.messageCount > 0)) {
      this.crash('coordinator.after-outbox-write-before-publish')
      this.options.onOutboxWrite?.()
    }
    this.run(next, effects)
  }

  // ---- effects ----------------------------------------------------------------------------

  private run (tx: Transaction, effects: Effect[]): void {
    for (const effect of effects) {
      // Stopping: answer whoever waits, start nothing new (the restart's recovery resumes it).
      if (this.stopped && effect.type !== 'decided') continue
      switch (effect.type) {
        case 'decided': {
          const outcome: Outcome = { id: tx.id, state: effect.decision === 'commit' ? 'committed' : 'aborted' }
          if (effect.reason !== null) outcome.reason = effect.reason
          const list = this.waiters.get(tx.id)
          this.waiters.delete(tx.id)
          for (const w of list ?? []) w.resolve(outcome)
          break
        }
        case 'send-prepare':
          this.track(this.sendPrepare(tx, effect.participant, effect.onePhase))
          break
        case 'send-decision':
          this.enqueuePhase2(tx.id, effect.participant, effect.decision, participantUrl(tx, effect.participant), tx.traceparent)
          break
        case 'schedule-phase2':
          this.schedule(tx.id, effect.participant, effect.at)
          break
        case 'record-attention':
        case 'record-message':
        case 'notify':
        case 'record-audit':
        case 'resolve-attention':
          break // written by persist, in the same SQLite transaction as the record
      }
    }
  }

  private track (p: Promise<void>): void {
    this.inflight.add(p)
    void p.finally(() => this.inflight.delete(p))
  }

  /** Feeds the answer of an effect back as an event; after stop() the log is closed and the restart's recovery takes over. */
  private feed (id: string, event: Event): void {
    if (this.stopped) return
    try {
      // A failed write is logged by persist(); recovery after a restart redoes the step.
      this.apply(id, event).durable?.catch(() => {})
    } catch (err) {
      this.logger.error({ txid: id, err, event: event.type }, 'could not apply an event')
    }
  }

  private async sendPrepare (tx: Transaction, name: string, onePhase: boolean): Promise<void> {
    const p = tx.participants.find(x => x.name === name)
    if (p === undefined) return
    const timeoutMs = Math.max(1, Math.min(this.options.prepareTimeoutMs, tx.expiresAt - this.now()))
    const body = { txid: tx.id, participant: name, payload: p.payload ?? undefined, deadline: tx.expiresAt, ...(onePhase ? { onePhase: true } : {}) }
    const outcome = await this.driver.prepare(p.url, body, timeoutMs, childTraceparent(tx.traceparent))
    if (outcome.ok) {
      this.logger.debug({ txid: tx.id, participant: name, vote: outcome.vote }, 'vote received')
      this.feed(tx.id, { type: 'vote', participant: name, vote: outcome.vote, ...(outcome.reason !== undefined ? { reason: outcome.reason } : {}), now: this.now() })
    } else {
      this.logger.warn({ txid: tx.id, participant: name, error: outcome.error }, 'prepare failed')
      this.feed(tx.id, { type: 'prepare-failed', participant: name, error: outcome.error, now: this.now() })
    }
  }

  private enqueuePhase2 (id: string, name: string, decision: Decision, url: string, traceparent: string | null): void {
    if (this.phase2.submit(url, { id, name, decision, url, traceparent }) || this.stopped) return
    // This participant's queue is full: the delivery waits for its retry timer instead (the
    // participant stays pending in the log, so nothing is lost), with the usual backoff.
    this.options.observer?.retry()
    const event: Event = { type: 'phase2-failed', participant: name, error: PHASE2_QUEUE_FULL, refused: false, jitter: this.random(), now: this.now() }
    this.track(Promise.resolve().then(() => { this.feed(id, event) }))
  }

  private async sendDecision (id: string, name: string, decision: Decision, url: string, traceparent: string | null): Promise<void> {
    const outcome = await this.driver.decide(url, decision, id, name, this.options.phase2TimeoutMs, childTraceparent(traceparent))
    if (outcome.ok) {
      this.logger.debug({ txid: id, participant: name, decision }, 'phase 2 acked')
      this.feed(id, { type: 'phase2-acked', participant: name, now: this.now() })
      this.crash('coordinator.mid-phase2')
    } else {
      this.logger.warn({ txid: id, participant: name, decision, error: outcome.error, refused: outcome.refused }, 'phase 2 delivery failed')
      if (!outcome.refused) this.options.observer?.retry()
      this.feed(id, { type: 'phase2-failed', participant: name, error: outcome.error, refused: outcome.refused, ...(outcome.attention !== undefined ? { attention: outcome.attention } : {}), jitter: this.random(), now: this.now() })
    }
  }

  private schedule (id: string, name: string, at: number): void {
    if (this.stopped) return
    const key = `${id}\u0000${name}`
    clearTimeout(this.timers.get(key))
    const timer = setTimeout(() => {
      this.timers.delete(key)
      this.feed(id, { type: 'phase2-due', participant: name, now: this.now() })
    }, Math.max(0, at - this.now()))
    this.timers.set(key, timer)
  }

  // ---- background work ---------------------------------------------------------------------

  /**
   * Start-up recovery. Presumed abort: every undecided transaction is aborted and whoever may
   * have prepared is told; every decided one with unacked participants resumes phase 2.
   */
  async recover (): Promise<{ aborted: number, resumed: number }> {
    // Decided ones first: the undecided ones aborted below send their own abort notices.
    const resumed = await this.forEachPage(after => this.log.unfinishedIds(after, PAGE))
    const aborted = await this.forEachPage(after => this.log.undecidedIds(after, PAGE))
    this.recovered = true
    this.logger.info({ aborted, resumed }, 'recovery done')
    return { aborted, resumed }
  }

  private async forEachPage (page: (afterId: string) => string[]): Promise<number> {
    let count = 0
    let after = ''
    for (;;) {
      const ids = page(after)
      const durable: Array<Promise<void>> = []
      for (const id of ids) {
        try {
          const r = this.apply(id, { type: 'recovered', now: this.now() }, true)
          if (r.ok && r.durable !== undefined) durable.push(r.durable.catch(() => {}))
        } catch (err) {
          this.logger.error({ txid: id, err }, 'could not recover a transaction')
        }
      }
      // Readiness and `coordinator.started` come after recovery's own decisions are on disk.
      await Promise.all(durable)
      count += ids.length
      if (ids.length < PAGE) return count
      after = ids[ids.length - 1] as string
      await yieldToLoop()
    }
  }

  startSweeper (): void {
    this.sweeper = setInterval(() => this.sweep(), this.options.sweepIntervalMs)
  }

  /** Aborts active/preparing transactions past their expiry, a bounded page per tick. */
  sweep (): number {
    // A log that cannot be written would refuse every expiry (the restart's recovery aborts them).
    if (this.stopped || this.log.failure !== undefined) return 0
    const ids = this.log.expiredIds(this.now(), PAGE)
    for (const id of ids) this.feed(id, { type: 'expired', now: this.now() })
    return ids.length
  }

  /** Stops timers and new calls, then waits (bounded by the calls' own timeouts) for calls in flight. */
  async stop (): Promise<void> {
    this.stopped = true
    this.turn.writeAndSync()
    clearInterval(this.sweeper)
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
    this.phase2.stop()
    await Promise.allSettled([...this.inflight])
  }
}

/** A phase-2 delivery waiting for its turn. */
interface Phase2Job { id: string, name: string, decision: Decision, url: string, traceparent: string | null }

/** lastError of a delivery left to the retry timer because its participant's queue was full. */
const PHASE2_QUEUE_FULL = 'not sent: the phase-2 queue of this participant is full'

export class NotFound extends Error {
  constructor (readonly id: string) { super(`transaction ${id} not found`) }
}

function isCommitted (tx: Transaction): boolean {
  return tx.state === 'committed'
}

function participantUrl (tx: Transaction, name: string): string {
  return tx.participants.find(p => p.name === name)?.url ?? ''
}

async function yieldToLoop (): Promise<void> {
  await new Promise(resolve => setImmediate(resolve))
}
