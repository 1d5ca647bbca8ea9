import t from 'tap'
import Fastify from 'fastify'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import { twoPhaseParticipant } from '../src/index.js'
import { BATCH, buildInventory, callback, prepareBody, txid } from './helpers.js'

t.test('prepare reserves and records prepared; a repeated prepare answers yes without calling the handler', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  const first = await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  t.equal(first.statusCode, 200)
  t.same(first.json(), { vote: 'yes', batch: BATCH })
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
  t.same(inv.stock('apple'), { available: 7, reserved: 3 })

  const again = await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  t.same(again.json(), { vote: 'yes', batch: BATCH })
  t.equal(inv.calls.prepare, 1, 'handler ran once')
  t.same(inv.stock('apple'), { available: 7, reserved: 3 }, 'nothing reserved twice')
})

t.test('commit applies once; a repeated commit answers ok without calling the handler', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  for (let i = 0; i < 3; i++) {
    const res = await inv.app.inject(callback('/2pc/commit', { txid: id, participant: 'inventory' }))
    t.equal(res.statusCode, 200)
    t.same(res.json(), { ok: true })
  }
  t.equal(inv.calls.commit, 1)
  t.equal(inv.app.twoPhase.stateOf(id), 'committed')
  t.same(inv.stock('apple'), { available: 7, reserved: 0 })
  t.same(inv.reservations(), [])

  const abortAfterCommit = await inv.app.inject(callback('/2pc/abort', { txid: id }))
  t.equal(abortAfterCommit.statusCode, 409)
  t.same(abortAfterCommit.json(), { statusCode: 409, code: 'TX_ALREADY_COMMITTED', error: 'Conflict', message: 'abort for a transaction this participant committed' })
  t.equal(inv.calls.abort, 0)
  t.same(inv.stock('apple'), { available: 7, reserved: 0 })
})

t.test('abort releases once; commit after abort is refused with TX_ALREADY_ABORTED', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  for (let i = 0; i < 2; i++) {
    const res = await inv.app.inject(callback('/2pc/abort', { txid: id }))
    t.same(res.json(), { ok: true })
  }
  t.equal(inv.calls.abort, 1)
  t.same(inv.stock('apple'), { available: 10, reserved: 0 })
  const commit = await inv.app.inject(callback('/2pc/commit', { txid: id }))
  t.equal(commit.statusCode, 409)
  t.equal(commit.json().code, 'TX_ALREADY_ABORTED')
  t.equal(inv.calls.commit, 0)
})

t.test('abort before prepare leaves a tombstone: the late prepare votes no without calling the handler', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  const abort = await inv.app.inject(callback('/2pc/abort', { txid: id }))
  t.same(abort.json(), { ok: true })
  t.equal(inv.app.twoPhase.stateOf(id), 'tombstone')
  const prepare = await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  t.same(prepare.json(), { vote: 'no', reason: 'abort arrived before prepare', batch: BATCH })
  t.equal(inv.calls.prepare, 0)
  t.equal(inv.calls.abort, 0, 'nothing to undo, abort handler not called')
  t.same(inv.stock('apple'), { available: 10, reserved: 0 })
  const commit = await inv.app.inject(callback('/2pc/commit', { txid: id }))
  t.equal(commit.json().code, 'TX_ALREADY_ABORTED')
})

t.test('commit of an unknown transaction: 404 TX_UNKNOWN, nothing recorded', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  const res = await inv.app.inject(callback('/2pc/commit', { txid: id }))
  t.equal(res.statusCode, 404)
  t.same(res.json(), { statusCode: 404, code: 'TX_UNKNOWN', error: 'Not Found', message: 'commit for a transaction this participant never prepared' })
  t.equal(inv.app.twoPhase.stateOf(id), 'none')
  t.equal(inv.calls.commit, 0)
})

