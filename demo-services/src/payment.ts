/**
 * Payment: holds funds at prepare, captures them at commit, releases the hold at abort.
 */
import type { FastifyInstance } from 'fastify'
import type { Database } from 'better-sqlite3'
import { count, createApp, openDb, registerParticipant, type ServiceOptions } from './common.js'

export interface BalanceRow { account: string, balance: number, held: number, spent: number }

function migrate (db: Database): void {
  db.exec(`
    CREATE TABLE IF NOT EXISTS accounts (
      account TEXT PRIMARY KEY,
      balance INTEGER NOT NULL CHECK (balance >= 0),
      spent INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE IF NOT EXISTS holds (
      txid TEXT PRIMARY KEY,
      account TEXT NOT NULL REFERENCES accounts(account),
      amount INTEGER NOT NULL CHECK (amount > 0)
    );`)
}

export async function buildPayment (options: ServiceOptions): Promise<FastifyInstance> {
  const db = openDb(options.dbPath)
  migrate(db)
  const app = createApp(options)
  await registerParticipant(app, options, {
    name: 'payment',
    db,
    // Hold, don't charge: move the amount from the balance into a hold row.
    prepare (tx, payload, db) {
      const { account, amount } = (payload ?? {}) as { account?: unknown, amount?: unknown }
      const n = count(amount)
      if (typeof account !== 'string' || n === undefined || n === 0) return 'no'
      const held = db.prepare('UPDATE accounts SET balance = balance - ? WHERE account = ? AND balance >= ?').run(n, account, n)
      if (held.changes === 0) return 'no' // unknown account or insufficient funds
      db.prepare('INSERT INTO holds (txid, account, amount) VALUES (?, ?, ?)').run(tx.id, account, n)
      return 'yes'
    },
    commit (tx, db) {
      const h = db.prepare('SELECT account, amount FROM holds WHERE txid = ?').get(tx.id) as { account: string, amount: number } | undefined
      if (h === undefined) return
      db.prepare('UPDATE accounts SET spent = spent + ? WHERE account = ?').run(h.amount, h.account)
      db.prepare('DELETE FROM holds WHERE txid = ?').run(tx.id)
    },
    abort (tx, db) {
      const h = db.prepare('SELECT account, amount FROM holds WHERE txid = ?').get(tx.id) as { account: string, amount: number } | undefined
      if (h === undefined) return
      db.prepare('UPDATE accounts SET balance = balance + ? WHERE account = ?').run(h.amount, h.account)
      db.prepare('DELETE FROM holds WHERE txid = ?').run(tx.id)
    }
  })

  const list = db.prepare(`
    SELECT a.account, a.balance, COALESCE(SUM(h.amount), 0) AS held, a.spent
    FROM accounts a LEFT JOIN holds h ON h.account = a.account GROUP BY a.account ORDER BY a.account`)
  app.get('/balances', async () => ({ items: list.all() as BalanceRow[] }))

  // Seeding (an admin action, outside any distributed transaction): sets the balance.
  app.post('/balances', {
    schema: {
      body: {
        type: 'object',
        required: ['account', 'balance'],
        additionalProperties: false,
        properties: { account: { type: 'string', minLength: 1, maxLength: 64 }, balance: { type: 'integer', minimum: 0 } }
      }
    }
  }, async (request, reply) => {
    const { account, balance } = request.body as { account: string, balance: number }
    db.prepare('INSERT INTO accounts (account, balance) VALUES (?, ?) ON CONFLICT (account) DO UPDATE SET balance = excluded.balance').run(account, balance)
    return reply.code(201).send(db.prepare('SELECT account, balance, spent FROM accounts WHERE account = ?').get(account))
  })
  return app
}
