/**
 * RabbitMQ names and message bodies (docs/protocol.md, "RabbitMQ topology"). Every exchange and queue
 * name starts with the prefix (`TWOPC_AMQP_PREFIX`, default `twopc`); the names are public API.
 *
 * Dead letters: every queue the topology declares dead-letters (poison messages, or messages past
 * the delivery limit) to the direct exchange `<prefix>.dead-letter` with its own queue name as
 * routing key, which lands in `<prefix>.dead-letter.<queue name without the prefix>` — one
 * dead-letter queue per source queue, in a namespace no participant name can collide with.
 */

import { PARTICIPANT_NAME_PATTERN, type Decision } from './wire.js'

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

// ---------------------------------------------------------------------------------------------
// Message bodies (JSON, content type application/json)

/** Coordinator -> participant, on `<prefix>.decisions` with routing key `participant.<name>`. */
export interface DecisionNotice {
  txid: string
  participant: string
  decision: Decision
}

/** Participant -> coordinator, on `<prefix>.acks`: the participant applied `decision`. */
export interface AckNotice {
  txid: string
  participant: string
  decision: Decision
}

/** Coordinator -> everyone, on `<prefix>.events`, after its recovery finished. */
export interface CoordinatorStarted {
  type: 'coordinator.started'
  coordinatorId: string
  /** Unix ms. */
  at: number
}

const MAX_FIELD = 1024

function isRecord (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function isShortString (v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_FIELD
}

function isDecision (v: unknown): v is Decision {
  return v === 'commit' || v === 'abort'
}

/** Accepts a parsed object, a JSON string or a Buffer holding JSON. */
function toRecord (input: unknown): Record<string, unknown> | undefined {
  let v = input
  if (typeof Buffer !== 'undefined' && Buffer.isBuffer(v)) v = v.toString('utf8')
  if (typeof v === 'string') {
    try {
      v = JSON.parse(v)
    } catch {
      return undefined
    }
  }
  return isRecord(v) ? v : undefined
}

function parseTxNotice (input: unknown): { txid: string, participant: string, decision: Decision } | undefined {
  const r = toRecord(input)
  if (r === undefined) return undefined
  const { txid, participant, decision } = r
  if (!isShortString(txid) || !isDecision(decision)) return undefined
  if (typeof participant !== 'string' || !participantRe.test(participant)) return undefined
  return { txid, participant, decision }
}

/** A valid {@link DecisionNotice} (only its known fields), or undefined for a malformed message. */
export function parseDecisionNotice (input: unknown): DecisionNotice | undefined {
  return parseTxNotice(input)
}

/** A valid {@link AckNotice} (only its known fields), or undefined for a malformed message. */
export function parseAckNotice (input: unknown): AckNotice | undefined {
  return parseTxNotice(input)
}

/** A valid {@link CoordinatorStarted} (only its known fields), or undefined for a malformed message. */
export function parseCoordinatorStarted (input: unknown): CoordinatorStarted | undefined {
  const r = toRecord(input)
  if (r === undefined) return undefined
  const { type, coordinatorId, at } = r
  if (type !== 'coordinator.started' || !isShortString(coordinatorId)) return undefined
  if (typeof at !== 'number' || !Number.isFinite(at) || at < 0) return undefined
  return { type, coordinatorId, at }
}
