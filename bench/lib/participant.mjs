// A participant service for the benchmark: a small Fastify app on the participant SDK with its
// own SQLite file (WAL, synchronous=FULL).
//
// 2PC path (SDK callbacks under /2pc):
//   prepare: INSERT a reservation row (state 'reserved') — in the SDK's local transaction, with
//            the SDK's `prepared` record: one durable SQLite transaction;
//   commit:  UPDATE the row to 'committed' (permanent) — one durable SQLite transaction;
//   abort:   DELETE the row.
// Plain path (the baseline, no 2PC): POST /plain/reserve INSERTs the same row, directly
//   'committed', in one durable SQLite transaction, with a TypeBox-equivalent JSON schema.
import './watchdog.mjs'
import './loop-delay.mjs'
import { Fastify, Database } from './deps.mjs'
import { twoPhaseParticipant } from '@fastify-2pc/participant-sdk'

const name = process.env.NAME ?? 'inventory'
const port = Number(process.env.PORT ?? 0)
const db = new Database(process.env.DB_PATH ?? `./${name}.db`)
db.pragma('journal_mode = WAL')
db.pragma('synchronous = FULL')
db.exec(`
  CREATE TABLE IF NOT EXISTS reservations (txid TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL, state TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS plain_reservations (txid TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL, state TEXT NOT NULL);
`)
const insertReservation = db.prepare("INSERT INTO reservations (txid, sku, qty, state) VALUES (?, ?, ?, 'reserved')")
const commitReservation = db.prepare("UPDATE reservations SET state = 'committed' WHERE txid = ?")
const deleteReservation = db.prepare('DELETE FROM reservations WHERE txid = ?')
const insertPlain = db.prepare("INSERT INTO plain_reservations (txid, sku, qty, state) VALUES (?, ?, ?, 'committed')")
const plainReserve = db.transaction((id, sku, qty) => { insertPlain.run(id, sku, qty) })

const app = Fastify({ logger: process.env.LOG_LEVEL === undefined || process.env.LOG_LEVEL === 'silent' ? false : { level: process.env.LOG_LEVEL } })
await app.register(twoPhaseParticipant, {
  name,
  db,
  coordinatorUrl: process.env.COORDINATOR_URL ?? 'http://127.0.0.1:7070',
  secret: process.env.TWOPC_SECRET,
  metricsRoute: '/metrics',
  ...(process.env.INLINE_SYNC_MAX_MS !== undefined ? { inlineSyncMaxMs: Number(process.env.INLINE_SYNC_MAX_MS) } : {}),
  prepare (tx, payload) {
    const { sku, qty } = /** @type {{ sku: string, qty: number }} */ (payload)
    insertReservation.run(tx.id, sku, qty)
    return 'yes'
  },
  commit (tx) { commitReservation.run(tx.id) },
  abort (tx) { deleteReservation.run(tx.id) }
})

app.post('/plain/reserve', {
  schema: {
    body: {
      type: 'object',
      properties: { id: { type: 'string', maxLength: 64 }, sku: { type: 'string', maxLength: 64 }, qty: { type: 'integer', minimum: 1 } },
      required: ['id', 'sku', 'qty'],
      additionalProperties: false
    },
    response: { 200: { type: 'object', properties: { ok: { type: 'boolean' } } } }
  }
}, async request => {
  const { id, sku, qty } = /** @type {{ id: string, sku: string, qty: number }} */ (request.body)
  plainReserve(id, sku, qty)
  return { ok: true }
})
app.get('/healthz', async () => ({ status: 'ok', pid: process.pid }))
app.get('/bench/counts', async () => ({
  reserved: /** @type {{ n: number }} */ (db.prepare("SELECT count(*) AS n FROM reservations WHERE state = 'reserved'").get()).n,
  committed: /** @type {{ n: number }} */ (db.prepare("SELECT count(*) AS n FROM reservations WHERE state = 'committed'").get()).n,
  plain: /** @type {{ n: number }} */ (db.prepare('SELECT count(*) AS n FROM plain_reservations').get()).n
}))
app.addHook('onClose', async () => { db.close() })

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}
await app.listen({ port, host: '127.0.0.1' })
