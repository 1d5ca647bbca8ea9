/**
 * Read-only queries of the console over the durable log (never the not-yet-flushed records; a
 * commit decision not yet synced is counted as the record before it):
 * filtered lists, counters, a transaction's timeline merged from its tables.
 */
import type { CoordinatorLog } from '../log/store.js'
import type { Transaction, TxState } from '../core/machine.js'

export type View = 'all' | 'in-doubt' | 'needs-attention' | 'heuristic' | 'unfinished'

export interface ListFilter {
  view: View
  state?: TxState
  participant?: string
  /** Only transactions begun at least this long ago. */
  olderThanMs?: number
  limit: number
  before?: { createdAt: number, id: string }
}

export interface Counters {
  byState: Record<TxState, number>
  /** States whose count stopped at COUNT_CAP (committed and aborted only: the others are in flight). */
  capped: Partial<Record<TxState, true>>
  total: number
  needsAttention: number
  /** Preparing: votes asked, no decision yet. */
  inDoubt: number
  oldestInDoubtAt: number | null
  /** Transactions with at least one heuristic participant. */
  heuristics: number
  /** Decided, phase 2 not finished. */
  unfinished: number
}

/**
 * Committed and aborted transactions are counted up to this many: every console page shows the
 * counters, and an exact count reads every row of the log on the coordinator's event loop
 * (~10 ms per 100,000 transactions, warm); the page shows "10000+" instead.
 */
export const COUNT_CAP = 10_000

/**
 * The list's FROM clause and conditions per view. The rare-row views read their partial index
 * (INDEXED BY: for the list's order by creation the planner would otherwise walk
 * `transactions_by_created` through the whole log looking for the few matching rows).
 */
const VIEW_SOURCES: Record<View, { from: string, where?: string }> = {
  all: { from: 'transactions t' },
  'in-doubt': { from: 'transactions t', where: "t.state = 'preparing'" },
  'needs-attention': { from: 'transactions t INDEXED BY transactions_attention', where: 't.needs_attention = 1' },
  heuristic: { from: 'transactions t', where: "t.id IN (SELECT tx_id FROM participants WHERE ack = 'heuristic')" },
  unfinished: { from: 'transactions t INDEXED BY transactions_unfinished', where: "t.completed_at IS NULL AND t.state IN ('committed', 'aborted')" }
}

/** The list's statement and its parameters (exported for the test that reads its plans). */
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

/** The counters' statements (exported for the test that reads their plans). */
export const COUNTER_SQL = {
  inState: 'SELECT count(*) AS n FROM transactions WHERE state = ?',
  inStateCapped: 'SELECT count(*) AS n FROM (SELECT 1 FROM transactions WHERE state = ? LIMIT ?)',
  needsAttention: 'SELECT count(*) AS n FROM transactions INDEXED BY transactions_attention WHERE needs_attention = 1',
  oldestInDoubt: "SELECT min(created_at) AS n FROM transactions WHERE state = 'preparing'",
  heuristics: "SELECT count(DISTINCT tx_id) AS n FROM participants WHERE ack = 'heuristic'",
  unfinished: "SELECT count(*) AS n FROM transactions INDEXED BY transactions_unfinished WHERE completed_at IS NULL AND state IN ('committed', 'aborted')"
} as const

export function listTransactions (log: CoordinatorLog, filter: ListFilter, now: number): Transaction[] {
  const { sql, params } = listQuery(filter, now)
  const ids = log.db.prepare<unknown[], { id: string }>(sql).all(...params)
  const out: Transaction[] = []
  for (const { id } of ids) {
    const tx = log.view(id)
    if (tx !== undefined) out.push(tx)
  }
  return out
}

