/**
 * The coordinator's durable log: SQLite through better-sqlite3, WAL, synchronous=FULL, so a
 * write transaction that returned is on disk. One `save` = one SQLite transaction = the whole
 * state change of one step, its decision row and its attention rows.
 */
import Database from 'better-sqlite3'
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import type { Decision } from '@fastify-2pc/protocol'
import { migrations } from './migrations.js'
import type { AttentionKind, Participant, Transaction, TxMessage, TxState } from '../core/machine.js'
import { OperatorTables, type NewAudit } from './operator-tables.js'

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
  durable: (err?: Error) => void
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

function txParams (tx: Transaction): Record<string, unknown> {
  return {
    id: tx.id,
    state: tx.state,
    created_at: tx.createdAt,
    updated_at: tx.updatedAt,
    expires_at: tx.expiresAt,
    decided_at: tx.decidedAt,
    completed_at: tx.completedAt,
    reason: tx.reason,
    needs_attention: tx.needsAttention ? 1 : 0,
    one_phase: tx.onePhase ? 1 : 0,
    metadata: tx.metadata === null || tx.metadata === undefined ? null : JSON.stringify(tx.metadata),
    message_count: tx.messageCount,
    traceparent: tx.traceparent,
    heuristic: tx.heuristic ? 1 : 0
  }
}

function participantParams (txId: string, position: number, p: Participant): Record<string, unknown> {
  return {
    tx_id: txId,
    position,
    name: p.name,
    url: p.url,
    payload: p.payload === null || p.payload === undefined ? null : JSON.stringify(p.payload),
    one_phase: p.onePhase ? 1 : 0,
    vote: p.vote,
    vote_reason: p.voteReason,
    ack: p.ack,
    attempts: p.attempts,
    last_error: p.lastError,
    next_attempt_at: p.nextAttemptAt
  }
}

export class CoordinatorLog {
  readonly db: Database.Database
  /** Timeline events, the audit trail and attention resolutions (migration 3). */
  readonly operator: OperatorTables
  private readonly stmts
  private readonly writeStep: (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number) => void
  private readonly writeBatch: (batch: PendingStep[]) => void
  /** Steps saved but not yet on disk, in order; flushed together (group commit). */
  private pending: PendingStep[] = []
  /** The newest not-yet-durable record of each transaction with pending steps. */
  private readonly latest = new Map<string, Transaction>()
  private flushScheduled = false
  readonly flushStats = { flushes: 0, steps: 0, maxBatch: 0, lastBatch: 0, lastFlushMs: 0, totalFlushMs: 0 }
  /** Group commit: steps saved in one event-loop turn share one SQLite transaction (one fsync), up to this many. */
  maxBatch = 256
  /** Observer of each flush (metrics). */
  onFlush: ((steps: number, ms: number) => void) | undefined

  constructor (path: string, private readonly noticeRouting: NoticeRouting | null = null) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    this.db = new Database(path)
    this.db.pragma('journal_mode = WAL')
    // FULL: a commit returns only after the WAL is fsynced — the decision is on disk.
    this.db.pragma('synchronous = FULL')
    this.db.pragma('foreign_keys = ON')
    this.db.pragma('busy_timeout = 5000')
    this.migrate()

