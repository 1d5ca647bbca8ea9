/**
 * Read-only queries of the console over the durable log (never the not-yet-flushed records; a
 * commit decision not yet synced is counted as the record before it): filtered lists, counters,
 * a transaction's timeline merged from its tables. The statements are the log's (LogStore).
 */
import type { ListFilter, LogStore, View } from '../log/log-store.js'
import type { Transaction, TxState } from '../core/machine.js'

export type { ListFilter, View }

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

export function listTransactions (log: LogStore, filter: ListFilter, now: number): Transaction[] {
  const out: Transaction[] = []
  for (const id of log.listIds(filter, now)) {
    const tx = log.view(id)
    if (tx !== undefined) out.push(tx)
  }
  return out
}

export function counters (log: LogStore): Counters {
  // Active and preparing transactions are in flight (bounded by the coordinator's limits):
  // exact. Committed and aborted ones are the log's history: counted up to COUNT_CAP.
  const counts = log.tableCounts(COUNT_CAP)
  const byState: Record<TxState, number> = { active: counts.active, preparing: counts.preparing, committed: counts.committed, aborted: counts.aborted }
  const capped: Counters['capped'] = {}
  if (byState.committed >= COUNT_CAP) capped.committed = true
  if (byState.aborted >= COUNT_CAP) capped.aborted = true
  let oldest = counts.oldestInDoubtAt
  let unfinished = counts.unfinished
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
    needsAttention: counts.needsAttention,
    inDoubt: byState.preparing,
    oldestInDoubtAt: oldest,
    heuristics: counts.heuristics,
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
export function timeline (log: LogStore, tx: Transaction): TimelineEntry[] {
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
