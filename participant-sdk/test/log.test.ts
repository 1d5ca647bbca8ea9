import t from 'tap'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import { migrate, SchemaTooNewError, twoPhaseParticipant, PARTICIPANT_LOG_TABLE, SCHEMA_VERSION_TABLE } from '../src/index.js'
import { ParticipantLog } from '../src/log.js'
import { BATCH, callback, prepareBody, txid } from './helpers.js'

t.test('the migration creates the SDK tables once and records its version', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  migrate(db)
  migrate(db)
  t.same(db.prepare(`SELECT component, version FROM ${SCHEMA_VERSION_TABLE}`).all(), [{ component: 'participant-sdk', version: 1 }])
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string }>).map(r => r.name)
  t.same(tables, [PARTICIPANT_LOG_TABLE, SCHEMA_VERSION_TABLE])
})

t.test('a log written by a newer SDK is refused at register time, untouched', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  migrate(db)
  db.prepare(`UPDATE ${SCHEMA_VERSION_TABLE} SET version = 99`).run()
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => {
    await app.register(twoPhaseParticipant, { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', prepare: () => 'yes', commit: () => {}, abort: () => {} }).ready()
  }, SchemaTooNewError)
  t.same(db.prepare(`SELECT version FROM ${SCHEMA_VERSION_TABLE}`).get(), { version: 99 })
})

t.test('two participants sharing one database keep separate records', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const apps = []
  for (const name of ['inventory', 'payment']) {
    const app = Fastify()
    await app.register(twoPhaseParticipant, { name, db, coordinatorUrl: 'http://127.0.0.1:9', prepare: () => 'yes', commit: () => {}, abort: () => {} })
    t.teardown(() => app.close())
    apps.push(app)
  }
  const [inventory, payment] = apps as [typeof apps[number], typeof apps[number]]
  const id = txid()
  t.same((await inventory.inject(callback('/2pc/prepare', prepareBody(id)))).json(), { vote: 'yes', batch: BATCH })
  t.equal(inventory.twoPhase.stateOf(id), 'prepared')
  t.equal(payment.twoPhase.stateOf(id), 'none', 'the other participant has not heard of it')
  t.equal((await payment.inject(callback('/2pc/commit', { txid: id }))).json().code, 'TX_UNKNOWN')
})

t.test('prepared() pages in txid order and prune() is bounded and spares prepared records', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  migrate(db)
  const log = new ParticipantLog(db, 'p')
  const ids = Array.from({ length: 5 }, () => txid()).sort()
  for (const id of ids) log.write(id, 'prepared', null, 1)
  for (let i = 0; i < 4; i++) log.write(txid(), 'aborted', null, 1)
  t.same(log.prepared('', 2).map(r => r.txid), ids.slice(0, 2))
  t.same(log.prepared(ids[1] as string, 10).map(r => r.txid), ids.slice(2))
  t.equal(log.prune(2, 3), 3, 'at most the batch size')
  t.equal(log.prune(2, 3), 1)
  t.equal(log.prune(2, 3), 0)
  t.equal(log.prepared('', 100).length, 5)
})
