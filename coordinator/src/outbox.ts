/**
 * Publishes the outbox to RabbitMQ: rows are read in id order, published in a batch with
 * persistent delivery, a stable messageId and publisher confirms, and marked published only
 * after the broker's confirm. A broker that is down or slow only makes the outbox grow: nothing
 * here is on the HTTP path. At least once: a row whose confirm was lost is published again,
 * with the same messageId.
 *
 * With a secret, decision notices and events are signed here, at publish time, over the exact
 * bytes published (`x-2pc-signature`, operations `amqp.decision` / `amqp.event`): the outbox
 * stores the body only, so a row written before a restart is signed with the secret in force
 * when it goes out. Transactional messages are the application's and go out as enlisted.
 * Consumers verify broker signatures without an age limit (amqp/src/signing.ts), so a
 * notice that waits hours in a queue is still accepted.
 */
import type { FastifyBaseLogger } from 'fastify'
import { signBrokerMessage, type AmqpLink, type BrokerOperation, type PublishItem } from '@fastify-2pc/amqp'
import type { LogStore, OutboxRow } from './log/log-store.js'

export interface OutboxOptions {
  batchSize: number
  /** Backstop flush interval; writes and reconnects also trigger a flush. */
  intervalMs: number
  /** Batches one flush publishes at most before yielding to the next tick. */
  maxBatchesPerFlush: number
  publishTimeoutMs: number
  logger: FastifyBaseLogger
  /** TWOPC_SECRET: signs decision notices and events; unset, they go out unsigned. */
  secret?: string
  now?: () => number
}

interface OutboxItem extends PublishItem {
  rowId: number
}

export class OutboxPublisher {
  private flushing: Promise<void> | undefined
  private again = false
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private lastError: string | undefined
  private published = 0
  private readonly now: () => number
  /** Observer of confirmed rows (metrics). */
  onPublished: ((count: number) => void) | undefined

  constructor (
    private readonly log: LogStore,
    private readonly link: AmqpLink,
    private readonly options: OutboxOptions
  ) {
    this.now = options.now ?? Date.now
  }

  start (): void {
    this.timer = setInterval(() => this.kick(), this.options.intervalMs)
    this.link.on('connected', () => this.kick())
    this.kick()
  }

  /** Asks for a flush soon; coalesces with one already running. */
  kick (): void {
    if (this.stopped) return
    if (this.flushing !== undefined) { this.again = true; return }
    this.flushing = this.flush()
      .catch((err: unknown) => { this.options.logger.error({ err }, 'outbox flush failed') })
      .finally(() => {
        this.flushing = undefined
        if (this.again) { this.again = false; setImmediate(() => this.kick()) }
      })
  }

  private async flush (): Promise<void> {
    let afterId = 0
    for (let i = 0; i < this.options.maxBatchesPerFlush && !this.stopped; i++) {
      if (!this.link.isConnected) return
      const rows = this.log.outboxBatch(afterId, this.options.batchSize)
      if (rows.length === 0) return
      afterId = (rows[rows.length - 1] as OutboxRow).id
      const secret = this.options.secret
      const result = await this.link.publishBatch(rows.map(row => toItem(row, secret)), { timeoutMs: this.options.publishTimeoutMs })
      if (this.stopped && !this.log.open) return
      const failed = result.failed.map(f => ({ id: f.item.rowId, error: `${f.error.code}: ${f.error.message}`, permanent: f.error.permanent }))
      this.log.settleOutbox(result.confirmed.map(c => c.rowId), failed, this.now())
      this.published += result.confirmed.length
      if (result.confirmed.length > 0) this.onPublished?.(result.confirmed.length)
      for (const f of result.failed.filter(x => x.error.permanent)) {
        this.options.logger.error({ txid: rows.find(r => r.id === f.item.rowId)?.txId, messageId: f.item.messageId, exchange: f.item.exchange, code: f.error.code },
          'outbox message parked: it can never be published as it is')
      }
      if (result.failed.some(f => !f.error.permanent)) {
        const first = result.failed.find(f => !f.error.permanent)
        this.lastError = `${first?.error.code ?? ''}: ${first?.error.message ?? ''}`
        this.options.logger.warn({ failed: result.failed.length, confirmed: result.confirmed.length, error: this.lastError },
          'outbox publish incomplete; retrying on reconnect or the next tick')
        return
      }
      this.lastError = undefined
    }
    this.again = true // more than one flush's worth: continue on the next turn
  }

  status (): { publishedSinceStart: number, lastError: string | undefined } {
    return { publishedSinceStart: this.published, lastError: this.lastError }
  }

  /** Stops flushing; waits for a batch in flight (bounded by its publish timeout). */
  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    await this.flushing
  }
}

const SIGNED_KINDS: Partial<Record<OutboxRow['kind'], BrokerOperation>> = { decision: 'amqp.decision', event: 'amqp.event' }

function toItem (row: OutboxRow, secret: string | undefined): OutboxItem {
  const headers: Record<string, unknown> = { ...(row.headers ?? {}) }
  if (row.txId !== null) headers['x-twopc-txid'] = row.txId
  const body = Buffer.from(row.body)
  const operation = SIGNED_KINDS[row.kind]
  // Signed over `body`, the Buffer the link publishes as is.
  if (secret !== undefined && operation !== undefined) Object.assign(headers, signBrokerMessage(secret, operation, body))
  return {
    rowId: row.id,
    exchange: row.exchange,
    routingKey: row.routingKey,
    body,
    messageId: row.messageId,
    headers
  }
}
