/**
 * Every crash point of docs/protocol.md ("Crash points"), one table: a real child process (the coordinator from
 * coordinator/dist/bin.js, or a bank participant from test/dist/fixtures) SIGKILLs itself there
 * (TWOPC_CRASH_AT), is started again on the same port and database, the system settles, and
 * the transfer is atomic: the coordinator's decision is the expected one and both participants'
 * own SQLite files agree with it (applied once on both sides, or on neither; nothing prepared,
 * nothing held, money conserved).
 */
import t from 'tap'
import type { Test } from 'tap'
import { join } from 'node:path'
import { amqpNames } from '@fastify-2pc/protocol'
import { topologyObjects } from '@fastify-2pc/amqp'
import { startCoordinator, startBank, freePort, waitFor, httpJson, listTransactions } from './chaos/cluster.js'
import type { Proc, CoordinatorSpec, BankSpec, TxRecord } from './chaos/cluster.js'
import { buildBank, readBank } from './fixtures/bank-service.js'
import type { BankOptions } from './fixtures/bank-service.js'
import { buildCoordinator } from '@fastify-2pc/coordinator'
import type { CoordinatorOptions } from '@fastify-2pc/coordinator'
import { checkBrokerClean, amqpUrl, cleanupPrefix, requireRabbit, testPrefix } from './support/rabbit.js'
import { BrokerSide } from './support/broker-side.js'

const SECRET = 'crash-points-secret-0123456789'
const AMOUNT = 30
const root = testPrefix('cp')

interface Row {
  point: string
  crashes: 'coordinator' | 'bank-a'
  expect: 'committed' | 'aborted'
  /** Needs RabbitMQ (the outbox, the participant's decision queue). */
  amqp?: boolean
  /** The transfer also enlists a transactional message (written to the outbox on commit). */
  message?: boolean
  /** bank-a's phase-2 callbacks answer 503: the decision reaches it over RabbitMQ only. */
  failPhase2Http?: boolean
  /** The initiator hears the decision before the crash (the crash comes in phase 2). */
  answered?: boolean
}

const TABLE: Row[] = [
  { point: 'coordinator.after-begin', crashes: 'coordinator', expect: 'aborted' },
  { point: 'coordinator.after-votes-before-decision', crashes: 'coordinator', expect: 'aborted' },
  { point: 'coordinator.after-decision-before-phase2', crashes: 'coordinator', expect: 'committed' },
  { point: 'coordinator.mid-phase2', crashes: 'coordinator', expect: 'committed', answered: true },
  { point: 'coordinator.after-outbox-write-before-publish', crashes: 'coordinator', expect: 'committed', amqp: true, message: true },
  { point: 'participant.in-prepare-before-local-commit', crashes: 'bank-a', expect: 'aborted' },
  { point: 'participant.after-prepare-before-reply', crashes: 'bank-a', expect: 'aborted' },
  { point: 'participant.after-commit-before-reply', crashes: 'bank-a', expect: 'committed' },
  { point: 'participant.after-local-commit-before-amqp-ack', crashes: 'bank-a', expect: 'committed', amqp: true, failPhase2Http: true }
]

t.test('docs/protocol.md lists every crash point of this table', async t => {
  const { readFile } = await import('node:fs/promises')
  const contract = await readFile(new URL('../docs/protocol.md', import.meta.url), 'utf8')
  for (const row of TABLE) t.ok(contract.includes(`\`${row.point}\``), row.point)
})

// Child starts take about a second on an idle machine, far more on a loaded one.
t.setTimeout(600_000)
let seq = 0
// One group, so the broker check below runs only after every row has finished.
t.test('every crash point', async t => {
  // Rows run three at a time: most of a row is waiting for processes to start.
  t.jobs = 3
  for (const row of TABLE) {
    t.test(`${row.point}: crash, restart, settle — ${row.expect} everywhere`, { buffered: true }, async t => {
      if (row.amqp === true && !(await requireRabbit(t))) return
      await runRow(t, row, ++seq)
    })
  }
})

