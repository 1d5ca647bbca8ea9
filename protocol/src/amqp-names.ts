/**
 * RabbitMQ names and message bodies (docs/protocol.md, "RabbitMQ topology"). Every exchange and queue
 * name starts with the prefix (`TWOPC_AMQP_PREFIX`, default `twopc`); the names are public API.
 *
 * Dead letters: every queue the topology declares dead-letters (poison messages, or messages past
 * the delivery limit) to the direct exchange `<prefix>.dead-letter` with its own queue name as
 * routing key, which lands in `<prefix>.dead-letter.<queue name without the prefix>` — one
 * dead-letter queue per source queue, in a namespace no participant name can collide with.
 */

import { PARTICIPANT_NAME_PATTERN } from './wire.js'
// eslint-disable-next-line @typescript-eslint/no-unused-vars -- the {@link}s below name them
import type { AckNotice, CoordinatorStarted, DecisionNotice } from './schemas/messages.js'

export const DEFAULT_AMQP_PREFIX = 'twopc'

/** An AMQP prefix: also the first word of every name, so kept to a safe alphabet. */
export const AMQP_PREFIX_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'

const prefixRe = new RegExp(AMQP_PREFIX_PATTERN)
const participantRe = new RegExp(PARTICIPANT_NAME_PATTERN)

export interface AmqpNames {
  readonly prefix: string
  /** Topic exchange; routing key `participant.<name>`, body {@link DecisionNotice}. */
  readonly decisionsExchange: string
  /** Durable quorum queue of one participant, bound to the decisions exchange. */
  participantQueue (name: string): string
  /** Routing key of one participant's decision notices (`participant.<name>`). */
  participantRoutingKey (name: string): string
  /** Direct exchange participants publish their {@link AckNotice}s to. */
  readonly acksExchange: string
  /** Routing key of ack notices on the acks exchange. */
  readonly acksRoutingKey: string
  /** Durable quorum queue the coordinator consumes acks from. */
  readonly acksQueue: string
  /** Fanout exchange; body {@link CoordinatorStarted}. */
  readonly eventsExchange: string
  /** Direct exchange every queue of the topology dead-letters to. */
  readonly deadLetterExchange: string
  /** The dead-letter queue of `queue` (a full queue name starting with the prefix). */
  deadLetterQueue (queue: string): string
}

/** Throws a TypeError on a participant name outside {@link PARTICIPANT_NAME_PATTERN}. */
export function assertParticipantName (name: string): void {
  if (typeof name !== 'string' || !participantRe.test(name)) {
    throw new TypeError(`invalid participant name ${JSON.stringify(name)}: must match ${PARTICIPANT_NAME_PATTERN}`)
  }
}

export function amqpNames (prefix: string = DEFAULT_AMQP_PREFIX): AmqpNames {
  if (typeof prefix !== 'string' || !prefixRe.test(prefix)) {
    throw new TypeError(`invalid AMQP prefix ${JSON.stringify(prefix)}: must match ${AMQP_PREFIX_PATTERN}`)
  }
  const deadLetterExchange = `${prefix}.dead-letter`
  return {
    prefix,
    decisionsExchange: `${prefix}.decisions`,
    participantQueue (name) {
      assertParticipantName(name)
      return `${prefix}.participant.${name}`
    },
    participantRoutingKey (name) {
      assertParticipantName(name)
      return `participant.${name}`
    },
    acksExchange: `${prefix}.acks`,
    acksRoutingKey: 'ack',
    acksQueue: `${prefix}.coordinator.acks`,
    eventsExchange: `${prefix}.events`,
    deadLetterExchange,
    deadLetterQueue (queue) {
      if (!queue.startsWith(`${prefix}.`) || queue.length === prefix.length + 1) {
        throw new TypeError(`queue ${JSON.stringify(queue)} does not start with the prefix ${prefix}.`)
      }
      return `${deadLetterExchange}.${queue.slice(prefix.length + 1)}`
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ permissions (README.md, "RabbitMQ permissions")

/**
 * One user's permissions on the deployment's vhost, as `rabbitmqctl set_permissions` takes them
 * (regular expressions over exchange and queue names), and, for a participant, its topic
 * permissions on the decisions exchange (`rabbitmqctl set_topic_permissions`).
 */
export interface AmqpPermissions {
  configure: string
  write: string
  read: string
  topic?: { exchange: string, write: string, read: string }
}

function escapeRegex (text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function anyOf (names: string[]): string {
  return `^(${names.join('|')})$`
}

/**
 * The coordinator's user: every name under the prefix (it declares the topology and every
 * participant's queue, publishes notices and events, consumes acks), plus write on the exchanges
 * transactional messages are published to (`messageExchanges`, names as enlisted).
 */
export function coordinatorPermissions (names: AmqpNames, messageExchanges: readonly string[] = []): AmqpPermissions {
  const own = `^${escapeRegex(names.prefix)}\\.`
  return {
    configure: own,
    write: messageExchanges.length === 0 ? own : anyOf([`${escapeRegex(names.prefix)}\\..*`, ...messageExchanges.map(escapeRegex)]),
    read: own
  }
}

/**
 * One participant's user, with the topology declared by the coordinator (or pre-declared) and
 * the participant's link run with `declareTopology: false`. It may:
 * - declare its own queue and dead-letter queue (configure), bind them (write on the queues,
 *   read on the decisions and dead-letter exchanges) and consume its queue (read);
 * - publish acks to the acks exchange (write), and nothing else: not to the decisions or events
 *   exchanges, not through the default exchange (`amq.default`) into any queue;
 * - declare, bind and consume its private, server-named events queue (`amq.gen-…`);
 * - declare a queue that dead-letters to the dead-letter exchange: RabbitMQ asks for write on it;
 * - bind to the decisions exchange with its own routing key only (topic permissions), so it
 *   cannot route other participants' notices into its queue.
 */
export function participantPermissions (names: AmqpNames, participant: string): AmqpPermissions {
  const queue = names.participantQueue(participant)
  const dlq = names.deadLetterQueue(queue)
  const x = (name: string): string => escapeRegex(name)
  const events = 'amq\\.gen-.*'
  return {
    configure: anyOf([x(queue), x(dlq), events]),
    write: anyOf([x(names.acksExchange), x(names.deadLetterExchange), x(queue), x(dlq), events]),
    read: anyOf([x(names.decisionsExchange), x(names.eventsExchange), x(names.deadLetterExchange), x(queue), events]),
    topic: { exchange: names.decisionsExchange, write: '^$', read: `^${x(names.participantRoutingKey(participant))}$` }
  }
}
