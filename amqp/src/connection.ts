/**
 * The link's connection: one RabbitMQ connection with automatic recovery, and the channels that
 * live on it.
 *
 * amqplib 2.x recovery (`connect(url, { recovery })`) only re-opens the *connection*; everything
 * else is rebuilt here on every (re)connect, inside the recovery `setup` hook:
 *   - a confirm channel for publishing, a channel for consuming, and an "admin" channel for
 *     declarations and existence checks (a 404 there kills only that channel, lazily re-created);
 *   - the topology (docs/protocol.md, "RabbitMQ topology") and every participant queue ensured so far;
 *   - every registered consumer (consumers.ts).
 * A channel that dies while its connection lives (a publish to a missing exchange, a broker-side
 * channel error) is re-created in place; if that fails, the connection is torn down and recovery
 * takes over.
 *
 * Nothing here throws because the broker is down: `start()` resolves after the first attempt
 * either way, and the owner learns about the broker coming back through the `connected` event —
 * the moment to flush an outbox.
 */

import type { EventEmitter } from 'node:events'
import amqp from 'amqplib'
import type { Channel, ChannelModel, ConfirmChannel, RecoveringChannelModel } from 'amqplib'
import { assertParticipantName, type AmqpNames } from '@fastify-2pc/protocol'
import type { Consumers } from './consumers.js'
import { destroyModel, errMessage, withTimeout, type LinkSettings } from './shared.js'
import { declareParticipantQueue, declareTopology } from './topology.js'
import type { AmqpLinkEvents, AmqpLinkStatus } from './types.js'

/** What the link's parts share: the live connection, whether the link closes, the participants. */
export class LinkState {
  /** Set once the channels exist, before the consumers restart: a consumer's handler may
   * publish (an ack) while the setup is still finishing. */
  conn: Conn | undefined
  closing = false
  /** Every participant whose queue was ensured: re-declared on every connect. */
  readonly participants = new Set<string>()

  constructor (private readonly names: AmqpNames) {}

  /** Checks the name and remembers the participant (throws on an invalid name). */
  rememberParticipant (name: string): void {
    assertParticipantName(name)
    this.participants.add(name)
  }

  participantOfQueue (queue: string): string | undefined {
    for (const p of this.participants) if (this.names.participantQueue(p) === queue) return p
    return undefined
  }
}

/** Everything tied to one physical connection: its channels and what was declared on it. */
export class Conn {
  pub: ConfirmChannel | undefined
  sub: Channel | undefined
  admin: Channel | undefined
  closed = false
  private pubPending: Promise<ConfirmChannel> | undefined
  private subPending: Promise<Channel> | undefined
  private adminPending: Promise<Channel> | undefined
  private readonly declaredQueues = new Map<string, Promise<void>>()
  private readonly knownExchanges = new Set<string>([''])

  constructor (
    readonly gen: number,
    readonly model: ChannelModel,
    private readonly settings: LinkSettings,
    private readonly consumers: Consumers
  ) {}

  // Channels: created per connection, re-created in place when one dies alone

  adminChannel (): Promise<Channel> {
    if (this.admin !== undefined) return Promise.resolve(this.admin)
    this.adminPending ??= (async () => {
      try {
        const ch = await this.model.createChannel()
        ch.on('error', (err: Error) => this.settings.log.debug({ err: errMessage(err) }, 'amqp: admin channel error'))
        ch.on('close', () => {
          if (this.admin === ch) this.admin = undefined
        })
        this.admin = ch
        return ch
      } finally {
        this.adminPending = undefined
      }
    })()
    return this.adminPending
  }

  pubChannel (): Promise<ConfirmChannel> {
    if (this.pub !== undefined) return Promise.resolve(this.pub)
    this.pubPending ??= (async () => {
      try {
        const ch = await this.model.createConfirmChannel()
        ch.on('error', (err: Error) => this.settings.log.warn({ err: errMessage(err) }, 'amqp: publish channel error'))
        ch.on('close', () => {
          if (this.pub === ch) this.pub = undefined
          // Any exchange may be the one that killed the channel: check again before publishing.
          this.knownExchanges.clear()
          this.knownExchanges.add('')
          this.topologyDeclared()
        })
        this.pub = ch
        return ch
      } finally {
        this.pubPending = undefined
      }
    })()
    return this.pubPending
  }

