/**
 * Test support: a small inventory service on the SDK (real SQLite file, real Fastify), and a
 * helper to sign callback bodies the way the coordinator does.
 */
import { join } from 'node:path'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { signBody, type SignedOperation } from '@fastify-2pc/protocol'
import { twoPhaseParticipant } from '../src/index.js'
import type { TwoPhaseParticipantOptions } from '../src/index.js'

export const SECRET = 'test-secret'
/** What every prepare answer advertises with the default options (`batchMaxCalls` 128, `bodyLimit` 1 MiB). */
export const BATCH = { maxCalls: 128, maxBytes: 1024 * 1024 }
let counter = 0
/** A valid transaction id (`<coordinator>.<26 base32 chars>`), unique per call. */
export function txid (coordinator = 'c1'): string {
  counter++
  const crockford = '0123456789abcdefghjkmnpqrstvwxyz'
  const digits = counter.toString(32).split('').map(d => crockford[parseInt(d, 32)]).join('')
  // A random middle keeps ids distinct across test processes sharing nothing but the pattern.
  const random = Array.from({ length: 10 }, () => crockford[Math.floor(Math.random() * 32)]).join('')
  return `${coordinator}.${random}${digits.padStart(16, '0')}`
}

export interface Inventory {
  app: FastifyInstance
  db: Database.Database
  calls: { prepare: number, commit: number, abort: number }
  /** Overrides the handlers' behaviour per test. */
  behaviour: {
    prepare?: (payload: unknown) => 'yes' | 'no' | 'read-only' | 'throw-after-write'
    commitThrows?: boolean
    abortThrows?: boolean
  }
  stock: (sku: string) => { available: number, reserved: number }
  reservations: () => Array<{ txid: string, sku: string, qty: number }>
}

export function openInventoryDb (file: string): Database.Database {
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.exec(`CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0), reserved INTEGER NOT NULL)
           ;CREATE TABLE IF NOT EXISTS reservations (txid TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL)
           ;INSERT OR IGNORE INTO stock VALUES ('apple', 10, 0)`)
  return db
}

/** The handlers of the README example: reserve on prepare, spend on commit, release on abort. */
export function inventoryHandlers (calls: Inventory['calls'], behaviour: Inventory['behaviour']): Pick<TwoPhaseParticipantOptions, 'prepare' | 'commit' | 'abort'> {
  return {
    prepare (tx, payload, db) {
      calls.prepare++
      const { sku, qty } = payload as { sku: string, qty: number }
      const row = db.prepare('SELECT available FROM stock WHERE sku = ?').get(sku) as { available: number } | undefined
      if (row === undefined || row.available < qty) return 'no'
      db.prepare('UPDATE stock SET available = available - ?, reserved = reserved + ? WHERE sku = ?').run(qty, qty, sku)
      db.prepare('INSERT INTO reservations (txid, sku, qty) VALUES (?, ?, ?)').run(tx.id, sku, qty)
      const wanted = behaviour.prepare?.(payload) ?? 'yes'
      if (wanted === 'throw-after-write') throw new Error('prepare handler blew up after writing')
      return wanted
    },
    commit (tx, db) {
      calls.commit++
      if (behaviour.commitThrows === true) throw new Error('commit handler blew up')
      const r = db.prepare('SELECT sku, qty FROM reservations WHERE txid = ?').get(tx.id) as { sku: string, qty: number }
      db.prepare('UPDATE stock SET reserved = reserved - ? WHERE sku = ?').run(r.qty, r.sku)
      db.prepare('DELETE FROM reservations WHERE txid = ?').run(tx.id)
    },
    abort (tx, db) {
      calls.abort++
      if (behaviour.abortThrows === true) throw new Error('abort handler blew up')
      const r = db.prepare('SELECT sku, qty FROM reservations WHERE txid = ?').get(tx.id) as { sku: string, qty: number }
      db.prepare('UPDATE stock SET available = available + ?, reserved = reserved - ? WHERE sku = ?').run(r.qty, r.qty, r.sku)
      db.prepare('DELETE FROM reservations WHERE txid = ?').run(tx.id)
    }
  }
}

/** `beforeReady` may add the host's own hooks and routes before the app is ready. */
export async function buildInventory (dir: string, options: Partial<TwoPhaseParticipantOptions> = {}, beforeReady?: (app: FastifyInstance) => void): Promise<Inventory> {
  const db = openInventoryDb(join(dir, 'inventory.db'))
  const calls = { prepare: 0, commit: 0, abort: 0 }
  const behaviour: Inventory['behaviour'] = {}
  const app = Fastify()
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: 'http://127.0.0.1:9',
    ...inventoryHandlers(calls, behaviour),
    ...options
  })
  app.addHook('onClose', async () => { db.close() })
  beforeReady?.(app)
  await app.ready()
  return {
    app,
    db,
    calls,
    behaviour,
    stock: sku => db.prepare('SELECT available, reserved FROM stock WHERE sku = ?').get(sku) as { available: number, reserved: number },
    reservations: () => db.prepare('SELECT txid, sku, qty FROM reservations ORDER BY txid').all() as Array<{ txid: string, sku: string, qty: number }>
  }
}

/** What the coordinator sends: a JSON body and, with a secret, its signature over the exact bytes. */
export function callback (path: string, body: unknown, secret?: string, now?: number): { method: 'POST', url: string, headers: Record<string, string>, payload: string } {
  const payload = JSON.stringify(body)
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (secret !== undefined) headers['x-2pc-signature'] = signBody(secret, path.slice(path.lastIndexOf('/') + 1) as SignedOperation, payload, now)
  return { method: 'POST', url: path, headers, payload }
}

export function prepareBody (id: string, qty = 3, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { txid: id, participant: 'inventory', payload: { sku: 'apple', qty }, deadline: Date.now() + 60_000, ...extra }
}