t.test('a prepare handler that throws after writing votes no and leaves business tables untouched', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  inv.behaviour.prepare = () => 'throw-after-write'
  const id = txid()
  const res = await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  t.equal(res.statusCode, 200)
  t.same(res.json(), { vote: 'no', reason: 'prepare handler failed', batch: BATCH })
  t.same(inv.stock('apple'), { available: 10, reserved: 0 })
  t.same(inv.reservations(), [])
  t.equal(inv.app.twoPhase.stateOf(id), 'aborted')
  const again = await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  t.equal(again.json().vote, 'no', 'the recorded vote is repeated')
  t.equal(inv.calls.prepare, 1)
})

t.test('a no vote and a read-only vote roll the handler writes back', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  inv.behaviour.prepare = () => 'no'
  const no = txid()
  t.same((await inv.app.inject(callback('/2pc/prepare', prepareBody(no)))).json(), { vote: 'no', reason: 'prepare handler voted no', batch: BATCH })
  inv.behaviour.prepare = () => 'read-only'
  const ro = txid()
  t.same((await inv.app.inject(callback('/2pc/prepare', prepareBody(ro)))).json(), { vote: 'read-only', batch: BATCH })
  t.same(inv.stock('apple'), { available: 10, reserved: 0 })
  t.same(inv.reservations(), [])
  t.equal(inv.app.twoPhase.stateOf(no), 'aborted')
  t.equal(inv.app.twoPhase.stateOf(ro), 'read-only')
  t.same((await inv.app.inject(callback('/2pc/commit', { txid: ro }))).json(), { ok: true }, 'a read-only participant accepts either decision')
  t.same((await inv.app.inject(callback('/2pc/abort', { txid: ro }))).json(), { ok: true })
  t.equal(inv.calls.commit + inv.calls.abort, 0)
})

t.test('insufficient stock votes no (the handler decides)', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const res = await inv.app.inject(callback('/2pc/prepare', prepareBody(txid(), 11)))
  t.equal(res.json().vote, 'no')
  t.same(inv.stock('apple'), { available: 10, reserved: 0 })
})

t.test('a prepare past its deadline votes no without calling the handler', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  const res = await inv.app.inject(callback('/2pc/prepare', prepareBody(id, 3, { deadline: Date.now() - 1 })))
  t.same(res.json(), { vote: 'no', reason: 'prepare arrived after its deadline', batch: BATCH })
  t.equal(inv.calls.prepare, 0)
  t.equal(inv.app.twoPhase.stateOf(id), 'aborted')
})

t.test('one-phase: yes means prepared and committed in one local transaction', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  const res = await inv.app.inject(callback('/2pc/prepare', prepareBody(id, 3, { onePhase: true })))
  t.same(res.json(), { vote: 'yes', batch: BATCH })
  t.equal(inv.app.twoPhase.stateOf(id), 'committed')
  t.same(inv.stock('apple'), { available: 7, reserved: 0 })
  t.same(inv.calls, { prepare: 1, commit: 1, abort: 0 })
  t.same((await inv.app.inject(callback('/2pc/commit', { txid: id }))).json(), { ok: true })
  t.equal(inv.calls.commit, 1)

  inv.behaviour.commitThrows = true
  const failing = txid()
  const no = await inv.app.inject(callback('/2pc/prepare', prepareBody(failing, 3, { onePhase: true })))
  t.equal(no.json().vote, 'no', 'a failing commit handler turns the one-phase yes into no')
  t.same(inv.stock('apple'), { available: 7, reserved: 0 }, 'and its reservation is rolled back')
  t.equal(inv.app.twoPhase.stateOf(failing), 'aborted')
})

