/**
 * Inventory: reserves stock at prepare, makes the reservation permanent at commit, releases it
 * at abort. All protocol work is the SDK's; the handlers are a few SQL statements each.
 */
import type { FastifyInstance } from 'fastify'
import type { Database } from 'better-sqlite3'
import { count, createApp, openDb, registerParticipant, type ServiceOptions } from './common.js'

export interface StockRow { sku: string, available: number, reserved: number, sold: number }

function migrate (db: Database): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS stock (
      sku TEXT PRIMARY KEY,
      available INTEGER NOT NULL CHECK (available >= 0),
      sold INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS reservations (
      txid TEXT PRIMARY KEY,
      sku TEXT NOT NULL REFERENCES stock(sku),
      qty INTEGER NOT NULL CHECK (qty > 0)
    );`)
}

export async function buildInventory (options: ServiceOptions): Promise<FastifyInstance> {
  const db = openDb(options.dbPath)
  migrate(db)
  const app = createApp(options)
  await registerParticipant(app, options, {
    name: 'inventory',
    db,
    // Reserve, don't sell: take the units out of `available` into a reservation row.
    prepare (tx, payload, db) {
      const { sku, qty } = (payload ?? {}) as { sku?: unknown, qty?: unknown }
      const n = count(qty)
      if (typeof sku !== 'string' || n === undefined || n === 0) return 'no'
      const taken = db.prepare('UPDATE stock SET available = available - ? WHERE sku = ? AND available >= ?').run(n, sku, n)
      if (taken.changes === 0) return 'no' // unknown sku or not enough stock
      db.prepare('INSERT INTO reservations (txid, sku, qty) VALUES (?, ?, ?)').run(tx.id, sku, n)
      return 'yes'
    },
    commit (tx, db) {
      const r = db.prepare('SELECT sku, qty FROM reservations WHERE txid = ?').get(tx.id) as { sku: string, qty: number } | undefined
      if (r === undefined) return
      db.prepare('UPDATE stock SET sold = sold + ? WHERE sku = ?').run(r.qty, r.sku)
      db.prepare('DELETE FROM reservations WHERE txid = ?').run(tx.id)
    },
    abort (tx, db) {
      const r = db.prepare('SELECT sku, qty FROM reservations WHERE txid = ?').get(tx.id) as { sku: string, qty: number } | undefined
      if (r === undefined) return // voted no, or never prepared: nothing was reserved
      db.prepare('UPDATE stock SET available = available + ? WHERE sku = ?').run(r.qty, r.sku)
      db.prepare('DELETE FROM reservations WHERE txid = ?').run(tx.id)
    }
  })

  const list = db.prepare(`
    SELECT s.sku, s.available, COALESCE(SUM(r.qty), 0) AS reserved, s.sold
    FROM stock s LEFT JOIN reservations r ON r.sku = s.sku GROUP BY s.sku ORDER BY s.sku`)
  app.get('/stock', async () => ({ items: list.all() as StockRow[] }))

  // Seeding (an admin action, outside any distributed transaction): sets the available units.
  app.post('/stock', {
    schema: {
      body: {
        type: 'object',
        required: ['sku', 'available'],
        additionalProperties: false,
        properties: { sku: { type: 'string', minLength: 1, maxLength: 64 }, available: { type: 'integer', minimum: 0 } }
      }
    }
  }, async (request, reply) => {
    const { sku, available } = request.body as { sku: string, available: number }
    db.prepare('INSERT INTO stock (sku, available) VALUES (?, ?) ON CONFLICT (sku) DO UPDATE SET available = excluded.available').run(sku, available)
    return reply.code(201).send(db.prepare('SELECT sku, available, sold FROM stock WHERE sku = ?').get(sku))
  })
  return app
}
