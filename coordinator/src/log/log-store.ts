/**
 * What the coordinator needs of its durable log: the engine, the routes, the console and its
 * API, the metrics, retention, the outbox publisher and recovery call this interface only.
 * The SQLite implementation is sqlite/sqlite-log.ts (every statement under sqlite/); another
 * database implements the same interface, with the group-commit pipeline of
 * @fastify-2pc/storage (GroupCommit) and the in-memory image of unsynced steps (RecordImage).
 *
 * The contract of `save`: steps saved during one event-loop turn are written together (group
 * commit); `done` runs once the step is written (unforced) or durable (forced). Until a commit
 * decision is durable, `view` shows the record as it was before it.
 */
import type { Decision } from '@fastify-2pc/protocol'
import type { FailureKind } from '@fastify-2pc/storage'
import type { AttentionKind, Transaction, TxMessage, TxState } from '../core/machine.js'
import type { AuditEntry, NewAudit, StoredTimelineEvent } from './timeline.js'

export type { AuditEntry, NewAudit, StoredTimelineEvent, TimelineEvent, TimelineKind } from './timeline.js'

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

/** What else one step writes, in the same log transaction as the record. */
export interface StepWrites {
  attention: NewAttention[]
  messages: Array<{ position: number, message: TxMessage }>
  notices: Array<{ participant: string, decision: Decision }>
  /** Operator actions (audit table). */
  audit?: NewAudit[]
  /** Marks the transaction's open attention entries resolved with this resolution. */
  resolveAttention?: string
}

/** A pruned commit's compact record (migration 8). */
export interface PrunedCommit {
  id: string
  decidedAt: number
  prunedAt: number
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

/** The console's views of the log. */
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

/** The console's counters as the tables have them (commit decisions not yet synced included). */
export interface TableCounts {
  active: number
  preparing: number
  /** Counted up to `cap`. */
  committed: number
  aborted: number
  needsAttention: number
  oldestInDoubtAt: number | null
  heuristics: number
  unfinished: number
}

/** The log's gauges for the metrics, read when scraped. */
export interface LogGauges {
  inDoubt: number
  oldestInDoubt: number | null
  attention: number
  oldestAttention: number | null
}

/** The operator side: the timeline and the audit trail. */
export interface OperatorReads {
  timeline: (txId: string) => { events: StoredTimelineEvent[], beforeTimeline: boolean }
  audit: (txId: string) => AuditEntry[]
}

export interface LogStore {
  /** False once closed. */
  readonly open: boolean
  /** Set when the disk refused a write or a sync (LOG_UNAVAILABLE), until a restart. */
  readonly failure: Error | undefined
  readonly failureKind: FailureKind | undefined
  readonly operator: OperatorReads
  readonly pendingSteps: number
  /** Who writes pending steps (see GroupCommit.writeDue); unset, the log writes at the end of the turn itself. */
  writeDue: ((full: boolean) => void) | undefined
  /** Observer of each write (steps in the batch, ms to write it). */
  onFlush: ((steps: number, ms: number) => void) | undefined
  /** Observer of each sync (steps it made durable, ms it took). */
  onSync: ((steps: number, ms: number) => void) | undefined

  /** The coordinator id this log belongs to; fixed by the first start. */
  bindCoordinatorId: (wanted: string | undefined, generate: () => string) => string
  save: (prev: Transaction | null, next: Transaction, writes: StepWrites, now: number, forced: boolean, done: (err?: Error) => void) => void
  /** Writes every pending step now. */
  flush: () => void
  /** Writes and syncs everything saved so far, blocking (graceful stop). */
  flushAndSync: () => void
  close: () => void

  /** The durable record (for a transaction with unsynced steps, the record before them). */
  load: (id: string) => Transaction | undefined
  /** The newest record, durable or not: what the next state-machine step starts from. */
  loadLatest: (id: string) => Transaction | undefined
  /** What the API shows (a commit decision only once it is durable). */
  view: (id: string) => Transaction | undefined
  hasUnsynced: (id: string) => boolean
  unsyncedCommits: () => Array<{ written: Transaction, before: Transaction | null }>
  expiredIds: (now: number, limit: number) => string[]
  undecidedIds: (afterId: string, limit: number) => string[]
  unfinishedIds: (afterId: string, limit: number) => string[]
  list: (query: ListQuery) => Transaction[]
  attention: (txId: string) => AttentionEntry[]
  decisionRow: (id: string) => { decision: Decision, decided_at: number } | undefined
  prunedCommit: (id: string) => PrunedCommit | undefined
  forgetPrunedCommit: (id: string, audit: { actor: string, reason: string }, now: number) => PrunedCommit | undefined

  /** Retention: deletes a batch of completed transactions; returns how many. */
  pruneCompleted: (before: number, limit: number, now: number) => number
  /** Retention: deletes a batch of published outbox rows; returns how many. */
  pruneOutbox: (before: number, limit: number) => number

  enqueueEvent: (exchange: string, routingKey: string, messageId: string, body: unknown, now: number) => void
  outboxBatch: (afterId: number, limit: number) => OutboxRow[]
  settleOutbox: (published: number[], failed: Array<{ id: number, error: string, permanent: boolean }>, now: number) => void
  outboxStats: () => OutboxStats
  outboxQueued: () => number
  outboxFor: (txId: string) => OutboxRow[]

  /** The console: ids of a view's page, newest first. */
  listIds: (filter: ListFilter, now: number) => string[]
  /** The console's counters as written; committed and aborted counted up to `cap`. */
  tableCounts: (cap: number) => TableCounts
  /** The metrics' gauges. */
  gauges: () => LogGauges
}