t.test('a commit handler that throws: 500 HANDLER_FAILED (retryable), logged, nothing changed; the retry applies it', async t => {
  const lines: string[] = []
  const inv = await buildInventory(t.testdir(), {
    logger: (await import('pino')).default({ level: 'info' }, { write: (line: string) => { lines.push(line) } })
  })
  t.teardown(() => inv.app.close())
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  inv.behaviour.commitThrows = true
  const res = await inv.app.inject(callback('/2pc/commit', { txid: id }))
  t.equal(res.statusCode, 500)
  t.same(res.json(), { statusCode: 500, code: 'HANDLER_FAILED', error: 'Internal Server Error', message: 'The commit handler failed; the decision was not applied and will be retried' })
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
  t.same(inv.stock('apple'), { available: 7, reserved: 3 })
  t.ok(lines.some(line => line.includes('commit handler blew up')), 'the handler error is logged with its cause')

  inv.behaviour.commitThrows = false
  t.same((await inv.app.inject(callback('/2pc/commit', { txid: id }))).json(), { ok: true })
  t.same(inv.stock('apple'), { available: 7, reserved: 0 })
  t.equal(inv.app.twoPhase.stateOf(id), 'committed')
})

t.test('an abort handler that throws: 500 HANDLER_FAILED, record stays prepared', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  await inv.app.inject(callback('/2pc/prepare', prepareBody(id)))
  inv.behaviour.abortThrows = true
  const res = await inv.app.inject(callback('/2pc/abort', { txid: id }))
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'HANDLER_FAILED')
  t.equal(inv.app.twoPhase.stateOf(id), 'prepared')
})

t.test('async handlers are refused: a Promise from prepare votes no, from commit is a 500', async t => {
  const dir = t.testdir()
  const db = new Database(join(dir, 'x.db'))
  t.teardown(() => db.close())
  const app = Fastify()
  t.teardown(() => app.close())
  // @ts-expect-error the handler must be synchronous (prepare); this is what the runtime guard is for
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: 'http://127.0.0.1:9',
    prepare: async () => 'yes',
    commit: async () => {},
    abort: () => {}
  })
  const id = txid()
  t.equal((await app.inject(callback('/2pc/prepare', prepareBody(id)))).json().vote, 'no')
  t.equal(app.twoPhase.stateOf(id), 'aborted')

  const db2 = new Database(join(dir, 'y.db'))
  t.teardown(() => db2.close())
  const app2 = Fastify()
  t.teardown(() => app2.close())
  await app2.register(twoPhaseParticipant, {
    name: 'inventory',
    db: db2,
    coordinatorUrl: 'http://127.0.0.1:9',
    prepare: () => 'yes',
    commit: async () => {},
    abort: () => {}
  })
  const id2 = txid()
  t.equal((await app2.inject(callback('/2pc/prepare', prepareBody(id2)))).json().vote, 'yes')
  const commit = await app2.inject(callback('/2pc/commit', { txid: id2 }))
  t.equal(commit.statusCode, 500)
  t.equal(commit.json().code, 'HANDLER_FAILED')
  t.equal(app2.twoPhase.stateOf(id2), 'prepared', 'an async commit handler is refused, the record stays prepared')
})

t.test('a callback for another participant name is refused (misrouted enlistment)', async t => {
  const inv = await buildInventory(t.testdir())
  t.teardown(() => inv.app.close())
  const id = txid()
  const res = await inv.app.inject(callback('/2pc/prepare', { ...prepareBody(id), participant: 'payment' }))
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'PARTICIPANT_MISMATCH')
  t.equal(inv.app.twoPhase.stateOf(id), 'none')
  t.equal(inv.calls.prepare, 0)
})

