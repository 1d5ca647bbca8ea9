/**
 * Retention: completed transactions older than TWOPC_RETENTION are deleted in bounded batches,
 * with their participants, decision, attention entries, messages and published outbox rows.
 * Never an undecided transaction, never one with a participant still unacked, never one that
 * needs attention: `completed_at` is set only when every participant acked (or took no part, or an
 * operator resolved it).
 *
 * A pruned id answers `abort` at the decision endpoint (presumed abort) — safe because every
 * participant acked, so none is in doubt. Except a commit that an operator resolved (a
 * participant that never acked: `resolved`), which may still be asked about by a participant
 * restored from a backup: it keeps a compact record (migration 8, written by the log in the same
 * SQLite transaction as the delete) from which the decision endpoint answers `commit`.
 * Retention never deletes those records; an operator forgets one (`POST …/forget`).
 */
import type { FastifyBaseLogger } from 'fastify'
import type { LogStore } from './log/log-store.js'

export interface RetentionOptions {
  retentionMs: number
  intervalMs: number
  /** Transactions deleted per batch; batches per run are bounded too. */
  batchSize: number
  maxBatchesPerRun: number
  logger: FastifyBaseLogger
  now?: () => number
}

export class RetentionPruner {
  private timer: NodeJS.Timeout | undefined
  private readonly now: () => number

  constructor (private readonly log: LogStore, private readonly options: RetentionOptions) {
    this.now = options.now ?? Date.now
  }

  start (): void {
    this.timer = setInterval(() => this.run(), this.options.intervalMs)
    this.timer.unref()
  }

  /** One bounded run; returns how many transactions it deleted. */
  run (): number {
    if (!this.log.open) return 0
    const now = this.now()
    const before = now - this.options.retentionMs
    let deleted = 0
    for (let i = 0; i < this.options.maxBatchesPerRun; i++) {
      const n = this.log.pruneCompleted(before, this.options.batchSize, now)
      const m = this.log.pruneOutbox(before, this.options.batchSize)
      deleted += n
      if (n < this.options.batchSize && m < this.options.batchSize) break
    }
    if (deleted > 0) this.options.logger.info({ deleted, olderThan: new Date(before).toISOString() }, 'retention: completed transactions pruned')
    return deleted
  }

  stop (): void {
    clearInterval(this.timer)
  }
}
