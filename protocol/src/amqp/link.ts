/**
 * AmqpLink: one RabbitMQ connection with automatic recovery, and what lives on it.
 *
 * amqplib 2.x recovery (`connect(url, { recovery })`) only re-opens the *connection*; everything
 * else is rebuilt here on every (re)connect, inside the recovery `setup` hook:
 *   - a confirm channel for publishing, a channel for consuming, and an "admin" channel for
 *     declarations and existence checks (a 404 there kills only that channel, lazily re-created);
 *   - the topology of DESIGN.md and every participant queue ensured so far;
 *   - every registered consumer.
 * A channel that dies while its connection lives (a publish to a missing exchange, a broker-side
 * channel error) is re-created in place; if that fails, the connection is torn down and recovery
 * takes over.
 *
 * Nothing here throws because the broker is down: `start()` resolves after the first attempt
 * either way, `publishBatch` reports what was not confirmed (never hangs: bounded by a timeout),
 * and the owner learns about the broker coming back through the `connected` event — the moment to
 * flush an outbox.
 */

import { EventEmitter } from 'node:events'
import amqp from 'amqplib'
import type { Channel, ChannelModel, ConfirmChannel, ConsumeMessage, RecoveringChannelModel } from 'amqplib'
import { amqpNames, assertParticipantName, type AmqpNames } from '../amqp-names.js'
import { declareParticipantQueue, declareTopology, DEFAULT_DELIVERY_LIMIT } from './topology.js'

// ---------------------------------------------------------------------------------------------
// Public types

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

// ---------------------------------------------------------------------------------------------
// Internals

const noopLogger: AmqpLogger = { debug () {}, info () {}, warn () {}, error () {} }

interface ConsumerReg {
  id: number
  /** The queue name; for the events consumer, resolved per connection. */
  queue: string
  /** Declares the queue on this connection and returns its name (server-named queues). */
  declare?: (ch: Channel) => Promise<string>
  handler: MessageHandler
  prefetch: number
  cancelled: boolean
  /** Consumer tag and connection it is active on. */
  tag: string | undefined
  on: Conn | undefined
  retryTimer: NodeJS.Timeout | undefined
}

/** Everything tied to one physical connection. */
interface Conn {
  gen: number
  model: ChannelModel
  pub: ConfirmChannel | undefined
  pubPending: Promise<ConfirmChannel> | undefined
  sub: Channel | undefined
  subPending: Promise<Channel> | undefined
  admin: Channel | undefined
  adminPending: Promise<Channel> | undefined
  closed: boolean
  declaredQueues: Map<string, Promise<void>>
  knownExchanges: Set<string>
}

function errMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

