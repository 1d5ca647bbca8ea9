/**
 * The operator side of the SQLite log (migrations 3 and 5): the timeline, the `audit` trail and
 * attention resolutions. `write` runs inside the step's own SQLite transaction (called by the
 * batch writer; the batch's timeline rows are inserted together at its end), so a timeline
 * entry or an audit row exists exactly when the change it describes does. A step's events come
 * from timeline.ts (`timelineOf`); the common ones (DERIVED_KINDS) are not inserted: their times
 * are columns of the record's rows, which the step writes anyway, and `timeline` reads them
 * back; only the rare ones become `tx_events` rows.
 */
import type Database from 'better-sqlite3'
import type { Transaction } from '../../core/machine.js'
import { DERIVED_KINDS, RANK, SUB_RANK, timelineOf, type AuditEntry, type NewAudit, type StoredTimelineEvent, type TimelineKind } from '../timeline.js'

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
