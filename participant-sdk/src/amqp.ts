/**
 * The participant's RabbitMQ side (docs/protocol.md, "RabbitMQ topology"), used when `amqpUrl` is set.
 *
 * - Consumes `<prefix>.participant.<name>` (durable quorum queue bound to `<prefix>.decisions`
 *   with `participant.<name>`; bounded prefetch, manual acks). Each decision notice goes through
 *   the SAME path as the HTTP commit/abort callback (`applyDecision`: one local SQLite
 *   transaction), and the message is acked only after that transaction committed: the link acks
 *   when the handler resolves, so a crash in between means a redelivery, which the idempotent
 *   path answers with "already done" (and acks again).
 * - After applying, publishes an {@link AckNotice} to `<prefix>.acks` (publisher confirms); the
 *   coordinator marks the participant acked exactly as for an HTTP ack.
 * - Consumes the `<prefix>.events` fanout: on `coordinator.started`, and on every (re)connect of
 *   the link (events published while disconnected are lost), it re-checks its in-doubt
 *   transactions with the coordinator.
 *
 * What cannot be processed, ever, is dead-lettered (`PoisonMessageError`: nack without requeue,
 * into `<prefix>.dead-letter.participant.<name>`), never redelivered forever:
 * an unparseable notice, a notice for another participant, and the heuristic cases — a commit
 * for a transaction this participant never prepared (TX_UNKNOWN: over HTTP the coordinator
 * records a heuristic outcome; here nothing may be applied, so the notice is parked for an
 * operator and logged at error), or a decision contradicting the one already applied.
 * A user handler that throws is not poison: the notice is requeued (after the link's
 * `retryDelayMs`), and the queue's delivery limit dead-letters it if it keeps failing.
 *
 * With a `secret` (the one the HTTP callbacks are signed with), every notice and event must carry
 * `x-2pc-signature` for its operation (`amqp.decision`, `amqp.event`) over its exact content, or
 * it is refused before it is even parsed: dead-lettered (a notice) or dropped (an event: its
 * private queue has no dead-letter queue), logged with the reason and counted (`rejected`). Acks
 * go out signed for `amqp.ack`. No age limit on these signatures: a notice may wait in the queue
 * for as long as the participant is down (see amqp/src/signing.ts). Without a secret,
 * unsigned notices and events are accepted: anyone who can publish on the vhost can then commit
 * or abort a prepared transaction here.
 */
import type { FastifyBaseLogger } from 'fastify'
import { crashPoint, parseCoordinatorStarted, parseDecisionNotice, TX_ID_PATTERN } from '@fastify-2pc/protocol'
import type { AckNotice, DecisionNotice } from '@fastify-2pc/protocol'
import { AmqpLink, PoisonMessageError, signBrokerMessage, verifyBrokerMessage } from '@fastify-2pc/amqp'
import type { AmqpLinkOptions, AmqpLinkStatus, BrokerRejectReason, MessageHandler } from '@fastify-2pc/amqp'
import { applyDecision } from './decision.js'
import type { ParticipantEngine } from './engine.js'
import { HandlerThrew } from './engine.js'
import type { InDoubtRecovery } from './recovery.js'
import { parseTraceparent } from './trace.js'

/** Tuning of the RabbitMQ link (heartbeat, reconnect backoff, timeouts, prefetch ...). */
export type ParticipantAmqpOptions = Omit<AmqpLinkOptions, 'url' | 'prefix' | 'logger'>

export interface ParticipantAmqpStatus extends AmqpLinkStatus {
  prefix: string
  /** The queue this participant consumes. */
  queue: string
  /** Decision notices handed to this participant (redeliveries included). */
  received: number
  /** Notices that changed the participant log (first application). */
  applied: number
  /** Notices for a transaction already settled the same way: nothing to do, acked again. */
  repeated: number
  /** Notices rejected as poison or heuristic (dead-lettered). */
  deadLettered: number
  /** Notices whose handler threw (requeued). */
  failed: number
  /** Ack notices the broker confirmed. */
  acksPublished: number
  /** Ack notices that could not be published (the coordinator's HTTP retry covers them). */
  ackPublishFailures: number
  /** In-doubt re-checks started by `coordinator.started` or a (re)connect. */
  rechecks: number
  /** Notices and events refused for a bad signature (with a `secret`): notices dead-lettered, events dropped. */
  rejected: number
}

export interface DecisionReceiverOptions {
  url: string
  prefix: string
  engine: ParticipantEngine
  recovery: InDoubtRecovery
  logger: FastifyBaseLogger
  link?: ParticipantAmqpOptions
  /** Shared with the coordinator: notices and events must be signed with it; acks are. */
  secret?: string
  /** Observer of every counter change (metrics): the counter's name. */
  onCount?: (counter: AmqpCounter) => void
  /** Observer of every message refused for its signature (metrics). */
  onRejected?: (kind: RejectedKind, reason: BrokerRejectReason) => void
}

