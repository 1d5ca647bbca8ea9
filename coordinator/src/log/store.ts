/**
 * The coordinator's durable log: SQLite through better-sqlite3 in WAL mode. One `save` = one
 * step's whole state change (record, decision row, attention, outbox rows), written with the
 * other steps of the same event-loop turn in ONE SQLite transaction (group commit).
 *
 * Durability is split from the write, so the event loop waits for the disk only when that is cheaper:
 * - the batch commits with `synchronous=NORMAL` (the WAL frames reach the OS, no fsync: a
 *   killed process loses nothing, a power loss may lose the tail);
 * - then one `fdatasync` of the WAL file covers every batch committed before it started, so
 *   concurrent steps share it. It runs on the event loop while syncs are quick (~0.1 ms) and
 *   none is running, else on libuv's thread pool (SyncPlacement, in the protocol package).
 * A *forced* step (a commit decision, anything an API answer waits for) is reported only after
 * its sync. An unforced step (votes, acks, abort decisions: under presumed abort, losing them
 * to a power cut is harmless) is reported as soon as it is committed and is synced by the next
 * sync, at most `lazySyncMs` later.
 */
import Database from 'better-sqlite3'
import { closeSync, constants, fdatasyncSync, mkdirSync, openSync } from 'node:fs'
import { dirname } from 'node:path'
import { SyncPlacement, type Decision } from '@fastify-2pc/protocol'
import { migrations } from './migrations.js'
import type { AttentionKind, Participant, Transaction, TxMessage, TxState } from '../core/machine.js'
import { MultiRowInsert, OperatorTables, entersPhase1, type NewAudit } from './operator-tables.js'
import { Errors } from '../errors.js'
import { LogLock } from './lock.js'

export interface AttentionEntry {
  id: number
  txId: string
  participant: string | null
  kind: AttentionKind
  detail: string
  createdAt: number
  resolvedAt: number | null
  resolution: string | null
}

export interface NewAttention {
  participant: string | null
  kind: AttentionKind
  detail: string
}

/** What else one step writes, in the same SQLite transaction as the record. */
export interface StepWrites {
  attention: NewAttention[]
  messages: Array<{ position: number, message: TxMessage }>
  notices: Array<{ participant: string, decision: Decision }>
  /** Operator actions (audit table). */
  audit?: NewAudit[]
  /** Marks the transaction's open attention entries resolved with this resolution. */
  resolveAttention?: string
}

interface PendingStep {
  prev: Transaction | null
  next: Transaction
  writes: StepWrites
  now: number
  /** Reported only once fsynced (otherwise once committed). */
  forced: boolean
  done: (err?: Error) => void
  /** The largest outbox row id this step inserted (0: none). */
  outboxMax: number
}

/** The rows of one batch that are written with one statement per table at its end. */
interface BatchRows {
  newTransactions: MultiRowInsert
  transactions: MultiRowInsert
  /** Changed records whose only change is their times (a completion): a narrower upsert. */
  timesOnly: MultiRowInsert
  newParticipants: MultiRowInsert
  participants: MultiRowInsert
  decisions: MultiRowInsert
  events: MultiRowInsert
}

/** The side rows of several steps of one transaction, in order. */
function mergeWrites (steps: PendingStep[]): StepWrites {
  const merged: StepWrites = { attention: [], messages: [], notices: [] }
  for (const { writes } of steps) {
    merged.attention.push(...writes.attention)
    merged.messages.push(...writes.messages)
    merged.notices.push(...writes.notices)
    if (writes.audit !== undefined) (merged.audit ??= []).push(...writes.audit)
    if (writes.resolveAttention !== undefined) merged.resolveAttention = writes.resolveAttention
  }
  return merged
}

/** fdatasyncs of the log at once (libuv's pool has 4 threads; other file work needs some). */
const MAX_SYNCS_IN_FLIGHT = 2

/** Synced records of unfinished transactions kept in memory, so steps do not re-read SQLite. */
const RECENT_RECORDS = 20_000
/**
 * ...and at most about this many bytes of them (estimated: the payloads' and metadata's JSON
 * plus a fixed share per record and participant). Payloads may be 64 KiB each, 32 to a
 * transaction: a backlog of large ones is read back from SQLite instead of filling the heap.
 */
const RECENT_BYTES = 32 * 1024 * 1024
const RECORD_OVERHEAD_BYTES = 512
const PARTICIPANT_OVERHEAD_BYTES = 256
/** SQLite's page cache for the log's connection, in KiB. */
const PAGE_CACHE_KIB = 4096

/**
 * Decided transactions whose phase 2 is not finished, a page in id order (start-up recovery).
 * INDEXED BY the partial index of exactly those rows: for the order by id the planner took
 * `transactions_by_state` and sorted every committed transaction of the log on each page
 * (~16 ms per page at 110,000 transactions, and pages repeat until none is left).
 */
export const UNFINISHED_IDS_SQL = `SELECT id FROM transactions INDEXED BY transactions_unfinished
  WHERE completed_at IS NULL AND state IN ('committed', 'aborted') AND id > ? ORDER BY id LIMIT ?`

/**
 * The outbox's queue depth, parked count and oldest queued row: read by every /readyz and
 * metrics scrape, so each count goes through a partial index (queued rows; parked rows, since
 * migration 7) rather than the whole outbox, which keeps published rows until retention.
 */
export const OUTBOX_STATS_SQL = `SELECT
  (SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL) AS depth,
  (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
  (SELECT min(created_at) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL) AS oldest`

/**
 * Whether an error of a write means the disk cannot take the log: `full` (no space left),
 * `failed` (an I/O error, a read-only or damaged file); undefined for anything else (a
 * constraint, a busy lock: that batch fails, the next one is tried).
 */
