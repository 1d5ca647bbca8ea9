/**
 * A vote is durable before it is sent, whatever the service's SQLite settings: a database on
 * which SQLite would skip its fsyncs (synchronous=OFF) or could not commit atomically across a
 * crash (journal_mode=MEMORY or OFF) is refused at register; in a rollback-journal mode the
 * SDK's own transactions commit with synchronous=EXTRA (WAL mode: NORMAL plus the SDK's own
 * fdatasync, group-commit.test.ts). Real SQLite files.
 */
import t from 'tap'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import { twoPhaseParticipant } from '../src/index.js'
import { callback, inventoryHandlers, prepareBody, txid } from './helpers.js'

function openDb (file: string, pragmas: string[]): Database.Database {
  const db = new Database(file)
  for (const p of pragmas) db.pragma(p)
  db.exec(`CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL, reserved INTEGER NOT NULL);
           CREATE TABLE IF NOT EXISTS reservations (txid TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL);
           INSERT OR IGNORE INTO stock VALUES ('apple', 10, 0)`)
  return db
}

t.test('synchronous=OFF is refused at register, in every journal mode, naming the setting needed', async t => {
  const dir = t.testdir()
  for (const journal of ['DELETE', 'WAL', 'TRUNCATE']) {
    const db = openDb(join(dir, `off-${journal}.db`), [`journal_mode = ${journal}`, 'synchronous = OFF'])
    t.teardown(() => db.close())
    const app = Fastify()
    const calls = { prepare: 0, commit: 0, abort: 0 }
    await t.rejects(async () => {
      await app.register(twoPhaseParticipant, { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', ...inventoryHandlers(calls, {}) }).ready()
    }, { code: 'TWOPC_DB_NOT_DURABLE', message: /synchronous=OFF.*synchronous = NORMAL/ }, `journal_mode=${journal}`)
    await app.close()
    const tables = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name LIKE 'twopc_%'").get() as { n: number }
    t.equal(tables.n, 0, `journal_mode=${journal}: refused before anything was written`)
  }
})

// journal_mode=OFF is refused the same way; better-sqlite3's SQLite (defensive mode) does not
// even let a connection set it (the pragma leaves DELETE), so only MEMORY is exercised here.
t.test('journal_mode=MEMORY is refused at register: no crash-safe commit', async t => {
  const dir = t.testdir()
  for (const journal of ['MEMORY']) {
    const db = openDb(join(dir, `journal-${journal}.db`), [`journal_mode = ${journal}`])
    t.teardown(() => db.close())
    const app = Fastify()
    const calls = { prepare: 0, commit: 0, abort: 0 }
    await t.rejects(async () => {
      await app.register(twoPhaseParticipant, { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', ...inventoryHandlers(calls, {}) }).ready()
    }, { code: 'TWOPC_DB_NOT_DURABLE', message: new RegExp(`journal_mode=${journal.toLowerCase()}.*journal_mode = WAL`) }, `journal_mode=${journal}`)
    await app.close()
  }
})

t.test('rollback journal: the SDK commits its own transactions with synchronous=EXTRA, the service keeps its own setting', async t => {
  const dir = t.testdir()
  for (const [journal, level] of [['DELETE', 'NORMAL'], ['DELETE', 'FULL'], ['TRUNCATE', 'NORMAL'], ['PERSIST', 'FULL']] as const) {
    const db = openDb(join(dir, `${journal}-${level}.db`), [`journal_mode = ${journal}`, `synchronous = ${level}`])
    const own = db.pragma('synchronous', { simple: true })
    // What SQLite is set to while the SDK's transaction runs (and so at its COMMIT): read from
    // inside the handlers, which run in that transaction.
    const seen: Array<[string, unknown]> = []
    const calls = { prepare: 0, commit: 0, abort: 0 }
    const handlers = inventoryHandlers(calls, {})
    const app = Fastify()
    await app.register(twoPhaseParticipant, {
      name: 'inventory',
      db,
      coordinatorUrl: 'http://127.0.0.1:9',
      prepare: (tx, payload, d) => { seen.push(['prepare', d.pragma('synchronous', { simple: true })]); return handlers.prepare(tx, payload, d) },
      commit: (tx, d) => { seen.push(['commit', d.pragma('synchronous', { simple: true })]); handlers.commit(tx, d) },
      abort: handlers.abort
    })
    await app.ready()
    const id = txid()
    t.same((await app.inject(callback('/2pc/prepare', prepareBody(id)))).json().vote, 'yes')
    t.equal(db.pragma('synchronous', { simple: true }), own, `${journal}/${level}: the service's own setting is back after the vote`)
    t.same((await app.inject(callback('/2pc/commit', { txid: id }))).json(), { ok: true })
    t.same(seen, [['prepare', 3], ['commit', 3]], `${journal}/${level}: the vote and the decision were committed with synchronous=EXTRA (3)`)
    t.equal(db.pragma('synchronous', { simple: true }), own, `${journal}/${level}: and after the decision`)
    await app.close()
    db.close()
  }
})

t.test('WAL with synchronous=NORMAL is accepted (the SDK fdatasyncs the WAL itself)', async t => {
  const db = openDb(join(t.testdir(), 'wal.db'), ['journal_mode = WAL', 'synchronous = NORMAL'])
  t.teardown(() => db.close())
  const calls = { prepare: 0, commit: 0, abort: 0 }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(twoPhaseParticipant, { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', ...inventoryHandlers(calls, {}) })
  await app.ready()
  const before = app.twoPhase.flushStats().syncs
  t.same((await app.inject(callback('/2pc/prepare', prepareBody(txid())))).json().vote, 'yes')
  t.equal(app.twoPhase.flushStats().syncs, before + 1, 'the vote went out after one fdatasync of the WAL')
})
