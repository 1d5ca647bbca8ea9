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
import type { AttentionKind, Participant, Transaction, TxState } from '../core/machine.js'

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
    participants
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
    metadata: tx.metadata === null || tx.metadata === undefined ? null : JSON.stringify(tx.metadata)
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
  private readonly stmts
  private readonly saveTx: (prev: Transaction | null, next: Transaction, attention: NewAttention[], now: number) => void

  constructor (path: string) {
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
        (id, state, created_at, updated_at, expires_at, decided_at, completed_at, reason, needs_attention, one_phase, metadata)
        VALUES (@id, @state, @created_at, @updated_at, @expires_at, @decided_at, @completed_at, @reason, @needs_attention, @one_phase, @metadata)`),
      updateTx: this.db.prepare(`UPDATE transactions SET state = @state, updated_at = @updated_at, expires_at = @expires_at,
        decided_at = @decided_at, completed_at = @completed_at, reason = @reason, needs_attention = @needs_attention,
        one_phase = @one_phase, metadata = @metadata WHERE id = @id`),
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
      getMeta: this.db.prepare<[string], { value: string }>('SELECT value FROM coordinator_meta WHERE key = ?'),
      setMeta: this.db.prepare('INSERT INTO coordinator_meta (key, value) VALUES (?, ?)')
    }

    this.saveTx = this.db.transaction((prev: Transaction | null, next: Transaction, attention: NewAttention[], now: number) => {
      const params = txParams(next)
      if (prev === null) this.stmts.insertTx.run(params)
      else this.stmts.updateTx.run(params)
      next.participants.forEach((p, i) => {
        const before = prev?.participants[i]
        if (before === p) return // untouched by this step (the machine copies what it changes)
        this.stmts.upsertParticipant.run(participantParams(next.id, i, p))
      })
      if (next.decidedAt !== null && (prev === null || prev.decidedAt === null)) {
        this.stmts.insertDecision.run(next.id, next.state === 'committed' ? 'commit' : 'abort', next.decidedAt, next.reason)
      }
      for (const a of attention) this.stmts.insertAttention.run(next.id, a.participant, a.kind, a.detail, now)
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

  load (id: string): Transaction | undefined {
    const row = this.stmts.getTx.get(id)
    if (row === undefined) return undefined
    return toTransaction(row, this.stmts.getParticipants.all(id).map(toParticipant))
  }

  /** Writes a step's outcome in one forced SQLite transaction. `prev` null: a new record. */
  save (prev: Transaction | null, next: Transaction, attention: NewAttention[], now: number): void {
    this.saveTx(prev, next, attention, now)
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
    if (this.db.open) this.db.close()
  }
}