export function diskFailure (err: unknown): 'full' | 'failed' | undefined {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
  if (typeof code !== 'string') return undefined
  if (code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT') return 'full'
  if (/^SQLITE_(IOERR|CORRUPT|NOTADB|CANTOPEN|READONLY)/.test(code) || code === 'EIO' || code === 'EROFS') return 'failed'
  return undefined
}

/** How often at most the outbox's queued rows are counted exactly (the guard of new messages). */
const OUTBOX_COUNT_MS = 1000

/**
 * Retention (retention.ts) deletes completed transactions a batch at a time: the batch's ids
 * (oldest completion first), then, in the same SQLite transaction, the compact record of each
 * committed one that some participant never acked (migration 8), then the transactions with
 * everything that references them (foreign keys cascade).
 */
export const PRUNE_BATCH_SQL = `SELECT id FROM transactions
  WHERE completed_at IS NOT NULL AND completed_at < ? AND needs_attention = 0 ORDER BY completed_at LIMIT ?`
/**
 * `acked` and `not-needed` are the only states in which a participant certainly holds its
 * outcome; `resolved` (an operator's word, see the machine's operator-resolve) is not one.
 * CROSS JOIN keeps the batch's ids as the outer loop, each record found by its key: for
 * `state = 'committed'` the planner otherwise walked every committed transaction of the log.
 */
export const KEEP_PRUNED_COMMITS_SQL = `INSERT OR IGNORE INTO pruned_commits (id, decided_at, pruned_at)
  SELECT t.id, coalesce(t.decided_at, t.completed_at), ? FROM json_each(?) AS batch CROSS JOIN transactions AS t ON t.id = batch.value
  WHERE t.state = 'committed'
    AND EXISTS (SELECT 1 FROM participants p WHERE p.tx_id = t.id AND p.ack NOT IN ('acked', 'not-needed'))`

/** A pruned commit's compact record (migration 8). */
export interface PrunedCommit {
  id: string
  decidedAt: number
  prunedAt: number
}

export interface OutboxRow {
  id: number
  txId: string | null
  kind: 'decision' | 'event' | 'message'
  exchange: string
  routingKey: string
  messageId: string
  body: string
  headers: Record<string, string> | null
  createdAt: number
  publishedAt: number | null
  attempts: number
  lastError: string | null
  deadAt: number | null
}

export interface OutboxStats {
  /** Waiting to be published. */
  depth: number
  /** Parked after a permanent failure (e.g. the exchange does not exist). */
  dead: number
  oldestCreatedAt: number | null
}

/** Where decision notices go; null when no broker is configured (no notice is written then). */
export interface NoticeRouting {
  exchange: string
  routingKey: (participant: string) => string
}

export interface ListQuery {
  state?: TxState
  needsAttention?: boolean
  limit: number
  /** Opaque position from a previous page: `<createdAt>:<id>`. */
  after?: { createdAt: number, id: string }
}

interface TxRow {
  id: string
  state: TxState
  created_at: number
  updated_at: number
  expires_at: number
  decided_at: number | null
  completed_at: number | null
  reason: string | null
  needs_attention: number
  one_phase: number
  metadata: string | null
  message_count: number
  traceparent: string | null
  heuristic: number
}

interface ParticipantRow {
  tx_id: string
  position: number
  name: string
  url: string
  payload: string | null
  one_phase: number
  vote: Participant['vote']
  vote_reason: string | null
  ack: Participant['ack']
  attempts: number
  last_error: string | null
  next_attempt_at: number | null
}

interface AttentionRow {
  id: number
  tx_id: string
  participant: string | null
  kind: AttentionKind
  detail: string
  created_at: number
  resolved_at: number | null
  resolution: string | null
}

interface OutboxDbRow {
  id: number
  tx_id: string | null
  kind: OutboxRow['kind']
  exchange: string
  routing_key: string
  message_id: string
  body: string
  headers: string | null
  created_at: number
  published_at: number | null
  attempts: number
  last_error: string | null
  dead_at: number | null
}

function toOutboxRow (r: OutboxDbRow): OutboxRow {
  return {
    id: r.id,
    txId: r.tx_id,
    kind: r.kind,
    exchange: r.exchange,
    routingKey: r.routing_key,
    messageId: r.message_id,
    body: r.body,
    headers: r.headers === null ? null : JSON.parse(r.headers) as Record<string, string>,
    createdAt: r.created_at,
    publishedAt: r.published_at,
    attempts: r.attempts,
    lastError: r.last_error,
    deadAt: r.dead_at
  }
}

function parseJson (text: string | null): unknown {
  return text === null ? null : JSON.parse(text)
}

function toParticipant (row: ParticipantRow): Participant {
  return {
    name: row.name,
    url: row.url,
    payload: parseJson(row.payload),
    onePhase: row.one_phase === 1,
    vote: row.vote,
    voteReason: row.vote_reason,
    ack: row.ack,
    attempts: row.attempts,
    lastError: row.last_error,
    nextAttemptAt: row.next_attempt_at
  }
}

function toTransaction (row: TxRow, participants: Participant[]): Transaction {
  return {
    id: row.id,
    state: row.state,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    expiresAt: row.expires_at,
    decidedAt: row.decided_at,
    completedAt: row.completed_at,
    reason: row.reason,
    needsAttention: row.needs_attention === 1,
    onePhase: row.one_phase === 1,
    metadata: parseJson(row.metadata),
    participants,
    messageCount: row.message_count,
    traceparent: row.traceparent,
    heuristic: row.heuristic === 1
  }
}

function toAttention (row: AttentionRow): AttentionEntry {
  return {
    id: row.id,
    txId: row.tx_id,
    participant: row.participant,
    kind: row.kind,
    detail: row.detail,
    createdAt: row.created_at,
    resolvedAt: row.resolved_at,
    resolution: row.resolution
  }
}

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
function payloadJson (payload: unknown): string | null {
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

function sameTxRow (a: Transaction, b: Transaction): boolean {
  return a.state === b.state && a.updatedAt === b.updatedAt && a.expiresAt === b.expiresAt && a.decidedAt === b.decidedAt &&
    a.completedAt === b.completedAt && a.reason === b.reason && a.needsAttention === b.needsAttention &&
    a.onePhase === b.onePhase && a.metadata === b.metadata && a.messageCount === b.messageCount && a.heuristic === b.heuristic
}

/**
 * Only updated_at / completed_at differ (the step that completes a transaction). Such a record
 * is written with an upsert that sets just those two: SQLite then leaves every index that does
 * not involve them alone (the state index, the open-transactions index, …) instead of deleting
 * and re-inserting each entry.
 */
function onlyTimesChanged (a: Transaction, b: Transaction): boolean {
  return a.state === b.state && a.expiresAt === b.expiresAt && a.decidedAt === b.decidedAt &&
    a.reason === b.reason && a.needsAttention === b.needsAttention &&
    a.onePhase === b.onePhase && a.metadata === b.metadata && a.messageCount === b.messageCount && a.heuristic === b.heuristic
}

// Positional parameters, in the column order of the statements below (cheaper than named ones).
function txParams (tx: Transaction): unknown[] {
  return [tx.state, tx.updatedAt, tx.expiresAt, tx.decidedAt, tx.completedAt, tx.reason, tx.needsAttention ? 1 : 0,
    tx.onePhase ? 1 : 0, tx.metadata === null || tx.metadata === undefined ? null : JSON.stringify(tx.metadata),
    tx.messageCount, tx.heuristic ? 1 : 0, tx.id]
}

export class CoordinatorLog {
  readonly db: Database.Database
  /** Held from open to close: one coordinator process per log file (lock.ts). */
  private readonly lock: LogLock | null
  /** Timeline events, the audit trail and attention resolutions (migration 3). */
  readonly operator: OperatorTables
  private readonly stmts
  private readonly writeStep: (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number, rows: BatchRows) => number
  private readonly writeBatch: (batch: PendingStep[]) => void
  /** Steps saved but not yet written, in order; written together (group commit). */
  private pending: PendingStep[] = []
  /** Steps committed to SQLite but not yet fsynced, in commit order. */
  private unsynced: PendingStep[] = []
  /** The newest record of each transaction with pending or unsynced steps. */
  private readonly latest = new Map<string, Transaction>()
  /** For each id in `latest`: its record as last synced (null: none on disk yet). */
  private readonly synced = new Map<string, Transaction | null>()
  /** For each id in `latest` with written steps: the newest written record (what SQLite has). */
  private readonly written = new Map<string, Transaction>()
  /** For each transaction whose commit decision is saved but not synced: its record just before it. */
  private readonly beforeCommit = new Map<string, Transaction | null>()
  /** Synced records of unfinished transactions, oldest first, at most RECENT_RECORDS and about RECENT_BYTES. */
  private readonly recent = new Map<string, Transaction>()
  /** The estimated size of each record in `recent`, and their sum. */
  private readonly recentSizes = new Map<string, number>()
  private recentBytes = 0
  private flushScheduled = false
  /** fdatasyncs running (on the thread pool, or inline and not yet settled), in the order they started. */
  private syncsInFlight: Array<{ covered: PendingStep[] }> = []
  private closed = false
  private lazySync: NodeJS.Timeout | undefined
  /** The WAL file, opened by us only to fdatasync it (null for an in-memory log). */
  private walFd: number | null = null
  /**
   * Outbox rows up to this id are synced: the publisher never sends a row a power cut could
   * still take back (a transactional message of a commit decision that then never was).
   */
  private syncedOutboxId = 0
  /**
   * Set when the disk refused a sync or a write (LOG_UNAVAILABLE): no step is written after
   * that, until a restart. A refused write was rolled back, but the steps it carried (votes,
   * acks, retries) are dropped from memory and nobody would redo them; a restart's recovery does.
   */
  failure: Error | undefined
  /** Why: `full` (no space left for a write), `failed` (an I/O error, or a sync refused). */
  failureKind: 'full' | 'failed' | undefined
  /** A sync was refused: nothing is reported durable after that, not even what was written before. */
  private syncFailed = false
  /** Queued outbox rows as last counted, plus the rows inserted since (see outboxQueued). */
  private outboxQueuedRows = 0
  private outboxCountedAt = -Infinity
  /** `merged`: steps written together with an earlier step of the same transaction in its batch. */
  readonly flushStats = { flushes: 0, steps: 0, merged: 0, maxBatch: 0, lastBatch: 0, lastFlushMs: 0, totalFlushMs: 0, syncs: 0, inlineSyncs: 0, totalSyncMs: 0 }
  /** Whether each fdatasync runs on the event loop or the thread pool (replaceable by tests). */
  syncPlacement = new SyncPlacement()
  /** Group commit: steps saved in one event-loop turn share one SQLite transaction, up to this many. */
  maxBatch = 256
  /** How long unforced steps may wait for a sync when no forced step brings one sooner. */
  lazySyncMs = 20
  /**
   * Runs at the start of each write, before SQLite: the app sends the participant callbacks
   * queued in this turn (driver.flush) first, so participants work on them while the log is
   * written — a one-shot's prepares go out while its begin is written, as without batching.
   * Returns true when it handed requests to the HTTP client: a write at the end of a turn that
   * carries a step saved with `sendsFirst` then waits one more turn (see `flushAtTurnEnd`).
   */
  beforeWrite: (() => boolean) | undefined
  /** The write at the end of this turn was put off once already (flushAtTurnEnd). */
  private putOff = false
  /** Pending steps saved with `sendsFirst`. */
  private pendingSendsFirst = 0
  /** Observer of each write (steps in the batch, ms to write it). */
  onFlush: ((steps: number, ms: number) => void) | undefined
  /** Observer of each fdatasync (steps it made durable, ms it took). */
  onSync: ((steps: number, ms: number) => void) | undefined

  constructor (path: string, private readonly noticeRouting: NoticeRouting | null = null) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    // Before anything reads or writes the log: a second process on it stops here (LOG_LOCKED).
    this.lock = path === ':memory:' ? null : LogLock.acquire(path)
    this.db = new Database(path)
    this.db.pragma('journal_mode = WAL')
    // FULL while migrating and for anything written outside `save` (outbox bookkeeping,
    // retention, metadata); `flush` switches to NORMAL for its own batches and syncs them itself.
    this.db.pragma('synchronous = FULL')
    this.db.pragma('foreign_keys = ON')
    this.db.pragma('busy_timeout = 5000')
    // better-sqlite3 builds SQLite with a 16 MB page cache per connection; the log's writes touch
    // the right-hand edge of its B-trees (ids and times grow) and the transactions in flight are
    // kept in memory anyway, so 4 MB is plenty: the rest of the file is read from the OS's cache.
    this.db.pragma(`cache_size = -${PAGE_CACHE_KIB}`)
    // Statement journals in memory: a multi-row upsert on a table with a RAISE trigger needs one,
    // and past 64 KiB SQLite spilled it to a new temp file under /var/tmp (created, written and
    // unlinked ~10 times a second at 64 clients: ~4 KB of the ~20 KB written per transaction).
    // A statement journal holds at most one batch statement's pages, so memory stays bounded.
    this.db.pragma('temp_store = MEMORY')
    try {
      this.migrate()
    } catch (err) { // e.g. a log of a newer coordinator: refused, and the lock with it
      this.db.close()
      this.lock?.release()
      throw err
    }
    // Our own descriptor of the WAL file (it exists once the database is in WAL mode and stays
    // while this connection is open): fdatasync through it flushes every frame written to it.
    if (path !== ':memory:' && this.db.pragma('journal_mode', { simple: true }) === 'wal') {
      this.walFd = openSync(`${path}-wal`, constants.O_RDWR | constants.O_CREAT)
      // What a killed process left in the OS's cache is made durable before anyone acts on it.
      fdatasyncSync(this.walFd)
    }

    this.stmts = {
      getTx: this.db.prepare<[string], TxRow>('SELECT * FROM transactions WHERE id = ?'),
      getParticipants: this.db.prepare<[string], ParticipantRow>('SELECT * FROM participants WHERE tx_id = ? ORDER BY position'),
      insertAttention: this.db.prepare('INSERT INTO attention (tx_id, participant, kind, detail, created_at) VALUES (?, ?, ?, ?, ?)'),
      attentionFor: this.db.prepare<[string], AttentionRow>('SELECT * FROM attention WHERE tx_id = ? ORDER BY id'),
      openIds: this.db.prepare<[number, number], { id: string }>(
        `SELECT id FROM transactions WHERE state IN ('active', 'preparing') AND expires_at <= ? ORDER BY expires_at LIMIT ?`),
      undecidedIds: this.db.prepare<[string, number], { id: string }>(
        `SELECT id FROM transactions WHERE state IN ('active', 'preparing') AND id > ? ORDER BY id LIMIT ?`),
      unfinishedIds: this.db.prepare<[string, number], { id: string }>(UNFINISHED_IDS_SQL),
      resolveRetryBudget: this.db.prepare(`UPDATE attention SET resolved_at = ?, resolution = 'delivered: every participant acked'
        WHERE tx_id = ? AND kind IN ('retry-budget', 'unauthorized', 'not-found') AND resolved_at IS NULL`),
      insertMessage: this.db.prepare('INSERT INTO tx_messages (tx_id, position, exchange, routing_key, body, headers) VALUES (?, ?, ?, ?, ?, ?)'),
      releaseMessages: this.db.prepare(`INSERT INTO outbox (tx_id, kind, exchange, routing_key, message_id, body, headers, created_at)
        SELECT tx_id, 'message', exchange, routing_key, tx_id || ':m' || position, body, headers, ? FROM tx_messages WHERE tx_id = ? ORDER BY position`),
      insertOutbox: this.db.prepare(`INSERT OR IGNORE INTO outbox (tx_id, kind, exchange, routing_key, message_id, body, headers, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
      outboxBatch: this.db.prepare<[number, number, number], OutboxDbRow>(
        'SELECT * FROM outbox WHERE published_at IS NULL AND dead_at IS NULL AND id > ? AND id <= ? ORDER BY id LIMIT ?'),
      maxOutboxId: this.db.prepare<[], { id: number | null }>('SELECT max(id) AS id FROM outbox'),
      markPublished: this.db.prepare('UPDATE outbox SET published_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?'),
      markFailed: this.db.prepare('UPDATE outbox SET attempts = attempts + 1, last_error = ?, dead_at = ? WHERE id = ?'),
      outboxStats: this.db.prepare<[], { depth: number, dead: number, oldest: number | null }>(OUTBOX_STATS_SQL),
      outboxQueued: this.db.prepare<[], { n: number }>('SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND dead_at IS NULL'),
      outboxFor: this.db.prepare<[string], OutboxDbRow>('SELECT * FROM outbox WHERE tx_id = ? ORDER BY id'),
      getMeta: this.db.prepare<[string], { value: string }>('SELECT value FROM coordinator_meta WHERE key = ?'),
      setMeta: this.db.prepare('INSERT INTO coordinator_meta (key, value) VALUES (?, ?)'),
      pruneBatch: this.db.prepare<[number, number], { id: string }>(PRUNE_BATCH_SQL),
      keepPrunedCommits: this.db.prepare(KEEP_PRUNED_COMMITS_SQL),
      deleteTransactions: this.db.prepare('DELETE FROM transactions WHERE id IN (SELECT value FROM json_each(?))'),
      prunedCommit: this.db.prepare<[string], { id: string, decided_at: number, pruned_at: number }>(
        'SELECT id, decided_at, pruned_at FROM pruned_commits WHERE id = ?'),
      deletePrunedCommit: this.db.prepare('DELETE FROM pruned_commits WHERE id = ?')
    }

    this.operator = new OperatorTables(this.db)
    this.syncedOutboxId = this.stmts.maxOutboxId.get()?.id ?? 0
    this.writeStep = (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number, rows: BatchRows): number => {
      let outboxMax = 0
      // The record's row is written before this (recordRow); its participants, decision and
      // timeline go to the batch's rows (written together at the end of the batch); the rare
      // side rows are written here.
      for (let i = 0; i < next.participants.length; i++) {
        const p = next.participants[i] as Participant
        const before = prev?.participants[i]
        if (before === p) continue // untouched by this step (the machine copies what it changes)
        // An existing row keeps its url, position and payload (the upsert updates only the
        // mutable columns), so the payload is serialized for a new row only.
        // The timeline's times (migration 5): set by the step that enlists, brings the vote or
        // the ack; null leaves the stored one (the upsert keeps it).
        const votedAt = p.vote !== null && (before === undefined || before.vote === null) ? now : null
        const ackedAt = p.ack === 'acked' && before?.ack !== 'acked' ? now : null
        ;(before === undefined ? rows.newParticipants : rows.participants).add(next.id, i, p.name, p.url, before === undefined ? payloadJson(p.payload) : null,
          p.onePhase ? 1 : 0, p.vote, p.voteReason, p.ack, p.attempts, p.lastError, p.nextAttemptAt, before === undefined ? now : null, votedAt, ackedAt)
      }
      for (const m of writes.messages) {
        this.stmts.insertMessage.run(next.id, m.position, m.message.exchange, m.message.routingKey,
          JSON.stringify(m.message.body), m.message.headers === undefined ? null : JSON.stringify(m.message.headers))
      }
      if (next.decidedAt !== null && (prev === null || prev.decidedAt === null)) {
        rows.decisions.add(next.id, next.state === 'committed' ? 'commit' : 'abort', next.decidedAt, next.reason)
        // Transactional messages exist for the outside world only from the commit decision on.
        if (next.state === 'committed' && next.messageCount > 0) {
          const info = this.stmts.releaseMessages.run(now, next.id)
          if (info.changes > 0) outboxMax = Number(info.lastInsertRowid)
          this.outboxQueuedRows += info.changes
        }
      }
      for (const a of writes.attention) this.stmts.insertAttention.run(next.id, a.participant, a.kind, a.detail, now)
      // Open entries of a delivery still retried flag the transaction, so only a flagged one can have any to close.
      if (next.completedAt !== null && prev !== null && prev.completedAt === null && (prev.needsAttention || writes.attention.length > 0)) {
        this.stmts.resolveRetryBudget.run(now, next.id)
      }
      if (this.noticeRouting !== null) {
        for (const n of writes.notices) {
          const body = JSON.stringify({ txid: next.id, participant: n.participant, decision: n.decision })
          const info = this.stmts.insertOutbox.run(next.id, 'decision', this.noticeRouting.exchange, this.noticeRouting.routingKey(n.participant),
            `${next.id}:${n.participant}:${n.decision}`, body, null, now)
          if (info.changes > 0) outboxMax = Number(info.lastInsertRowid)
          this.outboxQueuedRows += info.changes
        }
      }
      this.operator.write(prev, next, writes.audit, writes.resolveAttention, now, rows.events)
      return outboxMax
    }
    // Rows of the batch, multi-row statements (operator-tables.ts, MultiRowInsert). A new record
    // or participant is a plain insert (a second one with the same key fails the batch, as it
    // must); a changed one is written as an upsert that sets only its mutable columns
    // (created_at, traceparent, url, position and payload never change).
    const txColumns = '(state, updated_at, expires_at, decided_at, completed_at, reason, needs_attention, one_phase, metadata, message_count, heuristic, id, created_at, traceparent, prepared_at)'
    const participantColumns = '(tx_id, position, name, url, payload, one_phase, vote, vote_reason, ack, attempts, last_error, next_attempt_at, enlisted_at, voted_at, acked_at)'
    const rows: BatchRows = {
      newTransactions: new MultiRowInsert(this.db, `INSERT INTO transactions ${txColumns} VALUES`, '', 15, 32),
      newParticipants: new MultiRowInsert(this.db, `INSERT INTO participants ${participantColumns} VALUES`, '', 15, 32),
      transactions: new MultiRowInsert(this.db, `INSERT INTO transactions ${txColumns} VALUES`,
      `ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, expires_at = excluded.expires_at,
        decided_at = excluded.decided_at, completed_at = excluded.completed_at, reason = excluded.reason,
        needs_attention = excluded.needs_attention, one_phase = excluded.one_phase, metadata = excluded.metadata,
        message_count = excluded.message_count, heuristic = excluded.heuristic,
        prepared_at = coalesce(excluded.prepared_at, transactions.prepared_at)`, 15, 32),
      timesOnly: new MultiRowInsert(this.db, `INSERT INTO transactions ${txColumns} VALUES`,
        'ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, completed_at = excluded.completed_at', 15, 32),
      participants: new MultiRowInsert(this.db, `INSERT INTO participants ${participantColumns} VALUES`,
      `ON CONFLICT (tx_id, name) DO UPDATE SET vote = excluded.vote, vote_reason = excluded.vote_reason, ack = excluded.ack,
        attempts = excluded.attempts, last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at,
        voted_at = coalesce(excluded.voted_at, participants.voted_at), acked_at = coalesce(excluded.acked_at, participants.acked_at)`, 15, 32),
      decisions: new MultiRowInsert(this.db, 'INSERT INTO decisions (tx_id, decision, decided_at, reason) VALUES', '', 4, 64),
      events: this.operator.timelineRows()
    }
    // A vote or an ack changes a participant row only (the machine keeps the rest as it was).
    // prepared_at: the timeline's 'prepare' (migration 5); null leaves the stored one.
    const recordRow = (prev: Transaction | null, next: Transaction, now: number): void => {
      const preparedAt = entersPhase1(prev, next) ? now : null
      if (prev === null) rows.newTransactions.add(...txParams(next), next.createdAt, next.traceparent, preparedAt)
      else if (!sameTxRow(prev, next)) {
        (onlyTimesChanged(prev, next) ? rows.timesOnly : rows.transactions).add(...txParams(next), next.createdAt, next.traceparent, preparedAt)
      }
    }
    const writeAll = this.db.transaction((batch: PendingStep[]) => {
      // Nothing left over from a batch that failed half-way (it was rolled back).
      for (const r of Object.values(rows)) r.clear()
      // Steps of one transaction in the same batch (two votes, two acks arriving together) are
      // written as one: every write is a diff of `prev` against `next`, so the first step's
      // `prev` against the last one's `next`, with all their side rows, is the same change.
      const byId = new Map<string, PendingStep[]>()
      for (const step of batch) {
        const steps = byId.get(step.next.id)
        if (steps === undefined) byId.set(step.next.id, [step])
        else steps.push(step)
      }
      // The records first (one statement each for the new and the changed ones), so every row
      // that references one — written step by step below — finds it (foreign keys are on).
      for (const steps of byId.values()) {
        const last = steps[steps.length - 1] as PendingStep
        recordRow((steps[0] as PendingStep).prev, last.next, last.now)
      }
      rows.newTransactions.flush()
      rows.transactions.flush()
      rows.timesOnly.flush()
      for (const steps of byId.values()) {
        const first = steps[0] as PendingStep
        if (steps.length === 1) {
          first.outboxMax = this.writeStep(first.prev, first.next, first.writes, first.now, rows)
          continue
        }
        const last = steps[steps.length - 1] as PendingStep
        const outboxMax = this.writeStep(first.prev, last.next, mergeWrites(steps), last.now, rows)
        for (const step of steps) step.outboxMax = outboxMax
        this.flushStats.merged += steps.length - 1
      }
      rows.newParticipants.flush()
      rows.participants.flush()
      rows.decisions.flush()
      rows.events.flush()
    })
    const normal = this.db.prepare('PRAGMA synchronous = NORMAL')
    const full = this.db.prepare('PRAGMA synchronous = FULL')
    this.writeBatch = (batch: PendingStep[]) => {
      if (this.walFd === null) { writeAll(batch); return }
      normal.run()
      try { writeAll(batch) } finally { full.run() }
    }
  }

  private migrate (): void {
    this.db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT`)
    const applied = new Set(this.db.prepare<[], { version: number }>('SELECT version FROM schema_migrations').all().map(r => r.version))
    const known = new Set(migrations.map(m => m.version))
    for (const version of applied) {
      if (!known.has(version)) {
        throw new Error(`The coordinator log has migration ${version}, which this version does not know: it was written by a newer coordinator`)
      }
    }
    for (const m of migrations) {
      if (applied.has(m.version)) continue
      this.db.transaction(() => {
        this.db.exec(m.sql)
        this.db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, Date.now())
      })()
    }
  }

  /** The coordinator id this log belongs to; fixed by the first start. */
  bindCoordinatorId (wanted: string | undefined, generate: () => string): string {
    const stored = this.stmts.getMeta.get('coordinator_id')?.value
    if (stored !== undefined) {
      if (wanted !== undefined && wanted !== stored) {
        throw new Error(`TWOPC_COORDINATOR_ID is "${wanted}" but the log was created by coordinator "${stored}": ` +
          'its transaction ids carry that prefix, so it cannot change')
      }
      return stored
    }
    const id = wanted ?? generate()
    this.stmts.setMeta.run('coordinator_id', id)
    return id
  }

  /**
   * The durable record: what is synced to disk (what the API shows). For a transaction with
   * steps not yet synced, the record as it was before them (undefined if none was synced).
   */
  load (id: string): Transaction | undefined {
    if (this.latest.has(id)) return this.synced.get(id) ?? undefined
    return this.recent.get(id) ?? this.read(id)
  }

  /** The newest record, durable or not: what the next state-machine step starts from. */
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
   * Commit decisions written to SQLite but not yet synced: each one's written record and its
   * record just before the decision (null: the decision was its first record). Queries over the
   * tables see these as committed; whatever they report is corrected with this list, so nobody
   * counts a commit a power cut could still take back.
   */
  unsyncedCommits (): Array<{ written: Transaction, before: Transaction | null }> {
    const out: Array<{ written: Transaction, before: Transaction | null }> = []
    for (const [id, before] of this.beforeCommit) {
      const written = this.written.get(id)
      if (written?.state === 'committed') out.push({ written, before })
    }
    return out
  }

  /** True while the transaction has steps that are not yet synced to disk. */
  hasUnsynced (id: string): boolean {
    return this.latest.has(id)
  }

  private read (id: string): Transaction | undefined {
    const row = this.stmts.getTx.get(id)
    if (row === undefined) return undefined
    return toTransaction(row, this.stmts.getParticipants.all(id).map(toParticipant))
  }

  /**
   * Saves a step's outcome. Group commit: the steps saved during one event-loop turn (at most
   * `maxBatch`) are written in ONE SQLite transaction; `done` runs once the step is committed
   * (unforced) or once it is fsynced (forced). `prev` null: a new record. `sendsFirst`: the
   * step's callbacks were sent before it is written (a one-shot's begin and its prepares).
   */
  save (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number, forced: boolean, done: (err?: Error) => void, sendsFirst = false): void {
    const id = next.id
    // An id without unsynced steps was loaded from what is synced: that is its durable image.
    if (!this.latest.has(id)) this.synced.set(id, prev)
    if (next.state === 'committed' && prev?.state !== 'committed') this.beforeCommit.set(id, prev)
    this.latest.set(id, next)
    this.forgetRecent(id)
    this.pending.push({ prev, next, writes, now, forced, done, outboxMax: 0 })
    if (sendsFirst) this.pendingSendsFirst++
    if (this.pending.length >= this.maxBatch) {
      this.flush()
    } else if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(() => this.flushAtTurnEnd())
    }
  }

  /**
   * The group-commit write at the end of a turn. undici (7.30+) writes a request on a reused
   * idle keep-alive socket only in its own `setImmediate` (it first checks the socket was not
   * closed meanwhile), which runs in the NEXT turn when queued from here. Written now, the
   * batch would go to SQLite before the callbacks just sent reach the wire: a one-shot's
   * begin (~15 WAL pages at one client) then sits between its request and its prepares. So
   * when the batch holds such a begin and callbacks went out, the write waits one turn, once,
   * behind undici's writes; steps saved meanwhile join it. Other batches (decisions, the
   * interactive API's steps: their callbacks go out after them) are written at once.
   */
  private flushAtTurnEnd (): void {
    this.flushScheduled = false
    if (this.pending.length === 0) return
    if (!this.putOff && this.pendingSendsFirst > 0 && this.beforeWrite?.() === true) {
      this.putOff = true
      this.flushScheduled = true
      setImmediate(() => this.flushAtTurnEnd())
      return
    }
    this.flush()
  }

  /** Writes every pending step in one transaction, then reports or syncs them. */
  flush (): void {
    this.flushScheduled = false
    this.putOff = false
    if (this.pending.length === 0) return
    this.beforeWrite?.()
    const batch = this.pending
    this.pending = []
    this.pendingSendsFirst = 0
    if (this.failure !== undefined) {
      this.forget(batch)
      for (const step of batch) step.done(this.failure)
      return
    }
    const started = performance.now()
    try {
      this.writeBatch(batch)
    } catch (err) {
      // Rolled back: these steps never happened; the transactions continue from what is written.
      this.forget(batch)
      const kind = diskFailure(err)
      if (kind !== undefined) this.failWrite(err as Error, kind)
      for (const step of batch) step.done(kind !== undefined ? this.failure : err as Error)
      return
    }
    const ms = performance.now() - started
    this.flushStats.flushes++
    this.flushStats.steps += batch.length
    this.flushStats.lastBatch = batch.length
    this.flushStats.maxBatch = Math.max(this.flushStats.maxBatch, batch.length)
    this.flushStats.lastFlushMs = ms
    this.flushStats.totalFlushMs += ms
    this.onFlush?.(batch.length, ms)
    let forced = false
    for (const step of batch) {
      this.written.set(step.next.id, step.next)
      this.unsynced.push(step)
      if (step.forced) forced = true
      else step.done()
    }
    if (this.walFd === null) this.markSynced(this.unsynced.splice(0)) // in memory: nothing to sync
    else if (forced) this.sync()
    else this.lazySync ??= setTimeout(() => { this.lazySync = undefined; this.sync() }, this.lazySyncMs)
  }

  /**
   * Makes every committed step durable with one fdatasync: inline when the disk is quick and
   * no other sync runs, else on the thread pool (`syncPlacement`). Up to
   * MAX_SYNCS_IN_FLIGHT run at once, so a forced step never waits behind a lazy sync; the
   * syncs are settled in the order they started, and one that returns settles every earlier
   * one too (it flushed everything written before it began).
   */
  private sync (): void {
    if (this.walFd === null || this.syncsInFlight.length >= MAX_SYNCS_IN_FLIGHT) return // a returning sync starts the next
    clearTimeout(this.lazySync)
    this.lazySync = undefined
    const covered = this.unsynced
    if (covered.length === 0) return
    this.unsynced = []
    const sync = { covered }
    this.syncsInFlight.push(sync)
    const settle = (err: NodeJS.ErrnoException | null, ms: number): void => {
      // Not in the list any more: a later sync returned first and settled this one's steps.
      const index = this.syncsInFlight.indexOf(sync)
      const settled = index < 0 ? [] : this.syncsInFlight.splice(0, index + 1)
      if (err !== null) {
        this.failSync(err, settled.flatMap(s => s.covered))
        if (this.closed && this.syncsInFlight.length === 0) this.closeWal()
        return
      }
      this.flushStats.syncs++
      this.flushStats.totalSyncMs += ms
      for (const earlier of settled) {
        this.onSync?.(earlier.covered.length, ms)
        this.markSynced(earlier.covered)
      }
      if (this.closed) {
        if (this.syncsInFlight.length === 0) this.closeWal()
        return
      }
      if (this.unsynced.length === 0) return
      if (this.unsynced.some(s => s.forced)) this.sync()
      else this.lazySync ??= setTimeout(() => { this.lazySync = undefined; this.sync() }, this.lazySyncMs)
    }
    // Inline or on the pool (SyncPlacement); settled on a later tick either way.
    this.syncPlacement.sync(this.walFd, this.syncsInFlight.length - 1, (err, ms, inline) => {
      if (inline) this.flushStats.inlineSyncs++
      settle(err, ms)
    })
  }

  private markSynced (steps: PendingStep[]): void {
    if (this.syncFailed) { // a sync failed meanwhile: nothing is reported durable any more
      for (const step of steps) if (step.forced) step.done(this.failure)
      return
    }
    for (const step of steps) {
      if (step.outboxMax > this.syncedOutboxId) this.syncedOutboxId = step.outboxMax
      const id = step.next.id
      if (step.next.state === 'committed') this.beforeCommit.delete(id)
      if (this.latest.get(id) === step.next) {
        this.latest.delete(id)
        this.synced.delete(id)
        this.written.delete(id)
        if (step.next.completedAt === null) this.remember(step.next)
      } else if (this.latest.has(id)) {
        this.synced.set(id, step.next)
      }
    }
    for (const step of steps) if (step.forced) step.done()
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

  /** Steps rolled back: each transaction's newest record is again its newest committed one. */
  private forget (batch: PendingStep[]): void {
    for (const step of batch) {
      const id = step.next.id
      // Its newest written step: in a sync still running, or waiting for the next one.
      let newest: Transaction | undefined
      for (const running of this.syncsInFlight) for (const s of running.covered) if (s.next.id === id) newest = s.next
      for (const s of this.unsynced) if (s.next.id === id) newest = s.next
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
  }

  /**
   * The disk refused an fsync: whether those frames are on disk is unknown (and Linux may have
   * dropped the dirty pages), so the log stops reporting anything durable; only a restart, which
   * reads what really is on disk, can go on. Callers waiting for these steps get the error.
   */
  private failSync (err: Error, covered: PendingStep[]): void {
    if (!this.syncFailed) {
      this.syncFailed = true
      this.failure = new Errors.LOG_UNAVAILABLE(`the coordinator log could not be synced to disk: ${err.message}; restart the coordinator`, { cause: err })
      this.failureKind = 'failed'
    }
    const waiting = [...covered, ...this.unsynced]
    this.unsynced = []
    for (const step of waiting) if (step.forced) step.done(this.failure)
  }

  /**
   * The disk refused a write. Latched until a restart, like a failed sync: the batch was rolled
   * back (SQLite undoes a write that found no space), so what is written stays good and steps
   * written before are still synced and reported; but the refused steps are gone from memory and
   * the engine would not redo them (a vote, an ack, a retry's schedule) — a restart's recovery
   * reads the log and does. Until then every new step fails at once.
   */
  private failWrite (err: Error, kind: 'full' | 'failed'): void {
    if (this.failure !== undefined) return
    const what = kind === 'full' ? 'the disk is full' : 'the disk refused a write'
    this.failure = new Errors.LOG_UNAVAILABLE(`the coordinator log cannot be written, ${what} (${(err as NodeJS.ErrnoException).code ?? 'error'}: ${err.message}); ` +
      `${kind === 'full' ? 'free space, then ' : ''}restart the coordinator`, { cause: err })
    this.failureKind = kind
  }

  get pendingSteps (): number {
    return this.pending.length
  }

  /** Queues a message that belongs to no transaction (e.g. `coordinator.started`). */
  enqueueEvent (exchange: string, routingKey: string, messageId: string, body: unknown, now: number): void {
    // A FULL commit: the fsync covers this row and every row committed before it.
    const info = this.stmts.insertOutbox.run(null, 'event', exchange, routingKey, messageId, JSON.stringify(body), null, now)
    if (info.changes > 0) this.syncedOutboxId = Math.max(this.syncedOutboxId, Number(info.lastInsertRowid))
    this.outboxQueuedRows += info.changes
  }

  /** The next unpublished, synced outbox rows after `afterId`, oldest first. */
  outboxBatch (afterId: number, limit: number): OutboxRow[] {
    return this.stmts.outboxBatch.all(afterId, this.syncedOutboxId, limit).map(toOutboxRow)
  }

  /** Records a batch's confirms and failures in one transaction. */
  readonly settleOutbox = (published: number[], failed: Array<{ id: number, error: string, permanent: boolean }>, now: number): void => {
    this.db.transaction(() => {
      for (const id of published) this.stmts.markPublished.run(now, id)
      for (const f of failed) this.stmts.markFailed.run(f.error.slice(0, 1000), f.permanent ? now : null, f.id)
    })()
    this.outboxQueuedRows = Math.max(0, this.outboxQueuedRows - published.length - failed.filter(f => f.permanent).length)
  }

  outboxStats (): OutboxStats {
    const row = this.stmts.outboxStats.get() as { depth: number, dead: number, oldest: number | null }
    this.outboxQueuedRows = row.depth
    this.outboxCountedAt = Date.now()
    return { depth: row.depth, dead: row.dead, oldestCreatedAt: row.oldest }
  }

  /**
   * Outbox rows waiting to be published (not parked), for the guard of new messages: counted
   * exactly at most once a second (through the queued rows' partial index), kept up to date
   * between counts by the rows this log inserts and settles. A batch rolled back after counting
   * its rows leaves the number too high until the next count, never too low.
   */
  outboxQueued (): number {
    const now = Date.now()
    if (now - this.outboxCountedAt >= OUTBOX_COUNT_MS) {
      this.outboxQueuedRows = this.stmts.outboxQueued.get()?.n ?? 0
      this.outboxCountedAt = now
    }
    return this.outboxQueuedRows
  }

  outboxFor (txId: string): OutboxRow[] {
    return this.stmts.outboxFor.all(txId).map(toOutboxRow)
  }

  attention (txId: string): AttentionEntry[] {
    return this.stmts.attentionFor.all(txId).map(toAttention)
  }

  expiredIds (now: number, limit: number): string[] {
    return this.stmts.openIds.all(now, limit).map(r => r.id)
  }

  /** Undecided transactions, a page at a time (keyset on id). */
  undecidedIds (afterId: string, limit: number): string[] {
    return this.stmts.undecidedIds.all(afterId, limit).map(r => r.id)
  }

  /** Decided transactions whose phase 2 is not finished, a page at a time. */
  unfinishedIds (afterId: string, limit: number): string[] {
    return this.stmts.unfinishedIds.all(afterId, limit).map(r => r.id)
  }

  list (query: ListQuery): Transaction[] {
    const where: string[] = []
    const params: unknown[] = []
    if (query.state !== undefined) { where.push('state = ?'); params.push(query.state) }
    // needsAttention=true: the rare rows, through their partial index (a literal 1, which the
    // planner can match to the index's WHERE; INDEXED BY, since for the order by creation it
    // would otherwise walk transactions_by_created through the whole log to find them).
    if (query.needsAttention !== undefined) where.push(query.needsAttention ? 'needs_attention = 1' : 'needs_attention = 0')
    if (query.after !== undefined) {
      where.push('(created_at, id) < (?, ?)')
      params.push(query.after.createdAt, query.after.id)
    }
    const from = query.needsAttention === true ? 'transactions INDEXED BY transactions_attention' : 'transactions'
    const sql = `SELECT * FROM ${from} ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''}
      ORDER BY created_at DESC, id DESC LIMIT ?`
    params.push(query.limit)
    const rows = this.db.prepare<unknown[], TxRow>(sql).all(...params)
    const out: Transaction[] = []
    for (const row of rows) {
      // A transaction with unwritten or unsynced steps is shown as `view` shows it (the filter
      // matched the written row, so a page may show a state it did not ask for, for a few ms).
      const tx = this.latest.has(row.id) ? this.view(row.id) : toTransaction(row, this.stmts.getParticipants.all(row.id).map(toParticipant))
      if (tx !== undefined) out.push(tx)
    }
    return out
  }

  /**
   * Retention's delete of one batch (see PRUNE_BATCH_SQL), in one SQLite transaction: a pruned
   * commit some participant never acked keeps its compact record. Returns how many it deleted.
   */
  pruneCompleted (before: number, limit: number, now: number): number {
    return this.db.transaction(() => {
      const ids = this.stmts.pruneBatch.all(before, limit).map(r => r.id)
      if (ids.length === 0) return 0
      const json = JSON.stringify(ids)
      this.stmts.keepPrunedCommits.run(now, json)
      return this.stmts.deleteTransactions.run(json).changes
    })()
  }

  /** The compact record of a pruned commit (its decision is still `commit`), if one is kept. */
  prunedCommit (id: string): PrunedCommit | undefined {
    const row = this.stmts.prunedCommit.get(id)
    return row === undefined ? undefined : { id: row.id, decidedAt: row.decided_at, prunedAt: row.pruned_at }
  }

  /**
   * Operator: drops a pruned commit's compact record, with its audit row, in one SQLite
   * transaction (synchronous=FULL: durable when this returns). From then on the id answers a
   * presumed abort. Undefined when no record is kept for it.
   */
  forgetPrunedCommit (id: string, audit: { actor: string, reason: string }, now: number): PrunedCommit | undefined {
    return this.db.transaction(() => {
      const kept = this.prunedCommit(id)
      if (kept === undefined) return undefined
      this.stmts.deletePrunedCommit.run(id)
      this.operator.insertAudit(id, 'forget', audit.reason, audit.actor, now)
      return kept
    })()
  }

  decisionRow (id: string): { decision: Decision, decided_at: number } | undefined {
    return this.db.prepare<[string], { decision: Decision, decided_at: number }>(
      'SELECT decision, decided_at FROM decisions WHERE tx_id = ?').get(id)
  }

  /** Writes and syncs everything saved so far, blocking (graceful stop). */
  flushAndSync (): void {
    this.flush()
    if (this.unsynced.length === 0 || this.syncFailed) return
    clearTimeout(this.lazySync)
    this.lazySync = undefined
    // The syncs still running cover earlier steps; this one covers them too, in order (their
    // callbacks then find nothing left to settle, and the last one closes the descriptor).
    const covered: PendingStep[] = []
    for (const running of this.syncsInFlight) {
      covered.push(...running.covered)
      running.covered = []
    }
    covered.push(...this.unsynced)
    this.unsynced = []
    try {
      if (this.walFd !== null) fdatasyncSync(this.walFd)
    } catch (err) {
      this.failSync(err as Error, covered)
      return
    }
    this.markSynced(covered)
  }

  close (): void {
    if (this.db.open) {
      this.flushAndSync() // nothing saved is dropped by a graceful close
      clearTimeout(this.lazySync)
      this.db.close()
      this.lock?.release()
      this.closed = true
      if (this.syncsInFlight.length === 0) this.closeWal() // else the last running sync's callback closes it
    }
  }

  private closeWal (): void {
    if (this.walFd !== null) closeSync(this.walFd)
    this.walFd = null
  }
}
