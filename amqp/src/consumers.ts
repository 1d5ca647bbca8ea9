/**
 * The link's consumers: registered once, subscribed on every (re)connect, re-subscribed when the
 * consume channel dies alone or the broker cancels a consumer (its queue was deleted), and
 * settled with manual acks — ack after the handler resolves, dead-letter on a
 * {@link PoisonMessageError}, requeue after `retryDelayMs` otherwise.
 */

import type { Channel, ConsumeMessage } from 'amqplib'
import type { Conn, LinkState } from './connection.js'
import { destroyModel, errMessage, sleep, withTimeout, type LinkSettings } from './shared.js'
import { declareTopology } from './topology.js'
import { PoisonMessageError, type AmqpConsumer, type MessageHandler } from './types.js'

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

export interface ConsumerSpec {
  queue: string
  declare?: (ch: Channel) => Promise<string>
  handler: MessageHandler
  prefetch: number
}

/** What `consume` returns: the registration's live view, and its cancellation. */
class ConsumerHandle implements AmqpConsumer {
  constructor (private readonly reg: ConsumerReg, private readonly consumers: Consumers) {}

  get queue (): string { return this.reg.queue }
  get active (): boolean { return this.reg.tag !== undefined && this.reg.on !== undefined && !this.reg.on.closed }

  async cancel (): Promise<void> {
    const reg = this.reg
    if (reg.cancelled) return
    reg.cancelled = true
    clearTimeout(reg.retryTimer)
    this.consumers.forget(reg)
    const on = reg.on
    const tag = reg.tag
    reg.on = undefined
    reg.tag = undefined
    if (on !== undefined && tag !== undefined && on.sub !== undefined && !on.closed) {
      await withTimeout(on.sub.cancel(tag), 5000, 'cancel').catch(() => {})
    }
  }
}

export class Consumers {
  private readonly regs = new Map<number, ConsumerReg>()
  private nextConsumerId = 1
  private inflight = 0
  private readonly idleWaiters: Array<() => void> = []

  constructor (private readonly state: LinkState, private readonly settings: LinkSettings) {}

  /** Registers for good, and subscribes at once when connected. */
  async register (spec: ConsumerSpec): Promise<AmqpConsumer> {
    if (this.state.closing) throw new Error('AmqpLink is closed')
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
    this.regs.set(reg.id, reg)
    const conn = this.state.conn
    if (conn !== undefined && !conn.closed) await this.startConsumer(conn, reg)
    return new ConsumerHandle(reg, this)
  }

