/**
 * Group commit of the participant log: callbacks arriving in one event-loop turn share ONE local
 * SQLite transaction (one fsync), each in its own savepoint, and every caller is answered only
 * after that transaction committed. Real SQLite files, real HTTP on 127.0.0.1.
 */
import t, { type Test } from 'tap'
import fs, { mkdirSync } from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { request } from 'undici'
import pino from 'pino'
import { ParticipantEngine } from '../src/engine.js'
import { sqliteStore } from '../src/store/sqlite.js'
import { migrate } from '../src/store/sqlite.js'
import { buildInventory, inventoryHandlers, prepareBody, txid } from './helpers.js'
import type { Inventory } from './helpers.js'
import { listenLocal } from '../../test/kit/port.js'

async function post (url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

/** State of a record as another connection sees it: only what is committed (on disk, WAL). */
function onDisk (file: string): (id: string) => string {
  const reader = new Database(file, { readonly: true })
  const get = reader.prepare('SELECT state FROM twopc_participant_log WHERE txid = ?')
  return (id: string) => (get.get(id) as { state: string } | undefined)?.state ?? 'none'
}

/** A WAL database with the inventory tables and the SDK's log, closed at the end of the test. */
function inventoryDb (t: Test, apples: number): { file: string, db: Database.Database } {
  const file = join(t.testdir(), 'engine.db')
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.exec(`CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL, reserved INTEGER NOT NULL);
           CREATE TABLE reservations (txid TEXT PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL)`)
  db.prepare("INSERT INTO stock VALUES ('apple', ?, 0)").run(apples)
  migrate(db)
  t.teardown(() => db.close())
  return { file, db }
}

/** Opens `n` keep-alive connections (tombstones for unrelated ids) so a later round arrives together. */
async function warmUp (base: string, n: number): Promise<void> {
  await Promise.all(Array.from({ length: n }, async () => await post(`${base}/2pc/abort`, { txid: txid() })))
}

async function concurrentPrepares (groupCommit: boolean, n: number, dir: string): Promise<{ votes: unknown[], stats: ReturnType<Inventory['app']['twoPhase']['flushStats']>, inv: Inventory, ids: string[] }> {
  mkdirSync(dir, { recursive: true })
  const inv = await buildInventory(dir, { groupCommit })
  inv.db.prepare("UPDATE stock SET available = 1000 WHERE sku = 'apple'").run()
  const base = await listenLocal(inv.app)
  await warmUp(base, n)
  const before = inv.app.twoPhase.flushStats()
  const ids = Array.from({ length: n }, () => txid())
  const answers = await Promise.all(ids.map(async id => await post(`${base}/2pc/prepare`, prepareBody(id, 1))))
  const after = inv.app.twoPhase.flushStats()
  return {
    votes: answers.map(a => a.body.vote),
    stats: { ...after, flushes: after.flushes - before.flushes, events: after.events - before.events },
    inv,
    ids
  }
}

t.test('64 concurrent prepares over HTTP share few flushes; groupCommit: false flushes once per callback', async t => {
  const grouped = await concurrentPrepares(true, 64, join(t.testdir(), 'a'))
  t.teardown(() => grouped.inv.app.close())
  t.same(grouped.votes, Array(64).fill('yes'))
  t.equal(grouped.stats.events, 64)
  t.ok(grouped.stats.flushes < 64 / 4, `grouped: ${grouped.stats.flushes} flushes for 64 prepares (max batch ${grouped.stats.maxBatch})`)
  t.ok(grouped.stats.maxBatch > 1)
  t.same(grouped.inv.stock('apple'), { available: 936, reserved: 64 }, 'every handler\'s writes committed with its record')
  t.ok(grouped.ids.every(id => grouped.inv.app.twoPhase.stateOf(id) === 'prepared'))

  const single = await concurrentPrepares(false, 64, join(t.testdir(), 'b'))
  t.teardown(() => single.inv.app.close())
  t.same(single.votes, Array(64).fill('yes'))
  t.equal(single.stats.flushes, 64, 'without group commit: one local transaction per callback')
  t.equal(single.stats.maxBatch, 1)
  t.comment(`flushes per callback, 64 concurrent prepares: group commit ${(grouped.stats.flushes / 64).toFixed(3)}, ` +
    `without ${(single.stats.flushes / 64).toFixed(3)}; mean flush ${(grouped.stats.totalFlushMs / grouped.inv.app.twoPhase.flushStats().flushes).toFixed(2)} ms vs ${(single.stats.totalFlushMs / single.inv.app.twoPhase.flushStats().flushes).toFixed(2)} ms`)
})

t.test('a batch is bounded by groupCommitMaxBatch', async t => {
  const inv = await buildInventory(t.testdir(), { groupCommitMaxBatch: 4 })
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  const answers = await Promise.all(Array.from({ length: 32 }, async () => await post(`${base}/2pc/abort`, { txid: txid() })))
  t.ok(answers.every(a => a.status === 200))
  const stats = inv.app.twoPhase.flushStats()
  t.equal(stats.events, 32)
  t.ok(stats.maxBatch <= 4, `max batch ${stats.maxBatch}`)
  t.ok(stats.flushes >= 8)
})

t.test('every answer is sent only after its record is committed (seen from a second connection)', async t => {
  const dir = t.testdir()
  let state: (id: string) => string = () => 'unset'
  const seen: Array<{ url: string, id: string, onDisk: string }> = []
  const inv = await buildInventory(dir, {}, app => {
    // The host's onSend hook runs when the answer is about to leave: what is on disk by then?
    app.addHook('onSend', async (request, _reply, payload) => {
      const id = (request.body as { txid?: string } | undefined)?.txid
      if (id !== undefined && request.url.startsWith('/2pc/')) seen.push({ url: request.url, id, onDisk: state(id) })
      return payload
    })
  })
  state = onDisk(join(dir, 'inventory.db'))
  t.teardown(() => inv.app.close())
  const base = await listenLocal(inv.app)
  await warmUp(base, 24)
  seen.length = 0
  const ids = Array.from({ length: 24 }, () => txid())
  await Promise.all(ids.map(async id => await post(`${base}/2pc/prepare`, prepareBody(id, 0))))
  await Promise.all(ids.slice(0, 12).map(async id => await post(`${base}/2pc/commit`, { txid: id })))
  await Promise.all(ids.slice(12).map(async id => await post(`${base}/2pc/abort`, { txid: id })))
  t.equal(seen.length, 48)
  t.same(seen.filter(s => s.url.endsWith('/prepare')).map(s => s.onDisk), Array(24).fill('prepared'))
  t.same(seen.filter(s => s.url.endsWith('/commit')).map(s => s.onDisk), Array(12).fill('committed'))
  t.same(seen.filter(s => s.url.endsWith('/abort')).map(s => s.onDisk), Array(12).fill('aborted'))
  t.ok(inv.app.twoPhase.flushStats().maxBatch > 1, 'and they were batched')
})

t.test('a throwing handler in a batch rolls back only itself', async t => {
  const { db } = inventoryDb(t, 1000)
  const calls = { prepare: 0, commit: 0, abort: 0 }
  const engine = new ParticipantEngine(sqliteStore(db), 'inventory', inventoryHandlers(calls, {
    prepare: payload => (payload as { bad?: boolean }).bad === true ? 'throw-after-write' : 'yes'
  }), { logger: pino({ level: 'silent' }) })
  t.teardown(() => engine.close())
  const ids = Array.from({ length: 31 }, () => txid())
  const bad = ids[15] as string
  // Queued in one turn, written by one flush: the failing prepare shares its batch with 30 others.
  const answers = ids.map(async id => await engine.prepare({ ...prepareBody(id, 2), payload: { sku: 'apple', qty: 2, bad: id === bad } } as never))
  engine.flush()
  const votes = await Promise.all(answers)
  t.equal(engine.flushStats().flushes, 1, 'one batch')
  t.same(votes[15], { type: 'vote', vote: 'no', reason: 'prepare handler failed' })
  t.ok(votes.every((v, i) => i === 15 || (v as { vote?: string }).vote === 'yes'))
  t.equal(engine.records.stateOf(bad), 'aborted', 'its record says no')
  t.ok(ids.every(id => id === bad || engine.records.stateOf(id) === 'prepared'), 'its batch-mates are prepared')
  t.same(db.prepare("SELECT available, reserved FROM stock WHERE sku = 'apple'").get(), { available: 1000 - 60, reserved: 60 }, 'only the 30 good reservations are kept')
  t.notOk((db.prepare('SELECT txid FROM reservations').all() as Array<{ txid: string }>).some(r => r.txid === bad), 'the failing handler\'s write is gone')
})

t.test('a COMMIT that fails fails the whole batch: every caller gets the retryable error, nothing is visible', async t => {
  const file = join(t.testdir(), 'engine.db')
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  // A deferred foreign key is only checked at COMMIT: a handler that breaks it makes the
  // batch's COMMIT fail (a limit of group commit: see the README).
  db.pragma('foreign_keys = ON')
  db.exec(`CREATE TABLE orders (id TEXT PRIMARY KEY);
           CREATE TABLE lines (txid TEXT PRIMARY KEY, order_id TEXT REFERENCES orders(id) DEFERRABLE INITIALLY DEFERRED);
           INSERT INTO orders VALUES ('o1')`)
  migrate(db)
  t.teardown(() => db.close())
  const engine = new ParticipantEngine(sqliteStore(db), 'orders', {
    prepare: (tx, payload, db) => {
      db.prepare('INSERT INTO lines VALUES (?, ?)').run(tx.id, (payload as { order: string }).order)
      return 'yes'
    },
    commit: () => {},
    abort: () => {}
  }, { logger: pino({ level: 'silent' }) })
  t.teardown(() => engine.close())
  const state = onDisk(file)
  const ids = Array.from({ length: 16 }, () => txid())
  // Queued in one turn, written by one flush: one batch of 16, deterministically.
  const answers = ids.map(async (id, i) => await engine.prepare({ ...prepareBody(id, 0), payload: { order: i === 7 ? 'missing' : 'o1' } } as never)
    .then(() => undefined, (err: Error) => err))
  t.equal(engine.pendingEvents, 16)
  engine.flush()
  const errors = await Promise.all(answers)
  t.equal(engine.flushStats().failedFlushes, 1)
  t.ok(errors.every(e => e?.name === 'LogWriteFailed'), 'all 16 callers of the failed batch get the retryable error')
  t.ok(ids.every(id => state(id) === 'none' && engine.records.stateOf(id) === 'none'), 'no record of the failed batch')
  t.equal((db.prepare('SELECT count(*) AS n FROM lines').get() as { n: number }).n, 0, 'no business write of it either')
  t.equal(db.inTransaction, false)

  // The coordinator's retry of a good one succeeds (in a batch without the bad one).
  const retry = ids[3] as string
  const again = engine.prepare({ ...prepareBody(retry, 0), payload: { order: 'o1' } } as never)
  engine.flush()
  t.same(await again, { type: 'vote', vote: 'yes' })
  t.equal(state(retry), 'prepared')
})

t.test('a BEGIN that cannot get the write lock fails the batch with LOG_WRITE_FAILED; later ones succeed', async t => {
  const dir = t.testdir()
  const inv = await buildInventory(dir)
  t.teardown(() => inv.app.close())
  inv.db.pragma('busy_timeout = 50')
  const other = new Database(join(dir, 'inventory.db'))
  t.teardown(() => { if (other.inTransaction) other.exec('ROLLBACK'); other.close() })
  other.exec('BEGIN IMMEDIATE')
  const base = await listenLocal(inv.app)
  const id = txid()
  const blocked = await post(`${base}/2pc/abort`, { txid: id })
  t.equal(blocked.status, 503)
  t.equal(blocked.body.code, 'LOG_WRITE_FAILED')
  t.equal(inv.app.twoPhase.stateOf(id), 'none')
  other.exec('ROLLBACK')
  t.same((await post(`${base}/2pc/abort`, { txid: id })).body, { ok: true })
  t.equal(inv.app.twoPhase.stateOf(id), 'tombstone')
})

t.test('queued events are written by flush() (close flushes what is pending), not before', async t => {
  const { file, db } = inventoryDb(t, 10)
  const calls = { prepare: 0, commit: 0, abort: 0 }
  const engine = new ParticipantEngine(sqliteStore(db), 'inventory', inventoryHandlers(calls, {}), { logger: pino({ level: 'silent' }) })
  const state = onDisk(file)
  const ids = [txid(), txid(), txid()]
  const answers = ids.map(async id => await engine.prepare(prepareBody(id, 1) as never))
  t.equal(engine.pendingEvents, 3)
  t.equal(calls.prepare, 0, 'handlers run at the flush')
  t.same(ids.map(state), ['none', 'none', 'none'])
  engine.flush()
  t.equal(engine.pendingEvents, 0)
  t.same(ids.map(state), ['prepared', 'prepared', 'prepared'], 'one flush wrote all three')
  t.same(await Promise.all(answers), [{ type: 'vote', vote: 'yes' }, { type: 'vote', vote: 'yes' }, { type: 'vote', vote: 'yes' }])
  t.same(engine.flushStats().flushes, 1)

  // The plugin calls flush() in preClose/onClose; after the database is closed a flush fails
  // the batch (retryable) instead of losing it silently.
  db.close()
  await t.rejects(engine.decide(ids[0] as string, 'commit'), { name: 'LogWriteFailed' })
})

t.test('a vote is answered only after an fdatasync of the WAL; the service keeps its own synchronous setting', async t => {
  const { file, db } = inventoryDb(t, 10)
  db.pragma('synchronous = FULL')
  const calls = { prepare: 0, commit: 0, abort: 0 }
  const engine = new ParticipantEngine(sqliteStore(db), 'inventory', inventoryHandlers(calls, {}), { logger: pino({ level: 'silent' }) })
  t.teardown(() => engine.close())
  const state = onDisk(file)
  const ids = [txid(), txid()]
  let answered = 0
  const answers = ids.map(async id => await engine.prepare(prepareBody(id, 1) as never).then(r => { answered++; return r }))
  engine.flush()
  t.same(ids.map(state), ['prepared', 'prepared'], 'committed: another connection reads it')
  for (let i = 0; i < 20; i++) await Promise.resolve() // microtasks only: no I/O callback can run
  t.equal(answered, 0, 'but nobody is answered before the sync (settled on a later tick, inline or on the thread pool)')
  t.equal(db.pragma('synchronous', { simple: true }), 2, 'FULL again for the service\'s own writes')
  t.same(await Promise.all(answers), [{ type: 'vote', vote: 'yes' }, { type: 'vote', vote: 'yes' }])
  t.equal(engine.flushStats().syncs, 1, 'one fdatasync for the batch')
})

t.test('a batch of decisions waits briefly for a sync; the next prepare\'s sync carries it (one fsync for both)', async t => {
  const { db } = inventoryDb(t, 10)
  const calls = { prepare: 0, commit: 0, abort: 0 }
  const engine = new ParticipantEngine(sqliteStore(db), 'inventory', inventoryHandlers(calls, {}), { logger: pino({ level: 'silent' }) })
  t.teardown(() => engine.close())
  const first = txid()
  const voted = engine.prepare(prepareBody(first, 1) as never)
  engine.flush()
  await voted
  const syncs = engine.flushStats().syncs

  let committed = false
  const commit = engine.decide(first, 'commit').then(r => { committed = true; return r })
  engine.flush()
  for (let i = 0; i < 20; i++) await Promise.resolve()
  t.equal(committed, false, 'the commit is written but not answered before a sync')
  const next = engine.prepare(prepareBody(txid(), 1) as never)
  engine.flush() // a prepare: synced at once, and that sync covers the commit written before it
  t.same(await Promise.all([commit, next]), [{ type: 'ok' }, { type: 'vote', vote: 'yes' }])
  t.equal(engine.flushStats().syncs, syncs + 1, 'one fdatasync for the commit and the prepare')

  // Alone, a decision is answered after the short delay.
  const alone = engine.decide(txid(), 'abort')
  engine.flush()
  t.same(await alone, { type: 'ok' })
  t.equal(engine.flushStats().syncs, syncs + 2)
})

t.test('inlineSyncMaxMs: syncs on the event loop while quick (the default), all on the thread pool with 0', async t => {
  for (const inlineSyncMaxMs of [undefined, 0]) {
    const inv = await buildInventory(t.testdir(), inlineSyncMaxMs === undefined ? {} : { inlineSyncMaxMs })
    t.teardown(() => inv.app.close())
    const url = await listenLocal(inv.app)
    for (let i = 0; i < 5; i++) {
      const res = await post(`${url}/2pc/prepare`, prepareBody(txid(), 1))
      t.same(res.body, { vote: 'yes', batch: res.body.batch }, 'voted yes after its sync')
    }
    const { syncs, inlineSyncs } = inv.app.twoPhase.flushStats()
    t.ok(syncs >= 5, `${syncs} syncs for 5 sequential prepares`)
    if (inlineSyncMaxMs === 0) t.equal(inlineSyncs, 0, 'threshold 0: none inline')
    else t.ok(inlineSyncs >= 1, `default: ${inlineSyncs} of ${syncs} inline`)
  }
})

t.test('a failed fdatasync, inline or on the pool: its callers and every later one get LOG_WRITE_FAILED', async t => {
  // node:fs itself fails (syncBuiltinESMExports updates the named imports), as a disk returning EIO would.
  const real = { fdatasync: fs.fdatasync, fdatasyncSync: fs.fdatasyncSync }
  const eio = (): NodeJS.ErrnoException => Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' })
  t.teardown(() => { Object.assign(fs, real); syncBuiltinESMExports() })
  // 100 ms (the highest threshold), not the default 1 ms: on a busy disk the first sync alone can
  // average past 1 ms and send the next one to the pool, which is not what this case checks.
  for (const inlineSyncMaxMs of [100, 0]) {
    const { db } = inventoryDb(t, 10)
    const calls = { prepare: 0, commit: 0, abort: 0 }
    const engine = new ParticipantEngine(sqliteStore(db), 'inventory', inventoryHandlers(calls, {}), { logger: pino({ level: 'silent' }), inlineSyncMaxMs })
    t.teardown(() => engine.close())
    const first = engine.prepare(prepareBody(txid(), 1) as never)
    engine.flush()
    t.same(await first, { type: 'vote', vote: 'yes' }, 'a sync that works')
    fs.fdatasyncSync = () => { throw eio() }
    fs.fdatasync = ((_fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => { setImmediate(cb, eio()) }) as typeof fs.fdatasync
    syncBuiltinESMExports()
    const inlineBefore = engine.flushStats().inlineSyncs
    const failing = engine.prepare(prepareBody(txid(), 1) as never)
    engine.flush()
    await t.rejects(failing, { name: 'LogWriteFailed', message: /could not be synced to disk: EIO/ }, `inlineSyncMaxMs ${inlineSyncMaxMs}: the vote is never sent`)
    t.equal(engine.flushStats().inlineSyncs - inlineBefore, inlineSyncMaxMs === 0 ? 0 : 1, inlineSyncMaxMs === 0 ? 'the failed sync ran on the pool' : 'the failed sync ran inline')
    Object.assign(fs, real)
    syncBuiltinESMExports()
    const later = engine.prepare(prepareBody(txid(), 1) as never)
    engine.flush()
    await t.rejects(later, { name: 'LogWriteFailed' }, 'nor any later one, although the disk works again: only a restart may trust it')
  }
})
