/**
 * Fair scheduling of phase-2 deliveries. Each participant (keyed by its callback url: names
 * repeat across transactions, urls identify the service) has its own queue and its own limit
 * of calls in flight; a global limit bounds all of them together, and the participants with
 * work take turns (round robin) for the free slots. A participant that hangs fills only its own
 * share of slots and its own queue: the others' deliveries go out as soon as they are queued.
 * Each queue is bounded too: a job beyond the bound is refused (`submit` returns false) and the
 * caller leaves that delivery to its retry timer.
 */

/**
 * Phase-2 calls in flight at once to one participant: what a hung participant can hold of the
 * global limit (the engine's maxConcurrentPhase2, 256: seven of them hung at once still leave
 * room for the rest). Below the default connections per origin (64), so a participant's own
 * prepares still find a connection while its phase-2 calls hang.
 */
export const PHASE2_MAX_IN_FLIGHT_PER_PARTICIPANT = 32
/** Deliveries waiting for one participant at most; more are left to the retry timer. */
export const PHASE2_MAX_QUEUED_PER_PARTICIPANT = 10_000

export interface FairSchedulerOptions {
  maxInFlight: number
  maxInFlightPerKey: number
  maxQueuedPerKey: number
}

/** A FIFO with O(1) push and shift (an array with a moving head, compacted as it empties). */
class Fifo<T> {
  private items: Array<T | undefined> = []
  private head = 0

  get length (): number { return this.items.length - this.head }

  push (item: T): void { this.items.push(item) }

  shift (): T | undefined {
    if (this.head >= this.items.length) return undefined
    const item = this.items[this.head]
    this.items[this.head++] = undefined
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
    return item
  }
}

interface Lane<T> {
  key: string
  queue: Fifo<T>
  running: number
  /** Whether it is in the ready ring (has queued jobs and a free slot of its own). */
  ready: boolean
}

export class FairScheduler<T> {
  private readonly lanes = new Map<string, Lane<T>>()
  /** Lanes that may start a job now, in turn order. */
  private readonly ring = new Fifo<Lane<T>>()
  private running = 0
  private queuedJobs = 0
  private stopped = false

  constructor (
    private readonly options: FairSchedulerOptions,
    /** Runs one job; the slot is free again when the promise settles. */
    private readonly run: (job: T) => Promise<void>
  ) {}

  /** Queues a job for `key` and starts what may start; false (nothing queued) when `key`'s queue is full or it is stopped. */
  submit (key: string, job: T): boolean {
    if (this.stopped) return false
    let lane = this.lanes.get(key)
    if (lane === undefined) {
      lane = { key, queue: new Fifo(), running: 0, ready: false }
      this.lanes.set(key, lane)
    }
    if (lane.queue.length >= this.options.maxQueuedPerKey) return false
    lane.queue.push(job)
    this.queuedJobs++
    this.makeReady(lane)
    this.drain()
    return true
  }

  /** Jobs waiting for a slot. */
  get queued (): number { return this.queuedJobs }

  /** Jobs started and not yet settled. */
  get inFlight (): number { return this.running }

  /** Jobs waiting and in flight for one key. */
  stats (key: string): { queued: number, inFlight: number } {
    const lane = this.lanes.get(key)
    return { queued: lane?.queue.length ?? 0, inFlight: lane?.running ?? 0 }
  }

  /** Drops every queued job and starts nothing more; jobs in flight run to their end. */
  stop (): void {
    this.stopped = true
    for (const lane of this.lanes.values()) {
      lane.queue = new Fifo()
      lane.ready = false
    }
    while (this.ring.length > 0) this.ring.shift()
    this.queuedJobs = 0
  }

  private makeReady (lane: Lane<T>): void {
    if (lane.ready || lane.queue.length === 0 || lane.running >= this.options.maxInFlightPerKey) return
    lane.ready = true
    this.ring.push(lane)
  }

  private drain (): void {
    // Each pass starts one job or takes one lane out of the ring: bounded by jobs + lanes.
    while (!this.stopped && this.running < this.options.maxInFlight && this.ring.length > 0) {
      const lane = this.ring.shift() as Lane<T>
      lane.ready = false
      const job = lane.queue.shift()
      if (job === undefined) continue
      this.queuedJobs--
      lane.running++
      this.running++
      // Back at the end of the ring: the other lanes with work go first.
      this.makeReady(lane)
      let done = false
      const settle = (): void => {
        if (done) return
        done = true
        lane.running--
        this.running--
        if (lane.running === 0 && lane.queue.length === 0 && !lane.ready) this.lanes.delete(lane.key)
        else this.makeReady(lane)
        this.drain()
      }
      let started: Promise<void>
      try {
        started = this.run(job)
      } catch {
        settle()
        continue
      }
      started.then(settle, settle)
    }
  }
}
