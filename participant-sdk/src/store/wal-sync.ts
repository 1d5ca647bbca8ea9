/**
 * Durability split from the write, for a SQLite file database in WAL mode: batches commit with
 * `synchronous=NORMAL`, then one `fdatasync` of the WAL file runs — on the event loop while syncs
 * are quick (~0.1 ms) and none is running, else on libuv's thread pool (SyncPlacement) — and only
 * then are the batch's callers answered; batches committed while a sync runs share the next one.
 * So a vote or an ack is never sent before its record is on disk, whatever `synchronous` the
 * service chose for its own writes.
 */
import { closeSync, constants, fdatasyncSync, openSync } from 'node:fs'
import { SyncPlacement } from '@fastify-2pc/protocol'
import type { SyncStats } from './store.js'

/** How long a batch of commits and aborts may wait for a sync a prepare would start anyway. */
const DECISION_SYNC_DELAY_MS = 2

/** A committed batch whose callers wait for the next sync. */
interface Committed {
  /** A caller waits for a vote: sync now. */
  urgent: boolean
  events: number
  done: (failure: Error | undefined) => void
}

export class WalSync {
  /** Our own descriptor of the WAL file, only to fdatasync it; null once closed. */
  #fd: number | null
  /** Whether each fdatasync runs on the event loop or the thread pool. */
  readonly #placement: SyncPlacement
  readonly #onSync: ((events: number, ms: number) => void) | undefined
  #unsynced: Committed[] = []
  #inFlight: Array<{ covered: Committed[] }> = []
  #lazy: NodeJS.Timeout | undefined
  #closed = false
  /** Set when an fdatasync failed: nothing is answered as durable any more (restart). */
  failure: Error | undefined
  readonly stats: SyncStats = { syncs: 0, inlineSyncs: 0 }

  constructor (walFile: string, inlineSyncMaxMs: number | undefined, onSync?: (events: number, ms: number) => void) {
    this.#placement = new SyncPlacement(inlineSyncMaxMs)
    this.#onSync = onSync
    this.#fd = openSync(walFile, constants.O_RDWR | constants.O_CREAT)
  }

  /** A committed batch: `done` is called once it is on disk (or the sync failed). */
  add (urgent: boolean, events: number, done: (failure: Error | undefined) => void): void {
    this.#unsynced.push({ urgent, events, done })
    this.#soon()
  }

  /**
   * One fdatasync of the WAL for every batch committed before it starts: inline while syncs are
   * quick and none is running, else on the thread pool (SyncPlacement). Two
   * may run at once (a prepare does not wait behind the sync of a commit that just started);
   * they are settled in the order they started, and one that returns settles the earlier ones
   * too (it flushed everything written before it began).
   */
  #sync (): void {
    if (this.#fd === null || this.#unsynced.length === 0 || this.#inFlight.length >= 2) return
    clearTimeout(this.#lazy)
    this.#lazy = undefined
    const sync = { covered: this.#unsynced }
    this.#unsynced = []
    this.#inFlight.push(sync)
    const settle = (err: NodeJS.ErrnoException | null, ms: number): void => {
      const index = this.#inFlight.indexOf(sync)
      const settled = index < 0 ? [] : this.#inFlight.splice(0, index + 1)
      if (err !== null) this.failure ??= new Error(`the participant log could not be synced to disk: ${err.message}`, { cause: err })
      else this.stats.syncs++
      for (const earlier of settled) {
        if (err === null) this.#onSync?.(earlier.covered.reduce((n, c) => n + c.events, 0), ms)
        for (const c of earlier.covered) c.done(this.failure)
      }
      if (this.#closed) {
        if (this.#inFlight.length === 0) this.#closeFd()
      } else {
        this.#soon()
      }
    }
    // Inline while syncs are quick, else on the pool (SyncPlacement); settled on a later tick.
    this.#placement.sync(this.#fd, this.#inFlight.length - 1, (err, ms, inline) => {
      if (inline) this.stats.inlineSyncs++
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
  #soon (): void {
    if (this.#unsynced.length === 0) return
    if (this.#unsynced.some(c => c.urgent)) this.#sync()
    else this.#lazy ??= setTimeout(() => { this.#lazy = undefined; this.#sync() }, DECISION_SYNC_DELAY_MS)
  }

  /** Makes everything committed durable, blocking (graceful close). */
  syncNow (): void {
    if (this.#fd === null) return
    // The syncs still running cover earlier batches; this one covers them too, in order.
    const covered: Committed[] = []
    for (const running of this.#inFlight) {
      covered.push(...running.covered)
      running.covered = []
    }
    covered.push(...this.#unsynced)
    this.#unsynced = []
    if (covered.length === 0) return
    let failure: unknown
    try { fdatasyncSync(this.#fd) } catch (err) { failure = err }
    if (failure !== undefined) this.failure ??= new Error(`the participant log could not be synced to disk: ${(failure as Error).message}`, { cause: failure })
    for (const c of covered) c.done(this.failure)
  }

  /** Syncs and releases the WAL descriptor (the last running sync's callback closes it). */
  close (): void {
    clearTimeout(this.#lazy)
    this.#lazy = undefined
    this.syncNow()
    this.#closed = true
    if (this.#inFlight.length === 0) this.#closeFd()
  }

  #closeFd (): void {
    if (this.#fd !== null) closeSync(this.#fd)
    this.#fd = null
  }
}