    this.stmts = {
      getTx: this.db.prepare<[string], TxRow>('SELECT * FROM transactions WHERE id = ?'),
      getParticipants: this.db.prepare<[string], ParticipantRow>('SELECT * FROM participants WHERE tx_id = ? ORDER BY position'),
      insertTx: this.db.prepare(`INSERT INTO transactions
        (id, state, created_at, updated_at, expires_at, decided_at, completed_at, reason, needs_attention, one_phase, metadata, message_count, traceparent, heuristic)
        VALUES (@id, @state, @created_at, @updated_at, @expires_at, @decided_at, @completed_at, @reason, @needs_attention, @one_phase, @metadata, @message_count, @traceparent, @heuristic)`),
      updateTx: this.db.prepare(`UPDATE transactions SET state = @state, updated_at = @updated_at, expires_at = @expires_at,
        decided_at = @decided_at, completed_at = @completed_at, reason = @reason, needs_attention = @needs_attention,
        one_phase = @one_phase, metadata = @metadata, message_count = @message_count, heuristic = @heuristic WHERE id = @id`),
      upsertParticipant: this.db.prepare(`INSERT INTO participants
        (tx_id, position, name, url, payload, one_phase, vote, vote_reason, ack, attempts, last_error, next_attempt_at)
        VALUES (@tx_id, @position, @name, @url, @payload, @one_phase, @vote, @vote_reason, @ack, @attempts, @last_error, @next_attempt_at)
        ON CONFLICT (tx_id, name) DO UPDATE SET vote = excluded.vote, vote_reason = excluded.vote_reason, ack = excluded.ack,
          attempts = excluded.attempts, last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at`),
      insertDecision: this.db.prepare('INSERT INTO decisions (tx_id, decision, decided_at, reason) VALUES (?, ?, ?, ?)'),
      insertAttention: this.db.prepare('INSERT INTO attention (tx_id, participant, kind, detail, created_at) VALUES (?, ?, ?, ?, ?)'),
      attentionFor: this.db.prepare<[string], AttentionRow>('SELECT * FROM attention WHERE tx_id = ? ORDER BY id'),
      openIds: this.db.prepare<[number, number], { id: string }>(
        `SELECT id FROM transactions WHERE state IN ('active', 'preparing') AND expires_at <= ? ORDER BY expires_at LIMIT ?`),
      undecidedIds: this.db.prepare<[string, number], { id: string }>(
        `SELECT id FROM transactions WHERE state IN ('active', 'preparing') AND id > ? ORDER BY id LIMIT ?`),
      unfinishedIds: this.db.prepare<[string, number], { id: string }>(
        `SELECT id FROM transactions WHERE completed_at IS NULL AND state IN ('committed', 'aborted') AND id > ? ORDER BY id LIMIT ?`),
      resolveRetryBudget: this.db.prepare(`UPDATE attention SET resolved_at = ?, resolution = 'delivered: every participant acked'
        WHERE tx_id = ? AND kind = 'retry-budget' AND resolved_at IS NULL`),
      insertMessage: this.db.prepare('INSERT INTO tx_messages (tx_id, position, exchange, routing_key, body, headers) VALUES (?, ?, ?, ?, ?, ?)'),
      releaseMessages: this.db.prepare(`INSERT INTO outbox (tx_id, kind, exchange, routing_key, message_id, body, headers, created_at)
        SELECT tx_id, 'message', exchange, routing_key, tx_id || ':m' || position, body, headers, ? FROM tx_messages WHERE tx_id = ? ORDER BY position`),
      insertOutbox: this.db.prepare(`INSERT OR IGNORE INTO outbox (tx_id, kind, exchange, routing_key, message_id, body, headers, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
      outboxBatch: this.db.prepare<[number, number], OutboxDbRow>(
        'SELECT * FROM outbox WHERE published_at IS NULL AND dead_at IS NULL AND id > ? ORDER BY id LIMIT ?'),
      markPublished: this.db.prepare('UPDATE outbox SET published_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?'),
      markFailed: this.db.prepare('UPDATE outbox SET attempts = attempts + 1, last_error = ?, dead_at = ? WHERE id = ?'),
      outboxStats: this.db.prepare<[], { depth: number, dead: number, oldest: number | null }>(`SELECT
        (SELECT count(*) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL) AS depth,
        (SELECT count(*) FROM outbox WHERE dead_at IS NOT NULL) AS dead,
        (SELECT min(created_at) FROM outbox WHERE published_at IS NULL AND dead_at IS NULL) AS oldest`),
      outboxFor: this.db.prepare<[string], OutboxDbRow>('SELECT * FROM outbox WHERE tx_id = ? ORDER BY id'),
      getMeta: this.db.prepare<[string], { value: string }>('SELECT value FROM coordinator_meta WHERE key = ?'),
      setMeta: this.db.prepare('INSERT INTO coordinator_meta (key, value) VALUES (?, ?)')
    }

    this.operator = new OperatorTables(this.db)
    this.writeStep = (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number) => {
      const params = txParams(next)
      if (prev === null) this.stmts.insertTx.run(params)
      else this.stmts.updateTx.run(params)
      next.participants.forEach((p, i) => {
        const before = prev?.participants[i]
        if (before === p) return // untouched by this step (the machine copies what it changes)
        this.stmts.upsertParticipant.run(participantParams(next.id, i, p))
      })
      for (const m of writes.messages) {
        this.stmts.insertMessage.run(next.id, m.position, m.message.exchange, m.message.routingKey,
          JSON.stringify(m.message.body), m.message.headers === undefined ? null : JSON.stringify(m.message.headers))
      }
      if (next.decidedAt !== null && (prev === null || prev.decidedAt === null)) {
        this.stmts.insertDecision.run(next.id, next.state === 'committed' ? 'commit' : 'abort', next.decidedAt, next.reason)
        // Transactional messages exist for the outside world only from the commit decision on.
        if (next.state === 'committed' && next.messageCount > 0) this.stmts.releaseMessages.run(now, next.id)
      }
      for (const a of writes.attention) this.stmts.insertAttention.run(next.id, a.participant, a.kind, a.detail, now)
      if (next.completedAt !== null && prev !== null && prev.completedAt === null) this.stmts.resolveRetryBudget.run(now, next.id)
      if (this.noticeRouting !== null) {
        for (const n of writes.notices) {
          const body = JSON.stringify({ txid: next.id, participant: n.participant, decision: n.decision })
          this.stmts.insertOutbox.run(next.id, 'decision', this.noticeRouting.exchange, this.noticeRouting.routingKey(n.participant),
            `${next.id}:${n.participant}:${n.decision}`, body, null, now)
        }
      }
      this.operator.write(prev, next, writes.audit, writes.resolveAttention, now)
    }
    this.writeBatch = this.db.transaction((batch: PendingStep[]) => {
      for (const step of batch) this.writeStep(step.prev, step.next, step.writes, step.now)
    })
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

  /** The durable record: what is on disk (what the API shows, and what a decision query answers). */
  load (id: string): Transaction | undefined {
    const row = this.stmts.getTx.get(id)
    if (row === undefined) return undefined
    return toTransaction(row, this.stmts.getParticipants.all(id).map(toParticipant))
  }

  /** The newest record, durable or not: what the next state-machine step starts from. */
  loadLatest (id: string): Transaction | undefined {
    return this.latest.get(id) ?? this.load(id)
  }

  /**
   * Saves a step's outcome. Group commit: the steps saved during one event-loop turn (at most
   * `maxBatch`) are written in ONE SQLite transaction — one fsync — and each step's `durable`
   * callback runs only after that transaction committed. `prev` null: a new record.
   */
  save (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number, durable: (err?: Error) => void): void {
    this.pending.push({ prev, next, writes, now, durable })
    this.latest.set(next.id, next)
    if (this.pending.length >= this.maxBatch) {
      this.flush()
    } else if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(() => this.flush())
    }
  }

  /** Writes every pending step in one transaction, then tells each caller. */
  flush (): void {
    this.flushScheduled = false
    const batch = this.pending
    if (batch.length === 0) return
    this.pending = []
    const started = performance.now()
    let error: Error | undefined
    try {
      this.writeBatch(batch)
    } catch (err) {
      error = err as Error
    }
    for (const step of batch) {
      if (this.latest.get(step.next.id) === step.next) this.latest.delete(step.next.id)
    }
    const ms = performance.now() - started
    this.flushStats.flushes++
    this.flushStats.steps += batch.length
    this.flushStats.lastBatch = batch.length
    this.flushStats.maxBatch = Math.max(this.flushStats.maxBatch, batch.length)
    this.flushStats.lastFlushMs = ms
    this.flushStats.totalFlushMs += ms
    this.onFlush?.(batch.length, ms)
    for (const step of batch) step.durable(error)
  }

  get pendingSteps (): number {
    return this.pending.length
  }

  /** Queues a message that belongs to no transaction (e.g. `coordinator.started`). */
  enqueueEvent (exchange: string, routingKey: string, messageId: string, body: unknown, now: number): void {
    this.stmts.insertOutbox.run(null, 'event', exchange, routingKey, messageId, JSON.stringify(body), null, now)
  }

  /** The next unpublished outbox rows after `afterId`, oldest first. */
  outboxBatch (afterId: number, limit: number): OutboxRow[] {
    return this.stmts.outboxBatch.all(afterId, limit).map(toOutboxRow)
  }

  /** Records a batch's confirms and failures in one transaction. */
  readonly settleOutbox = (published: number[], failed: Array<{ id: number, error: string, permanent: boolean }>, now: number): void => {
    this.db.transaction(() => {
      for (const id of published) this.stmts.markPublished.run(now, id)
      for (const f of failed) this.stmts.markFailed.run(f.error.slice(0, 1000), f.permanent ? now : null, f.id)
    })()
  }

  outboxStats (): OutboxStats {
    const row = this.stmts.outboxStats.get() as { depth: number, dead: number, oldest: number | null }
    return { depth: row.depth, dead: row.dead, oldestCreatedAt: row.oldest }
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
    if (query.needsAttention !== undefined) { where.push('needs_attention = ?'); params.push(query.needsAttention ? 1 : 0) }
    if (query.after !== undefined) {
      where.push('(created_at, id) < (?, ?)')
      params.push(query.after.createdAt, query.after.id)
    }
    const sql = `SELECT * FROM transactions ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''}
      ORDER BY created_at DESC, id DESC LIMIT ?`
    params.push(query.limit)
    const rows = this.db.prepare<unknown[], TxRow>(sql).all(...params)
    return rows.map(row => toTransaction(row, this.stmts.getParticipants.all(row.id).map(toParticipant)))
  }

  decisionRow (id: string): { decision: Decision, decided_at: number } | undefined {
    return this.db.prepare<[string], { decision: Decision, decided_at: number }>(
      'SELECT decision, decided_at FROM decisions WHERE tx_id = ?').get(id)
  }

  close (): void {
    if (this.db.open) {
      this.flush() // nothing saved is dropped by a graceful close
      this.db.close()
    }
  }
}
