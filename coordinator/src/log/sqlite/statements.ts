/**
 * Every SQL statement of the coordinator's SQLite log, in one place (the operator tables'
 * own are in operator-tables.ts, beside the code that reads their rows). Exported ones are
 * read by the tests that check their query plans.
 */
import type Database from 'better-sqlite3'
import type { ListFilter, View } from '../log-store.js'
import type { AttentionRow, OutboxDbRow, ParticipantRow, TxRow } from './rows.js'

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

/**
 * Published rows only: an unpublished or parked row is still work or evidence. Through the
 * `outbox_published` index (migration 7), a run reads what it deletes, not the whole outbox.
 */
export const PRUNE_OUTBOX_SQL = `DELETE FROM outbox WHERE id IN (
  SELECT id FROM outbox WHERE published_at IS NOT NULL AND published_at < ? ORDER BY published_at LIMIT ?)`

/** The metrics' gauges of the log, one statement per scrape. */
export const GAUGES_SQL = `SELECT
  (SELECT count(*) FROM transactions WHERE state = 'preparing') AS in_doubt,
  (SELECT min(updated_at) FROM transactions WHERE state = 'preparing') AS oldest_in_doubt,
  (SELECT count(*) FROM transactions WHERE needs_attention = 1) AS attention,
  (SELECT min(created_at) FROM attention WHERE resolved_at IS NULL) AS oldest_attention`

/** The console's counters' statements. */
export const COUNTER_SQL = {
  inState: 'SELECT count(*) AS n FROM transactions WHERE state = ?',
  inStateCapped: 'SELECT count(*) AS n FROM (SELECT 1 FROM transactions WHERE state = ? LIMIT ?)',
  needsAttention: 'SELECT count(*) AS n FROM transactions INDEXED BY transactions_attention WHERE needs_attention = 1',
  oldestInDoubt: "SELECT min(created_at) AS n FROM transactions WHERE state = 'preparing'",
  heuristics: "SELECT count(DISTINCT tx_id) AS n FROM participants WHERE ack = 'heuristic'",
  unfinished: "SELECT count(*) AS n FROM transactions INDEXED BY transactions_unfinished WHERE completed_at IS NULL AND state IN ('committed', 'aborted')"
} as const

/**
 * The console list's FROM clause and conditions per view. The rare-row views read their partial
 * index (INDEXED BY: for the list's order by creation the planner would otherwise walk
 * `transactions_by_created` through the whole log looking for the few matching rows).
 */
const VIEW_SOURCES: Record<View, { from: string, where?: string }> = {
  all: { from: 'transactions t' },
  'in-doubt': { from: 'transactions t', where: "t.state = 'preparing'" },
  'needs-attention': { from: 'transactions t INDEXED BY transactions_attention', where: 't.needs_attention = 1' },
  heuristic: { from: 'transactions t', where: "t.id IN (SELECT tx_id FROM participants WHERE ack = 'heuristic')" },
  unfinished: { from: 'transactions t INDEXED BY transactions_unfinished', where: "t.completed_at IS NULL AND t.state IN ('committed', 'aborted')" }
}

/** The console list's statement and its parameters. */
export function listQuery (filter: ListFilter, now: number): { sql: string, params: unknown[] } {
  const source = VIEW_SOURCES[filter.view]
  const where: string[] = source.where === undefined ? [] : [source.where]
  const params: unknown[] = []
  if (filter.state !== undefined) { where.push('t.state = ?'); params.push(filter.state) }
  if (filter.participant !== undefined) {
    where.push('EXISTS (SELECT 1 FROM participants p WHERE p.tx_id = t.id AND p.name = ?)')
    params.push(filter.participant)
  }
  if (filter.olderThanMs !== undefined) { where.push('t.created_at <= ?'); params.push(now - filter.olderThanMs) }
  if (filter.before !== undefined) { where.push('(t.created_at, t.id) < (?, ?)'); params.push(filter.before.createdAt, filter.before.id) }
  const sql = `SELECT t.id FROM ${source.from} ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''}
    ORDER BY t.created_at DESC, t.id DESC LIMIT ?`
  params.push(filter.limit)
  return { sql, params }
}

