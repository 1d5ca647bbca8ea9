/**
 * Order: the initiator of `createOrder`, and a participant itself (it writes the order row).
 *
 * `POST /orders {sku, qty, account}` runs ONE distributed transaction through the SDK client:
 * order (the row), inventory (the stock) and payment (the funds) are enlisted; with RabbitMQ an
 * `order.placed` transactional message rides along, published by the coordinator only if the
 * transaction commits. The answer carries the order and the outcome.
 */
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { Database } from 'better-sqlite3'
import { createCoordinatorClient, CoordinatorError, type CommitOutcome } from '@fastify-2pc/participant-sdk'
import { count, createApp, openDb, registerParticipant, type ServiceOptions } from './common.js'
import { ORDER_PLACED, PRICES } from './catalog.js'
import { OrderPlacedConsumer } from './order-placed.js'

export interface OrderServiceOptions extends ServiceOptions {
  /** Origin the coordinator reaches this service at. */
  publicUrl: string
  inventoryUrl: string
  paymentUrl: string
  orderTimeoutMs?: number
  ordersExchange?: string
  orderPlacedQueue?: string
}

export interface OrderRow {
  id: string
  txid: string
  sku: string
  qty: number
  account: string
  total: number
  status: 'pending' | 'placed'
  createdAt: number
  /** The `order.placed` message for it was consumed (always false without RabbitMQ). */
  notified: boolean
}

interface OrderPayload { orderId: string, sku: string, qty: number, account: string, total: number }

