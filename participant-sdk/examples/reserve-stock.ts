// A stock service that takes part in 2PC transactions: prepare reserves, commit spends the
// reservation, abort releases it. Run: COORDINATOR_URL=http://127.0.0.1:7070 node --import=tsx reserve-stock.ts
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import { twoPhaseParticipant } from '@fastify-2pc/participant-sdk'

export async function buildStockService (options: { dbPath: string, coordinatorUrl: string, secret?: string }) {
  const db = new Database(options.dbPath)
  db.pragma('journal_mode = WAL')
  db.exec(`
    CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0));
    CREATE TABLE IF NOT EXISTS reservations (txid TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL);
    INSERT OR IGNORE INTO stock VALUES ('apple', 10);
  `)

  const app = Fastify({ logger: true })
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: options.coordinatorUrl,
    secret: options.secret,
    // Runs inside the local SQLite transaction that also records the vote: synchronous only.
    prepare (tx, payload, db) {
      const { sku, qty } = payload as { sku: string, qty: number }
      const row = db.prepare('SELECT available FROM stock WHERE sku = ?').get(sku) as { available: number } | undefined
      if (row === undefined || row.available < qty) return 'no'
      // Reserve, don't spend: the stock leaves `available` now, so commit cannot fail later.
      db.prepare('UPDATE stock SET available = available - ? WHERE sku = ?').run(qty, sku)
      db.prepare('INSERT INTO reservations (txid, sku, qty) VALUES (?, ?, ?)').run(tx.id, sku, qty)
      return 'yes'
    },
    commit (tx, db) {
      // The reservation becomes final: nothing left that could fail.
      db.prepare('DELETE FROM reservations WHERE txid = ?').run(tx.id)
    },
    abort (tx, db) {
      const r = db.prepare('SELECT sku, qty FROM reservations WHERE txid = ?').get(tx.id) as { sku: string, qty: number }
      db.prepare('UPDATE stock SET available = available + ? WHERE sku = ?').run(r.qty, r.sku)
      db.prepare('DELETE FROM reservations WHERE txid = ?').run(tx.id)
    }
  })
  app.get('/stock/:sku', async request => {
    return db.prepare('SELECT sku, available FROM stock WHERE sku = ?').get((request.params as { sku: string }).sku)
  })
  app.addHook('onClose', async () => { db.close() })
  return app
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const app = await buildStockService({
    dbPath: process.env.DB_PATH ?? './inventory.db',
    coordinatorUrl: process.env.COORDINATOR_URL ?? 'http://127.0.0.1:7070',
    secret: process.env.TWOPC_SECRET
  })
  await app.listen({ port: Number(process.env.PORT ?? 3001), host: '127.0.0.1' })
  // Enlist it as { name: 'inventory', url: 'http://127.0.0.1:3001/2pc', payload: { sku, qty } }.
}
