/**
 * The operator side of the log (migrations 3 and 5): the timeline, the `audit` trail and
 * attention resolutions. `write` runs inside the step's own SQLite transaction (called by
 * the SQLite log's batch writer, batch-writer.ts; the batch's timeline rows are inserted together at its end), so a
 * timeline entry or an audit row exists exactly when the change it describes does. A step's
 * events are derived from its before/after records (`timelineOf`, pure): the machine copies only
 * what it changes, so the diff is a few reference comparisons. The common ones (DERIVED_KINDS)
 * are not inserted: their times are columns of the record's rows, which the step writes anyway,
 * and `timeline` reads them back; only the rare ones become `tx_events` rows.
 */
import type Database from 'better-sqlite3'
import type { AuditAction, Participant, Transaction } from '../../core/machine.js'

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
const RANK: Record<TimelineKind, number> = {
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
const SUB_RANK: Partial<Record<TimelineKind, number>> = { 'prepare-failed': 0, vote: 1, 'phase2-failed': 0, heuristic: 1, retry: 2, acked: 3 }

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

/**
 * Rows of one table collected over a batch and inserted with as few statements as possible:
 * `INSERT … VALUES (…), (…), …` of up to `maxRows` rows each. A statement per row was most of
 * the log's cost (each one crosses into SQLite and back, binds, steps and resets); the rows
 * themselves are cheap.
 */
export class MultiRowInsert {
  private readonly params: unknown[] = []
  private rows = 0
  private static readonly cache = new WeakMap<Database.Database, Map<string, Database.Statement>>()

  constructor (
    private readonly db: Database.Database,
    private readonly head: string,
    private readonly tail: string,
    private readonly columns: number,
    private readonly maxRows: number
  ) {}

  get size (): number { return this.rows }

  add (...values: unknown[]): void {
    for (let i = 0; i < values.length; i++) this.params.push(values[i])
    this.rows++
  }

  clear (): void {
    this.params.length = 0
    this.rows = 0
  }

  /**
   * Inserts every row added, in the order added (ids and upserts follow that order), in chunks
   * of powers of two rows (37 = 32 + 4 + 1): a few statements per batch, and at most
   * log2(maxRows) + 1 prepared ones per table — one per exact row count measured ~17 MB more
   * malloc heap (a statement of 64 rows × 14 columns is a large program).
   */
  flush (): void {
    let offset = 0
    while (offset < this.rows) {
      let n = 1
      while (n * 2 <= this.maxRows && n * 2 <= this.rows - offset) n *= 2
      const params = offset === 0 && n === this.rows ? this.params : this.params.slice(offset * this.columns, (offset + n) * this.columns)
      this.statement(n).run(params)
      offset += n
    }
    this.params.length = 0
    this.rows = 0
  }

  private statement (n: number): Database.Statement {
    let byKey = MultiRowInsert.cache.get(this.db)
    if (byKey === undefined) MultiRowInsert.cache.set(this.db, byKey = new Map())
    const key = `${this.head}|${this.tail}|${n}`
    let stmt = byKey.get(key)
    if (stmt === undefined) {
      const row = `(${Array(this.columns).fill('?').join(', ')})`
      stmt = this.db.prepare(`${this.head} ${Array(n).fill(row).join(', ')} ${this.tail}`)
      byKey.set(key, stmt)
    }
    return stmt
  }
}

export class OperatorTables {
  private readonly stmts

  constructor (private readonly db: Database.Database) {
    this.stmts = {
      insertAudit: db.prepare('INSERT INTO audit (tx_id, action, reason, actor, at) VALUES (?, ?, ?, ?, ?)'),
      resolveAttention: db.prepare('UPDATE attention SET resolved_at = ?, resolution = ? WHERE tx_id = ? AND resolved_at IS NULL'),
      auditFor: db.prepare<[string], { id: number, tx_id: string, action: string, reason: string | null, actor: string, at: number }>(
        'SELECT * FROM audit WHERE tx_id = ? ORDER BY id'),
      eventsFor: db.prepare<[string], { at: number, kind: TimelineKind, participant: string | null, detail: string | null }>(
        'SELECT at, kind, participant, detail FROM tx_events WHERE tx_id = ? ORDER BY id'),
      recordTimes: db.prepare<[string], TxTimesRow>(
        'SELECT created_at, expires_at, prepared_at, decided_at, completed_at, state, reason, one_phase FROM transactions WHERE id = ?'),
      participantTimes: db.prepare<[string], ParticipantTimesRow>(
        'SELECT name, url, vote, vote_reason, enlisted_at, voted_at, acked_at FROM participants WHERE tx_id = ? ORDER BY position')
    }
  }

  /**
   * Inside the step's SQLite transaction: its timeline events go to `events` (written for the
   * whole batch with one statement by the batch writer), its audit rows and attention resolution
   * are written now.
   */
  write (prev: Transaction | null, next: Transaction, audit: NewAudit[] | undefined, resolution: string | undefined, now: number, events: MultiRowInsert): void {
    for (const e of timelineOf(prev, next)) if (!DERIVED_KINDS.has(e.kind)) events.add(next.id, now, e.kind, e.participant, e.detail)
    for (const a of audit ?? []) this.stmts.insertAudit.run(next.id, a.action, a.reason, a.actor, now)
    if (resolution !== undefined) this.stmts.resolveAttention.run(now, resolution, next.id)
  }

  /** The timeline's rows of one batch: `add` each event in order, then `flush` once. */
  timelineRows (): MultiRowInsert {
    return new MultiRowInsert(this.db, 'INSERT INTO tx_events (tx_id, at, kind, participant, detail) VALUES', '', 5, 64)
  }

  /** An audit row of an action that is no state-machine step (forgetting a pruned commit's record). */
  insertAudit (txId: string, action: string, reason: string | null, actor: string, at: number): void {
    this.stmts.insertAudit.run(txId, action, reason, actor, at)
  }

  audit (txId: string): AuditEntry[] {
    return this.stmts.auditFor.all(txId).map(r => ({ id: r.id, txId: r.tx_id, action: r.action, reason: r.reason, actor: r.actor, at: r.at }))
  }

  /**
   * A transaction's timeline as written: the derived events (DERIVED_KINDS, from its record's
   * columns) merged with its `tx_events` rows, by time. Empty for an unknown transaction.
   * `beforeTimeline`: the record predates the timeline (migration 3), so its participants have
   * no enlist, vote or ack times.
   */
  timeline (txId: string): { events: StoredTimelineEvent[], beforeTimeline: boolean } {
    const tx = this.stmts.recordTimes.get(txId)
    if (tx === undefined) return { events: [], beforeTimeline: false }
    const participants = this.stmts.participantTimes.all(txId)
    const sorted: Array<StoredTimelineEvent & { position: number, seq: number }> = []
    let seq = 0
    const add = (at: number | null, kind: TimelineKind, participant: string | null, detail: string | null, position = -1): void => {
      if (at !== null) sorted.push({ at, kind, participant, detail, position, seq: seq++ })
    }
    const positions = new Map(participants.map((p, i) => [p.name, i]))
    const beforeTimeline = participants.length > 0 && participants.every(p => p.enlisted_at === null && p.voted_at === null && p.acked_at === null)
    add(tx.created_at, 'begin', null, `expires ${new Date(tx.expires_at).toISOString()}`)
    participants.forEach((p, i) => {
      add(p.enlisted_at, 'enlist', p.name, p.url, i)
      if (p.vote !== null) add(p.voted_at, 'vote', p.name, p.vote_reason === null ? p.vote : `${p.vote}: ${p.vote_reason}`, i)
      add(p.acked_at, 'acked', p.name, null, i)
    })
    add(tx.prepared_at, 'prepare', null, tx.one_phase === 1 ? 'one-phase commit' : `${participants.length} participant(s) asked to prepare`)
    if (tx.state === 'committed' || tx.state === 'aborted') {
      add(tx.decided_at, 'decision', null, tx.reason === null ? tx.state : `${tx.state} (${tx.reason})`)
    }
    add(tx.completed_at, 'completed', null, null)
    for (const r of this.stmts.eventsFor.all(txId)) add(r.at, r.kind, r.participant, r.detail, r.participant === null ? -1 : positions.get(r.participant) ?? -1)
    sorted.sort((x, y) => x.at - y.at || RANK[x.kind] - RANK[y.kind] || x.position - y.position ||
      (SUB_RANK[x.kind] ?? 0) - (SUB_RANK[y.kind] ?? 0) || x.seq - y.seq)
    return { events: sorted.map(e => ({ at: e.at, kind: e.kind, participant: e.participant, detail: e.detail })), beforeTimeline }
  }
}

interface TxTimesRow {
  created_at: number
  expires_at: number
  prepared_at: number | null
  decided_at: number | null
  completed_at: number | null
  state: string
  reason: string | null
  one_phase: number
}

interface ParticipantTimesRow {
  name: string
  url: string
  vote: string | null
  vote_reason: string | null
  enlisted_at: number | null
  voted_at: number | null
  acked_at: number | null
}
