/**
 * The wire contract between the coordinator and participants (docs/protocol.md, "Participant
 * callbacks"): its constants. The bodies and answers are schemas (schemas/). Any HTTP server
 * that answers these routes is a participant.
 */

/** The largest `maxCalls` either side uses, whatever a participant advertises. */
export const MAX_BATCH_CALLS = 256

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

/** Earlier names of the answers' types (schemas/callbacks.ts), kept for programs written against them. */
export type { PrepareAnswer as PrepareResponse, OkAnswer as DecisionResponse, DecisionAnswer as DecisionQueryResponse, BatchAnswer as BatchResponse } from './schemas/callbacks.js'