function migrate (db: Database): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS orders (
      id TEXT PRIMARY KEY,
      txid TEXT NOT NULL UNIQUE,
      sku TEXT NOT NULL,
      qty INTEGER NOT NULL,
      account TEXT NOT NULL,
      total INTEGER NOT NULL,
      status TEXT NOT NULL CHECK (status IN ('pending', 'placed')),
      created_at INTEGER NOT NULL
    );`)
}

function parsePayload (payload: unknown): OrderPayload | undefined {
  const p = (payload ?? {}) as Partial<Record<keyof OrderPayload, unknown>>
  const qty = count(p.qty)
  const total = count(p.total)
  if (typeof p.orderId !== 'string' || typeof p.sku !== 'string' || typeof p.account !== 'string' || qty === undefined || total === undefined) return undefined
  return { orderId: p.orderId, sku: p.sku, qty, account: p.account, total }
}

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

export async function buildOrder (options: OrderServiceOptions): Promise<FastifyInstance> {
  const db = openDb(options.dbPath)
  migrate(db)
  const app = createApp(options)
  const amqpOn = options.amqpUrl !== undefined
  const exchange = options.ordersExchange ?? 'demo.orders'
  const consumer = amqpOn
    ? new OrderPlacedConsumer({ url: options.amqpUrl as string, exchange, queue: options.orderPlacedQueue ?? 'demo.order-placed', db, logger: app.log.child({ component: 'order.placed' }) })
    : undefined
  if (!amqpOn) db.exec('CREATE TABLE IF NOT EXISTS order_placed_messages (order_id TEXT PRIMARY KEY, txid TEXT, message_id TEXT, received_at INTEGER NOT NULL)')

  await registerParticipant(app, options, {
    name: 'order',
    db,
    // The order row is written at prepare (pending) and only becomes `placed` at commit.
    prepare (tx, payload, db) {
      const p = parsePayload(payload)
      if (p === undefined) return 'no'
      db.prepare('INSERT INTO orders (id, txid, sku, qty, account, total, status, created_at) VALUES (?, ?, ?, ?, ?, ?, \'pending\', ?)')
        .run(p.orderId, tx.id, p.sku, p.qty, p.account, p.total, Date.now())
      return 'yes'
    },
    commit (tx, db) {
      db.prepare('UPDATE orders SET status = \'placed\' WHERE txid = ?').run(tx.id)
    },
    abort (tx, db) {
      db.prepare('DELETE FROM orders WHERE txid = ?').run(tx.id)
    }
  })

  const client = createCoordinatorClient({
    url: options.coordinatorUrl,
    ...(options.apiToken !== undefined ? { token: options.apiToken } : {})
  })
  app.addHook('onClose', async () => {
    await consumer?.close()
    await client.close()
  })
  if (consumer !== undefined) app.addHook('onReady', async () => { await consumer.start() })

  const callback = (origin: string): string => `${origin.replace(/\/+$/, '')}/2pc`

  /** Which participant refused, in words (from the coordinator's record of the transaction). */
  async function explain (outcome: CommitOutcome): Promise<string> {
    try {
      const res = await fetch(`${options.coordinatorUrl.replace(/\/+$/, '')}/v1/transactions/${outcome.id}`, {
        headers: options.apiToken !== undefined ? { authorization: `Bearer ${options.apiToken}` } : {},
        signal: AbortSignal.timeout(5000)
      })
      const record = await res.json() as { participants?: Array<{ name: string, vote: string | null, lastError: string | null }> }
      const parts = record.participants ?? []
      const said = (name: string): string | null | undefined => parts.find(p => p.name === name)?.vote
      if (said('inventory') === 'no') return 'out of stock'
      if (said('payment') === 'no') return 'insufficient funds'
      const failed = parts.filter(p => p.vote === null && p.lastError !== null).map(p => p.name)
      if (failed.length > 0) return `${failed.join(', ')} unreachable at prepare`
    } catch { /* the outcome's reason is enough */ }
    return outcome.reason ?? 'aborted'
  }

  app.post('/orders', {
    schema: {
      body: {
        type: 'object',
        required: ['sku', 'qty', 'account'],
        additionalProperties: false,
        properties: {
          sku: { type: 'string', minLength: 1, maxLength: 64 },
          qty: { type: 'integer', minimum: 1, maximum: 1_000_000 },
          account: { type: 'string', minLength: 1, maxLength: 64 }
        }
      }
    }
  }, async (request, reply) => {
    const { sku, qty, account } = request.body as { sku: string, qty: number, account: string }
    const price = PRICES[sku]
    if (price === undefined) {
      return reply.code(400).send({ statusCode: 400, code: 'UNKNOWN_SKU', error: 'Bad Request', message: `no such product: ${sku} (known: ${Object.keys(PRICES).join(', ')})` })
    }
    if (consumer !== undefined && !consumer.exchangeReady) {
      return reply.code(503).send({ statusCode: 503, code: 'AMQP_NOT_READY', error: 'Service Unavailable', message: 'the orders exchange is not declared yet: RabbitMQ not reachable' })
    }
    const total = price * qty
    const orderId = randomUUID()
    const tx = await client.begin({ timeoutMs: options.orderTimeoutMs ?? 10_000, metadata: { orderId } })
    let txid: string
    try {
      // The id first: if the commit's answer is lost, the decision can still be asked for.
      txid = await tx.start()
    } catch (err) {
      return sendCoordinatorError(reply, err)
    }
    tx.enlist({ name: 'order', url: callback(options.publicUrl), payload: { orderId, sku, qty, account, total } })
    tx.enlist({ name: 'inventory', url: callback(options.inventoryUrl), payload: { sku, qty } })
    tx.enlist({ name: 'payment', url: callback(options.paymentUrl), payload: { account, amount: total } })
    if (amqpOn) tx.publish({ exchange, routingKey: ORDER_PLACED, body: { orderId, txid, sku, qty, account, total } })
    let outcome: CommitOutcome
    try {
      outcome = await tx.commit()
    } catch (err) {
      if (!(err instanceof CoordinatorError) || err.code !== 'COMMIT_OUTCOME_UNKNOWN') return sendCoordinatorError(reply, err)
      // The commit was sent and its answer lost: ask for the decision (bounded).
      const decided = await decisionOf(txid)
      if (decided === undefined) return sendCoordinatorError(reply, err)
      outcome = decided
    }
    const order = { id: orderId, txid, sku, qty, account, total }
    if (outcome.state === 'committed') {
      return reply.code(201).send({ order: { ...order, status: 'placed' }, outcome })
    }
    return reply.code(409).send({ order: { ...order, status: 'rejected' }, outcome, rejected: await explain(outcome) })
  })

  async function decisionOf (txid: string): Promise<CommitOutcome | undefined> {
    const until = Date.now() + 30_000
    while (Date.now() < until) {
      try {
        const { decision } = await client.decision(txid)
        if (decision === 'commit') return { id: txid, state: 'committed' }
        if (decision === 'abort') return { id: txid, state: 'aborted' }
      } catch { /* unreachable for now: ask again */ }
      await sleep(200)
    }
    return undefined
  }

  const listOrders = db.prepare(`
    SELECT o.id, o.txid, o.sku, o.qty, o.account, o.total, o.status, o.created_at AS createdAt,
           (m.order_id IS NOT NULL) AS notified
    FROM orders o LEFT JOIN order_placed_messages m ON m.order_id = o.id ORDER BY o.created_at, o.id`)
  const countMessages = db.prepare('SELECT COUNT(*) AS n FROM order_placed_messages')
  const listMessages = db.prepare('SELECT order_id AS orderId, txid FROM order_placed_messages ORDER BY received_at')
  app.get('/orders', async () => {
    const items = (listOrders.all() as Array<Omit<OrderRow, 'notified'> & { notified: number }>).map(o => ({ ...o, notified: o.notified === 1 }))
    return { items, messages: { ...(consumer?.status() ?? { configured: false }), received: (countMessages.get() as { n: number }).n } }
  })
  /** The `order.placed` messages consumed (one row per order: deliveries are deduplicated). */
  app.get('/order-placed', async () => ({ items: listMessages.all() }))
  return app
}

function sendCoordinatorError (reply: import('fastify').FastifyReply, err: unknown): import('fastify').FastifyReply {
  const code = err instanceof CoordinatorError ? err.code : 'INTERNAL_ERROR'
  const statusCode = code === 'COORDINATOR_UNREACHABLE' || code === 'COMMIT_OUTCOME_UNKNOWN' ? 503 : 502
  return reply.code(statusCode).send({ statusCode, code, error: statusCode === 503 ? 'Service Unavailable' : 'Bad Gateway', message: (err as Error).message })
}
