/** The SQLite log's rows and their conversion to the coordinator's records. */
import type { AttentionKind, Participant, Transaction, TxState } from '../../core/machine.js'
import type { AttentionEntry, OutboxRow } from '../log-store.js'

export interface TxRow {
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
  message_count: number
  traceparent: string | null
  heuristic: number
}

export interface ParticipantRow {
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

export interface AttentionRow {
  id: number
  tx_id: string
  participant: string | null
  kind: AttentionKind
  detail: string
  created_at: number
  resolved_at: number | null
  resolution: string | null
}

export interface OutboxDbRow {
  id: number
  tx_id: string | null
  kind: OutboxRow['kind']
  exchange: string
  routing_key: string
  message_id: string
  body: string
  headers: string | null
  created_at: number
  published_at: number | null
  attempts: number
  last_error: string | null
  dead_at: number | null
}

export function toOutboxRow (r: OutboxDbRow): OutboxRow {
  return {
    id: r.id,
    txId: r.tx_id,
    kind: r.kind,
    exchange: r.exchange,
    routingKey: r.routing_key,
    messageId: r.message_id,
    body: r.body,
    headers: r.headers === null ? null : JSON.parse(r.headers) as Record<string, string>,
    createdAt: r.created_at,
    publishedAt: r.published_at,
    attempts: r.attempts,
    lastError: r.last_error,
    deadAt: r.dead_at
  }
}

function parseJson (text: string | null): unknown {
  return text === null ? null : JSON.parse(text)
}

export function toParticipant (row: ParticipantRow): Participant {
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

export function toTransaction (row: TxRow, participants: Participant[]): Transaction {
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
    participants,
    messageCount: row.message_count,
    traceparent: row.traceparent,
    heuristic: row.heuristic === 1
  }
}

export function toAttention (row: AttentionRow): AttentionEntry {
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