async function runRow (t: Test, row: Row, n: number): Promise<void> {
  const dir = t.testdir()
  const [cPort, aPort, bPort] = [await freePort(), await freePort(), await freePort()]
  const coordinatorUrl = `http://127.0.0.1:${cPort}`
  const procs: Proc[] = []
  t.teardown(async () => { await Promise.all(procs.map(async p => await p.kill())) })

  let prefix: string | undefined
  let broker: BrokerSide | undefined
  const userExchange = `${root}-${n}.transfers`
  const userQueue = `${root}-${n}.transfers.q`
  if (row.amqp === true) {
    prefix = `${root}-${n}`
    const p = prefix
    broker = await BrokerSide.open(p)
    const b = broker
    t.teardown(async () => {
      // Children first (teardowns run last-in first-out): a live one would declare its queue again.
      await Promise.all(procs.map(async p => await p.kill()))
      await b.cleanup()
      await cleanupPrefix(topologyObjects(amqpNames(p), ['bank-a', 'bank-b']))
    })
    if (row.message === true) {
      await broker.exchange(userExchange, 'fanout')
      await broker.queueBoundTo(userQueue, userExchange, '')
    }
  }

  const coordinatorSpec: CoordinatorSpec = { port: cPort, db: join(dir, 'coordinator.db'), id: 'cp', secret: SECRET }
  if (prefix !== undefined) { coordinatorSpec.amqpUrl = amqpUrl(); coordinatorSpec.amqpPrefix = prefix }
  const bankSpec = (name: 'bank-a' | 'bank-b', port: number, account: string): BankSpec => {
    const spec: BankSpec = { name, port, db: join(dir, `${name}.db`), coordinatorUrl, accounts: [account], initial: 100, secret: SECRET }
    if (prefix !== undefined) { spec.amqpUrl = amqpUrl(); spec.amqpPrefix = prefix }
    if (name === 'bank-a' && row.failPhase2Http === true) spec.failPhase2Http = true
    return spec
  }
  const aSpec = bankSpec('bank-a', aPort, 'alice')
  const bSpec = bankSpec('bank-b', bPort, 'bob')

  // The process that crashes is a child (the built code, SIGKILL for real); the others run in
  // this process (one child start fewer each: the machine running the tests may be loaded).
  const inProcessBank = async (spec: BankSpec): Promise<void> => {
    const options: BankOptions = { name: spec.name, dbPath: spec.db, coordinatorUrl, accounts: spec.accounts ?? [], initial: 100, secret: SECRET }
    if (spec.amqpUrl !== undefined) { options.amqpUrl = spec.amqpUrl; options.amqpPrefix = spec.amqpPrefix as string }
    if (spec.failPhase2Http === true) options.failPhase2Http = true
    const { app } = await buildBank(options)
    t.teardown(async () => { await app.close() })
    await app.listen({ port: spec.port, host: '127.0.0.1' })
  }
  let victim: Proc
  const restart = async (): Promise<Proc> => row.crashes === 'coordinator' ? await startCoordinator(coordinatorSpec) : await startBank(aSpec)
  if (row.crashes === 'coordinator') {
    await Promise.all([inProcessBank(aSpec), inProcessBank(bSpec)])
    victim = await startCoordinator({ ...coordinatorSpec, crashAt: row.point })
  } else {
    const options: CoordinatorOptions = {
      dbPath: coordinatorSpec.db, coordinatorId: 'cp', secret: SECRET, retryBaseMs: 20, retryMaxMs: 300, retryBudget: 100_000
    }
    if (prefix !== undefined) { options.amqpUrl = amqpUrl(); options.amqpPrefix = prefix }
    const coordinator = await buildCoordinator(options)
    t.teardown(async () => { await coordinator.close() })
    await coordinator.listen({ port: cPort, host: '127.0.0.1' })
    await waitFor('coordinator ready', async () => (await httpJson('GET', `${coordinatorUrl}/readyz`)).status === 200)
    await inProcessBank(bSpec)
    victim = await startBank({ ...aSpec, crashAt: row.point })
  }
  procs.push(victim)

  // alice (bank-a) pays bob (bank-b): the one-shot form, one request.
  const transfer: Record<string, unknown> = {
    participants: [
      { name: 'bank-a', url: `http://127.0.0.1:${aPort}/2pc`, payload: { account: 'alice', delta: -AMOUNT } },
      { name: 'bank-b', url: `http://127.0.0.1:${bPort}/2pc`, payload: { account: 'bob', delta: AMOUNT } }
    ],
    commit: true,
    timeoutMs: 5000
  }
  if (row.message === true) transfer.messages = [{ exchange: userExchange, routingKey: 'transfer', body: { from: 'alice', to: 'bob', amount: AMOUNT } }]
  const answer = await httpJson('POST', `${coordinatorUrl}/v1/transactions`, transfer).catch((err: unknown) => ({ status: 0, body: String(err) }))

  // The process with the crash point died there, by SIGKILL.
  const exit = await Promise.race([victim.exited, new Promise<undefined>(resolve => setTimeout(() => { resolve(undefined) }, 60_000).unref())])
  t.same(exit, { code: null, signal: 'SIGKILL' }, `${row.crashes} SIGKILLed itself`)
  t.match(victim.stderr(), `crashing at ${row.point}`)
  if (row.crashes === 'coordinator' && row.answered !== true) t.equal(answer.status, 0, 'the initiator lost its connection')
  else t.equal(answer.body?.state, row.expect, `the initiator heard ${row.expect}`)

  // Start it again, without the crash point; settle.
  const again = await restart()
  t.ok(again.alive(), 'restarted')
  procs.push(again)
  const record = await waitFor('the transaction completed and nothing in doubt', async () => {
    const list = await listTransactions(coordinatorUrl)
    if (list.length !== 1) return undefined
    const tx = list[0] as TxRecord
    if (!tx.completed) return undefined
    const views = [readBank(aSpec.db), readBank(bSpec.db)]
    if (views.some(v => [...v.log.values()].includes('prepared') || v.holds.length > 0)) return undefined
    if (prefix !== undefined) {
      const ready = await httpJson('GET', `${coordinatorUrl}/readyz`)
      if (ready.body.amqp.outboxDepth !== 0) return undefined
    }
    return tx
  }, 60_000, { everyMs: 50, state: async () => ({ list: await listTransactions(coordinatorUrl).catch(String), restarted: { alive: again.alive(), stderr: again.stderr().slice(-2000) } }) })

  t.equal(record.state, row.expect, `the coordinator decided ${row.expect}`)
  t.same((await httpJson('GET', `${coordinatorUrl}/v1/transactions/${record.id}/decision`)).body, { decision: row.expect === 'committed' ? 'commit' : 'abort' })
  t.equal(record.needsAttention, false, 'no heuristic, nothing for an operator')
  const [va, vb] = [readBank(aSpec.db), readBank(bSpec.db)]
  if (row.expect === 'committed') {
    t.same([...va.applied], [[record.id, -AMOUNT]], 'bank-a applied the debit once')
    t.same([...vb.applied], [[record.id, AMOUNT]], 'bank-b applied the credit once')
    t.same([va.balances.alice, vb.balances.bob], [100 - AMOUNT, 100 + AMOUNT])
    t.equal(va.log.get(record.id), 'committed')
    t.equal(vb.log.get(record.id), 'committed')
  } else {
    t.same([...va.applied, ...vb.applied], [], 'applied nowhere')
    t.same([va.balances.alice, vb.balances.bob], [100, 100])
    for (const v of [va, vb]) t.not(v.log.get(record.id), 'committed')
  }
  t.equal(va.total + vb.total, 200, 'money conserved')
  t.equal(va.reserved + vb.reserved, 0, 'nothing reserved')

  if (broker !== undefined && row.message === true) {
    t.equal(await broker.count(userQueue), 1, 'the transactional message published once, after the restart')
  }
  if (broker !== undefined && prefix !== undefined) {
    const names = amqpNames(prefix)
    t.equal(await broker.count(names.deadLetterQueue(names.participantQueue('bank-a'))) ?? 0, 0, 'nothing dead-lettered')
  }
}

t.test('nothing with this file\'s prefix is left on the broker', async t => {
  await checkBrokerClean(t, root)
})
