/**
 * The link's public types: options, status, events, publish items and results, consumer
 * handles, and the errors it reports.
 */

import type { ConsumeMessage } from 'amqplib'

/** Pino-compatible (a Fastify logger fits). */
export interface AmqpLogger {
  debug (obj: object, msg?: string): void
  info (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
  error (obj: object, msg?: string): void
}

export interface AmqpLinkOptions {
  /** `amqp://` or `amqps://` URL. A `heartbeat` query parameter in it wins over `heartbeat`. */
  url: string
  /** Name prefix (`TWOPC_AMQP_PREFIX`), default `twopc`. */
  prefix?: string
  logger?: AmqpLogger
  /** Bound on TCP connect + AMQP handshake of one attempt (ms, default 5000). */
  connectTimeoutMs?: number
  /** Heartbeat in seconds (default 10; a dead peer is noticed after 2-3 intervals). */
  heartbeat?: number
  /** Default consumer prefetch (default 16). */
  prefetch?: number
  /** Default bound on one `publishBatch` (ms, default 10000). */
  publishTimeoutMs?: number
  /** Bound on the per-connection setup: channels, topology, consumers (ms, default 10000). */
  setupTimeoutMs?: number
  /** Reconnect backoff: exponential with jitter between these bounds (ms, default 200..10000). */
  reconnectInitialDelayMs?: number
  reconnectMaxDelayMs?: number
  /** Declare the exchanges and the acks queue on every connect (default true). */
  declareTopology?: boolean
  /** `x-delivery-limit` of the quorum queues (default 20). */
  deliveryLimit?: number
  /** Delay before a message whose handler failed (not poison) is requeued (ms, default 1000). */
  retryDelayMs?: number
  /** Shown in the RabbitMQ management UI / rabbitmqctl (`connection_name`). */
  connectionName?: string
}

export interface AmqpLinkStatus {
  connected: boolean
  /** Last connection error (cleared on connect). */
  lastError: string | undefined
  /** Unix ms of the last change of `connected`. */
  since: number
  /** Reconnect attempts since the last successful connect. */
  reconnectAttempts: number
  /** How many times a connection was established (1 after the first connect). */
  connects: number
  /** The broker blocked publishing on this connection (memory/disk alarm): publishes time out. */
  blocked: boolean
}

export interface PublishItem {
  exchange: string
  routingKey: string
  /** A Buffer is sent as is; anything else is JSON-encoded. */
  body: Buffer | unknown
  /** Stable id consumers dedupe on (the outbox row's id). */
  messageId: string
  headers?: Record<string, unknown>
}

export type PublishErrorCode =
  | 'NOT_CONNECTED'
  | 'TIMEOUT'
  | 'NACKED'
  | 'CHANNEL_CLOSED'
  | 'EXCHANGE_NOT_FOUND'
  | 'INVALID_MESSAGE'

export class AmqpPublishError extends Error {
  readonly code: PublishErrorCode
  /** True when retrying the same message cannot succeed (park it, alert). */
  readonly permanent: boolean
  constructor (code: PublishErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'AmqpPublishError'
    this.code = code
    this.permanent = code === 'EXCHANGE_NOT_FOUND' || code === 'INVALID_MESSAGE'
  }
}

export interface PublishBatchResult<T extends PublishItem> {
  /** Confirmed by the broker (persisted): safe to mark published. In input order. */
  confirmed: T[]
  /** Not confirmed: may or may not have reached the broker; republish (same messageId). */
  failed: Array<{ item: T, error: AmqpPublishError }>
}

export class AmqpNotConnectedError extends Error {
  readonly code = 'NOT_CONNECTED'
  constructor (message = 'not connected to RabbitMQ') {
    super(message)
    this.name = 'AmqpNotConnectedError'
  }
}

/** Thrown (or rejected) by a consumer handler for a message that can never be processed. */
export class PoisonMessageError extends Error {
  readonly poison = true
  constructor (message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'PoisonMessageError'
  }
}

/** Handler of a consumer. Resolve: the link acks. Reject with {@link PoisonMessageError}: the
 * message is dead-lettered. Reject otherwise: it is requeued after `retryDelayMs` (and
 * dead-lettered by the broker past the queue's delivery limit). */
export type MessageHandler = (msg: ConsumeMessage) => Promise<void> | void

export interface ConsumeOptions {
  /** Unacked messages in flight for this consumer (default: the link's `prefetch`). */
  prefetch?: number
}

export interface AmqpConsumer {
  readonly queue: string
  /** True while subscribed on the live connection. */
  readonly active: boolean
  /** Stops consuming (idempotent); a handler already running finishes and acks. */
  cancel (): Promise<void>
}

export interface AmqpLinkEvents {
  /** A connection is up and set up (channels, topology, consumers). `connects` counts from 1. */
  connected: [info: { connects: number }]
  /** The connection was lost; recovery is already trying again. */
  disconnected: [error: Error]
}
