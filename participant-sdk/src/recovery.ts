/**
 * In-doubt recovery: a participant that voted yes cannot decide alone, so it asks the
 * coordinator (`GET /v1/transactions/:id/decision`) and applies the answer.
 *
 * - A full pass asks about every prepared record (after the server listens, and whenever
 *   `recover()` is called, e.g. on a "coordinator restarted" notice).
 * - A timer then asks again about records prepared longer than `inDoubtAfterMs`, each on its own
 *   capped exponential backoff, at most `maxQueriesPerTick` questions per tick.
 * Passes never overlap; `stop()` cancels the timer and the request in flight.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { CoordinatorClient } from './client.js'
import type { ParticipantEngine } from './engine.js'
import { recoveryDelayMs } from './state-machine.js'
import { mustBeSync } from './store/steps.js'

export interface RecoveryOptions {
  inDoubtAfterMs: number
  baseDelayMs: number
  maxDelayMs: number
  /** Questions asked per timer tick (and rows read per page). */
  maxQueriesPerTick: number
  /** Settled records older than this are pruned, a bounded batch per tick. */
  retentionMs: number
  /** Records deleted per tick at most (default 500). */
  pruneBatchSize?: number
  /** Observer of each decision query's result (metrics). */
  onQuery?: (result: 'committed' | 'aborted' | 'pending' | 'failed') => void
  /** Observer of each pruning batch (metrics): records deleted. */
  onPrune?: (deleted: number) => void
}

export interface InDoubtTransaction {
  txid: string
  /** When this participant voted yes (unix ms). */
  preparedAt: number
  /** Decision queries made for it since this process started. */
  attempts: number
  /** Earliest time of the next automatic query (unix ms). */
  nextCheckAt: number
  /** Why the last query did not settle it (`pending`, or an error message). */
  lastResult?: string
}

export interface RecoveryReport {
  checked: number
  committed: number
  aborted: number
  pending: number
  failed: number
}

interface Schedule { attempts: number, nextCheckAt: number, lastResult?: string }

/** Schedules kept in memory at most; beyond, a record just waits for the next cursor round. */
const MAX_TRACKED = 100_000
const PRUNE_BATCH = 500

export class InDoubtRecovery {
  readonly #engine: ParticipantEngine
  readonly #client: CoordinatorClient
  readonly #logger: FastifyBaseLogger
  readonly #options: RecoveryOptions
  readonly #schedules = new Map<string, Schedule>()
  readonly #abort = new AbortController()
  #timer: NodeJS.Timeout | undefined
  #cursor = ''
  #running: Promise<unknown> = Promise.resolve()
  #stopped = false

  constructor (engine: ParticipantEngine, client: CoordinatorClient, logger: FastifyBaseLogger, options: RecoveryOptions) {
    this.#engine = engine
    this.#client = client
    this.#logger = logger
    this.#options = options
  }

