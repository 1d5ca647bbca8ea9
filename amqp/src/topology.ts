/**
 * The RabbitMQ topology of docs/protocol.md, declared idempotently (run on every (re)connect, by the
 * coordinator and by participants alike: both declare with the same arguments, so neither can
 * trip a PRECONDITION_FAILED on the other's declarations).
 *
 * - exchanges: decisions (topic), acks (direct), events (fanout), dead-letter (direct); durable.
 * - queues: durable **quorum** queues; each dead-letters to the dead-letter exchange with its own
 *   name as routing key, into its own dead-letter queue (also quorum), and has a delivery limit
 *   so a message that keeps failing is dead-lettered instead of redelivered forever.
 */

import type { Channel } from 'amqplib'
import type { AmqpNames } from '@fastify-2pc/protocol'

export const DEFAULT_DELIVERY_LIMIT = 20

export interface TopologyOptions {
  /** `x-delivery-limit` of every quorum queue (default 20). Part of the queue's identity. */
  deliveryLimit?: number
}

/** The arguments every work queue is declared with. Changing them needs a queue migration. */
export function workQueueArguments (names: AmqpNames, queue: string, opts: TopologyOptions = {}): Record<string, unknown> {
  return {
    'x-queue-type': 'quorum',
    'x-dead-letter-exchange': names.deadLetterExchange,
    'x-dead-letter-routing-key': queue,
    'x-delivery-limit': opts.deliveryLimit ?? DEFAULT_DELIVERY_LIMIT
  }
}

export const deadLetterQueueArguments: Readonly<Record<string, unknown>> = Object.freeze({ 'x-queue-type': 'quorum' })

/** A durable quorum queue with its dead-letter queue, bound to `exchange` with `routingKey`. */
export async function declareWorkQueue (
  ch: Channel,
  names: AmqpNames,
  queue: string,
  binding: { exchange: string, routingKey: string },
  opts: TopologyOptions = {}
): Promise<void> {
  const dlq = names.deadLetterQueue(queue)
  await ch.assertQueue(dlq, { durable: true, arguments: { ...deadLetterQueueArguments } })
  await ch.bindQueue(dlq, names.deadLetterExchange, queue)
  await ch.assertQueue(queue, { durable: true, arguments: workQueueArguments(names, queue, opts) })
  await ch.bindQueue(queue, binding.exchange, binding.routingKey)
}

/** Exchanges (all four) and the coordinator's acks queue with its dead-letter queue. */
export async function declareTopology (ch: Channel, names: AmqpNames, opts: TopologyOptions = {}): Promise<void> {
  await ch.assertExchange(names.decisionsExchange, 'topic', { durable: true })
  await ch.assertExchange(names.acksExchange, 'direct', { durable: true })
  await ch.assertExchange(names.eventsExchange, 'fanout', { durable: true })
  await ch.assertExchange(names.deadLetterExchange, 'direct', { durable: true })
  await declareWorkQueue(ch, names, names.acksQueue, { exchange: names.acksExchange, routingKey: names.acksRoutingKey }, opts)
}

/** A participant's decision queue (and its dead-letter queue), bound to the decisions exchange. */
export async function declareParticipantQueue (ch: Channel, names: AmqpNames, participant: string, opts: TopologyOptions = {}): Promise<void> {
  await declareWorkQueue(ch, names, names.participantQueue(participant), {
    exchange: names.decisionsExchange,
    routingKey: names.participantRoutingKey(participant)
  }, opts)
}

/** Every exchange and queue the topology (with these participants) consists of — e.g. to delete it. */
export function topologyObjects (names: AmqpNames, participants: Iterable<string> = []): { exchanges: string[], queues: string[] } {
  const queues = [names.acksQueue, names.deadLetterQueue(names.acksQueue)]
  for (const p of participants) {
    const q = names.participantQueue(p)
    queues.push(q, names.deadLetterQueue(q))
  }
  return {
    exchanges: [names.decisionsExchange, names.acksExchange, names.eventsExchange, names.deadLetterExchange],
    queues
  }
}