/** What a refused message claimed to be. */
export type RejectedKind = 'decision' | 'event'

export type AmqpCounter = 'received' | 'applied' | 'repeated' | 'deadLettered' | 'failed' | 'acksPublished' | 'ackPublishFailures' | 'rechecks'

/** amqplib's message type, without depending on amqplib directly (the link owns it). */
type ConsumeMessage = Parameters<MessageHandler>[0]

const TX_ID = new RegExp(TX_ID_PATTERN)
const DEFAULT_PREFETCH = 16
const ACK_CONNECT_WAIT_MS = 10_000

export class DecisionReceiver {
  readonly link: AmqpLink
  readonly #engine: ParticipantEngine
  readonly #recovery: InDoubtRecovery
  readonly #logger: FastifyBaseLogger
  readonly #prefetch: number
  readonly #stats = { received: 0, applied: 0, repeated: 0, deadLettered: 0, failed: 0, acksPublished: 0, ackPublishFailures: 0, rechecks: 0, rejected: 0 }
  readonly #onCount: ((counter: AmqpCounter) => void) | undefined
  readonly #secret: string | undefined
  readonly #onRejected: ((kind: RejectedKind, reason: BrokerRejectReason) => void) | undefined
  #started = false
  #closed = false

  /** Throws a TypeError on a bad URL or prefix (before anything connects). */
  constructor (options: DecisionReceiverOptions) {
    this.#engine = options.engine
    this.#recovery = options.recovery
    this.#logger = options.logger
    this.#prefetch = options.link?.prefetch ?? DEFAULT_PREFETCH
    this.#onCount = options.onCount
    this.#secret = options.secret
    this.#onRejected = options.onRejected
    this.link = new AmqpLink({
      connectionName: `twopc-participant ${options.engine.name}`,
      ...options.link,
      prefetch: this.#prefetch,
      url: options.url,
      prefix: options.prefix,
      logger: options.logger.child({ component: 'amqp' })
    })
  }