t.test('bodies are validated and limited', async t => {
  const inv = await buildInventory(t.testdir(), { bodyLimit: 2048 })
  t.teardown(() => inv.app.close())
  const badId = await inv.app.inject(callback('/2pc/prepare', { ...prepareBody(txid()), txid: 'not-an-id' }))
  t.equal(badId.statusCode, 400)
  t.equal(badId.json().code, 'FST_ERR_VALIDATION')
  const noDeadline = prepareBody(txid())
  delete noDeadline.deadline
  t.equal((await inv.app.inject(callback('/2pc/prepare', noDeadline))).statusCode, 400)
  const big = await inv.app.inject(callback('/2pc/prepare', prepareBody(txid(), 3, { payload: { sku: 'apple', qty: 1, pad: 'x'.repeat(4096) } })))
  t.equal(big.statusCode, 413)
  const text = await inv.app.inject({ method: 'POST', url: '/2pc/commit', headers: { 'content-type': 'text/plain' }, payload: 'hi' })
  t.equal(text.statusCode, 415)
  const broken = await inv.app.inject({ method: 'POST', url: '/2pc/commit', headers: { 'content-type': 'application/json' }, payload: '{"txid":' })
  t.equal(broken.statusCode, 400)
  const poisoned = await inv.app.inject({ method: 'POST', url: '/2pc/prepare', headers: { 'content-type': 'application/json' }, payload: `{"txid":"${txid()}","participant":"inventory","deadline":${Date.now() + 1000},"payload":{"__proto__":{"x":1}}}` })
  t.equal(poisoned.statusCode, 400, 'prototype poisoning is refused like Fastify does')
  t.equal(inv.calls.prepare, 0)
})

t.test('the host app keeps its own JSON parser, error handler and routes; the prefix is configurable', async t => {
  const dir = t.testdir()
  const db = new Database(join(dir, 'x.db'))
  t.teardown(() => db.close())
  const app = Fastify()
  t.teardown(() => app.close())
  app.setErrorHandler(async (_err, _req, reply) => await reply.code(418).send({ teapot: true }))
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: 'http://127.0.0.1:9',
    prefix: '/callbacks/2pc',
    prepare: () => 'yes',
    commit: () => {},
    abort: () => {}
  })
  app.post('/echo', async request => request.body)
  app.get('/boom', async () => { throw new Error('x') })
  await app.ready()
  t.same((await app.inject({ method: 'POST', url: '/echo', payload: { a: 1 } })).json(), { a: 1 }, 'host JSON parsing unchanged')
  t.equal((await app.inject({ method: 'POST', url: '/echo', headers: { 'content-type': 'text/plain' }, payload: 'hi' })).body, 'hi', 'host text parser still there')
  t.same((await app.inject('/boom')).json(), { teapot: true }, 'host error handler unchanged')
  const unknown = await app.inject(callback('/callbacks/2pc/commit', { txid: txid() }))
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'TX_UNKNOWN', 'the callback routes answer the protocol shape regardless')
  t.equal((await app.inject(callback('/2pc/commit', { txid: txid() }))).statusCode, 404)
  t.equal(app.twoPhase.prefix, '/callbacks/2pc')
})

t.test('bad options are refused at register time', async t => {
  const db = new Database(join(t.testdir(), 'x.db'))
  t.teardown(() => db.close())
  const base = { name: 'inventory', db, coordinatorUrl: 'http://127.0.0.1:9', prepare: () => 'yes' as const, commit: () => {}, abort: () => {} }
  for (const [label, bad] of [
    ['bad name', { name: 'no spaces' }],
    ['no db', { db: undefined }],
    ['bad url', { coordinatorUrl: 'nope' }],
    ['empty secret', { secret: '' }],
    ['bad prefix', { prefix: '2pc/' }],
    ['bad number', { inDoubtAfterMs: 0 }],
    ['negative inline-sync threshold', { inlineSyncMaxMs: -1 }],
    ['inline-sync threshold over 100 ms', { inlineSyncMaxMs: 101 }],
    ['inline-sync threshold not a number', { inlineSyncMaxMs: '1' }],
    ['no handler', { commit: undefined }]
  ] as const) {
    const app = Fastify()
    await t.rejects(async () => { await app.register(twoPhaseParticipant, { ...base, ...bad } as never).ready() }, { code: 'TWOPC_INVALID_OPTION' }, label)
    await app.close()
  }
})
