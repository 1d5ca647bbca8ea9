/**
 * The log's records in memory, whatever the database: for each transaction with steps not yet
 * durable, its newest record, its newest written one and its durable one (what the API may
 * show), plus a bounded cache of durable records of unfinished transactions, so steps do not
 * read the database again. A store calls `saved`, `written`, `synced` and `dropped` as its
 * pipeline moves steps on, and answers reads from here before its tables (`read`).
 */
import type { Transaction } from '../core/machine.js'

/** Synced records of unfinished transactions kept in memory, so steps do not re-read the log. */
const RECENT_RECORDS = 20_000
/**
 * ...and at most about this many bytes of them (estimated: the payloads' and metadata's JSON
 * plus a fixed share per record and participant). Payloads may be 64 KiB each, 32 to a
 * transaction: a backlog of large ones is read back from the log instead of filling the heap.
 */
const RECENT_BYTES = 32 * 1024 * 1024
const RECORD_OVERHEAD_BYTES = 512
const PARTICIPANT_OVERHEAD_BYTES = 256

/**
 * JSON sizes of payload and metadata objects, computed once per object: the machine copies a
 * record on every step but keeps its payloads and metadata (they never change).
 */
const jsonSizes = new WeakMap<object, number>()
function jsonBytes (value: unknown): number {
  if (value === null || value === undefined) return 0
  if (typeof value !== 'object') return typeof value === 'string' ? value.length + 2 : 16
  let size = jsonSizes.get(value)
  if (size === undefined) {
    size = JSON.stringify(value).length
    jsonSizes.set(value, size)
  }
  return size
}

/** A payload as stored (JSON, or null); its size is noted for the cache's byte budget. */
export function payloadJson (payload: unknown): string | null {
  if (payload === null || payload === undefined) return null
  const json = JSON.stringify(payload)
  if (typeof payload === 'object') jsonSizes.set(payload, json.length)
  return json
}

/** A record's estimated size in memory, for the cache's byte budget. */
function recordBytes (tx: Transaction): number {
  let size = RECORD_OVERHEAD_BYTES + jsonBytes(tx.metadata)
  for (const p of tx.participants) size += PARTICIPANT_OVERHEAD_BYTES + p.name.length + p.url.length + jsonBytes(p.payload)
  return size
}

export class RecordImage {
  /** The newest record of each transaction with pending or unsynced steps. */
  private readonly latest = new Map<string, Transaction>()
  /** For each id in `latest`: its record as last synced (null: none on disk yet). */
  private readonly synced = new Map<string, Transaction | null>()
  /** For each id in `latest` with written steps: the newest written record (what the tables have). */
  private readonly written = new Map<string, Transaction>()
  /** For each transaction whose commit decision is saved but not synced: its record just before it. */
  private readonly beforeCommit = new Map<string, Transaction | null>()
  /** Synced records of unfinished transactions, oldest first, at most RECENT_RECORDS and about RECENT_BYTES. */
  private readonly recent = new Map<string, Transaction>()
  /** The estimated size of each record in `recent`, and their sum. */
  private readonly recentSizes = new Map<string, number>()
  private recentBytes = 0

  /** @param read a record as the tables have it */
  constructor (private readonly read: (id: string) => Transaction | undefined) {}

  /** A step saved (pending). */
  saved (prev: Transaction | null, next: Transaction): void {
    const id = next.id
    // An id without unsynced steps was loaded from what is synced: that is its durable image.
    if (!this.latest.has(id)) this.synced.set(id, prev)
    if (next.state === 'committed' && prev?.state !== 'committed') this.beforeCommit.set(id, prev)
    this.latest.set(id, next)
    this.forgetRecent(id)
  }

  /** A step written (not yet synced). */
  stepWritten (next: Transaction): void {
    this.written.set(next.id, next)
  }

  /** A step made durable. */
  stepSynced (next: Transaction): void {
    const id = next.id
    if (next.state === 'committed') this.beforeCommit.delete(id)
    if (this.latest.get(id) === next) {
      this.latest.delete(id)
      this.synced.delete(id)
      this.written.delete(id)
      if (next.completedAt === null) this.remember(next)
    } else if (this.latest.has(id)) {
      this.synced.set(id, next)
    }
  }

  /**
   * A step rolled back: its transaction's newest record is again its newest written one
   * (`writtenNotSynced`: the steps written and not yet synced, oldest first).
   */
  dropped (next: Transaction, writtenNotSynced: Iterable<{ next: Transaction }>): void {
    const id = next.id
    let newest: Transaction | undefined
    for (const s of writtenNotSynced) if (s.next.id === id) newest = s.next
    if (newest !== undefined) {
      this.latest.set(id, newest)
      this.written.set(id, newest)
    } else {
      this.latest.delete(id)
      this.synced.delete(id)
      this.written.delete(id)
    }
    if (newest?.state !== 'committed') this.beforeCommit.delete(id)
  }

  /** See LogStore.load. */
  load (id: string): Transaction | undefined {
    if (this.latest.has(id)) return this.synced.get(id) ?? undefined
    return this.recent.get(id) ?? this.read(id)
  }

  loadLatest (id: string): Transaction | undefined {
    return this.latest.get(id) ?? this.recent.get(id) ?? this.read(id)
  }

  /**
   * What the API shows: the newest written record (so it agrees with the attention, timeline and
   * outbox rows written with it), except that a commit decision shows only once it is synced —
   * until then (a few milliseconds) the record as it was just before the decision. Nobody may
   * learn of a commit that a power cut could still take back; anything else is safe to show
   * before it is synced (under presumed abort a lost vote or abort is an abort again).
   */
  view (id: string): Transaction | undefined {
    if (!this.latest.has(id)) return this.recent.get(id) ?? this.read(id)
    const written = this.written.get(id) ?? this.synced.get(id) ?? undefined
    if (written?.state === 'committed' && this.beforeCommit.has(id)) return this.beforeCommit.get(id) ?? undefined
    return written
  }

  /**
   * Commit decisions written but not yet synced: each one's written record and its record just
   * before the decision (null: the decision was its first record). Queries over the tables see
   * these as committed; whatever they report is corrected with this list, so nobody counts a
   * commit a power cut could still take back.
   */
  unsyncedCommits (): Array<{ written: Transaction, before: Transaction | null }> {
    const out: Array<{ written: Transaction, before: Transaction | null }> = []
    for (const [id, before] of this.beforeCommit) {
      const written = this.written.get(id)
      if (written?.state === 'committed') out.push({ written, before })
    }
    return out
  }

  /** True while the transaction has steps that are not yet synced. */
  hasUnsynced (id: string): boolean {
    return this.latest.has(id)
  }

  private remember (tx: Transaction): void {
    this.forgetRecent(tx.id)
    const size = recordBytes(tx)
    this.recent.set(tx.id, tx)
    this.recentSizes.set(tx.id, size)
    this.recentBytes += size
    while (this.recent.size > RECENT_RECORDS || (this.recentBytes > RECENT_BYTES && this.recent.size > 0)) {
      this.forgetRecent(this.recent.keys().next().value as string)
    }
  }

  private forgetRecent (id: string): void {
    const size = this.recentSizes.get(id)
    if (size === undefined) return
    this.recent.delete(id)
    this.recentSizes.delete(id)
    this.recentBytes -= size
  }

  /** What the cache of synced unfinished records holds (for tests and the bench). */
  recentStats (): { records: number, bytes: number } {
    return { records: this.recent.size, bytes: this.recentBytes }
  }
}
