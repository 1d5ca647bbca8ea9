/**
 * Runs one demo service from the environment (its bins call this): validates the environment
 * through the service's schema (exit 78 naming the variable), builds the app, listens, and
 * closes it cleanly on SIGTERM/SIGINT.
 */
import type { FastifyInstance } from 'fastify'
import { envFor, type ServiceName } from './config.js'
import type { ServiceOptions } from './common.js'
import { buildInventory } from './inventory.js'
import { buildPayment } from './payment.js'
import { buildOrder } from './order.js'

export async function serve (service: ServiceName): Promise<FastifyInstance> {
  let app: FastifyInstance
  let port: number
  let host: string
  try {
    const e = service === 'order' ? envFor('order') : envFor(service)
    port = e.PORT
    host = e.HOST
    const common: ServiceOptions = {
      dbPath: e.DB_PATH,
      coordinatorUrl: e.TWOPC_COORDINATOR_URL,
      secret: e.TWOPC_SECRET,
      apiToken: e.TWOPC_API_TOKEN,
      amqpUrl: e.AMQP_URL,
      amqpPrefix: e.TWOPC_AMQP_PREFIX,
      inDoubtAfterMs: e.TWOPC_IN_DOUBT_AFTER_MS,
      logLevel: e.LOG_LEVEL
    }
    if (e.AMQP_URL === undefined) {
      process.stderr.write(`demo ${service}: AMQP_URL is not set — running WITHOUT RabbitMQ (decisions over HTTP only${service === 'order' ? ', no order.placed messages' : ''})\n`)
    }
    if (service === 'order') {
      const o = envFor('order')
      app = await buildOrder({
        ...common,
        publicUrl: o.ORDER_PUBLIC_URL ?? `http://${o.HOST === '0.0.0.0' ? '127.0.0.1' : o.HOST}:${o.PORT}`,
        inventoryUrl: o.INVENTORY_URL,
        paymentUrl: o.PAYMENT_URL,
        orderTimeoutMs: o.ORDER_TIMEOUT_MS,
        ordersExchange: o.DEMO_ORDERS_EXCHANGE,
        orderPlacedQueue: o.DEMO_ORDER_PLACED_QUEUE
      })
    } else {
      app = service === 'inventory' ? await buildInventory(common) : await buildPayment(common)
    }
  } catch (err) {
    process.stderr.write(`demo ${service}: cannot start: ${(err as Error).message}\n`)
    process.exit(/^env\//.test((err as Error).message) || /must/.test((err as Error).message) ? 78 : 1)
  }
  let closing = false
  const stop = (signal: string): void => {
    if (closing) return
    closing = true
    app.log.info({ signal }, 'shutting down')
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    app.close().then(() => process.exit(0), () => process.exit(1))
  }
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))
  await app.listen({ port, host })
  return app
}