/** The API's list (`GET /v1/transactions`). */
export function apiListQuery (query: { state?: string, needsAttention?: boolean, limit: number, after?: { createdAt: number, id: string } }): { sql: string, params: unknown[] } {
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
  return { sql, params }
}

/** Columns of the batch's multi-row statements (batch-writer.ts), in the order of their parameters. */
export const TX_COLUMNS = '(state, updated_at, expires_at, decided_at, completed_at, reason, needs_attention, one_phase, metadata, message_count, heuristic, id, created_at, traceparent, prepared_at)'
export const PARTICIPANT_COLUMNS = '(tx_id, position, name, url, payload, one_phase, vote, vote_reason, ack, attempts, last_error, next_attempt_at, enlisted_at, voted_at, acked_at)'
/** A changed record: only its mutable columns (created_at, traceparent never change). */
export const TX_UPSERT = `ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, expires_at = excluded.expires_at,
        decided_at = excluded.decided_at, completed_at = excluded.completed_at, reason = excluded.reason,
        needs_attention = excluded.needs_attention, one_phase = excluded.one_phase, metadata = excluded.metadata,
        message_count = excluded.message_count, heuristic = excluded.heuristic,
        prepared_at = coalesce(excluded.prepared_at, transactions.prepared_at)`
export const TX_TIMES_UPSERT = 'ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at, completed_at = excluded.completed_at'
/** A changed participant: url, position and payload never change. */
export const PARTICIPANT_UPSERT = `ON CONFLICT (tx_id, name) DO UPDATE SET vote = excluded.vote, vote_reason = excluded.vote_reason, ack = excluded.ack,
        attempts = excluded.attempts, last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at,
        voted_at = coalesce(excluded.voted_at, participants.voted_at), acked_at = coalesce(excluded.acked_at, participants.acked_at)`

/** Prepared statements, as the log uses them. */
type Stmt<P extends unknown[] = unknown[], R = unknown> = Database.Statement<P, R>

export interface Statements {
  getTx: Stmt<[string], TxRow>
  getParticipants: Stmt<[string], ParticipantRow>
  insertAttention: Stmt
  attentionFor: Stmt<[string], AttentionRow>
  openIds: Stmt<[number, number], { id: string }>
  undecidedIds: Stmt<[string, number], { id: string }>
  unfinishedIds: Stmt<[string, number], { id: string }>
  resolveRetried: Stmt
  insertMessage: Stmt
  releaseMessages: Stmt
  insertOutbox: Stmt
  outboxBatch: Stmt<[number, number, number], OutboxDbRow>
  maxOutboxId: Stmt<[], { id: number | null }>
  markPublished: Stmt
  markFailed: Stmt
  outboxStats: Stmt<[], { depth: number, dead: number, oldest: number | null }>
  outboxQueued: Stmt<[], { n: number }>
  outboxFor: Stmt<[string], OutboxDbRow>
  getMeta: Stmt<[string], { value: string }>
  setMeta: Stmt
  pruneBatch: Stmt<[number, number], { id: string }>
  keepPrunedCommits: Stmt
  deleteTransactions: Stmt
  pruneOutbox: Stmt
  prunedCommit: Stmt<[string], { id: string, decided_at: number, pruned_at: number }>
  deletePrunedCommit: Stmt
  decisionRow: Stmt<[string], { decision: 'commit' | 'abort', decided_at: number }>
  gauges: Stmt<[], { in_doubt: number, oldest_in_doubt: number | null, attention: number, oldest_attention: number | null }>
  counter: (sql: string) => Stmt<unknown[], { n: number | null }>
}