  /**
   * Registers the consumers and starts connecting, without waiting for the broker: a broker
   * that is down never blocks the service's start-up (the link keeps retrying).
   */
  start (): void {
    if (this.#started || this.#closed) return
    this.#started = true
    this.link.on('connected', ({ connects }) => {
      // Consumers are re-subscribed before 'connected'; a coordinator.started sent while we
      // were away is lost, so every (re)connect is also a reason to ask about in-doubt work.
      this.#recheck(connects === 1 ? 'connected to RabbitMQ' : 'reconnected to RabbitMQ')
    })
    void (async () => {
      try {
        await this.link.consumeParticipant(this.#engine.name, async msg => { await this.#onDecision(msg) }, { prefetch: this.#prefetch })
        await this.link.consumeEvents(async msg => { this.#onEvent(msg) }, { prefetch: 1 })
        await this.link.start()
      } catch (err) {
        if (!this.#closed) this.#logger.error({ err }, 'RabbitMQ link could not start; decisions arrive over HTTP only')
      }
    })()
    this.#logger.info({ prefix: this.link.names.prefix, queue: this.link.names.participantQueue(this.#engine.name) }, 'consuming decision notices from RabbitMQ')
  }

  status (): ParticipantAmqpStatus {
    return {
      ...this.link.status(),
      prefix: this.link.names.prefix,
      queue: this.link.names.participantQueue(this.#engine.name),
      ...this.#stats
    }
  }

  /** Cancels the consumers, lets a notice being handled finish (bounded), closes the connection. */
  async close (): Promise<void> {
    this.#closed = true
    await this.link.close()
  }

  #count (counter: AmqpCounter): void {
    this.#stats[counter]++
    this.#onCount?.(counter)
  }

  /**
   * With a secret: throws a PoisonMessageError (the link dead-letters, never requeues) unless the
   * message is signed for `operation` over its exact content. Logs the reason, never the body.
   */
  #authenticate (msg: ConsumeMessage, kind: RejectedKind): void {
    if (this.#secret === undefined) return
    const check = verifyBrokerMessage(this.#secret, kind === 'decision' ? 'amqp.decision' : 'amqp.event', msg.properties.headers, msg.content)
    if (check.ok) return
    this.#stats.rejected++
    this.#onRejected?.(kind, check.reason)
    this.#logger.warn({ kind, reason: check.reason, messageId: msg.properties.messageId, exchange: msg.fields.exchange, routingKey: msg.fields.routingKey, bytes: msg.content.length },
      kind === 'decision' ? 'RabbitMQ: decision notice refused: bad signature; dead-lettered' : 'RabbitMQ: event refused: bad signature; dropped')
    throw new PoisonMessageError(`${kind} refused: signature ${check.reason}`)
  }

  async #onDecision (msg: ConsumeMessage): Promise<void> {
    this.#count('received')
    this.#authenticate(msg, 'decision')
    const notice = parseDecisionNotice(msg.content)
    const messageId = msg.properties.messageId as string | undefined
    if (notice === undefined || !TX_ID.test(notice.txid)) {
      this.#count('deadLettered')
      this.#logger.warn({ messageId, redelivered: msg.fields.redelivered }, 'RabbitMQ: not a decision notice; dead-lettered')
      throw new PoisonMessageError('not a decision notice')
    }
    if (notice.participant !== this.#engine.name) {
      this.#count('deadLettered')
      this.#logger.warn({ messageId, txid: notice.txid, for: notice.participant }, 'RabbitMQ: decision notice for another participant (misrouted); dead-lettered')
      throw new PoisonMessageError(`notice for participant "${notice.participant}", this is "${this.#engine.name}"`)
    }

    let applied
    try {
      // A traceparent in the message headers (if the publisher set one) reaches the handlers too.
      const traceparent = parseTraceparent((msg.properties.headers as Record<string, unknown> | undefined)?.traceparent)
      applied = await applyDecision(this.#engine, this.#recovery, notice.txid, notice.decision, { source: 'amqp', traceparent })
    } catch (err) {
      // Nothing changed locally; requeued (the queue's delivery limit dead-letters it if it never succeeds).
      this.#count('failed')
      const cause = err instanceof HandlerThrew ? err.cause : err
      this.#logger.error({ err: cause, txid: notice.txid, decision: notice.decision }, 'RabbitMQ: applying the decision failed; notice requeued')
      throw err
    }
    const { reply } = applied
    if (reply.type === 'error') {
      // Heuristic: a commit for a transaction never prepared here (TX_UNKNOWN), or a decision
      // contradicting the one applied. Nothing was applied, nothing is acked to the coordinator;
      // retrying cannot change that, so the notice is parked in the dead-letter queue for an
      // operator instead of cycling. (Over HTTP the coordinator records it as heuristic.)
      this.#count('deadLettered')
      this.#logger.error({ txid: notice.txid, decision: notice.decision, code: reply.code, messageId },
        `RabbitMQ: heuristic outcome, ${reply.message}; notice dead-lettered, NOT applied — needs an operator`)
      throw new PoisonMessageError(`${reply.code}: ${reply.message}`)
    }
    if (applied.changed) {
      this.#count('applied')
      this.#logger.info({ txid: notice.txid, decision: notice.decision }, 'decision applied from RabbitMQ')
    } else {
      this.#count('repeated')
    }

    // The local SQLite transaction has committed; the message is still unacked. A crash here
    // means a redelivery, answered by the idempotent path above (no second application).
    crashPoint('participant.after-local-commit-before-amqp-ack')
    await this.#publishAck(notice, messageId)
  }

  async #publishAck (notice: DecisionNotice, messageId: string | undefined): Promise<void> {
    const names = this.link.names
    const ack: AckNotice = { txid: notice.txid, participant: this.#engine.name, decision: notice.decision }
    // Encoded here so the signature covers the exact bytes published.
    const body = Buffer.from(JSON.stringify(ack))
    // Consumers are subscribed while the link is still setting up a (re)connection, before it
    // reports 'connected' and accepts publishes: a notice that was waiting in the queue can be
    // applied in that window. Wait (bounded) for the link rather than fail the ack.
    if (!this.#closed) await this.link.waitForConnected(ACK_CONNECT_WAIT_MS).catch(() => {})
    const { failed } = await this.link.publishBatch([{
      exchange: names.acksExchange,
      routingKey: names.acksRoutingKey,
      body,
      messageId: `ack.${this.#engine.name}.${notice.txid}.${notice.decision}`,
      ...(this.#secret !== undefined ? { headers: signBrokerMessage(this.#secret, 'amqp.ack', body) } : {})
    }])
    if (failed.length === 0) {
      this.#count('acksPublished')
      return
    }
    // Not retried here, and the notice is still acked: the decision IS applied locally. The
    // coordinator keeps the participant pending and retries phase 2 over HTTP, which this
    // participant answers with an idempotent `{ok:true}` — so the ack is only late, not lost.
    this.#count('ackPublishFailures')
    this.#logger.warn({ txid: notice.txid, messageId, err: failed[0]?.error.message },
      'RabbitMQ: could not publish the ack; the coordinator\'s HTTP retry will get an idempotent ok')
  }

  #onEvent (msg: ConsumeMessage): void {
    this.#authenticate(msg, 'event')
    const event = parseCoordinatorStarted(msg.content)
    if (event === undefined) throw new PoisonMessageError('not a coordinator.started event')
    this.#recheck(`coordinator ${event.coordinatorId} started`)
  }

  /** Starts an in-doubt pass (serialized with the others by the recovery); never throws. */
  #recheck (why: string): void {
    if (this.#closed) return
    this.#count('rechecks')
    this.#logger.info({ why }, 're-checking in-doubt transactions with the coordinator')
    this.#recovery.recover().catch(err => { this.#logger.warn({ err, why }, 'in-doubt re-check failed; the periodic recovery will ask again') })
  }
}
