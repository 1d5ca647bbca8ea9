/**
 * The `order.placed` side of the order service, used when RabbitMQ is configured: declares the
 * orders exchange (a transactional message's exchange must exist before the coordinator
 * publishes to it) and a durable queue bound to it, and consumes that queue — standing in for a
 * shipping service — recording each message once (deduplicated by order id: delivery is at least
 * once). Reconnects with capped backoff; the messages wait in the queue meanwhile.
 */
import amqp from 'amqplib'
import type { Database } from 'better-sqlite3'
import type { FastifyBaseLogger } from 'fastify'
import { ORDER_PLACED } from './catalog.js'

export interface OrderPlacedOptions {
  url: string
  exchange: string
  queue: string
  db: Database
  logger: FastifyBaseLogger
}

export interface OrderPlacedStatus {
  configured: true
  connected: boolean
  /** The exchange was declared at least once (durable: it stays). */
  exchangeReady: boolean
  /** Deliveries handled (redeliveries included). */
  delivered: number
  lastError: string | null
}

export class OrderPlacedConsumer {
  readonly #o: OrderPlacedOptions
  #conn: amqp.ChannelModel | undefined
  #closed = false
  #connected = false
  #exchangeReady = false
  #delivered = 0
  #lastError: string | null = null
  #timer: NodeJS.Timeout | undefined
  #delay = 250
  readonly #record

  constructor (options: OrderPlacedOptions) {
    this.#o = options
    options.db.exec(`CREATE TABLE IF NOT EXISTS order_placed_messages (
      order_id TEXT PRIMARY KEY,
      txid TEXT,
      message_id TEXT,
      received_at INTEGER NOT NULL
    )`)
    this.#record = options.db.prepare('INSERT OR IGNORE INTO order_placed_messages (order_id, txid, message_id, received_at) VALUES (?, ?, ?, ?)')
  }

  /** First connection attempt (resolves either way; retries go on in the background). */
  async start (): Promise<void> {
    await this.#connect()
  }

  get exchangeReady (): boolean { return this.#exchangeReady }

  status (): OrderPlacedStatus {
    return { configured: true, connected: this.#connected, exchangeReady: this.#exchangeReady, delivered: this.#delivered, lastError: this.#lastError }
  }

  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    const conn = this.#conn
    this.#conn = undefined
    if (conn !== undefined) await conn.close().catch(() => {})
  }

  async #connect (): Promise<void> {
    if (this.#closed) return
    let conn: amqp.ChannelModel | undefined
    try {
      conn = await amqp.connect(this.#o.url, { timeout: 5000, clientProperties: { connection_name: 'demo order.placed consumer' } })
      conn.on('error', (err: Error) => { this.#lastError = err.message })
      const c = conn
      conn.on('close', () => {
        this.#connected = false
        if (this.#conn === c) { this.#conn = undefined; this.#retry() }
      })
      const ch = await conn.createChannel()
      ch.on('error', (err: Error) => { this.#lastError = err.message })
      await ch.assertExchange(this.#o.exchange, 'topic', { durable: true })
      await ch.assertQueue(this.#o.queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } })
      await ch.bindQueue(this.#o.queue, this.#o.exchange, ORDER_PLACED)
      this.#exchangeReady = true
      await ch.prefetch(32)
      await ch.consume(this.#o.queue, msg => {
        if (msg === null) return
        this.#delivered++
        try {
          const body = JSON.parse(msg.content.toString('utf8')) as { orderId?: unknown, txid?: unknown }
          if (typeof body.orderId === 'string') {
            const txid = typeof body.txid === 'string' ? body.txid : null
            const messageId = typeof msg.properties.messageId === 'string' ? msg.properties.messageId : null
            this.#record.run(body.orderId, txid, messageId, Date.now())
          } else {
            this.#o.logger.warn('order.placed message without an orderId: dropped')
          }
          ch.ack(msg)
        } catch (err) {
          this.#o.logger.error({ err }, 'order.placed message not recorded: requeued')
          ch.nack(msg, false, true)
        }
      })
      this.#conn = conn
      this.#connected = true
      this.#lastError = null
      this.#delay = 250
      this.#o.logger.info({ exchange: this.#o.exchange, queue: this.#o.queue }, 'consuming order.placed')
      if (this.#closed) await conn.close().catch(() => {})
    } catch (err) {
      this.#lastError = (err as Error).message
      this.#o.logger.warn({ err: this.#lastError }, 'RabbitMQ not reachable for order.placed; retrying')
      if (conn !== undefined) await conn.close().catch(() => {})
      this.#retry()
    }
  }

  #retry (): void {
    if (this.#closed) return
    clearTimeout(this.#timer)
    const delay = this.#delay
    this.#delay = Math.min(this.#delay * 2, 5000)
    this.#timer = setTimeout(() => { void this.#connect() }, delay)
    this.#timer.unref()
  }
}