  /** Starts the full pass and the periodic re-checks. */
  start (): void {
    if (this.#stopped || this.#timer !== undefined) return
    this.recover().catch(err => this.#logger.error({ err }, 'in-doubt recovery pass failed'))
    this.#schedule()
  }

  /** Asks about every prepared transaction now, ignoring backoff; passes are serialized. */
  async recover (): Promise<RecoveryReport> {
    return await this.#serialize(async () => await this.#fullPass())
  }

  inDoubt (limit: number): InDoubtTransaction[] {
    const records = mustBeSync(this.#engine.records.prepared('', limit), 'inDoubt')
    return records.map(record => {
      const schedule = this.#schedules.get(record.txid)
      const item: InDoubtTransaction = {
        txid: record.txid,
        preparedAt: record.updatedAt,
        attempts: schedule?.attempts ?? 0,
        nextCheckAt: schedule?.nextCheckAt ?? record.updatedAt + this.#options.inDoubtAfterMs
      }
      if (schedule?.lastResult !== undefined) item.lastResult = schedule.lastResult
      return item
    })
  }

  /** Drops the backoff state of a transaction settled by a callback. */
  forget (txid: string): void {
    this.#schedules.delete(txid)
  }

  async stop (): Promise<void> {
    this.#stopped = true
    if (this.#timer !== undefined) clearTimeout(this.#timer)
    this.#abort.abort()
    await this.#running.catch(() => {})
  }

  async #serialize<T> (work: () => Promise<T>): Promise<T> {
    const next = this.#running.catch(() => {}).then(work)
    this.#running = next
    return await next
  }

  #schedule (): void {
    if (this.#stopped) return
    const tickMs = Math.max(20, Math.min(this.#options.baseDelayMs, this.#options.inDoubtAfterMs))
    this.#timer = setTimeout(() => {
      this.#serialize(async () => await this.#tick())
        .catch(err => this.#logger.error({ err }, 'in-doubt recovery tick failed'))
        .finally(() => this.#schedule())
    }, tickMs)
    this.#timer.unref()
  }

  async #fullPass (): Promise<RecoveryReport> {
    const report: RecoveryReport = { checked: 0, committed: 0, aborted: 0, pending: 0, failed: 0 }
    let after = ''
    // Pages through all prepared records; each page advances the cursor, so this ends.
    while (!this.#stopped) {
      const page = await this.#engine.records.prepared(after, this.#options.maxQueriesPerTick)
      for (const record of page) {
        if (this.#stopped) break
        await this.#ask(record.txid, report)
      }
      if (page.length < this.#options.maxQueriesPerTick) break
      after = (page[page.length - 1] as { txid: string }).txid
    }
    if (report.checked > 0) this.#logger.info({ ...report }, 'in-doubt recovery pass done')
    return report
  }

  /** One bounded slice of the periodic work: due re-checks, then a pruning batch. */
  async #tick (): Promise<void> {
    const now = Date.now()
    const page = await this.#engine.records.prepared(this.#cursor, this.#options.maxQueriesPerTick)
    this.#cursor = page.length < this.#options.maxQueriesPerTick ? '' : (page[page.length - 1] as { txid: string }).txid
    const report: RecoveryReport = { checked: 0, committed: 0, aborted: 0, pending: 0, failed: 0 }
    for (const record of page) {
      if (this.#stopped) return
      if (now - record.updatedAt < this.#options.inDoubtAfterMs) continue
      const schedule = this.#schedules.get(record.txid)
      if (schedule !== undefined && schedule.nextCheckAt > now) continue
      await this.#ask(record.txid, report)
    }
    this.prune(now)
  }

  /** Deletes one bounded batch of settled records older than the retention; returns how many. */
  prune (now = Date.now()): number {
    const deleted = mustBeSync(this.#engine.records.prune(now - this.#options.retentionMs, this.#options.pruneBatchSize ?? PRUNE_BATCH), 'prune')
    this.#options.onPrune?.(deleted)
    if (deleted > 0) this.#logger.debug({ deleted }, 'pruned settled participant-log records')
    return deleted
  }

  async #ask (txid: string, report: RecoveryReport): Promise<void> {
    report.checked++
    let decision: 'commit' | 'abort' | 'pending'
    try {
      decision = (await this.#client.decision(txid, { signal: this.#abort.signal })).decision
    } catch (err) {
      if (this.#stopped) return
      report.failed++
      this.#options.onQuery?.('failed')
      this.#backOff(txid, (err as Error).message)
      this.#logger.warn({ err, txid }, 'in-doubt recovery: could not get the decision; will ask again')
      return
    }
    if (decision === 'pending') {
      report.pending++
      this.#options.onQuery?.('pending')
      this.#backOff(txid, 'pending')
      return
    }
    try {
      await this.#engine.applyRecovered(txid, decision)
      this.#schedules.delete(txid)
      if (decision === 'commit') report.committed++
      else report.aborted++
      this.#options.onQuery?.(decision === 'commit' ? 'committed' : 'aborted')
      this.#logger.info({ txid, decision }, 'in-doubt transaction resolved from the coordinator')
    } catch (err) {
      report.failed++
      this.#options.onQuery?.('failed')
      this.#backOff(txid, (err as Error).message)
      this.#logger.error({ err, txid, decision }, 'in-doubt recovery: applying the decision failed; will retry')
    }
  }

  #backOff (txid: string, lastResult: string): void {
    const previous = this.#schedules.get(txid)
    if (previous === undefined && this.#schedules.size >= MAX_TRACKED) return
    const attempts = (previous?.attempts ?? 0) + 1
    const delay = recoveryDelayMs(attempts - 1, this.#options.baseDelayMs, this.#options.maxDelayMs, Math.random())
    this.#schedules.set(txid, { attempts, nextCheckAt: Date.now() + delay, lastResult })
  }
}
