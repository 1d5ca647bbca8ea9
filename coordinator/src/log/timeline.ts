/**
 * A transaction's timeline, whatever the database: the events of a step (`timelineOf`, pure,
 * derived from its before/after records), which of them every transaction has (DERIVED_KINDS:
 * read back from the record's own times instead of stored), and their order within one
 * millisecond. The machine copies only what it changes, so the diff is a few reference
 * comparisons. The SQLite log writes and reads them in sqlite/operator-tables.ts.
 */
import type { AuditAction, Participant, Transaction } from '../core/machine.js'

export interface NewAudit {
  action: AuditAction
  actor: string
  reason: string | null
}

export interface AuditEntry {
  id: number
  txId: string
  action: string
  reason: string | null
  actor: string
  at: number
}

export interface TimelineEvent {
  kind: TimelineKind
  participant: string | null
  detail: string | null
}

export type TimelineKind =
  | 'begin' | 'enlist' | 'message' | 'prepare' | 'vote' | 'prepare-failed' | 'decision'
  | 'phase2-failed' | 'acked' | 'heuristic' | 'retry' | 'resolved' | 'completed' | 'attention-cleared'

export interface StoredTimelineEvent extends TimelineEvent {
  at: number
}

/**
 * The events every transaction has (migration 5): not written to `tx_events` but read back from
 * the columns the same step writes anyway — transactions.created_at / expires_at / prepared_at /
 * decided_at / completed_at, participants.enlisted_at / voted_at / acked_at — so a transaction
 * costs no timeline rows unless something unusual happens.
 */
export const DERIVED_KINDS: ReadonlySet<TimelineKind> = new Set<TimelineKind>(['begin', 'enlist', 'prepare', 'vote', 'decision', 'acked', 'completed'])

/**
 * Order of events within one millisecond: the protocol's own (enlist before prepare before the
 * votes before the decision before phase 2), then by participant position, then as written.
 * Phase-1 and phase-2 events of one participant keep their causal order (a failed attempt
 * before the vote or ack that followed it).
 */
export const RANK: Record<TimelineKind, number> = {
  begin: 0,
  enlist: 1,
  message: 2,
  prepare: 3,
  'prepare-failed': 4,
  vote: 4,
  decision: 5,
  'phase2-failed': 6,
  heuristic: 6,
  retry: 6,
  acked: 6,
  resolved: 7,
  completed: 8,
  'attention-cleared': 9
}
export const SUB_RANK: Partial<Record<TimelineKind, number>> = { 'prepare-failed': 0, vote: 1, 'phase2-failed': 0, heuristic: 1, retry: 2, acked: 3 }

/** True when this step moves the transaction into phase 1 (the 'prepare' event; prepared_at). */
export function entersPhase1 (prev: Transaction | null, next: Transaction): boolean {
  return next.state !== 'active' && (prev === null || prev.state === 'active') &&
    (next.state === 'preparing' || next.participants.some(p => p.vote !== null))
}

function participantEvents (before: Participant | undefined, p: Participant, decided: boolean, out: TimelineEvent[]): void {
  if (before === undefined) {
    out.push({ kind: 'enlist', participant: p.name, detail: p.url })
    return
  }
  if (before === p) return
  if (before.vote === null && p.vote !== null) {
    out.push({ kind: 'vote', participant: p.name, detail: p.voteReason === null ? p.vote : `${p.vote}: ${p.voteReason}` })
  }
  if (!decided && p.vote === null && p.lastError !== before.lastError && p.lastError !== null) {
    out.push({ kind: 'prepare-failed', participant: p.name, detail: p.lastError })
  }
  if (p.attempts > before.attempts) {
    const next = p.nextAttemptAt === null ? '' : `; next attempt at ${new Date(p.nextAttemptAt).toISOString()}`
    out.push({ kind: 'phase2-failed', participant: p.name, detail: `attempt ${p.attempts}: ${p.lastError ?? 'failed'}${next}` })
  }
  if (before.ack !== p.ack) {
    if (p.ack === 'acked') out.push({ kind: 'acked', participant: p.name, detail: null })
    else if (p.ack === 'heuristic') out.push({ kind: 'heuristic', participant: p.name, detail: p.lastError })
    else if (p.ack === 'resolved') out.push({ kind: 'resolved', participant: p.name, detail: `was ${before.ack}` })
    else if (p.ack === 'pending' && before.ack === 'heuristic') out.push({ kind: 'retry', participant: p.name, detail: 'heuristic participant back to pending' })
  } else if (p.ack === 'pending' && p.attempts === before.attempts && p.nextAttemptAt !== before.nextAttemptAt && p.nextAttemptAt !== null && decided) {
    out.push({ kind: 'retry', participant: p.name, detail: 'sent now' })
  }
}

/** What one step did, for the timeline. Pure. */
export function timelineOf (prev: Transaction | null, next: Transaction): TimelineEvent[] {
  const out: TimelineEvent[] = []
  if (prev === null) {
    out.push({ kind: 'begin', participant: null, detail: `expires ${new Date(next.expiresAt).toISOString()}` })
  }
  const decidedBefore = prev !== null && prev.decidedAt !== null
  const decidedNow = next.decidedAt !== null
  next.participants.forEach((p, i) => participantEvents(prev?.participants[i], p, decidedBefore, out))
  const messagesBefore = prev?.messageCount ?? 0
  for (let n = messagesBefore; n < next.messageCount; n++) out.push({ kind: 'message', participant: null, detail: `message #${n + 1} enlisted` })
  if (entersPhase1(prev, next)) {
    out.push({ kind: 'prepare', participant: null, detail: next.onePhase ? 'one-phase commit' : `${next.participants.length} participant(s) asked to prepare` })
  }
  if (decidedNow && !decidedBefore) {
    out.push({ kind: 'decision', participant: null, detail: next.reason === null ? next.state : `${next.state} (${next.reason})` })
  }
  if (next.completedAt !== null && (prev === null || prev.completedAt === null)) out.push({ kind: 'completed', participant: null, detail: null })
  if (prev !== null && prev.needsAttention && !next.needsAttention) out.push({ kind: 'attention-cleared', participant: null, detail: null })
  return out
}
