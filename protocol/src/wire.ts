/**
 * The wire contract between the coordinator and participants (docs/protocol.md, "Participant
 * callbacks"). Any HTTP server that answers these three routes is a participant.
 */

export type Vote = 'yes' | 'no' | 'read-only'
export type Decision = 'commit' | 'abort'

/** Body of `POST {participant url}/prepare`. */
export interface PrepareRequest {
  txid: string
  participant: string
  payload?: unknown
  /** Unix ms after which the coordinator no longer waits for this vote. */
  deadline: number
  /**
   * One-phase commit: the coordinator asks the only participant to prepare AND commit in one
   * step; a `yes` answer means "committed". Sent only to a participant enlisted with
   * `onePhase: true`.
   */
  onePhase?: boolean
}

export interface PrepareResponse {
  vote: Vote
  reason?: string
  /**
   * Optional: this participant also serves `POST {url}/batch` (several callbacks in one request)
   * within these limits. The coordinator batches only to participants that said so.
   */
  batch?: BatchCapability
}

/** What a participant's `/batch` route accepts; advertised in its prepare answers. */
export interface BatchCapability {
  /** Calls per batch request at most (1 .. MAX_BATCH_CALLS). */
  maxCalls: number
  /** Body bytes per batch request at most. */
  maxBytes: number
}

/** The largest `maxCalls` either side uses, whatever a participant advertises. */
export const MAX_BATCH_CALLS = 256

/**
 * One callback inside a batch: the body the single route would get, and the `traceparent`
 * header it would carry.
 */
export type BatchCall =
  | { op: 'prepare', body: PrepareRequest, traceparent?: string }
  | { op: 'commit' | 'abort', body: DecisionRequest, traceparent?: string }

/** Body of `POST {participant url}/batch`. */
export interface BatchRequest {
  calls: BatchCall[]
}

/**
 * One call's answer: the status and body the single route would have answered (a vote,
 * `{ok:true}`, or the error shape `{statusCode, code, error, message}`).
 */
export interface BatchResult {
  status: number
  body: unknown
}

/** Answer of `POST {participant url}/batch` (200): one result per call, in the calls' order. */
export interface BatchResponse {
  results: BatchResult[]
}

/** Body of `POST {participant url}/commit` and `/abort`. */
export interface DecisionRequest {
  txid: string
  participant?: string
}

export interface DecisionResponse {
  ok: true
}

/** Answer of `GET /v1/transactions/:id/decision`. */
export interface DecisionQueryResponse {
  decision: Decision | 'pending'
}

/**
 * Codes a participant uses in its error answers that the coordinator understands.
 * `TX_UNKNOWN`: commit for a transaction the participant never prepared (recorded as heuristic).
 * `TX_ALREADY_COMMITTED`: abort for a transaction the participant committed (heuristic).
 * `TX_ALREADY_ABORTED`: commit for a transaction the participant aborted (heuristic).
 */
export const ParticipantErrorCodes = {
  TX_UNKNOWN: 'TX_UNKNOWN',
  TX_ALREADY_COMMITTED: 'TX_ALREADY_COMMITTED',
  TX_ALREADY_ABORTED: 'TX_ALREADY_ABORTED',
  BAD_SIGNATURE: 'BAD_SIGNATURE'
} as const

/** Callback paths relative to a participant's enlisted url. */
export const CallbackPath = {
  prepare: '/prepare',
  commit: '/commit',
  abort: '/abort',
  /** Optional (a participant advertises it in its prepare answers): several calls in one request. */
  batch: '/batch'
} as const

/** A coordinator id: what prefixes every transaction id it issues. */
export const COORDINATOR_ID_PATTERN = '^[a-z0-9][a-z0-9-]{0,31}$'
/** A transaction id: `<coordinatorId>.<26 chars of Crockford base32>`. */
export const TX_ID_PATTERN = '^[a-z0-9][a-z0-9-]{0,31}\\.[0-9a-hjkmnp-tv-z]{26}$'
/** A participant name: also a queue-name suffix, so kept to a safe alphabet. */
export const PARTICIPANT_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'

/** The coordinator id a transaction id was issued by. */
export function coordinatorIdOf (txid: string): string {
  const dot = txid.indexOf('.')
  return dot === -1 ? '' : txid.slice(0, dot)
}