  /** The events consumer's queue: private, server-named, exclusive, bound to the events fanout. */
  async declareEventsQueue (ch: Channel): Promise<string> {
    const q = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false })
    await ch.bindQueue(q.queue, this.settings.names.eventsExchange, '')
    return q.queue
  }

  forget (reg: ConsumerReg): void {
    this.regs.delete(reg.id)
  }

  /** Subscribes every registered consumer on a new connection (last step of its setup). */
  async startAll (conn: Conn): Promise<void> {
    for (const reg of this.regs.values()) await this.startConsumer(conn, reg)
  }

  /** The consumers of `conn` are gone with it (or with its consume channel). */
  detach (conn: Conn | undefined): void {
    for (const reg of this.regs.values()) {
      if (reg.on === conn) {
        reg.on = undefined
        reg.tag = undefined
      }
    }
  }

  /** The consume channel of `conn` closed. The connection may live on (channel-level error):
   * re-create it and re-consume. */
  consumeChannelClosed (conn: Conn): void {
    this.detach(conn)
    if (!conn.closed && !this.state.closing && this.state.conn === conn) this.repair(conn)
  }

  /**
   * First part of the link's close: cancels every consumer on `conn` and lets running handlers
   * finish, both by `deadline`. The caller set `state.closing`.
   */
  async close (conn: Conn | undefined, deadline: number): Promise<void> {
    for (const reg of this.regs.values()) {
      reg.cancelled = true
      clearTimeout(reg.retryTimer)
    }
    if (conn !== undefined && !conn.closed && conn.sub !== undefined) {
      const sub = conn.sub
      await withTimeout(Promise.allSettled([...this.regs.values()]
        .filter((r) => r.on === conn && r.tag !== undefined)
        .map((r) => sub.cancel(r.tag as string))), Math.max(1, deadline - Date.now()), 'cancel').catch(() => {})
    }
    if (this.inflight > 0) {
      await withTimeout(new Promise<void>((resolve) => this.idleWaiters.push(resolve)), Math.max(1, deadline - Date.now()), 'handlers').catch(() => {})
    }
    this.regs.clear()
  }

  private repair (conn: Conn): void {
    setTimeout(() => {
      if (conn.closed || this.state.closing || this.state.conn !== conn) return
      conn.subChannel()
        .then(async () => { await this.startAll(conn) })
        .catch((err: unknown) => {
          this.settings.log.warn({ err: errMessage(err) }, 'amqp: cannot re-create the consume channel; reconnecting')
          destroyModel(conn.model)
        })
    }, 100).unref()
  }

  /** Subscribes `reg` on `conn` unless already; on failure, retries later. Never throws. */
  private async startConsumer (conn: Conn, reg: ConsumerReg): Promise<void> {
    if (reg.cancelled || reg.on === conn || conn.closed || this.state.closing) return
    reg.on = conn // claimed: a concurrent start (retry timer, channel repair) backs off
    try {
      const admin = await conn.adminChannel()
      if (reg.declare !== undefined) {
        reg.queue = await reg.declare(admin)
      } else {
        // A consume on a missing queue would kill the shared consume channel; check on admin.
        await admin.checkQueue(reg.queue)
      }
      const sub = await conn.subChannel()
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
      this.settings.log.debug({ queue: reg.queue, consumerTag }, 'amqp: consuming')
    } catch (err) {
      if (reg.on === conn) reg.on = undefined
      reg.tag = undefined
      if (conn.closed || this.state.closing || reg.cancelled) return
      this.settings.log.warn({ queue: reg.queue, err: errMessage(err) }, 'amqp: cannot consume yet, retrying')
      this.scheduleConsumerRetry(reg)
    }
  }

  private scheduleConsumerRetry (reg: ConsumerReg): void {
    clearTimeout(reg.retryTimer)
    reg.retryTimer = setTimeout(() => {
      reg.retryTimer = undefined
      const conn = this.state.conn
      if (conn !== undefined && !conn.closed) void this.startConsumer(conn, reg)
    }, Math.max(this.settings.retryDelayMs, 500))
    reg.retryTimer.unref()
  }

  private onConsumerCancelled (conn: Conn, reg: ConsumerReg): void {
    if (reg.on !== conn) return
    reg.on = undefined
    reg.tag = undefined
    if (reg.cancelled || this.state.closing) return
    this.settings.log.warn({ queue: reg.queue }, 'amqp: consumer cancelled by the broker (queue deleted?), re-subscribing')
    // A participant queue is re-declared by the retry path through ensure; others must exist.
    const participant = this.state.participantOfQueue(reg.queue)
    if (participant !== undefined) conn.forgetParticipant(participant)
    if (participant !== undefined) void conn.declareParticipant(participant).catch(() => {})
    const { names, declareTopology: declares, deliveryLimit } = this.settings
    if (reg.queue === names.acksQueue && declares) {
      void conn.adminChannel().then((ch) => declareTopology(ch, names, { deliveryLimit })).catch(() => {})
    }
    this.scheduleConsumerRetry(reg)
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
          this.settings.log.warn({ queue: reg.queue, messageId: msg.properties.messageId, err: errMessage(err) }, 'amqp: poison message dead-lettered')
        } else {
          verdict = 'requeue'
          this.settings.log.warn({ queue: reg.queue, messageId: msg.properties.messageId, err: errMessage(err), redelivered: msg.fields.redelivered }, 'amqp: handler failed, requeueing')
          await sleep(this.settings.retryDelayMs)
        }
      }
      // Ack only on the channel the message came from, while it lives; otherwise the broker
      // redelivers it (at least once: handlers must be idempotent).
      if (conn.closed || conn.sub !== ch) return
      try {
        if (verdict === 'ack') ch.ack(msg)
        else ch.nack(msg, false, verdict === 'requeue')
      } catch (err) {
        this.settings.log.debug({ err: errMessage(err) }, 'amqp: ack failed (channel closed); the broker will redeliver')
      }
    } finally {
      this.inflight--
      if (this.inflight === 0) for (const w of this.idleWaiters.splice(0)) w()
    }
  }
}
