/**
 * A quick run of the chaos bank (test/chaos/bank-chaos.ts): real coordinator and two bank
 * participants as child processes, concurrent transfers, SIGKILLs and restarts, RabbitMQ cut,
 * HTTP delayed and dropped — then settled and checked. The seed is printed; replay the same
 * choices with TWOPC_SEED=<n>. The long run is `npm run chaos -- --duration 10m`.
 */
import t from 'tap'
import { runChaos, checkInvariants } from './chaos/bank-chaos.js'
import type { BankView } from './fixtures/bank-service.js'
import type { TxRecord } from './chaos/cluster.js'
import { amqpUrl, requireRabbit, testPrefix, listBrokerNames } from './support/rabbit.js'

// Child starts take a second each on an idle machine, many more on a loaded one.
t.setTimeout(600_000)

t.test('chaos bank: atomic and conserved under kills, broker cuts and a bad network', async t => {
  if (!(await requireRabbit(t))) return
  const seed = Number(process.env.TWOPC_SEED ?? Math.floor(Math.random() * 2 ** 31))
  t.comment(`chaos seed ${seed} (replay with TWOPC_SEED=${seed})`)
  const prefix = testPrefix('chaos')
  const lines: string[] = []
  const report = await runChaos({
    seed,
    durationMs: Number(process.env.TWOPC_CHAOS_MS ?? 20_000),
    workers: 4,
    dir: t.testdir(),
    amqpUrl: amqpUrl(),
    prefix,
    settleTimeoutMs: 180_000,
    calmMs: 5000,
    log: line => { lines.push(line) }
  })
  const { violations, ...figures } = report
  t.comment(JSON.stringify(figures))
  t.same(violations, [], `no violation (seed ${seed})`)
  if (violations.length > 0) t.comment(lines.join('\n'))
  // It really was chaos, and money really moved: a run where nothing happens proves nothing.
  t.ok(report.committed > 0, `committed: ${report.committed}`)
  t.ok(report.aborted > 0, `aborted: ${report.aborted}`)
  t.ok(Object.values(report.kills).reduce((a, b) => a + b, 0) > 0, `SIGKILLs: ${JSON.stringify(report.kills)}`)
  t.ok(report.rabbitCuts + report.httpDelays + report.httpDrops > 0, 'network faults')
  const left = await listBrokerNames(prefix)
  if (left !== undefined) t.same(left, { queues: [], exchanges: [] }, 'nothing left on the broker')
})

t.test('the verdict catches a broken outcome', async t => {
  // The checks themselves, on hand-made states: each kind of damage must be reported.
  const view = (applied: Array<[string, number]>, log: Array<[string, string]>, total = 4000, holds: string[] = []): BankView =>
    ({ balances: {}, total, reserved: 0, holds, applied: new Map(applied), released: new Map(), log: new Map(log) })
  const tx = (id: string, state: string): TxRecord => ({ id, state, reason: null, completed: true, needsAttention: false, participants: [] })
  const ready = { amqp: { outboxDepth: 0, outboxDead: 0 } }
  const verdict = (list: TxRecord[], a: BankView, b: BankView, answers = new Map<string, string>(), r: unknown = ready): string[] => {
    const out: string[] = []
    checkInvariants(list, { 'bank-a': a, 'bank-b': b }, answers, r, v => out.push(v))
    return out
  }
  t.same(verdict([tx('x', 'committed'), tx('y', 'aborted')], view([['x', -5]], [['x', 'committed'], ['y', 'aborted']]), view([['x', 5]], [['x', 'committed']])), [], 'a consistent state passes')
  t.match(verdict([tx('x', 'committed')], view([['x', -5]], [['x', 'committed']]), view([], [['x', 'prepared']])), [/committed but applied on bank-a only/, /prepared/])
  t.match(verdict([tx('x', 'aborted')], view([['x', -5]], [['x', 'committed']]), view([], [])), [/aborted but applied/, /did not commit/, /committed x, the coordinator: aborted/])
  t.match(verdict([], view([], [], 3999), view([], [])), [/money not conserved/])
  t.match(verdict([tx('x', 'aborted')], view([], []), view([], []), new Map([['x', 'committed']])), [/answered committed, the log says aborted/])
  t.match(verdict([], view([], []), view([], []), new Map(), { amqp: { outboxDepth: 2, outboxDead: 0 } }), [/outbox not empty/])
})
