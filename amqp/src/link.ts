/**
 * AmqpLink: one RabbitMQ connection with automatic recovery, and what lives on it. The parts:
 *   - connection.ts: connect, reconnect with capped backoff, the channels of each connection,
 *     the topology and participant queues declared on every (re)connect, the status;
 *   - publisher.ts: confirmed batches (`publishBatch`);
 *   - consumers.ts: consumers registered for good, re-subscribed after every reconnect, acked
 *     after their handler.
 *
 * Nothing here throws because the broker is down: `start()` resolves after the first attempt
 * either way, `publishBatch` reports what was not confirmed (never hangs: bounded by a timeout),
 * and the owner learns about the broker coming back through the `connected` event — the moment to
 * flush an outbox.
 */

import { EventEmitter } from 'node:events'
import type { AmqpNames } from '@fastify-2pc/protocol'
import { Connection, LinkState } from './connection.js'
import { Consumers } from './consumers.js'
import { Publisher } from './publisher.js'
import { linkSettings, type LinkSettings } from './shared.js'
import {
  AmqpNotConnectedError,
  type AmqpConsumer,
  type AmqpLinkEvents,
  type AmqpLinkOptions,
  type AmqpLinkStatus,
  type ConsumeOptions,
  type MessageHandler,
  type PublishBatchResult,
  type PublishItem
} from './types.js'

export class AmqpLink extends EventEmitter<AmqpLinkEvents> {
  readonly names: AmqpNames
  private readonly settings: LinkSettings
  private readonly state: LinkState
  private readonly consumers: Consumers
  private readonly connection: Connection
  private readonly publisher: Publisher
  private closePromise: Promise<void> | undefined

  constructor (options: AmqpLinkOptions) {
    super()
    this.settings = linkSettings(options)
    this.names = this.settings.names
    this.state = new LinkState(this.names)
    this.consumers = new Consumers(this.state, this.settings)
    this.connection = new Connection(this.state, this.settings, this, this.consumers)
    this.publisher = new Publisher(this.state, this.settings)
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  /**
   * Starts connecting. Resolves once the first attempt finished, connected or not; never rejects
   * because the broker is unreachable (recovery keeps trying with bounded backoff).
   */
  start (): Promise<void> {
    if (this.state.closing) return Promise.reject(new Error('AmqpLink: start() after close()'))
    return this.connection.start()
  }

  get isConnected (): boolean {
    return this.connection.isConnected
  }

  status (): AmqpLinkStatus {
    return this.connection.status()
  }

  /** Resolves when connected (at once if already), rejects after `timeoutMs`. */
  async waitForConnected (timeoutMs: number): Promise<void> {
    await this.connection.waitForConnected(timeoutMs)
  }

  /**
   * Idempotent. Cancels consumers, lets running handlers finish (bounded), then closes the
   * connection (bounded: the socket is destroyed if the broker does not answer).
   */
  close (timeoutMs = 5000): Promise<void> {
    this.closePromise ??= this.doClose(timeoutMs)
    return this.closePromise
  }

  private async doClose (timeoutMs: number): Promise<void> {
    this.state.closing = true
    const conn = this.state.conn
    const deadline = Date.now() + timeoutMs
    await this.consumers.close(conn, deadline)
    await this.connection.close(conn, deadline)
  }

  // -------------------------------------------------------------------------------------------
  // Topology

  /**
   * Declares and binds a participant's decision queue (and its dead-letter queue). Remembered:
   * re-declared on every reconnect. Rejects with {@link AmqpNotConnectedError} while disconnected
   * (the queue is still declared on the next connect).
   */
  async ensureParticipantQueue (name: string): Promise<void> {
    this.state.rememberParticipant(name)
    const conn = this.state.conn
    if (conn === undefined || conn.closed) throw new AmqpNotConnectedError()
    await conn.declareParticipant(name)
  }

  // -------------------------------------------------------------------------------------------
  // Publishing

  /** See {@link Publisher.publishBatch}: never rejects, never outlives `timeoutMs`. */
  async publishBatch<T extends PublishItem> (items: readonly T[], options: { timeoutMs?: number } = {}): Promise<PublishBatchResult<T>> {
    return await this.publisher.publishBatch(items, options)
  }

  // -------------------------------------------------------------------------------------------
  // Consuming

  /**
   * Consumes `queue` with manual acks: the link acks after `handler` resolves, dead-letters
   * (nack, requeue false) when it rejects with {@link PoisonMessageError}, and requeues after
   * `retryDelayMs` when it rejects otherwise. Registered for good: re-subscribed after every
   * reconnect (and after the broker cancels the consumer, e.g. the queue was deleted). The queue
   * must exist (declare it first, e.g. with `ensureParticipantQueue`); a missing one is retried.
   */
  async consume (queue: string, handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    return await this.consumers.register({ queue, handler, prefetch: options.prefetch ?? this.settings.prefetch })
  }

  /** `ensureParticipantQueue(name)` then `consume` its queue (works while disconnected too). */
  async consumeParticipant (name: string, handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    this.state.rememberParticipant(name)
    const conn = this.state.conn
    if (conn !== undefined && !conn.closed) await conn.declareParticipant(name).catch(() => {})
    return await this.consume(this.names.participantQueue(name), handler, options)
  }

  /** The acks queue (`<prefix>.coordinator.acks`). */
  async consumeAcks (handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    return await this.consume(this.names.acksQueue, handler, options)
  }

  /**
   * Events (`coordinator.started`): a private, server-named, exclusive queue bound to the events
   * fanout, re-created on every connect. Events published while disconnected are missed: treat
   * the `connected` event as "re-check too".
   */
  async consumeEvents (handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    return await this.consumers.register({
      queue: '',
      declare: async (ch) => await this.consumers.declareEventsQueue(ch),
      handler,
      prefetch: options.prefetch ?? this.settings.prefetch
    })
  }
}

export function createAmqpLink (options: AmqpLinkOptions): AmqpLink {
  return new AmqpLink(options)
}