  subChannel (): Promise<Channel> {
    if (this.sub !== undefined) return Promise.resolve(this.sub)
    this.subPending ??= (async () => {
      try {
        const ch = await this.model.createChannel()
        ch.on('error', (err: Error) => this.settings.log.warn({ err: errMessage(err) }, 'amqp: consume channel error'))
        ch.on('close', () => {
          if (this.sub !== ch) return
          this.sub = undefined
          this.consumers.consumeChannelClosed(this)
        })
        this.sub = ch
        return ch
      } finally {
        this.subPending = undefined
      }
    })()
    return this.subPending
  }

  // Declarations and checks, remembered for the life of this connection

  /** The topology's exchanges exist (declared on this connection). */
  topologyDeclared (): void {
    for (const x of this.settings.topologyExchanges) this.knownExchanges.add(x)
  }

  /** Declares and binds a participant's decision queue once per connection (shared promise). */
  declareParticipant (name: string): Promise<void> {
    let p = this.declaredQueues.get(name)
    if (p === undefined) {
      p = this.adminChannel().then((ch) =>
        declareParticipantQueue(ch, this.settings.names, name, { deliveryLimit: this.settings.deliveryLimit }))
      this.declaredQueues.set(name, p)
      p.catch(() => {
        if (this.declaredQueues.get(name) === p) this.declaredQueues.delete(name)
      })
    }
    return p
  }

  /** Forgets a participant queue's declaration (the broker deleted it): the next ensure re-declares. */
  forgetParticipant (name: string): void {
    this.declaredQueues.delete(name)
  }

  async checkExchange (exchange: string): Promise<void> {
    if (this.knownExchanges.has(exchange)) return
    const ch = await this.adminChannel()
    await ch.checkExchange(exchange)
    this.knownExchanges.add(exchange)
  }
}

/** Connects, reconnects (amqplib's recovery, capped exponential backoff), reports the status. */
export class Connection {
  private recovering: RecoveringChannelModel | undefined
  private startPromise: Promise<void> | undefined
  private firstAttemptDone: (() => void) | undefined
  private gen = 0
  private connected = false
  private lastError: string | undefined
  private since = Date.now()
  private reconnectAttempts = 0
  private connects = 0
  private blocked = false

  constructor (
    private readonly state: LinkState,
    private readonly settings: LinkSettings,
    private readonly events: EventEmitter<AmqpLinkEvents>,
    private readonly consumers: Consumers
  ) {}

  /** The first call starts connecting; resolves once the first attempt finished (see AmqpLink.start). */
  start (): Promise<void> {
    this.startPromise ??= this.doStart()
    return this.startPromise
  }

  private async doStart (): Promise<void> {
    const firstAttempt = new Promise<void>((resolve) => {
      const done = (): void => {
        this.events.off('connected', done)
        this.firstAttemptDone = undefined
        resolve()
      }
      this.events.once('connected', done)
      this.firstAttemptDone = done
    })
    let model: RecoveringChannelModel
    try {
      model = await amqp.connect(this.settings.url, {
        timeout: this.settings.connectTimeoutMs,
        clientProperties: { connection_name: this.settings.connectionName },
        recovery: {
          waitForConnect: false,
          initialDelay: this.settings.reconnectInitialDelayMs,
          maxDelay: this.settings.reconnectMaxDelayMs,
          factor: 2,
          jitter: 0.2,
          maxRetries: Infinity,
          setup: async (m: ChannelModel) => { await this.setupConnection(m) }
        }
      })
    } catch (err) {
      // Only reachable on a programming error in the options; the URL was validated.
      this.lastError = errMessage(err)
      this.settings.log.error({ err }, 'amqp: cannot create the connection')
      return
    }
    this.recovering = model
    this.watch(model)
    if (this.state.closing) {
      await model.close().catch(() => {})
      return
    }
    await firstAttempt
  }

  private watch (model: RecoveringChannelModel): void {
    const log = this.settings.log
    model.on('connect', () => this.onConnect())
    model.on('disconnect', (err: Error) => this.onDisconnect(err))
    model.on('connect-failed', (err: Error) => {
      this.lastError = errMessage(err)
      log.warn({ err: errMessage(err) }, 'amqp: connection attempt failed')
      this.firstAttemptDone?.()
    })
    model.on('reconnect-scheduled', (info: { attempt: number, delay: number, error: Error }) => {
      this.reconnectAttempts = info.attempt
      log.debug({ attempt: info.attempt, delayMs: info.delay }, 'amqp: reconnect scheduled')
    })
    model.on('reconnect-failed', (err: Error) => {
      this.lastError = errMessage(err)
      this.firstAttemptDone?.()
    })
    model.on('error', (err: Error) => {
      this.lastError = errMessage(err)
      log.warn({ err: errMessage(err) }, 'amqp: connection error')
    })
    model.on('blocked', (reason: string) => {
      this.blocked = true
      log.warn({ reason }, 'amqp: connection blocked by the broker (resource alarm)')
    })
    model.on('unblocked', () => {
      this.blocked = false
      log.info({}, 'amqp: connection unblocked')
    })
  }

