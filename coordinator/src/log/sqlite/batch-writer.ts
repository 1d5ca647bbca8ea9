/**
 * The write of one group-commit batch to SQLite: every step's state change (record, decision
 * row, attention, outbox rows, timeline) in ONE SQLite transaction, committed with
 * `synchronous=NORMAL` when the log syncs the WAL itself (the pipeline's sync follows).
 */
import type Database from 'better-sqlite3'
import type { PipelineStep } from '@fastify-2pc/storage'
import type { Participant, Transaction } from '../../core/machine.js'
import type { NoticeRouting, StepWrites } from '../log-store.js'
import { payloadJson } from '../record-image.js'
import { MultiRowInsert, type OperatorTables } from './operator-tables.js'
import { entersPhase1 } from '../timeline.js'
import { PARTICIPANT_COLUMNS, PARTICIPANT_UPSERT, TX_COLUMNS, TX_TIMES_UPSERT, TX_UPSERT, type Statements } from './statements.js'

/** A step of the log's pipeline. */
export interface LogStep extends PipelineStep {
  prev: Transaction | null
  next: Transaction
  writes: StepWrites
  now: number
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
function mergeWrites (steps: LogStep[]): StepWrites {
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

// Positional parameters, in the column order of TX_COLUMNS (cheaper than named ones).
function txParams (tx: Transaction): unknown[] {
  return [tx.state, tx.updatedAt, tx.expiresAt, tx.decidedAt, tx.completedAt, tx.reason, tx.needsAttention ? 1 : 0,
    tx.onePhase ? 1 : 0, tx.metadata === null || tx.metadata === undefined ? null : JSON.stringify(tx.metadata),
    tx.messageCount, tx.heuristic ? 1 : 0, tx.id]
}

export class BatchWriter {
  private readonly rows: BatchRows
  private readonly writeAll: (batch: LogStep[]) => void
  private readonly normal: Database.Statement
  private readonly full: Database.Statement

  /**
   * @param stats `merged`: steps written together with an earlier step of the same transaction
   * @param outboxInserted told how many outbox rows each statement inserted
   */
  constructor (
    db: Database.Database,
    private readonly stmts: Statements,
    private readonly operator: OperatorTables,
    private readonly noticeRouting: NoticeRouting | null,
    private readonly stats: { merged: number },
    private readonly outboxInserted: (rows: number) => void
  ) {
    // A new record or participant is a plain insert (a second one with the same key fails the
    // batch, as it must); a changed one is written as an upsert of its mutable columns.
    this.rows = {
      newTransactions: new MultiRowInsert(db, `INSERT INTO transactions ${TX_COLUMNS} VALUES`, '', 15, 32),
      newParticipants: new MultiRowInsert(db, `INSERT INTO participants ${PARTICIPANT_COLUMNS} VALUES`, '', 15, 32),
      transactions: new MultiRowInsert(db, `INSERT INTO transactions ${TX_COLUMNS} VALUES`, TX_UPSERT, 15, 32),
      timesOnly: new MultiRowInsert(db, `INSERT INTO transactions ${TX_COLUMNS} VALUES`, TX_TIMES_UPSERT, 15, 32),
      participants: new MultiRowInsert(db, `INSERT INTO participants ${PARTICIPANT_COLUMNS} VALUES`, PARTICIPANT_UPSERT, 15, 32),
      decisions: new MultiRowInsert(db, 'INSERT INTO decisions (tx_id, decision, decided_at, reason) VALUES', '', 4, 64),
      events: operator.timelineRows()
    }
    this.writeAll = db.transaction((batch: LogStep[]) => { this.writeSteps(batch) })
    this.normal = db.prepare('PRAGMA synchronous = NORMAL')
    this.full = db.prepare('PRAGMA synchronous = FULL')
  }

  /** Writes a batch in one transaction; `walSynced`: the log fdatasyncs the WAL itself (NORMAL for the batch). */
  write (batch: LogStep[], walSynced: boolean): void {
    if (!walSynced) { this.writeAll(batch); return }
    this.normal.run()
    try { this.writeAll(batch) } finally { this.full.run() }
  }

  private writeSteps (batch: LogStep[]): void {
    const rows = this.rows
    // Nothing left over from a batch that failed half-way (it was rolled back).
    for (const r of Object.values(rows)) r.clear()
    // Steps of one transaction in the same batch (two votes, two acks arriving together) are
    // written as one: every write is a diff of `prev` against `next`, so the first step's
    // `prev` against the last one's `next`, with all their side rows, is the same change.
    const byId = new Map<string, LogStep[]>()
    for (const step of batch) {
      const steps = byId.get(step.next.id)
      if (steps === undefined) byId.set(step.next.id, [step])
      else steps.push(step)
    }
    // The records first (one statement each for the new and the changed ones), so every row
    // that references one — written step by step below — finds it (foreign keys are on).
    for (const steps of byId.values()) {
      const last = steps[steps.length - 1] as LogStep
      this.recordRow((steps[0] as LogStep).prev, last.next, last.now)
    }
    rows.newTransactions.flush()
    rows.transactions.flush()
    rows.timesOnly.flush()
    for (const steps of byId.values()) {
      const first = steps[0] as LogStep
      if (steps.length === 1) {
        first.outboxMax = this.writeStep(first.prev, first.next, first.writes, first.now)
        continue
      }
      const last = steps[steps.length - 1] as LogStep
      const outboxMax = this.writeStep(first.prev, last.next, mergeWrites(steps), last.now)
      for (const step of steps) step.outboxMax = outboxMax
      this.stats.merged += steps.length - 1
    }
    rows.newParticipants.flush()
    rows.participants.flush()
    rows.decisions.flush()
    rows.events.flush()
  }

  /**
   * A vote or an ack changes a participant row only (the machine keeps the rest as it was).
   * prepared_at: the timeline's 'prepare' (migration 5); null leaves the stored one.
   */
  private recordRow (prev: Transaction | null, next: Transaction, now: number): void {
    const preparedAt = entersPhase1(prev, next) ? now : null
    if (prev === null) this.rows.newTransactions.add(...txParams(next), next.createdAt, next.traceparent, preparedAt)
    else if (!sameTxRow(prev, next)) {
      (onlyTimesChanged(prev, next) ? this.rows.timesOnly : this.rows.transactions).add(...txParams(next), next.createdAt, next.traceparent, preparedAt)
    }
  }

  /** One step's rows beside its record; returns the largest outbox row id it inserted (0: none). */
  private writeStep (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number): number {
    const rows = this.rows
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
        this.outboxInserted(info.changes)
      }
    }
    for (const a of writes.attention) this.stmts.insertAttention.run(next.id, a.participant, a.kind, a.detail, now)
    // Open entries of a delivery still retried flag the transaction, so only a flagged one can have any to close.
    if (next.completedAt !== null && prev !== null && prev.completedAt === null && (prev.needsAttention || writes.attention.length > 0)) {
      this.stmts.resolveRetried.run(now, next.id)
    }
    if (this.noticeRouting !== null) {
      for (const n of writes.notices) {
        const body = JSON.stringify({ txid: next.id, participant: n.participant, decision: n.decision })
        const info = this.stmts.insertOutbox.run(next.id, 'decision', this.noticeRouting.exchange, this.noticeRouting.routingKey(n.participant),
          `${next.id}:${n.participant}:${n.decision}`, body, null, now)
        if (info.changes > 0) outboxMax = Number(info.lastInsertRowid)
        this.outboxInserted(info.changes)
      }
    }
    this.operator.write(prev, next, writes.audit, writes.resolveAttention, now, rows.events)
    return outboxMax
  }
}
