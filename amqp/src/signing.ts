/**
 * Signed broker messages. With a shared secret, every decision notice, participant ack and
 * coordinator event carries the header `x-2pc-signature` = `signBody(secret, operation, content)`
 * over the exact content bytes published, with the operation of its kind: `amqp.decision`,
 * `amqp.ack` or `amqp.event`. The consumer verifies with the operation it expects, so an ack
 * republished onto a decision queue (the same body shape) fails as a `mismatch`. Only the content
 * is signed: consumers act on the body's fields alone, never on headers or routing keys.
 *
 * No age limit. An HTTP callback's signature goes stale after 5 minutes (SIGNATURE_MAX_AGE_MS),
 * a broker message's never:
 * - a notice waits in its durable queue as long as its participant is down — an hour, a day —
 *   and is signed when the outbox publishes it, not when it is consumed: an age limit would
 *   dead-letter exactly the notices the queue exists to deliver;
 * - replaying a genuine message gains nothing. The signature binds the operation and the body,
 *   and the body names the transaction, the participant and the decision, none of which ever
 *   changes for a transaction. A replayed notice meets an idempotent participant (the decision is
 *   already applied: "repeated", acked again); a replayed ack tells the coordinator what is true
 *   (that participant did apply that decision); a replayed `coordinator.started` costs one more
 *   in-doubt re-check. A signed message cannot be turned into another operation, another
 *   participant's notice (the consumer checks the name in the body) or another transaction.
 * The `t=` in the header still says when the message was signed (useful in a dead-letter queue).
 */
import { SIGNATURE_HEADER, signBody, verifySignature, type SignedOperation } from '@fastify-2pc/protocol'

/** The operations broker messages are signed for. */
export type BrokerOperation = Extract<SignedOperation, 'amqp.decision' | 'amqp.ack' | 'amqp.event'>

/** Why a broker message was refused (`stale` cannot happen: there is no age limit). */
export type BrokerRejectReason = 'missing' | 'malformed' | 'stale' | 'mismatch' | 'legacy-scheme'

/** Age limit of a broker message's signature: none (see the comment at the top). */
export const BROKER_SIGNATURE_MAX_AGE_MS = Number.POSITIVE_INFINITY

/** The header to publish `content` with: `{ 'x-2pc-signature': 't=<ms>,v2=<hex>' }`. */
export function signBrokerMessage (secret: string, operation: BrokerOperation, content: Buffer, now: number = Date.now()): Record<string, string> {
  return { [SIGNATURE_HEADER]: signBody(secret, operation, content, now) }
}

export type BrokerCheck = { ok: true } | { ok: false, reason: BrokerRejectReason }

/**
 * Verifies a consumed message's signature for `operation` over its content bytes. amqplib hands
 * an AMQP long string header over as a string; any other type (bytes, a table, an array) is
 * `malformed`. The legacy `v1` scheme (no operation bound) is never accepted here.
 */
export function verifyBrokerMessage (secret: string, operation: BrokerOperation, headers: Record<string, unknown> | undefined, content: Buffer): BrokerCheck {
  const value = headers?.[SIGNATURE_HEADER]
  if (value === undefined || value === null || value === '') return { ok: false, reason: 'missing' }
  if (typeof value !== 'string') return { ok: false, reason: 'malformed' }
  const check = verifySignature(secret, operation, value, content, { maxAgeMs: BROKER_SIGNATURE_MAX_AGE_MS })
  return check.ok ? { ok: true } : { ok: false, reason: check.reason }
}
