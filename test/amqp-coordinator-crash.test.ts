/**
 * A coordinator process SIGKILLed after it wrote a notification to its outbox (in the decision's
 * own SQLite transaction) and before it published it (TWOPC_CRASH_AT=
 * coordinator.after-outbox-write-before-publish): the restarted process publishes it.
 * Real child processes from coordinator/dist/bin.js (`npx tsc -b` first), the real broker.
 */
import t from 'tap'
import type { Test } from 'tap'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { startParticipant, waitFor, http } from '../coordinator/test/support/participant.js'
import { freePort, startCoordinatorProcess, type CoordinatorChild } from '../coordinator/test/support/process.js'
import { checkBrokerClean, amqpUrl } from './support/rabbit.js'
import { BrokerSide } from './support/broker-side.js'

const CRASH_POINT = 'coordinator.after-outbox-write-before-publish'
const root = `twopc-cc-${randomBytes(3).toString('hex')}`
let seq = 0

async function setup (tt: Test): Promise<BrokerSide | undefined> {
  return await BrokerSide.forTest(tt, `${root}-${++seq}`)
}

/** A coordinator process on the broker with `prefix`; killed (and awaited) in teardown. */
async function startChild (tt: Test, dbPath: string, port: number, prefix: string, env: Record<string, string> = {}): Promise<CoordinatorChild> {
  const child = await startCoordinatorProcess({
    dbPath,
    port,
    env: { TWOPC_COORDINATOR_ID: 'crashq', TWOPC_RETRY_BUDGET: '1000', AMQP_URL: amqpUrl(), TWOPC_AMQP_PREFIX: prefix, ...env },
    // Ready, connected, and its coordinator.started published: the outbox is empty.
    ready: r => r.status === 200 && r.body.amqp.connected === true && r.body.amqp.outboxDepth === 0,
    readyWhat: 'coordinator process ready and connected'
  })
  tt.teardown(async () => {
    if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL')
    await child.exited
  })
  return child
}

t.test('SIGKILL after the commit decision wrote a transactional message to the outbox: the restart publishes it', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { prefix } = broker
  const userX = `${prefix}.orders`
  const userQ = `${prefix}.orders.q`
  await broker.exchange(userX, 'topic')
  await broker.queueBoundTo(userQ, userX, '#')
  broker.participants.add('a')
  const a = await startParticipant(t)
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()

  const first = await startChild(t, dbPath, port, prefix, { TWOPC_CRASH_AT: CRASH_POINT })
  const answer = http(first.url).post('/v1/transactions', {
    participants: [{ name: 'a', url: a.url }],
    messages: [{ exchange: userX, routingKey: 'order.created', body: { order: 42 }, headers: { 'x-source': 'crash-test' } }],
    commit: true
  })
  await t.rejects(answer, 'the initiator loses its connection: the coordinator died')
  t.equal((await first.exited).signal, 'SIGKILL')
  t.match(first.stderr(), new RegExp(`crashing at ${CRASH_POINT.replace(/\./g, '\\.')}`))
  const txid = a.callsTo('prepare')[0]?.body.txid as string
  t.type(txid, 'string')
  t.equal(await broker.count(userQ), 0, 'nothing was published before the crash')

  const second = await startChild(t, dbPath, port, prefix)
  await waitFor(async () => (await broker.count(userQ)) === 1, 10_000, 'the message published after the restart')
  const got = await broker.drain(userQ)
  t.equal(got.length, 1)
  t.equal(got[0]?.messageId, `${txid}:m0`)
  t.same(got[0]?.body, { order: 42 })
  t.equal(got[0]?.headers['x-source'], 'crash-test')
  t.ok(got[0]?.persistent)
  await waitFor(() => a.state(txid) === 'committed', 10_000, 'a committed by the restart')
  const view = (await http(second.url).get(`/v1/transactions/${txid}`)).body
  t.equal(view.state, 'committed')
  t.equal(view.outbox.length, 1)
  t.not(view.outbox[0].publishedAt, null, 'the outbox row is marked published')
})

t.test('SIGKILL after a failed phase-2 call wrote the decision notice to the outbox: the restart publishes it', async t => {
  const broker = await setup(t)
  if (broker === undefined) return
  const { prefix, names } = broker
  broker.participants.add('p')
  const p = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const dbPath = join(t.testdir(), 'coordinator.db')
  const port = await freePort()

  const first = await startChild(t, dbPath, port, prefix, { TWOPC_CRASH_AT: CRASH_POINT })
  // The decision is answered before phase 2; the crash comes with the first failed commit call.
  const answer = http(first.url).post('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true }).catch(() => undefined)
  t.equal((await first.exited).signal, 'SIGKILL')
  await answer
  t.match(first.stderr(), /crashing at coordinator\.after-outbox-write-before-publish/)
  const txid = p.callsTo('prepare')[0]?.body.txid as string
  t.equal(p.callsTo('commit').length, 1, 'one failed phase-2 call before the crash')
  t.equal((await broker.count(names.participantQueue('p'))) ?? 0, 0, 'no notice was published before the crash')

  const second = await startChild(t, dbPath, port, prefix)
  await waitFor(async () => (await broker.count(names.participantQueue('p'))) === 1, 10_000, 'the notice published after the restart')
  const [notice] = await broker.drain(names.participantQueue('p'))
  t.same(notice?.body, { txid, participant: 'p', decision: 'commit' })
  t.equal(notice?.messageId, `${txid}:p:commit`)
  t.ok(notice?.persistent)
  const view = (await http(second.url).get(`/v1/transactions/${txid}`)).body
  t.equal(view.state, 'committed')
  t.equal(view.participants[0].ack, 'pending', 'p still fails over HTTP')
  t.same(view.outbox.map((o: { kind: string }) => o.kind), ['decision'], 'one notice row, not a second one after the restart')
  t.not(view.outbox[0].publishedAt, null)
})

t.test('nothing with this file\'s prefix is left on the broker', async t => {
  await checkBrokerClean(t, root)
})
