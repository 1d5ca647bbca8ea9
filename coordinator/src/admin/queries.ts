/**
 * Read-only queries of the console over the durable log (never the not-yet-flushed records):
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

export function listTransactions (log: CoordinatorLog, filter: ListFilter, now: number): Transaction[] {
  const where: string[] = []
  const params: unknown[] = []
  if (filter.view === 'in-doubt') where.push("t.state = 'preparing'")
  if (filter.view === 'needs-attention') where.push('t.needs_attention = 1')
  if (filter.view === 'heuristic') where.push("EXISTS (SELECT 1 FROM participants h WHERE h.tx_id = t.id AND h.ack = 'heuristic')")
  if (filter.view === 'unfinished') where.push("t.completed_at IS NULL AND t.state IN ('committed', 'aborted')")
  if (filter.state !== undefined) { where.push('t.state = ?'); params.push(filter.state) }
  if (filter.participant !== undefined) {
    where.push('EXISTS (SELECT 1 FROM participants p WHERE p.tx_id = t.id AND p.name = ?)')
    params.push(filter.participant)
  }
  if (filter.olderThanMs !== undefined) { where.push('t.created_at <= ?'); params.push(now - filter.olderThanMs) }
  if (filter.before !== undefined) { where.push('(t.created_at, t.id) < (?, ?)'); params.push(filter.before.createdAt, filter.before.id) }
  const sql = `SELECT t.id FROM transactions t ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''}
    ORDER BY t.created_at DESC, t.id DESC LIMIT ?`
  params.push(filter.limit)
  const ids = log.db.prepare<unknown[], { id: string }>(sql).all(...params)
  const out: Transaction[] = []
  for (const { id } of ids) {
    const tx = log.view(id)
    if (tx !== undefined) out.push(tx)
  }
  return out
}

export function counters (log: CoordinatorLog): Counters {
  const byState: Record<TxState, number> = { active: 0, preparing: 0, committed: 0, aborted: 0 }
  for (const r of log.db.prepare<[], { state: TxState, n: number }>('SELECT state, count(*) AS n FROM transactions GROUP BY state').all()) {
    byState[r.state] = r.n
  }
  const one = (sql: string): number => (log.db.prepare<[], { n: number | null }>(sql).get()?.n ?? 0)
  const oldest = log.db.prepare<[], { at: number | null }>("SELECT min(created_at) AS at FROM transactions WHERE state = 'preparing'").get()?.at ?? null
  return {
    byState,
    total: byState.active + byState.preparing + byState.committed + byState.aborted,
    needsAttention: one('SELECT count(*) AS n FROM transactions WHERE needs_attention = 1'),
    inDoubt: byState.preparing,
    oldestInDoubtAt: oldest,
    heuristics: one("SELECT count(DISTINCT tx_id) AS n FROM participants WHERE ack = 'heuristic'"),
    unfinished: one("SELECT count(*) AS n FROM transactions WHERE completed_at IS NULL AND state IN ('committed', 'aborted')")
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
