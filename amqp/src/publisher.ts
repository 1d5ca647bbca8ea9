/**
 * The link's publisher: a batch of persistent messages on the confirm channel, each confirmed or
 * failed by the broker's own answer, the whole batch bounded by a timeout. Never rejects.
 */

import type { LinkState } from './connection.js'
import { errMessage, is404, type LinkSettings } from './shared.js'
import { AmqpPublishError, type PublishBatchResult, type PublishItem } from './types.js'

export class Publisher {
  constructor (private readonly state: LinkState, private readonly settings: LinkSettings) {}

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
    const timeoutMs = options.timeoutMs ?? this.settings.publishTimeoutMs
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
    // `state.conn` is set once the channels exist, before the consumers restart: a consumer's
    // handler may publish (an ack) while the setup is still finishing.
    const conn = this.state.conn
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
        if (item.exchange === this.settings.names.decisionsExchange && item.routingKey.startsWith(rkPrefix)) {
          const name = item.routingKey.slice(rkPrefix.length)
          if (!prep.has(`q:${name}`)) {
            try {
              this.state.rememberParticipant(name)
              prep.set(`q:${name}`, conn.declareParticipant(name))
            } catch (err) {
              prep.set(`q:${name}`, Promise.reject(err))
            }
          }
        } else if (!prep.has(`x:${item.exchange}`)) {
          prep.set(`x:${item.exchange}`, conn.checkExchange(item.exchange))
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
        const isQueue = item.exchange === this.settings.names.decisionsExchange && item.routingKey.startsWith(rkPrefix)
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
      const ch = await Promise.race([conn.pubChannel(), expired])
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
}