export function counters (log: CoordinatorLog): Counters {
  const one = (sql: string, ...params: unknown[]): number => (log.db.prepare<unknown[], { n: number | null }>(sql).get(...params)?.n ?? 0)
  // Active and preparing transactions are in flight (bounded by the coordinator's limits):
  // exact. Committed and aborted ones are the log's history: counted up to COUNT_CAP.
  const byState: Record<TxState, number> = {
    active: one(COUNTER_SQL.inState, 'active'),
    preparing: one(COUNTER_SQL.inState, 'preparing'),
    committed: one(COUNTER_SQL.inStateCapped, 'committed', COUNT_CAP),
    aborted: one(COUNTER_SQL.inStateCapped, 'aborted', COUNT_CAP)
  }
  const capped: Counters['capped'] = {}
  if (byState.committed >= COUNT_CAP) capped.committed = true
  if (byState.aborted >= COUNT_CAP) capped.aborted = true
  let oldest = log.db.prepare<[], { n: number | null }>(COUNTER_SQL.oldestInDoubt).get()?.n ?? null
  let unfinished = one(COUNTER_SQL.unfinished)
  // A commit decision written but not yet synced is counted as what is durable: the record
  // before it (a power cut would take the decision back).
  for (const { written, before } of log.unsyncedCommits()) {
    if (capped.committed !== true) byState.committed--
    if (written.completedAt === null) unfinished--
    if (before === null) continue
    byState[before.state]++
    if (before.state === 'preparing' && (oldest === null || before.createdAt < oldest)) oldest = before.createdAt
  }
  return {
    byState,
    capped,
    total: byState.active + byState.preparing + byState.committed + byState.aborted,
    needsAttention: one(COUNTER_SQL.needsAttention),
    inDoubt: byState.preparing,
    oldestInDoubtAt: oldest,
    heuristics: one(COUNTER_SQL.heuristics),
    unfinished
  }
}

export interface TimelineEntry {
  at: number
  /** begin, enlist, vote, decision, phase2-failed, acked, heuristic, retry, resolved, completed, attention, audit, outbox, … */
  kind: string
  participant: string | null
  detail: string
  /** Tie-break within one millisecond: the order things were written. */
  order: number
}

/**
 * A transaction's timeline: its events (OperatorTables.timeline: what its record's times tell,
 * merged with its `tx_events` rows), attention entries and their resolution, outbox rows (queued,
 * published, parked) and audit entries, by time.
 */
export function timeline (log: CoordinatorLog, tx: Transaction): TimelineEntry[] {
  const out: TimelineEntry[] = []
  let order = 0
  const add = (at: number, kind: string, participant: string | null, detail: string | null): void => {
    out.push({ at, kind, participant, detail: detail ?? '', order: order++ })
  }
  const { events, beforeTimeline } = log.operator.timeline(tx.id)
  for (const e of events) {
    add(e.at, e.kind, e.participant, e.kind === 'begin' && beforeTimeline ? 'recorded before the timeline existed: votes and acks have no times' : e.detail)
  }
  for (const a of log.attention(tx.id)) {
    add(a.createdAt, 'attention', a.participant, `${a.kind}: ${a.detail}`)
    if (a.resolvedAt !== null) add(a.resolvedAt, 'attention-resolved', a.participant, a.resolution)
  }
  for (const o of log.outboxFor(tx.id)) {
    const what = `${o.kind} → ${o.exchange}${o.routingKey === '' ? '' : ' / ' + o.routingKey}`
    add(o.createdAt, 'outbox-queued', null, what)
    if (o.publishedAt !== null) add(o.publishedAt, 'outbox-published', null, `${what} (attempt ${o.attempts})`)
    if (o.deadAt !== null) add(o.deadAt, 'outbox-parked', null, `${what}: ${o.lastError ?? ''}`)
  }
  for (const a of log.operator.audit(tx.id)) {
    add(a.at, `audit-${a.action}`, null, `by ${a.actor}${a.reason === null ? '' : ': ' + a.reason}`)
  }
  return out.sort((x, y) => x.at - y.at || x.order - y.order)
}
