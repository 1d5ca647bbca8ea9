/**
 * Group commit: concurrent steps share one SQLite transaction (one fsync), and nobody hears of
 * a step before its batch is on disk.
 */
import t from 'tap'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import Database from 'better-sqlite3'
import { startCoordinator, startParticipant, waitFor } from './support/participant.js'

t.test('concurrent one-shot transactions are batched into fewer flushes, and all are durable', async t => {
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const log = c.app.coordinator.log
  const before = { ...log.flushStats }
  const answers = await Promise.all(Array.from({ length: 60 }, async () => await c.api.post('/v1/transactions', {
    participants: [{ name: 'a', url: a.url }, { name: 'b', url: b.url }],
    commit: true
  })))
  t.same(answers.map(r => r.status), Array(60).fill(200))
  t.ok(answers.every(r => r.body.state === 'committed'))
  const steps = log.flushStats.steps - before.steps
  const flushes = log.flushStats.flushes - before.flushes
  t.ok(steps >= 60 * 3, `every begin, vote round and decision was saved (${steps} steps)`)
  t.ok(flushes < steps / 2, `steps shared flushes: ${steps} steps in ${flushes} flushes, largest batch ${log.flushStats.maxBatch}`)
  t.ok(log.flushStats.maxBatch > 1)

  // Every answered commit is on disk: read the file through another connection.
  const db = new Database(c.dbPath, { readonly: true })
  t.teardown(() => db.close())
  const committed = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM decisions WHERE decision = 'commit'").get()
  t.equal(committed?.n, 60)
})

t.test('the decision endpoint answers only from disk: a pending step is not visible', async t => {
  const c = await startCoordinator(t)
  const log = c.app.coordinator.log
  const engine = c.app.coordinator.engine
  const tx = await engine.begin(5000, null)
  // Save a commit decision (no participants) but do not let the event loop flush it yet.
  const result = engine.apply(tx.id, { type: 'commit-requested', now: Date.now() })
  t.equal(log.pendingSteps, 1)
  t.equal(log.loadLatest(tx.id)?.state, 'committed', 'the engine steps from the newest record')
  t.equal(log.load(tx.id)?.state, 'active', 'the durable record is unchanged until the flush')
  await result.durable
  t.equal(log.load(tx.id)?.state, 'committed')
})

t.test("a one-shot's prepares are on the wire before its begin is written, also over reused keep-alive sockets", async t => {
  // undici (7.30+) writes a request on a reused idle socket only in a later setImmediate; the
  // log's write at the end of the turn then waits one turn, so the participants get to work
  // while the begin is written instead of after it. Seen here through undici's own
  // diagnostics channel (headers written to the socket) and the log's write observer.
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const log = c.app.coordinator.log
  const events: string[] = []
  const onSend = (message: unknown): void => {
    const path = (message as { request: { path: string } }).request.path
    events.push(path.endsWith('/prepare') ? 'prepare' : path === '/v1/transactions' ? 'request' : 'other')
  }
  subscribe('undici:client:sendHeaders', onSend)
  t.teardown(() => { unsubscribe('undici:client:sendHeaders', onSend) })
  const observed = log.onFlush
  log.onFlush = (steps, ms) => { events.push('write'); observed?.(steps, ms) }

  const orders: string[][] = []
  for (let i = 0; i < 5; i++) {
    events.length = 0
    const answer = await c.api.post('/v1/transactions', { participants: [{ name: 'a', url: a.url }, { name: 'b', url: b.url }], commit: true })
    t.equal(answer.status, 200)
    // Phase 2 done before the next one starts: its writes do not mix into the next order.
    await waitFor(() => log.load(answer.body.id)?.completedAt)
    orders.push(events.slice(events.indexOf('request') + 1).filter(e => e !== 'other'))
  }
  // The first transaction opens the connections (written once connected, after the begin).
  for (const order of orders.slice(1)) {
    t.same(order.slice(0, 3), ['prepare', 'prepare', 'write'], `prepares before the first write: ${order.join(' ')}`)
  }
})
