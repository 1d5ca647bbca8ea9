/**
 * Where a log's next fdatasync runs: on the event loop ("inline") or on libuv's thread pool.
 * The coordinator's log (through GroupCommit) and the SDK's participant log both use it.
 *
 * On the pool the event loop goes on while the disk works, but every sync costs two hand-offs
 * between threads (a pool thread is woken, then the loop is). Measured on the 2-core bench
 * machine: a small fdatasync took 0.09 ms inline and 0.16 ms through the pool with nothing else
 * running, and ~0.33 ms (mean, pool) under the one-client bench — more than the disk's own work.
 * So a sync runs inline when no other one is running and the recent ones were quick (a blocked
 * loop for a tenth of a millisecond costs less than the hand-offs); a slow or stalling disk
 * moves them to the pool, where the loop keeps serving requests while it waits, and they come
 * back once syncs are quick again (the pool's timings include the hand-offs, so they
 * overestimate the disk: a disk that looks quick from there is quick).
 */
import { fdatasync, fdatasyncSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

export class SyncPlacement {
  /** Moving average of recent sync durations (ms), inline or pool. */
  #recentMs = 0

  /**
   * @param maxInlineMs syncs run inline while their recent average is at most this (0: never
   *   inline, every sync on the pool).
   */
  constructor (readonly maxInlineMs: number = DEFAULT_INLINE_SYNC_MAX_MS) {
    if (!(maxInlineMs >= 0 && maxInlineMs <= MAX_INLINE_SYNC_MS)) throw new RangeError(`maxInlineMs must be a number from 0 to ${MAX_INLINE_SYNC_MS}, got ${maxInlineMs}`)
  }

  /** Whether the next sync runs inline, given how many others are running on the pool now. */
  inline (running: number): boolean {
    return this.maxInlineMs > 0 && running === 0 && this.#recentMs <= this.maxInlineMs
  }

  /** Each finished sync's duration in ms (on the pool: including the hand-offs). */
  record (ms: number): void {
    this.#recentMs += (ms - this.#recentMs) * 0.25
  }

  /**
   * Runs one fdatasync of `fd` where `inline(running)` says and records its duration; `done`
   * runs on a later tick either way (an inline sync is settled on the next tick, like a pool
   * sync, so a caller never sees its work settled under it).
   */
  sync (fd: number, running: number, done: (err: NodeJS.ErrnoException | null, ms: number, inline: boolean) => void): void {
    const started = performance.now()
    if (this.inline(running)) {
      let error: NodeJS.ErrnoException | null = null
      try { fdatasyncSync(fd) } catch (err) { error = err as NodeJS.ErrnoException }
      const ms = performance.now() - started
      if (error === null) this.record(ms)
      process.nextTick(done, error, ms, true)
      return
    }
    fdatasync(fd, (err) => {
      const ms = performance.now() - started
      if (err === null) this.record(ms)
      done(err, ms, false)
    })
  }

  /** The moving average the decision is based on (ms). */
  get recentMs (): number {
    return this.#recentMs
  }
}

/** A sync inline blocks the event loop; beyond ~1 ms recent average, it goes to the pool. */
export const DEFAULT_INLINE_SYNC_MAX_MS = 1
/** The largest setting accepted: an event loop blocked longer than this per sync is a stall. */
export const MAX_INLINE_SYNC_MS = 100
