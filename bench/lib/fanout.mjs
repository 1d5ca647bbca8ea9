// The baseline: a plain Fastify fan-out route (no coordination, no log, no logging) that calls
// the same two participants once each, in parallel, and answers when both have answered.
import './watchdog.mjs'
import './loop-delay.mjs'
import { randomUUID } from 'node:crypto'
import { Fastify, undici } from './deps.mjs'

const port = Number(process.env.PORT ?? 0)
const targets = JSON.parse(process.env.TARGETS ?? '[]') // [origin, ...]
const connections = Number(process.env.CONNECTIONS ?? 64) // the coordinator's connectionsPerOrigin
const pools = targets.map((/** @type {string} */ origin) => new undici.Pool(origin, { connections }))

/** @param {import('undici').Pool} pool @param {string} body */
async function call (pool, body) {
  const res = await pool.request({ path: '/plain/reserve', method: 'POST', headers: { 'content-type': 'application/json' }, body })
  const text = await res.body.text()
  if (res.statusCode !== 200) throw new Error(`participant answered ${res.statusCode}: ${text}`)
  return JSON.parse(text)
}

const app = Fastify({ logger: false })
app.post('/order', {
  schema: {
    body: {
      type: 'object',
      properties: { sku: { type: 'string', maxLength: 64 }, qty: { type: 'integer', minimum: 1 } },
      required: ['sku', 'qty'],
      additionalProperties: false
    }
  }
}, async (request, reply) => {
  const { sku, qty } = /** @type {{ sku: string, qty: number }} */ (request.body)
  const body = JSON.stringify({ id: randomUUID(), sku, qty })
  try {
    await Promise.all(pools.map((/** @type {import('undici').Pool} */ pool) => call(pool, body)))
    return { state: 'committed' }
  } catch (err) {
    reply.code(502)
    return { state: 'failed', message: /** @type {Error} */ (err).message }
  }
})
app.get('/healthz', async () => ({ status: 'ok', pid: process.pid }))
app.addHook('onClose', async () => { await Promise.all(pools.map((/** @type {import('undici').Pool} */ p) => p.close())) })

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
await app.listen({ port, host: '127.0.0.1' })
