/**
 * The outbox's bound: with the broker down (AMQP_URL pointing at a port where nothing listens),
 * transactions carrying messages are refused with 503 OUTBOX_FULL once the outbox holds
 * `outboxMaxRows` unpublished rows — before any of their work is accepted — while transactions
 * without messages go on, and decision notices (recovery) are still written beyond the bound.
 */
import t from 'tap'
import { configFromEnv, resolveOptions } from '../src/config.js'
import { startCoordinator, startParticipant, waitFor } from './support/participant.js'
import { freePort } from './support/process.js'

const MAX = 4

t.test('TWOPC_OUTBOX_MAX_ROWS sets outboxMaxRows (default 100,000)', async t => {
  t.equal(resolveOptions({ dbPath: 'x.db' }).outboxMaxRows, 100_000)
  t.equal(configFromEnv({ TWOPC_OUTBOX_MAX_ROWS: '7' }).options.outboxMaxRows, 7)
  t.throws(() => configFromEnv({ TWOPC_OUTBOX_MAX_ROWS: '0' }), /TWOPC_OUTBOX_MAX_ROWS/)
  t.throws(() => resolveOptions({ dbPath: 'x.db', outboxMaxRows: 0 }), /outboxMaxRows must be a positive integer/)
})

t.test('broker down: messages are refused with 503 OUTBOX_FULL at the bound, other work goes on, decision notices are kept', async t => {
  const port = await freePort() // nothing listens there: the broker is down for the whole test
  const p = await startParticipant(t)
  const c = await startCoordinator(t, { amqpUrl: `amqp://guest:guest@127.0.0.1:${port}`, outboxMaxRows: MAX })
  const message = { exchange: 'twopc-outbox-bound-nowhere', routingKey: 'k', body: { n: 1 } }
  const amqp = async (): Promise<any> => (await c.api.get('/readyz')).body.amqp
  t.match(await amqp(), { configured: true, connected: false, outboxMaxRows: MAX, outboxFull: false })

  // A transaction holding a message, enlisted while there is room; committed once there is none.
  const held = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], timeoutMs: 600_000 })
  t.equal(held.status, 201)
  t.equal((await c.api.post(`/v1/transactions/${held.body.id as string}/messages`, message)).status, 201)

  // One message per transaction until the outbox refuses (coordinator.started is in it too).
  let refusal: { status: number, body: any } | undefined
  let committed = 0
  for (let i = 0; i < 3 * MAX && refusal === undefined; i++) {
    const begun = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }] })
    t.equal(begun.status, 201)
    const id = begun.body.id as string
    const added = await c.api.post(`/v1/transactions/${id}/messages`, message)
    if (added.status !== 201) { refusal = added; break }
    const done = await c.api.post(`/v1/transactions/${id}/commit`)
    if (done.status !== 200) { refusal = done; break }
    t.equal(done.body.state, 'committed')
    committed++
  }
  t.ok(refusal !== undefined, `refused after ${committed} commits`)
  t.match(refusal, { status: 503, body: { statusCode: 503, code: 'OUTBOX_FULL', error: 'Service Unavailable', message: String } })
  const full = await c.api.get('/readyz')
  t.equal(full.status, 200, 'a full outbox does not make the coordinator unready: work without messages goes on')
  t.match(full.body.amqp, { connected: false, outboxDepth: MAX, outboxMaxRows: MAX, outboxFull: true })

  // Refused before anything is accepted: no record, no prepare.
  const prepares = p.callsTo('prepare').length
  const oneShot = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], messages: [message], commit: true })
  t.match({ status: oneShot.status, code: oneShot.body.code }, { status: 503, code: 'OUTBOX_FULL' }, 'a one-shot with messages')
  const begin = await c.api.post('/v1/transactions', { messages: [message] })
  t.match({ status: begin.status, code: begin.body.code }, { status: 503, code: 'OUTBOX_FULL' }, 'a begin with messages')
  const commit = await c.api.post(`/v1/transactions/${held.body.id as string}/commit`)
  t.match({ status: commit.status, code: commit.body.code }, { status: 503, code: 'OUTBOX_FULL' }, 'the commit of a transaction holding a message')
  t.equal(p.callsTo('prepare').length, prepares, 'no prepare went out for any of them')
  t.equal((await c.api.get(`/v1/transactions/${held.body.id as string}`)).body.state, 'active', 'the refused commit left its transaction active')
  // `held`, the committed ones, and the one whose message was refused: the refused begins left none.
  t.equal((await c.api.get('/v1/transactions?limit=500')).body.items.length, committed + 2, 'the refused begins left no record')

  // Work without messages is not refused.
  const plain = await c.api.post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
  t.match({ status: plain.status, state: plain.body.state }, { status: 200, state: 'committed' }, 'a transaction without messages commits')
  const aborted = await c.api.post(`/v1/transactions/${held.body.id as string}/abort`)
  t.equal(aborted.status, 200, 'an abort is not refused')

  // A phase-2 failure writes a decision notice even beyond the bound: it is recovery, not new work.
  const flaky = await startParticipant(t, { phase2Failure: { status: 500, times: 1 } })
  const noticed = await c.api.post('/v1/transactions', { participants: [{ name: 'flaky', url: flaky.url }], commit: true })
  t.match({ status: noticed.status, state: noticed.body.state }, { status: 200, state: 'committed' })
  const record = await waitFor(async () => {
    const r = (await c.api.get(`/v1/transactions/${noticed.body.id as string}`)).body
    return r.completed === true && r.outbox.length > 0 ? r : undefined
  }, 5000, 'phase 2 retried and the notice written')
  t.match(record.outbox, [{ kind: 'decision', publishedAt: null }], 'the decision notice is in the outbox')
  t.match(await amqp(), { outboxDepth: MAX + 1, outboxFull: true }, 'beyond the bound by that notice')
})