/** The log's prepared statements. */
export function prepareStatements (db: Database.Database): Statements {
  return {
    getTx: db.prepare<[string], TxRow>('SELECT * FROM transactions WHERE id = ?'),
    getParticipants: db.prepare<[string], ParticipantRow>('SELECT * FROM participants WHERE tx_id = ? ORDER BY position'),
    insertAttention: db.prepare('INSERT INTO attention (tx_id, participant, kind, detail, created_at) VALUES (?, ?, ?, ?, ?)'),
    attentionFor: db.prepare<[string], AttentionRow>('SELECT * FROM attention WHERE tx_id = ? ORDER BY id'),
    openIds: db.prepare<[number, number], { id: string }>(
      "SELECT id FROM transactions WHERE state IN ('active', 'preparing') AND expires_at <= ? ORDER BY expires_at LIMIT ?"),
    undecidedIds: db.prepare<[string, number], { id: string }>(
      "SELECT id FROM transactions WHERE state IN ('active', 'preparing') AND id > ? ORDER BY id LIMIT ?"),
    unfinishedIds: db.prepare<[string, number], { id: string }>(UNFINISHED_IDS_SQL),
    // Every kind of a delivery still retried (retry-budget, and since migration 9 unauthorized, not-found).
    resolveRetried: db.prepare(`UPDATE attention SET resolved_at = ?, resolution = 'delivered: every participant acked'
      WHERE tx_id = ? AND kind IN ('retry-budget', 'unauthorized', 'not-found') AND resolved_at IS NULL`),
    insertMessage: db.prepare('INSERT INTO tx_messages (tx_id, position, exchange, routing_key, body, headers) VALUES (?, ?, ?, ?, ?, ?)'),
    releaseMessages: db.prepare(`INSERT INTO outbox (tx_id, kind, exchange, routing_key, message_id, body, headers, created_at)
      SELECT tx_id, 'message', exchange, routing_key, tx_id || ':m' || position, body, headers, ? FROM tx_messages WHERE tx_id = ? ORDER BY position`),
    insertOutbox: db.prepare(`INSERT OR IGNORE INTO outbox (tx_id, kind, exchange, routing_key, message_id, body, headers, created_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
    outboxBatch: db.prepare<[number, number, number], OutboxDbRow>(
      'SELECT * FROM outbox WHERE published_at IS NULL AND dead_at IS NULL AND id > ? AND id <= ? ORDER BY id LIMIT ?'),
    maxOutboxId: db.prepare<[], { id: number | null }>('SELECT max(id) AS id FROM outbox'),
    markPublished: db.prepare('UPDATE outbox SET published_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?'),
    markFailed: db.prepare('UPDATE outbox SET attempts = attempts + 1, last_error = ?, dead_at = ? WHERE id = ?'),
    outboxStats: db.prepare<[], { depth: number, dead: number, oldest: number | null }>(OUTBOX_STATS_SQL),
    outboxQueued: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND dead_at IS NULL'),
    outboxFor: db.prepare<[string], OutboxDbRow>('SELECT * FROM outbox WHERE tx_id = ? ORDER BY id'),
    getMeta: db.prepare<[string], { value: string }>('SELECT value FROM coordinator_meta WHERE key = ?'),
    setMeta: db.prepare('INSERT INTO coordinator_meta (key, value) VALUES (?, ?)'),
    pruneBatch: db.prepare<[number, number], { id: string }>(PRUNE_BATCH_SQL),
    keepPrunedCommits: db.prepare(KEEP_PRUNED_COMMITS_SQL),
    deleteTransactions: db.prepare('DELETE FROM transactions WHERE id IN (SELECT value FROM json_each(?))'),
    pruneOutbox: db.prepare(PRUNE_OUTBOX_SQL),
    prunedCommit: db.prepare<[string], { id: string, decided_at: number, pruned_at: number }>(
      'SELECT id, decided_at, pruned_at FROM pruned_commits WHERE id = ?'),
    deletePrunedCommit: db.prepare('DELETE FROM pruned_commits WHERE id = ?'),
    decisionRow: db.prepare<[string], { decision: 'commit' | 'abort', decided_at: number }>('SELECT decision, decided_at FROM decisions WHERE tx_id = ?'),
    gauges: db.prepare<[], { in_doubt: number, oldest_in_doubt: number | null, attention: number, oldest_attention: number | null }>(GAUGES_SQL),
    counter: (sql: string) => db.prepare<unknown[], { n: number | null }>(sql)
  }
}
