/**
 * The storage seam: `store: sqliteStore(db)` is the same participant as `db`, the two options are
 * mutually exclusive, and the engine's steps run synchronously on a synchronous store and go on
 * asynchronously when a store answers with promises.
 */
import t from 'tap'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import { sqliteStore, twoPhaseParticipant } from '../src/index.js'
import { drive, mustBeSync, whenValue } from '../src/store/steps.js'
import type { Steps } from '../src/store/steps.js'
import { BATCH, callback, inventoryHandlers, openInventoryDb, prepareBody, txid } from './helpers.js'

t.test('store: sqliteStore(db) keeps the records in that database, like db', async t => {
  const dir = t.testdir()
  const db = openInventoryDb(join(dir, 'inventory.db'))
  const app = Fastify()
  t.teardown(async () => { await app.close(); db.close() })
  const calls = { prepare: 0, commit: 0, abort: 0 }
  await app.register(twoPhaseParticipant, { name: 'inventory', store: sqliteStore(db), coordinatorUrl: 'http://127.0.0.1:9', ...inventoryHandlers(calls, {}) })
  const id = txid()
  t.same((await app.inject(callback('/2pc/prepare', prepareBody(id, 2)))).json(), { vote: 'yes', batch: BATCH })
  t.same((await app.inject(callback('/2pc/commit', { txid: id }))).json(), { ok: true })
  t.equal(app.twoPhase.stateOf(id), 'committed')
  t.same(db.prepare('SELECT state FROM twopc_participant_log WHERE txid = ?').get(id), { state: 'committed' }, 'the record is in the given database')
  t.same(db.prepare("SELECT available, reserved FROM stock WHERE sku = 'apple'").get(), { available: 8, reserved: 0 }, 'with the handlers\' writes')
  t.same(calls, { prepare: 1, commit: 1, abort: 0 })
})

t.test('db and store are mutually exclusive; one of them is required; a store is checked for durability', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const base = { name: 'inventory', coordinatorUrl: 'http://127.0.0.1:9', prepare: () => 'yes' as const, commit: () => {}, abort: () => {} }
  const register = async (options: Record<string, unknown>): Promise<void> => {
    const app = Fastify()
    try {
      await app.register(twoPhaseParticipant, { ...base, ...options } as never).ready()
    } finally {
      await app.close()
    }
  }
  await t.rejects(register({ db, store: sqliteStore(db) }), { code: 'TWOPC_INVALID_OPTION', message: /db and store are mutually exclusive/ })
  await t.rejects(register({}), { code: 'TWOPC_INVALID_OPTION', message: /db must be an open better-sqlite3 Database/ })
  await t.rejects(register({ store: {} }), { code: 'TWOPC_INVALID_OPTION', message: /store must be a participant store/ })
  const closed = new Database(join(t.testdir(), 'closed.db'))
  closed.close()
  await t.rejects(register({ store: sqliteStore(closed) }), { code: 'TWOPC_INVALID_OPTION', message: /db must be an open/ })
  db.pragma('synchronous = OFF')
  await t.rejects(register({ store: sqliteStore(db) }), { code: 'TWOPC_DB_NOT_DURABLE', message: /synchronous=OFF/ })
})

/** Reads two values and sums them; a failure of the second is caught inside the steps. */
function * sum (read: (key: string) => unknown): Steps<number | string> {
  const a = (yield read('a')) as number
  try {
    const b = (yield read('b')) as number
    return a + b
  } catch (err) {
    return `caught ${(err as Error).message}`
  }
}

t.test('steps run synchronously on plain values, asynchronously on promises, with the same logic', async t => {
  const values: Record<string, number> = { a: 1, b: 2 }
  t.equal(drive(sum(key => values[key])), 3, 'plain values: the result, in the same call')
  const later = drive(sum(async key => values[key]))
  t.ok(later instanceof Promise, 'a promise once a step was one')
  t.equal(await later, 3)
  t.equal(await drive(sum(async key => { if (key === 'b') throw new Error('no b'); return values[key] })), 'caught no b', 'a rejection is thrown into the steps at its yield')
  t.throws(() => drive(sum(key => { if (key === 'a') throw new Error('sync failure'); return 1 })), /sync failure/, 'a synchronous throw propagates synchronously')
  t.equal(whenValue(2, v => v * 2), 4)
  t.equal(await whenValue(Promise.resolve(2), v => v * 2), 4)
  t.equal(mustBeSync(5, 'x'), 5)
  t.throws(() => mustBeSync(Promise.resolve(5), 'stateOf'), /stateOf needs a synchronous store/)
})