  get isConnected (): boolean {
    return this.connected && this.state.conn !== undefined && !this.state.conn.closed
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

  async waitForConnected (timeoutMs: number): Promise<void> {
    if (this.isConnected) return
    let handler: (() => void) | undefined
    try {
      await withTimeout(new Promise<void>((resolve) => {
        handler = () => resolve()
        this.events.once('connected', handler)
      }), timeoutMs, 'waiting for the RabbitMQ connection')
    } finally {
      if (handler !== undefined) this.events.off('connected', handler)
    }
  }

  /** The end of the link's close, once the consumers stopped: closes the connection by `deadline`
   * (the socket is destroyed if the broker does not answer). */
  async close (conn: Conn | undefined, deadline: number): Promise<void> {
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
    this.state.conn = undefined
    if (this.connected) {
      this.connected = false
      this.since = Date.now()
    }
  }

  // Per-connection setup (runs inside amqplib's recovery, before its 'connect' event)

  private async setupConnection (model: ChannelModel): Promise<void> {
    if (this.state.closing) throw new Error('closing')
    const conn = new Conn(++this.gen, model, this.settings, this.consumers)
    model.on('error', (err: Error) => {
      this.settings.log.warn({ err: errMessage(err), gen: conn.gen }, 'amqp: connection error')
    })
    model.on('close', () => {
      conn.closed = true
    })
    try {
      await withTimeout(this.prepareConnection(conn), this.settings.setupTimeoutMs, 'amqp connection setup')
    } catch (err) {
      conn.closed = true
      if (this.state.conn === conn) this.state.conn = undefined
      this.lastError = `setup failed: ${errMessage(err)}`
      this.settings.log.warn({ err: errMessage(err) }, 'amqp: connection setup failed, will retry')
      // amqplib awaits model.close() after a failed setup, which cannot finish on a dead peer.
      destroyModel(model)
      throw err
    }
  }

  private async prepareConnection (conn: Conn): Promise<void> {
    const admin = await conn.adminChannel()
    if (this.settings.declareTopology) {
      await declareTopology(admin, this.settings.names, { deliveryLimit: this.settings.deliveryLimit })
      conn.topologyDeclared()
    }
    for (const name of this.state.participants) await conn.declareParticipant(name)
    await conn.pubChannel()
    await conn.subChannel()
    this.state.conn = conn
    await this.consumers.startAll(conn)
  }

  private onConnect (): void {
    if (this.state.closing) return
    const conn = this.state.conn
    if (conn === undefined || conn.closed) {
      // The connection died between the end of our setup and amqplib binding its close
      // listener: amqplib saw no 'close', so it would never reconnect (found by the chaos run:
      // the link stayed down, the outbox waited). Replay the close so its recovery takes over.
      this.lastError = 'connection closed during setup'
      this.settings.log.warn({}, 'amqp: connection closed right after setup; reconnecting')
      const model = conn?.model
      if (model !== undefined) setImmediate(() => { model.emit('close', new Error('connection closed during setup')) })
      return
    }
    this.connected = true
    this.connects++
    this.reconnectAttempts = 0
    this.lastError = undefined
    this.since = Date.now()
    this.settings.log.info({ connects: this.connects, prefix: this.settings.names.prefix }, 'amqp: connected')
    this.events.emit('connected', { connects: this.connects })
  }

  private onDisconnect (err: Error): void {
    const conn = this.state.conn
    if (conn !== undefined) conn.closed = true
    this.state.conn = undefined
    this.consumers.detach(conn)
    this.lastError = errMessage(err)
    this.blocked = false
    if (this.connected) {
      this.connected = false
      this.since = Date.now()
    }
    if (this.state.closing) return
    this.settings.log.warn({ err: errMessage(err) }, 'amqp: disconnected, reconnecting')
    this.events.emit('disconnected', err)
  }
}
