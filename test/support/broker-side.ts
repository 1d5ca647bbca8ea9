/**
 * The test's own view of the real RabbitMQ (a direct connection, never through a test proxy):
 * declare user exchanges and queues, read queues to empty, count, publish with confirms, and
 * delete at the end everything a test's prefix declared (the coordinator's topology, participant
 * queues and their dead-letter queues, and what the test declared itself).
 */

import amqp from 'amqplib'
import type { ConfirmChannel, ChannelModel, GetMessage, ConsumeMessage, Options } from 'amqplib'
import { amqpNames } from '@fastify-2pc/protocol'
import { topologyObjects } from '@fastify-2pc/amqp'
import { amqpUrl, cleanupPrefix, requireRabbit, type TapLike } from './rabbit.js'

export interface Received {
  messageId: string
  body: any
  raw: Buffer
  persistent: boolean
  contentType: string | undefined
  headers: Record<string, unknown>
  routingKey: string
  exchange: string
}

function toReceived (msg: GetMessage | ConsumeMessage): Received {
  const raw = msg.content
  let body: unknown
  try { body = JSON.parse(raw.toString('utf8')) } catch { body = raw.toString('utf8') }
  return {
    messageId: String(msg.properties.messageId),
    body,
    raw,
    persistent: msg.properties.deliveryMode === 2,
    contentType: msg.properties.contentType,
    headers: msg.properties.headers ?? {},
    routingKey: msg.fields.routingKey,
    exchange: msg.fields.exchange
  }
}

export class BrokerSide {
  /** Queues and exchanges this test declared itself (deleted by `cleanup`). */
  readonly queues = new Set<string>()
  readonly exchanges = new Set<string>()
  /** Participant names whose queues (and dead-letter queues) the coordinator may have declared. */
  readonly participants = new Set<string>()

  private constructor (readonly prefix: string, private readonly conn: ChannelModel, readonly ch: ConfirmChannel) {}

  static async open (prefix: string, url = amqpUrl()): Promise<BrokerSide> {
    const conn = await amqp.connect(url, { timeout: 5000 })
    conn.on('error', () => {})
    const ch = await conn.createConfirmChannel()
    ch.on('error', () => {})
    return new BrokerSide(prefix, conn, ch)
  }

  /**
   * A BrokerSide on `prefix` for test `t`, cleaned up in its teardown (a failed delete said on
   * stderr); undefined without RabbitMQ (`requireRabbit` skipped or failed the test).
   */
  static async forTest (t: TapLike & { teardown: (fn: () => Promise<void>) => unknown }, prefix: string): Promise<BrokerSide | undefined> {
    if (!(await requireRabbit(t))) return undefined
    const broker = await BrokerSide.open(prefix)
    t.teardown(async () => {
      const failed = await broker.cleanup()
      if (failed.length > 0) process.stderr.write(`${t.name}: cleanup failed for ${failed.join(', ')}\n`)
    })
    return broker
  }

  get names (): ReturnType<typeof amqpNames> { return amqpNames(this.prefix) }

  async exchange (name: string, type: 'topic' | 'direct' | 'fanout', opts: Options.AssertExchange = { durable: true }): Promise<void> {
    this.exchanges.add(name)
    await this.ch.assertExchange(name, type, opts)
  }

  /** A durable classic queue, bound to `exchange` with `routingKey`. */
  async queueBoundTo (queue: string, exchange: string, routingKey: string): Promise<void> {
    this.queues.add(queue)
    await this.ch.assertQueue(queue, { durable: true })
    await this.ch.bindQueue(queue, exchange, routingKey)
  }

  /** Ready messages of a queue; undefined when the queue does not exist. */
  async count (queue: string): Promise<number | undefined> {
    const ch = await this.conn.createChannel()
    ch.on('error', () => {})
    try {
      return (await ch.checkQueue(queue)).messageCount
    } catch {
      return undefined
    } finally {
      await ch.close().catch(() => {})
    }
  }

  /**
   * Takes every ready message off `queue` (basic.get, auto-ack) until it is empty. Call it once
   * everything expected is confirmed (e.g. the coordinator's outbox is empty): the result is
   * then exactly what the queue received.
   */
  async drain (queue: string): Promise<Received[]> {
    const out: Received[] = []
    for (;;) {
      const msg = await this.ch.get(queue, { noAck: true })
      if (msg === false) return out
      out.push(toReceived(msg))
    }
  }

  /** Consumes `queue` into a live array (acked on arrival). */
  async collect (queue: string): Promise<Received[]> {
    const out: Received[] = []
    await this.ch.consume(queue, (msg) => {
      if (msg === null) return
      out.push(toReceived(msg))
      this.ch.ack(msg)
    }, { noAck: false })
    return out
  }

  /** A server-named exclusive queue bound to `exchange` (removed when this connection closes). */
  async tempQueue (exchange: string, routingKey = ''): Promise<string> {
    const q = await this.ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false })
    await this.ch.bindQueue(q.queue, exchange, routingKey)
    return q.queue
  }

  /** Publishes and waits for the broker's confirm. */
  async publish (exchange: string, routingKey: string, content: Buffer | string, props: Options.Publish = {}): Promise<void> {
    const buf = typeof content === 'string' ? Buffer.from(content) : content
    await new Promise<void>((resolve, reject) => {
      this.ch.publish(exchange, routingKey, buf, { persistent: true, ...props }, (err: unknown) => {
        if (err !== null && err !== undefined) reject(err instanceof Error ? err : new Error(String(err)))
        else resolve()
      })
    })
  }

  /**
   * Deletes the prefix's whole topology (with every participant queue and dead-letter queue
   * noted in `participants`) and what the test declared. Returns the names it could not delete.
   */
  async cleanup (): Promise<string[]> {
    await this.conn.close().catch(() => {})
    const topo = topologyObjects(amqpNames(this.prefix), this.participants)
    return await cleanupPrefix({
      queues: [...topo.queues, ...this.queues],
      exchanges: [...topo.exchanges, ...this.exchanges]
    })
  }
}
