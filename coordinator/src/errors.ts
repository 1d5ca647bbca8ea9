/** Stable error codes of the coordinator API: `{statusCode, code, error, message}`. */
import createError from '@fastify/error'

export const Errors = {
  TX_NOT_FOUND: createError('TX_NOT_FOUND', 'transaction %s not found', 404),
  TX_NOT_ACTIVE: createError('TX_NOT_ACTIVE', 'transaction %s is %s, not active', 409),
  TX_ALREADY_DECIDED: createError('TX_ALREADY_DECIDED', 'transaction %s is already %s', 409),
  TX_EXPIRED: createError('TX_EXPIRED', 'transaction %s expired at %s, before this request: it is aborted (reason timeout)', 409),
  TX_NOT_DECIDED: createError('TX_NOT_DECIDED', 'transaction %s is %s: it has no decision yet', 409),
  NOTHING_TO_RETRY: createError('NOTHING_TO_RETRY', 'transaction %s has no pending or heuristic participant to retry', 409),
  NO_DECISION_RECORD: createError('NO_DECISION_RECORD', 'no decision record is kept for transaction %s (never pruned with an unacked commit, or already forgotten)', 404),
  TX_NOT_PRUNED: createError('TX_NOT_PRUNED', 'transaction %s is still in the log: only the compact record of a pruned commit can be forgotten', 409),
  NOTHING_TO_RESOLVE: createError('NOTHING_TO_RESOLVE', 'transaction %s needs no attention and has no pending or heuristic participant', 409),
  PARTICIPANT_EXISTS: createError('PARTICIPANT_EXISTS', 'transaction %s already has a participant named %s', 409),
  TOO_MANY_MESSAGES: createError('TOO_MANY_MESSAGES', 'a transaction takes at most %s messages', 400),
  AMQP_NOT_CONFIGURED: createError('AMQP_NOT_CONFIGURED', 'transactional messages need RabbitMQ: this coordinator runs without AMQP_URL', 400),
  TOO_MANY_PARTICIPANTS: createError('TOO_MANY_PARTICIPANTS', 'a transaction takes at most %s participants', 400),
  PAYLOAD_TOO_LARGE: createError('PAYLOAD_TOO_LARGE', 'payload of %s is %s bytes; the limit is %s', 413),
  BAD_PARTICIPANT_URL: createError('BAD_PARTICIPANT_URL', 'bad participant url: %s', 400),
  PARTICIPANT_URL_NOT_ALLOWED: createError('PARTICIPANT_URL_NOT_ALLOWED', '%s', 403),
  BAD_TIMEOUT: createError('BAD_TIMEOUT', 'timeoutMs must be between %s and %s', 400),
  INVALID_ID: createError('INVALID_ID', '"%s" is not a transaction id', 400),
  FOREIGN_ID: createError('FOREIGN_ID', 'transaction %s was not issued by this coordinator (%s)', 404),
  BAD_LIMIT: createError('BAD_LIMIT', 'limit must be between 1 and 500, got %s', 400),
  BAD_CURSOR: createError('BAD_CURSOR', 'cursor is not one this API returned', 400),
  UNAUTHORIZED: createError('UNAUTHORIZED', 'missing or wrong bearer token', 401),
  /** The log cannot be written (disk full, I/O error) or synced: nothing new is accepted until a restart. */
  LOG_UNAVAILABLE: createError('LOG_UNAVAILABLE', '%s', 503),
  /** The outbox holds its limit of unpublished rows (the broker is down or slow). */
  OUTBOX_FULL: createError('OUTBOX_FULL', 'the outbox holds %s unpublished rows (limit %s): transactional messages are refused until the broker takes them', 503),
  UNSUPPORTED_MEDIA_TYPE: createError('UNSUPPORTED_MEDIA_TYPE', '%s', 415)
} as const

/** The codes of a value over the JSON limits (the protocol's `JSON_LIMITS`, the `x-json-limits` keyword). */
export { JSON_LIMIT_CODES } from '@fastify-2pc/protocol'

/**
 * Node's HTTP parser errors (a malformed request, refused before it reaches a route), answered
 * in the one error shape by the client error handler: [status, code, message].
 */
export const CLIENT_ERRORS: Record<string, [number, string, string]> = {
  HPE_INVALID_CONTENT_LENGTH: [400, 'BAD_CONTENT_LENGTH', 'content-length is not a valid length'],
  HPE_UNEXPECTED_CONTENT_LENGTH: [400, 'BAD_CONTENT_LENGTH', 'content-length given twice'],
  HPE_INVALID_EOF_STATE: [400, 'BAD_REQUEST', 'the connection ended before the whole request (as its content-length says) arrived'],
  HPE_HEADER_OVERFLOW: [431, 'HEADERS_TOO_LARGE', 'the request headers are too large'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'REQUEST_TIMEOUT', 'the request did not arrive in time']
}
/** Any other parser error: bytes that are not an HTTP request (e.g. after a too-short content-length). */
export const CLIENT_ERROR_DEFAULT: [number, string, string] = [400, 'BAD_REQUEST', 'malformed HTTP request']

/** Fastify's own errors, renamed to stable codes of this API. */
export const FRAMEWORK_CODES: Record<string, string> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'BAD_CONTENT_LENGTH',
  FST_ERR_VALIDATION: 'VALIDATION_FAILED'
}
