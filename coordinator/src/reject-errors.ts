/**
 * The one mapping from the state machine's refusals (`RejectCode`) to the API's errors, used by the
 * transaction routes and the operator actions alike. `REJECT_ERRORS` has a key for every code of the
 * union: a code added to the machine without an entry here fails to compile.
 */
import type { Policy, RejectCode, Transaction } from './core/machine.js'
import { NotFound, Rejected } from './engine.js'
import { Errors } from './errors.js'

/** The limits a refusal of too many participants or messages names. */
export type RequestLimits = Pick<Policy, 'maxParticipants' | 'maxMessages'>

export interface Refusal {
  /** The transaction id as the request named it. */
  id: string
  tx: Transaction
  /** Absent where the caller has none (operator actions, which never enlist): the refusal is passed on as it is. */
  limits: RequestLimits | undefined
  rejected: Rejected
}

export type RejectMapping<C extends string = RejectCode> = { readonly [K in C]: (r: Refusal) => Error }

export const REJECT_ERRORS: RejectMapping = {
  TX_NOT_ACTIVE: r => new Errors.TX_NOT_ACTIVE(r.id, r.tx.state),
  TX_ALREADY_DECIDED: r => new Errors.TX_ALREADY_DECIDED(r.id, r.tx.state),
  PARTICIPANT_EXISTS: r => new Errors.PARTICIPANT_EXISTS(r.id, '(duplicate)'),
  TOO_MANY_PARTICIPANTS: r => r.limits === undefined ? r.rejected : new Errors.TOO_MANY_PARTICIPANTS(r.limits.maxParticipants),
  TOO_MANY_MESSAGES: r => r.limits === undefined ? r.rejected : new Errors.TOO_MANY_MESSAGES(r.limits.maxMessages),
  TX_NOT_DECIDED: r => new Errors.TX_NOT_DECIDED(r.id, r.tx.state),
  NOTHING_TO_RETRY: r => new Errors.NOTHING_TO_RETRY(r.id),
  NOTHING_TO_RESOLVE: r => new Errors.NOTHING_TO_RESOLVE(r.id),
  TX_EXPIRED: r => new Errors.TX_EXPIRED(r.id, new Date(r.tx.expiresAt).toISOString())
}

/** The API error for an engine error on transaction `id`: TX_NOT_FOUND, a mapped refusal, or `err` itself. */
export function apiErrorOf (err: unknown, id: string, limits?: RequestLimits): Error {
  if (err instanceof NotFound) return new Errors.TX_NOT_FOUND(id)
  if (err instanceof Rejected) return REJECT_ERRORS[err.code]({ id, tx: err.tx, limits, rejected: err })
  return err as Error
}
