/**
 * Stable error codes. The participant routes answer `{statusCode, code, error, message}`;
 * the first three codes are the protocol's (`ParticipantErrorCodes`), which the coordinator
 * reads to record heuristic outcomes.
 */
import createError from '@fastify/error'
import { ParticipantErrorCodes } from '@fastify-2pc/protocol'

export const TxUnknownError = createError(ParticipantErrorCodes.TX_UNKNOWN, '%s', 404)
export const TxAlreadyCommittedError = createError(ParticipantErrorCodes.TX_ALREADY_COMMITTED, '%s', 409)
export const TxAlreadyAbortedError = createError(ParticipantErrorCodes.TX_ALREADY_ABORTED, '%s', 409)
export const BadSignatureError = createError(ParticipantErrorCodes.BAD_SIGNATURE, 'Bad x-2pc-signature: %s', 401)
/** The callback names another participant than the one mounted here: a misrouted enlistment. */
export const ParticipantMismatchError = createError('PARTICIPANT_MISMATCH', 'This is participant "%s", the request is for "%s"', 400)
/**
 * A commit or abort handler threw: the local transaction was rolled back and the record kept
 * `prepared`, so the coordinator's retry (5xx = retryable) or in-doubt recovery applies it later.
 */
export const HandlerFailedError = createError('HANDLER_FAILED', 'The %s handler failed; the decision was not applied and will be retried', 500)
/**
 * The local transaction that carries the callback (a group-committed batch) could not be
 * committed: nothing of it is visible, the coordinator retries (5xx).
 */
export const LogWriteFailedError = createError('LOG_WRITE_FAILED', 'The participant log could not be written; nothing was applied, retry', 503)
/**
 * The body of one call of a batch does not match its route's schema: that call alone is refused,
 * with the code and message Fastify gives the same body sent to the single route.
 */
export const CallValidationError = createError('FST_ERR_VALIDATION', '%s', 400)
/**
 * The `db` option's SQLite settings would let a vote be sent before it is durable
 * (`synchronous=OFF`, `journal_mode` MEMORY or OFF); the message names the setting needed.
 * Thrown at register time.
 */
export const DatabaseNotDurableError = createError('TWOPC_DB_NOT_DURABLE', 'The participant log would not be durable on this database: %s')
/** Plugin options that cannot work; thrown at register time. */
export const InvalidOptionError = createError('TWOPC_INVALID_OPTION', 'Invalid twoPhaseParticipant option: %s')

/**
 * Error from the initiator-side client. `code` is the coordinator's own code when it answered
 * with an error (`TX_NOT_FOUND`, `TX_NOT_ACTIVE`, `BAD_PARTICIPANT_URL`, ...), or one of the
 * client's: `COORDINATOR_UNREACHABLE` (nothing reached the coordinator), `COMMIT_OUTCOME_UNKNOWN`
 * (the commit request may have been processed; ask `client.decision(id)` if the id is known),
 * `COORDINATOR_BAD_RESPONSE`, `CLIENT_INVALID_ARGUMENT`, `CLIENT_TX_FINISHED`.
 */
export class CoordinatorError extends Error {
  readonly code: string
  /** HTTP status of the coordinator's answer; undefined when there was no answer. */
  readonly statusCode: number | undefined
  /** The transaction the call was about, when known. */
  readonly txid: string | undefined

  constructor (code: string, message: string, options: { statusCode?: number, txid?: string, cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'CoordinatorError'
    this.code = code
    this.statusCode = options.statusCode
    this.txid = options.txid
  }
}