async function withTimeout<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      p,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
      })
    ])
  } finally {
    clearTimeout(timer)
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Destroys the socket under a ChannelModel: a close that cannot hang on a dead peer. It must be
 * destroyed *with an error*: amqplib watches the socket's 'error' and 'end' events only, so a
 * plain destroy() leaves the connection "open" with its heartbeat timers running.
 */
function destroyModel (model: ChannelModel, reason = 'connection abandoned'): void {
  const stream = (model as unknown as { connection?: { stream?: { destroy?: (err?: Error) => void } } }).connection?.stream
  try {
    stream?.destroy?.(new Error(reason))
  } catch {}
}

function is404 (err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === 404
}

// ---------------------------------------------------------------------------------------------

export class AmqpLink extends EventEmitter<AmqpLinkEvents> {
  readonly names: AmqpNames
  private readonly url: string
  private readonly log: AmqpLogger
  private readonly opts: Required<Omit<AmqpLinkOptions, 'url' | 'prefix' | 'logger' | 'connectionName'>> & { connectionName: string }

  private recovering: RecoveringChannelModel | undefined
  private startPromise: Promise<void> | undefined
  private closePromise: Promise<void> | undefined
  private closing = false
  private gen = 0
  private conn: Conn | undefined
  private connected = false
  private lastError: string | undefined
  private since = Date.now()
  private reconnectAttempts = 0
  private connects = 0
  private blocked = false
  private readonly participants = new Set<string>()
  private readonly consumers = new Map<number, ConsumerReg>()
  private nextConsumerId = 1
  private inflight = 0
  private readonly idleWaiters: Array<() => void> = []

  constructor (options: AmqpLinkOptions) {
    super()
    let parsed: URL
    try {
      parsed = new URL(options.url)
    } catch {
      throw new TypeError('AmqpLink: url is not a valid URL')
    }
    if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
      throw new TypeError(`AmqpLink: url must be amqp:// or amqps://, got ${parsed.protocol}`)
    }
    const heartbeat = options.heartbeat ?? 10
    if (!parsed.searchParams.has('heartbeat')) parsed.searchParams.set('heartbeat', String(heartbeat))
    this.url = parsed.toString()
    this.names = amqpNames(options.prefix)
    this.log = options.logger ?? noopLogger
    const connectTimeoutMs = options.connectTimeoutMs ?? 5000
    this.opts = {
      connectTimeoutMs,
      heartbeat,
      prefetch: options.prefetch ?? 16,
      publishTimeoutMs: options.publishTimeoutMs ?? 10_000,
      setupTimeoutMs: options.setupTimeoutMs ?? 10_000,
      reconnectInitialDelayMs: options.reconnectInitialDelayMs ?? 200,
      reconnectMaxDelayMs: options.reconnectMaxDelayMs ?? 10_000,
      declareTopology: options.declareTopology ?? true,
      deliveryLimit: options.deliveryLimit ?? DEFAULT_DELIVERY_LIMIT,
      retryDelayMs: options.retryDelayMs ?? 1000,
      connectionName: options.connectionName ?? `fastify-2pc ${this.names.prefix}`
    }
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  /**
   * Starts connecting. Resolves once the first attempt finished, connected or not; never rejects
   * because the broker is unreachable (recovery keeps trying with bounded backoff).
   */
  start (): Promise<void> {
    if (this.closing) return Promise.reject(new Error('AmqpLink: start() after close()'))
    this.startPromise ??= this.doStart()
    return this.startPromise
  }

  private async doStart (): Promise<void> {
    const firstAttempt = new Promise<void>((resolve) => {
      const done = (): void => {
        this.off('connected', done)
        this.firstAttemptDone = undefined
        resolve()
      }
      this.once('connected', done)
      this.firstAttemptDone = done
    })
    let model: RecoveringChannelModel
    try {
      model = await amqp.connect(this.url, {
        timeout: this.opts.connectTimeoutMs,
        clientProperties: { connection_name: this.opts.connectionName },
        recovery: {
          waitForConnect: false,
          initialDelay: this.opts.reconnectInitialDelayMs,
          maxDelay: this.opts.reconnectMaxDelayMs,
          factor: 2,
          jitter: 0.2,
          maxRetries: Infinity,
          setup: async (m: ChannelModel) => { await this.setupConnection(m) }
        }
      })
    } catch (err) {
      // Only reachable on a programming error in the options; the URL was validated.
      this.lastError = errMessage(err)
      this.log.error({ err }, 'amqp: cannot create the connection')
      return
    }
    this.recovering = model
    model.on('connect', () => this.onConnect())
    model.on('disconnect', (err: Error) => this.onDisconnect(err))
    model.on('connect-failed', (err: Error) => {
      this.lastError = errMessage(err)
      this.log.warn({ err: errMessage(err) }, 'amqp: connection attempt failed')
      this.firstAttemptDone?.()
    })
    model.on('reconnect-scheduled', (info: { attempt: number, delay: number, error: Error }) => {
      this.reconnectAttempts = info.attempt
      this.log.debug({ attempt: info.attempt, delayMs: info.delay }, 'amqp: reconnect scheduled')
    })
    model.on('reconnect-failed', (err: Error) => {
      this.lastError = errMessage(err)
      this.firstAttemptDone?.()
    })
    model.on('error', (err: Error) => {
      this.lastError = errMessage(err)
      this.log.warn({ err: errMessage(err) }, 'amqp: connection error')
    })
    model.on('blocked', (reason: string) => {
      this.blocked = true
      this.log.warn({ reason }, 'amqp: connection blocked by the broker (resource alarm)')
    })
    model.on('unblocked', () => {
      this.blocked = false
      this.log.info({}, 'amqp: connection unblocked')
    })
    if (this.closing) {
      await model.close().catch(() => {})
      return
    }
    await firstAttempt
  }

  private firstAttemptDone: (() => void) | undefined

  get isConnected (): boolean {
    return this.connected && this.conn !== undefined && !this.conn.closed
  }

  status (): AmqpLinkStatus {
    return {
      connected: this.isConnected,
      lastError: this.lastError,
      since: this.since,
      reconnectAttempts: this.reconnectAttempts,
      connects: this.connects,
      blocked: this.blocked
    }
  }

  /** Resolves when connected (at once if already), rejects after `timeoutMs`. */
  async waitForConnected (timeoutMs: number): Promise<void> {
    if (this.isConnected) return
    let handler: (() => void) | undefined
    try {
      await withTimeout(new Promise<void>((resolve) => {
        handler = () => resolve()
        this.once('connected', handler)
      }), timeoutMs, 'waiting for the RabbitMQ connection')
    } finally {
      if (handler !== undefined) this.off('connected', handler)
    }
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
    this.closing = true
    for (const reg of this.consumers.values()) {
      reg.cancelled = true
      clearTimeout(reg.retryTimer)
    }
    const conn = this.conn
    const deadline = Date.now() + timeoutMs
    if (conn !== undefined && !conn.closed && conn.sub !== undefined) {
      const sub = conn.sub
      await withTimeout(Promise.allSettled([...this.consumers.values()]
        .filter((r) => r.on === conn && r.tag !== undefined)
        .map((r) => sub.cancel(r.tag as string))), Math.max(1, deadline - Date.now()), 'cancel').catch(() => {})
    }
    if (this.inflight > 0) {
      await withTimeout(new Promise<void>((resolve) => this.idleWaiters.push(resolve)), Math.max(1, deadline - Date.now()), 'handlers').catch(() => {})
    }
    this.consumers.clear()
    this.firstAttemptDone?.()
    const model = this.recovering
    if (model !== undefined) {
      try {
        await withTimeout(model.close(), Math.max(100, deadline - Date.now()), 'close')
      } catch {
        if (conn !== undefined) destroyModel(conn.model)
      }
    }
    if (conn !== undefined) conn.closed = true
    this.conn = undefined
    if (this.connected) {
      this.connected = false
      this.since = Date.now()
    }
  }

  // -------------------------------------------------------------------------------------------
  // Per-connection setup (runs inside amqplib's recovery, before its 'connect' event)

  private async setupConnection (model: ChannelModel): Promise<void> {
    if (this.closing) throw new Error('closing')
    const conn: Conn = {
      gen: ++this.gen,
      model,
      pub: undefined,
      pubPending: undefined,
      sub: undefined,
      subPending: undefined,
      admin: undefined,
      adminPending: undefined,
      closed: false,
      declaredQueues: new Map(),
      knownExchanges: new Set([''])
    }
    model.on('error', (err: Error) => {
      this.log.warn({ err: errMessage(err), gen: conn.gen }, 'amqp: connection error')
    })
    model.on('close', () => {
      conn.closed = true
    })
    try {
      await withTimeout(this.prepareConnection(conn), this.opts.setupTimeoutMs, 'amqp connection setup')
    } catch (err) {
      conn.closed = true
      if (this.conn === conn) this.conn = undefined
      this.lastError = `setup failed: ${errMessage(err)}`
      this.log.warn({ err: errMessage(err) }, 'amqp: connection setup failed, will retry')
      // amqplib awaits model.close() after a failed setup, which cannot finish on a dead peer.
      destroyModel(model)
      throw err
    }
  }

  private async prepareConnection (conn: Conn): Promise<void> {
    const admin = await this.adminChannel(conn)
    if (this.opts.declareTopology) {
      await declareTopology(admin, this.names, { deliveryLimit: this.opts.deliveryLimit })
      for (const x of [this.names.decisionsExchange, this.names.acksExchange, this.names.eventsExchange, this.names.deadLetterExchange]) {
        conn.knownExchanges.add(x)
      }
    }
    for (const name of this.participants) await this.declareParticipant(conn, name)
    await this.pubChannel(conn)
    await this.subChannel(conn)
    this.conn = conn
    for (const reg of this.consumers.values()) await this.startConsumer(conn, reg)
  }

  private onConnect (): void {
    if (this.closing) return
    const conn = this.conn
    if (conn === undefined || conn.closed) {
      // The connection died between the end of our setup and amqplib binding its close
      // listener: amqplib saw no 'close', so it would never reconnect (found by the chaos run:
      // the link stayed down, the outbox waited). Replay the close so its recovery takes over.
      this.lastError = 'connection closed during setup'
      this.log.warn({}, 'amqp: connection closed right after setup; reconnecting')
      const model = conn?.model
      if (model !== undefined) setImmediate(() => { model.emit('close', new Error('connection closed during setup')) })
      return
    }
    this.connected = true
    this.connects++
    this.reconnectAttempts = 0
    this.lastError = undefined
    this.since = Date.now()
    this.log.info({ connects: this.connects, prefix: this.names.prefix }, 'amqp: connected')
    this.emit('connected', { connects: this.connects })
  }

  private onDisconnect (err: Error): void {
    const conn = this.conn
    if (conn !== undefined) conn.closed = true
    this.conn = undefined
    for (const reg of this.consumers.values()) {
      if (reg.on === conn) {
        reg.on = undefined
        reg.tag = undefined
      }
    }
    this.lastError = errMessage(err)
    this.blocked = false
    if (this.connected) {
      this.connected = false
      this.since = Date.now()
    }
    if (this.closing) return
    this.log.warn({ err: errMessage(err) }, 'amqp: disconnected, reconnecting')
    this.emit('disconnected', err)
  }

  // -------------------------------------------------------------------------------------------
  // Channels: created per connection, re-created in place when one dies alone

  private adminChannel (conn: Conn): Promise<Channel> {
    if (conn.admin !== undefined) return Promise.resolve(conn.admin)
    conn.adminPending ??= (async () => {
      try {
        const ch = await conn.model.createChannel()
        ch.on('error', (err: Error) => this.log.debug({ err: errMessage(err) }, 'amqp: admin channel error'))
        ch.on('close', () => {
          if (conn.admin === ch) conn.admin = undefined
        })
        conn.admin = ch
        return ch
      } finally {
        conn.adminPending = undefined
      }
    })()
    return conn.adminPending
  }

  private pubChannel (conn: Conn): Promise<ConfirmChannel> {
    if (conn.pub !== undefined) return Promise.resolve(conn.pub)
    conn.pubPending ??= (async () => {
      try {
        const ch = await conn.model.createConfirmChannel()
        ch.on('error', (err: Error) => this.log.warn({ err: errMessage(err) }, 'amqp: publish channel error'))
        ch.on('close', () => {
          if (conn.pub === ch) conn.pub = undefined
          // Any exchange may be the one that killed the channel: check again before publishing.
          conn.knownExchanges.clear()
          conn.knownExchanges.add('')
          for (const x of this.topologyExchanges()) conn.knownExchanges.add(x)
        })
        conn.pub = ch
        return ch
      } finally {
        conn.pubPending = undefined
      }
    })()
    return conn.pubPending
  }

  private subChannel (conn: Conn): Promise<Channel> {
    if (conn.sub !== undefined) return Promise.resolve(conn.sub)
    conn.subPending ??= (async () => {
      try {
        const ch = await conn.model.createChannel()
        ch.on('error', (err: Error) => this.log.warn({ err: errMessage(err) }, 'amqp: consume channel error'))
        ch.on('close', () => {
          if (conn.sub !== ch) return
          conn.sub = undefined
          for (const reg of this.consumers.values()) {
            if (reg.on === conn) {
              reg.on = undefined
              reg.tag = undefined
            }
          }
          // The connection may live on (channel-level error): re-create and re-consume.
          if (!conn.closed && !this.closing && this.conn === conn) this.repairConsumers(conn)
        })
        conn.sub = ch
        return ch
      } finally {
        conn.subPending = undefined
      }
    })()
    return conn.subPending
  }

  private topologyExchanges (): string[] {
    return this.opts.declareTopology
      ? [this.names.decisionsExchange, this.names.acksExchange, this.names.eventsExchange, this.names.deadLetterExchange]
      : []
  }

  private repairConsumers (conn: Conn): void {
    setTimeout(() => {
      if (conn.closed || this.closing || this.conn !== conn) return
      this.subChannel(conn)
        .then(async () => {
          for (const reg of this.consumers.values()) await this.startConsumer(conn, reg)
        })
        .catch((err: unknown) => {
          this.log.warn({ err: errMessage(err) }, 'amqp: cannot re-create the consume channel; reconnecting')
          destroyModel(conn.model)
        })
    }, 100).unref()
  }

  // -------------------------------------------------------------------------------------------
  // Topology

  /**
   * Declares and binds a participant's decision queue (and its dead-letter queue). Remembered:
   * re-declared on every reconnect. Rejects with {@link AmqpNotConnectedError} while disconnected
   * (the queue is still declared on the next connect).
   */
  async ensureParticipantQueue (name: string): Promise<void> {
    assertParticipantName(name)
    this.participants.add(name)
    const conn = this.conn
    if (conn === undefined || conn.closed) throw new AmqpNotConnectedError()
    await this.declareParticipant(conn, name)
  }

  private declareParticipant (conn: Conn, name: string): Promise<void> {
    let p = conn.declaredQueues.get(name)
    if (p === undefined) {
      p = this.adminChannel(conn).then((ch) =>
        declareParticipantQueue(ch, this.names, name, { deliveryLimit: this.opts.deliveryLimit }))
      conn.declaredQueues.set(name, p)
      p.catch(() => {
        if (conn.declaredQueues.get(name) === p) conn.declaredQueues.delete(name)
      })
    }
    return p
  }

  private async checkExchange (conn: Conn, exchange: string): Promise<void> {
    if (conn.knownExchanges.has(exchange)) return
    const ch = await this.adminChannel(conn)
    await ch.checkExchange(exchange)
    conn.knownExchanges.add(exchange)
  }

  // -------------------------------------------------------------------------------------------
  // Publishing

  /**
   * Publishes every item (persistent, `messageId`, `contentType: application/json`) on the
   * confirm channel, then waits for the broker's confirms. Never rejects and never outlives
   * `timeoutMs`: an item is `confirmed` only on a broker ack; a nack, a closed channel, a lost
   * connection or the timeout puts it in `failed`. A message to the decisions exchange with
   * routing key `participant.<name>` first gets its participant queue declared and bound.
   * Exchanges other than the topology's are checked first: a missing one fails its items with the
   * permanent `EXCHANGE_NOT_FOUND` instead of killing the channel for the whole batch.
   */
  async publishBatch<T extends PublishItem> (items: readonly T[], options: { timeoutMs?: number } = {}): Promise<PublishBatchResult<T>> {
    const timeoutMs = options.timeoutMs ?? this.opts.publishTimeoutMs
    const outcome: Array<AmqpPublishError | null | undefined> = items.map(() => undefined)
    const result = (): PublishBatchResult<T> => {
      const r: PublishBatchResult<T> = { confirmed: [], failed: [] }
      items.forEach((item, i) => {
        const o = outcome[i]
        if (o === null) r.confirmed.push(item)
        else r.failed.push({ item, error: o ?? new AmqpPublishError('TIMEOUT', `not confirmed within ${timeoutMs} ms`) })
      })
      return r
    }
    if (items.length === 0) return result()
    // `this.conn` is set once the channels exist, before the consumers restart: a consumer's
    // handler may publish (an ack) while the setup is still finishing.
    const conn = this.conn
    if (conn === undefined || conn.closed) {
      outcome.fill(new AmqpPublishError('NOT_CONNECTED', 'not connected to RabbitMQ'))
      return result()
    }

    const deadline = Date.now() + timeoutMs
    let timer: NodeJS.Timeout | undefined
    const expired = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs)
    })
    try {
      // 1. Encode; declare participant queues; check foreign exchanges (each bounded).
      const bodies: Array<Buffer | undefined> = items.map((item, i) => {
        try {
          if (Buffer.isBuffer(item.body)) return item.body
          const json = JSON.stringify(item.body)
          if (json === undefined) throw new Error('body is not JSON-serialisable')
          return Buffer.from(json)
        } catch (err) {
          outcome[i] = new AmqpPublishError('INVALID_MESSAGE', `cannot encode message ${item.messageId}: ${errMessage(err)}`, { cause: err })
          return undefined
        }
      })
      const rkPrefix = 'participant.'
      const prep = new Map<string, Promise<void>>()
      items.forEach((item, i) => {
        if (outcome[i] !== undefined) return
        if (typeof item.messageId !== 'string' || item.messageId === '') {
          outcome[i] = new AmqpPublishError('INVALID_MESSAGE', 'messageId is required')
          return
        }
        if (item.exchange === this.names.decisionsExchange && item.routingKey.startsWith(rkPrefix)) {
          const name = item.routingKey.slice(rkPrefix.length)
          if (!prep.has(`q:${name}`)) {
            try {
              assertParticipantName(name)
              this.participants.add(name)
              prep.set(`q:${name}`, this.declareParticipant(conn, name))
            } catch (err) {
              prep.set(`q:${name}`, Promise.reject(err))
            }
          }
        } else if (!prep.has(`x:${item.exchange}`)) {
          prep.set(`x:${item.exchange}`, this.checkExchange(conn, item.exchange))
        }
      })
      const prepErrors = new Map<string, unknown>()
      await Promise.race([
        Promise.all([...prep].map(async ([key, p]) => {
          try {
            await p
          } catch (err) {
            prepErrors.set(key, err)
          }
        })),
        expired
      ])
      items.forEach((item, i) => {
        if (outcome[i] !== undefined) return
        const isQueue = item.exchange === this.names.decisionsExchange && item.routingKey.startsWith(rkPrefix)
        const key = isQueue ? `q:${item.routingKey.slice(rkPrefix.length)}` : `x:${item.exchange}`
        if (prepErrors.has(key)) {
          const err = prepErrors.get(key)
          outcome[i] = !isQueue && is404(err)
            ? new AmqpPublishError('EXCHANGE_NOT_FOUND', `exchange ${JSON.stringify(item.exchange)} does not exist`, { cause: err })
            : err instanceof TypeError
              ? new AmqpPublishError('INVALID_MESSAGE', errMessage(err), { cause: err })
              : new AmqpPublishError('CHANNEL_CLOSED', `cannot prepare publishing: ${errMessage(err)}`, { cause: err })
        }
      })
      if (Date.now() >= deadline) return result()

      // 2. Publish everything, then wait for the confirms.
      const ch = await Promise.race([this.pubChannel(conn), expired])
      if (ch === 'timeout') return result()
      const timestamp = Math.floor(Date.now() / 1000)
      const confirms: Array<Promise<void>> = []
      for (let i = 0; i < items.length; i++) {
        const item = items[i] as T
        const body = bodies[i]
        if (outcome[i] !== undefined || body === undefined) continue
        let settle!: () => void
        const confirmed = new Promise<void>((resolve) => { settle = resolve })
        let ok: boolean
        try {
          // The per-message callback runs on the broker's ack or nack, and (amqplib >= 1.0.5)
          // with an error when the channel closes first.
          ok = ch.publish(item.exchange, item.routingKey, body, {
            persistent: true,
            messageId: item.messageId,
            contentType: 'application/json',
            timestamp,
            ...(item.headers !== undefined ? { headers: item.headers } : {})
          }, (err: unknown) => {
            if (outcome[i] === undefined) {
              if (err === null || err === undefined) outcome[i] = null
              else if (/nack/i.test(errMessage(err))) outcome[i] = new AmqpPublishError('NACKED', `broker nacked message ${item.messageId}`, { cause: err })
              else outcome[i] = new AmqpPublishError('CHANNEL_CLOSED', `channel closed before message ${item.messageId} was confirmed: ${errMessage(err)}`, { cause: err })
            }
            settle()
          })
        } catch (err) {
          const invalid = err instanceof RangeError || err instanceof TypeError
          outcome[i] = new AmqpPublishError(invalid ? 'INVALID_MESSAGE' : 'CHANNEL_CLOSED',
            `cannot publish message ${item.messageId}: ${errMessage(err)}`, { cause: err })
          continue
        }
        confirms.push(confirmed)
        if (!ok) {
          // Socket buffer full: wait for 'drain' before writing more (bounded by the deadline).
          // A closed channel never drains: stop there too (its callbacks report the rest).
          let onDrain: () => void = () => {}
          let onClose: () => void = () => {}
          const drained = await Promise.race([
            new Promise<'drain' | 'closed'>((resolve) => {
              onDrain = () => resolve('drain')
              onClose = () => resolve('closed')
              ch.once('drain', onDrain)
              ch.once('close', onClose)
            }),
            expired
          ])
          ch.off('drain', onDrain)
          ch.off('close', onClose)
          if (drained !== 'drain') {
            const why = drained === 'timeout' ? 'TIMEOUT' : 'CHANNEL_CLOSED'
            for (let j = i + 1; j < items.length; j++) {
              outcome[j] ??= new AmqpPublishError(why, drained === 'timeout'
                ? `not published within ${timeoutMs} ms (socket buffer full)`
                : 'channel closed before the message was published')
            }
            break
          }
        }
      }
      // Per-message promises, not waitForConfirms(): that one also waits for (and fails on)
      // messages of concurrent batches on the same channel.
      await Promise.race([Promise.all(confirms), expired])
      return result()
    } catch (err) {
      // E.g. the publish channel cannot be re-created on a dying connection. Never reject.
      for (let i = 0; i < items.length; i++) {
        outcome[i] ??= new AmqpPublishError('CHANNEL_CLOSED', `cannot publish: ${errMessage(err)}`, { cause: err })
      }
      return result()
    } finally {
      clearTimeout(timer)
    }
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
    return this.register({ queue, handler, prefetch: options.prefetch ?? this.opts.prefetch })
  }

  /** `ensureParticipantQueue(name)` then `consume` its queue (works while disconnected too). */
  async consumeParticipant (name: string, handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    assertParticipantName(name)
    this.participants.add(name)
    const conn = this.conn
    if (conn !== undefined && !conn.closed) await this.declareParticipant(conn, name).catch(() => {})
    return this.consume(this.names.participantQueue(name), handler, options)
  }

  /** The acks queue (`<prefix>.coordinator.acks`). */
  async consumeAcks (handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    return this.consume(this.names.acksQueue, handler, options)
  }

  /**
   * Events (`coordinator.started`): a private, server-named, exclusive queue bound to the events
   * fanout, re-created on every connect. Events published while disconnected are missed: treat
   * the `connected` event as "re-check too".
   */
  async consumeEvents (handler: MessageHandler, options: ConsumeOptions = {}): Promise<AmqpConsumer> {
    return this.register({
      queue: '',
      declare: async (ch) => {
        const q = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false })
        await ch.bindQueue(q.queue, this.names.eventsExchange, '')
        return q.queue
      },
      handler,
      prefetch: options.prefetch ?? this.opts.prefetch
    })
  }

  private async register (spec: { queue: string, declare?: (ch: Channel) => Promise<string>, handler: MessageHandler, prefetch: number }): Promise<AmqpConsumer> {
    if (this.closing) throw new Error('AmqpLink is closed')
    const reg: ConsumerReg = {
      id: this.nextConsumerId++,
      queue: spec.queue,
      handler: spec.handler,
      prefetch: spec.prefetch,
      cancelled: false,
      tag: undefined,
      on: undefined,
      retryTimer: undefined,
      ...(spec.declare !== undefined ? { declare: spec.declare } : {})
    }
    this.consumers.set(reg.id, reg)
    const conn = this.conn
    if (conn !== undefined && !conn.closed) await this.startConsumer(conn, reg)
    const link = this
    return {
      get queue () { return reg.queue },
      get active () { return reg.tag !== undefined && reg.on !== undefined && !reg.on.closed },
      async cancel () {
        if (reg.cancelled) return
        reg.cancelled = true
        clearTimeout(reg.retryTimer)
        link.consumers.delete(reg.id)
        const on = reg.on
        const tag = reg.tag
        reg.on = undefined
        reg.tag = undefined
        if (on !== undefined && tag !== undefined && on.sub !== undefined && !on.closed) {
          await withTimeout(on.sub.cancel(tag), 5000, 'cancel').catch(() => {})
        }
      }
    }
  }

  /** Subscribes `reg` on `conn` unless already; on failure, retries later. Never throws. */
  private async startConsumer (conn: Conn, reg: ConsumerReg): Promise<void> {
    if (reg.cancelled || reg.on === conn || conn.closed || this.closing) return
    reg.on = conn // claimed: a concurrent start (retry timer, channel repair) backs off
    try {
      const admin = await this.adminChannel(conn)
      if (reg.declare !== undefined) {
        reg.queue = await reg.declare(admin)
      } else {
        // A consume on a missing queue would kill the shared consume channel; check on admin.
        await admin.checkQueue(reg.queue)
      }
      const sub = await this.subChannel(conn)
      await sub.prefetch(reg.prefetch)
      if (reg.cancelled || conn.closed) {
        if (reg.on === conn) reg.on = undefined
        return
      }
      const { consumerTag } = await sub.consume(reg.queue, (msg) => {
        if (msg === null) {
          this.onConsumerCancelled(conn, reg)
          return
        }
        void this.deliver(conn, sub, reg, msg)
      }, { noAck: false })
      reg.tag = consumerTag
      this.log.debug({ queue: reg.queue, consumerTag }, 'amqp: consuming')
    } catch (err) {
      if (reg.on === conn) reg.on = undefined
      reg.tag = undefined
      if (conn.closed || this.closing || reg.cancelled) return
      this.log.warn({ queue: reg.queue, err: errMessage(err) }, 'amqp: cannot consume yet, retrying')
      this.scheduleConsumerRetry(reg)
    }
  }

  private scheduleConsumerRetry (reg: ConsumerReg): void {
    clearTimeout(reg.retryTimer)
    reg.retryTimer = setTimeout(() => {
      reg.retryTimer = undefined
      const conn = this.conn
      if (conn !== undefined && !conn.closed) void this.startConsumer(conn, reg)
    }, Math.max(this.opts.retryDelayMs, 500))
    reg.retryTimer.unref()
  }

  private onConsumerCancelled (conn: Conn, reg: ConsumerReg): void {
    if (reg.on !== conn) return
    reg.on = undefined
    reg.tag = undefined
    if (reg.cancelled || this.closing) return
    this.log.warn({ queue: reg.queue }, 'amqp: consumer cancelled by the broker (queue deleted?), re-subscribing')
    // A participant queue is re-declared by the retry path through ensure; others must exist.
    const participant = this.participantOfQueue(reg.queue)
    if (participant !== undefined) conn.declaredQueues.delete(participant)
    if (participant !== undefined) void this.declareParticipant(conn, participant).catch(() => {})
    if (reg.queue === this.names.acksQueue && this.opts.declareTopology) {
      void this.adminChannel(conn).then((ch) => declareTopology(ch, this.names, { deliveryLimit: this.opts.deliveryLimit })).catch(() => {})
    }
    this.scheduleConsumerRetry(reg)
  }

  private participantOfQueue (queue: string): string | undefined {
    for (const p of this.participants) if (this.names.participantQueue(p) === queue) return p
    return undefined
  }

  private async deliver (conn: Conn, ch: Channel, reg: ConsumerReg, msg: ConsumeMessage): Promise<void> {
    this.inflight++
    try {
      let verdict: 'ack' | 'dead-letter' | 'requeue'
      try {
        await reg.handler(msg)
        verdict = 'ack'
      } catch (err) {
        if (err instanceof PoisonMessageError || (typeof err === 'object' && err !== null && (err as { poison?: unknown }).poison === true)) {
          verdict = 'dead-letter'
          this.log.warn({ queue: reg.queue, messageId: msg.properties.messageId, err: errMessage(err) }, 'amqp: poison message dead-lettered')
        } else {
          verdict = 'requeue'
          this.log.warn({ queue: reg.queue, messageId: msg.properties.messageId, err: errMessage(err), redelivered: msg.fields.redelivered }, 'amqp: handler failed, requeueing')
          await sleep(this.opts.retryDelayMs)
        }
      }
      // Ack only on the channel the message came from, while it lives; otherwise the broker
      // redelivers it (at least once: handlers must be idempotent).
      if (conn.closed || conn.sub !== ch) return
      try {
        if (verdict === 'ack') ch.ack(msg)
        else ch.nack(msg, false, verdict === 'requeue')
      } catch (err) {
        this.log.debug({ err: errMessage(err) }, 'amqp: ack failed (channel closed); the broker will redeliver')
      }
    } finally {
      this.inflight--
      if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w()
    }
  }
}

export function createAmqpLink (options: AmqpLinkOptions): AmqpLink {
  return new AmqpLink(options)
}
