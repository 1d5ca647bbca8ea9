/**
 * The chaos bank: a coordinator and two bank participants (SDK + their own SQLite files) as
 * real child processes; concurrent transfers between accounts of the two banks through the
 * coordinator (one-shot form); meanwhile a seeded chaos driver SIGKILLs and restarts each
 * process at random moments (sometimes restarting one with a random TWOPC_CRASH_AT so it dies
 * at a named point later), cuts RabbitMQ through a TCP proxy, and delays or drops HTTP through
 * a TCP proxy in front of each participant. Then it settles (chaos stops, everything runs
 * clean, nothing in doubt, the outbox empty) and checks:
 * - total money conserved, nothing reserved, no hold left;
 * - every transfer applied on both sides (debit and credit, once) or on neither;
 * - every transaction the coordinator calls committed is applied everywhere, every aborted one
 *   nowhere, and nothing is applied that the coordinator did not commit;
 * - what the initiator was answered is what the coordinator's log says;
 * - no participant holds a prepared transaction; no heuristic; the outbox is empty, nothing
 *   dead-lettered.
 */
import { join } from 'node:path'
import { amqpNames } from '@fastify-2pc/protocol'
import { topologyObjects } from '@fastify-2pc/amqp'
import { startCoordinator, startBank, freePort, sleep, waitFor, httpJson, listTransactions } from './cluster.js'
import type { Proc, TxRecord } from './cluster.js'
import { readBank } from '../fixtures/bank-service.js'
import type { BankView } from '../fixtures/bank-service.js'
import { startTcpProxy } from '../support/tcp-proxy.js'
import type { TcpProxy } from '../support/tcp-proxy.js'
import { amqpUrlVia, cleanupPrefix } from '../support/rabbit.js'
import amqp from 'amqplib'
import { seededRandom } from '../kit/random.js'

export interface ChaosOptions {
  seed: number
  durationMs: number
  /** Transfers are attempted until the duration ends or this many were sent. */
  maxTransfers?: number
  workers?: number
  dir: string
  amqpUrl: string
  prefix: string
  settleTimeoutMs?: number
  /** Faults start after this long (default 3 s). */
  calmMs?: number
  log?: (line: string) => void
}

export interface ChaosReport {
  seed: number
  durationMs: number
  transfers: number
  answeredCommitted: number
  answeredAborted: number
  unanswered: number
  committed: number
  aborted: number
  kills: Record<string, number>
  crashPointDeaths: Record<string, number>
  crashPointsArmed: number
  rabbitCuts: number
  httpDelays: number
  httpDrops: number
  settleMs: number
  violations: string[]
}

const SECRET = 'chaos-bank-secret-0123456789'
const INITIAL = 1000
const ACCOUNTS = { 'bank-a': ['a0', 'a1', 'a2', 'a3'], 'bank-b': ['b0', 'b1', 'b2', 'b3'] } as const
type BankName = keyof typeof ACCOUNTS
const COORDINATOR_POINTS = ['coordinator.after-begin', 'coordinator.after-votes-before-decision', 'coordinator.after-decision-before-phase2', 'coordinator.mid-phase2', 'coordinator.after-outbox-write-before-publish']
const PARTICIPANT_POINTS = ['participant.in-prepare-before-local-commit', 'participant.after-prepare-before-reply', 'participant.after-commit-before-reply', 'participant.after-local-commit-before-amqp-ack']

/** A supervised process: restarted after it dies, whoever killed it. */
class Slot {
  proc: Proc | undefined
  crashAt: string | undefined
  nextCrashAt: string | undefined
  running = true
  killedByUs = false
  kills = 0
  crashPointDeaths = 0
  private loop: Promise<void> | undefined

  constructor (readonly name: string, private readonly startFn: (crashAt: string | undefined) => Promise<Proc>, private readonly restartDelay: () => number, private readonly log: (l: string) => void) {}

  start (): void {
    this.loop = (async () => {
      while (this.running) {
        const crashAt = this.nextCrashAt
        this.nextCrashAt = undefined
        try {
          this.crashAt = crashAt
          this.proc = await this.startFn(crashAt)
        } catch (err) {
          this.log(`${this.name}: start failed (${String(err).split('\n')[0] ?? ''}); again`)
          await sleep(300)
          continue
        }
        const exit = await this.proc.exited
        if (!this.killedByUs && this.running) {
          this.crashPointDeaths++
          this.log(`${this.name} died on its own (${crashAt ?? 'no crash point'}): ${JSON.stringify(exit)}`)
        }
        this.killedByUs = false
        if (!this.running) break
        await sleep(this.restartDelay())
      }
    })()
  }

  /** Up, without a crash point armed. */
  clean (): boolean { return this.proc?.alive() === true && this.crashAt === undefined }

  async kill (): Promise<void> {
    const proc = this.proc
    if (proc === undefined || !proc.alive()) return
    this.killedByUs = true
    this.kills++
    await proc.kill()
  }

  async stop (): Promise<void> {
    this.running = false
    await this.proc?.kill()
    await this.loop
  }
}

export async function runChaos (options: ChaosOptions): Promise<ChaosReport> {
  const log = options.log ?? (() => {})
  const rnd = seededRandom(options.seed)
  const between = (lo: number, hi: number): number => Math.floor(lo + rnd() * (hi - lo))
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T
  const report: ChaosReport = {
    seed: options.seed,
    durationMs: options.durationMs,
    transfers: 0,
    answeredCommitted: 0,
    answeredAborted: 0,
    unanswered: 0,
    committed: 0,
    aborted: 0,
    kills: {},
    crashPointDeaths: {},
    crashPointsArmed: 0,
    rabbitCuts: 0,
    httpDelays: 0,
    httpDrops: 0,
    settleMs: 0,
    violations: []
  }
  const violation = (v: string): void => { report.violations.push(v); log(`VIOLATION: ${v}`) }

  const rabbit = new URL(options.amqpUrl)
  const rabbitProxy = await startTcpProxy({ target: { host: rabbit.hostname, port: Number(rabbit.port === '' ? 5672 : rabbit.port) } })
  const viaProxy = amqpUrlVia(rabbitProxy.port, '127.0.0.1', options.amqpUrl)
  const cPort = await freePort()
  const coordinatorUrl = `http://127.0.0.1:${cPort}`
  const ports: Record<BankName, number> = { 'bank-a': await freePort(), 'bank-b': await freePort() }
  const httpProxies: Record<BankName, TcpProxy> = {
    'bank-a': await startTcpProxy({ target: { host: '127.0.0.1', port: ports['bank-a'] } }),
    'bank-b': await startTcpProxy({ target: { host: '127.0.0.1', port: ports['bank-b'] } })
  }
  const dbs: Record<BankName, string> = { 'bank-a': join(options.dir, 'bank-a.db'), 'bank-b': join(options.dir, 'bank-b.db') }
  const restartDelay = (): number => between(50, 1000)

  const slots: Record<string, Slot> = {
    coordinator: new Slot('coordinator', async crashAt => await startCoordinator({
      port: cPort,
      db: join(options.dir, 'coordinator.db'),
      id: 'chaos',
      secret: SECRET,
      amqpUrl: viaProxy,
      amqpPrefix: options.prefix,
      env: { TWOPC_RETRY_MAX_MS: '500', TWOPC_PREPARE_TIMEOUT_MS: '2000', TWOPC_DEFAULT_TIMEOUT_MS: '5000' },
      ...(crashAt === undefined ? {} : { crashAt })
    }), restartDelay, log)
  }
  for (const name of Object.keys(ACCOUNTS) as BankName[]) {
    slots[name] = new Slot(name, async crashAt => await startBank({
      name,
      port: ports[name],
      db: dbs[name],
      coordinatorUrl,
      accounts: [...ACCOUNTS[name]],
      initial: INITIAL,
      secret: SECRET,
      amqpUrl: viaProxy,
      amqpPrefix: options.prefix,
      ...(crashAt === undefined ? {} : { crashAt })
    }), restartDelay, log)
  }
  const allSlots = Object.values(slots)
  for (const slot of allSlots) slot.start()

  const cleanup = async (): Promise<void> => {
    await Promise.all(allSlots.map(async s => { await s.stop() }))
    await Promise.all([rabbitProxy.close(), httpProxies['bank-a'].close(), httpProxies['bank-b'].close()])
    const failed = await cleanupPrefix(topologyObjects(amqpNames(options.prefix), ['bank-a', 'bank-b']), options.amqpUrl).catch(() => ['<broker>'])
    if (failed.length > 0) log(`could not delete from the broker: ${failed.join(', ')}`)
  }

  try {
    await waitFor('everything up', () => allSlots.every(s => s.clean()), 180_000, { everyMs: 50 })
    log(`up: coordinator ${coordinatorUrl}, banks ${ports['bank-a']}/${ports['bank-b']} behind proxies ${httpProxies['bank-a'].port}/${httpProxies['bank-b'].port}, RabbitMQ via ${rabbitProxy.port}`)

    // ---- load -----------------------------------------------------------------------------
    const answers = new Map<string, string>()
    const started = Date.now()
    const end = started + options.durationMs
    const maxTransfers = options.maxTransfers ?? Number.POSITIVE_INFINITY
    let stopLoad = false
    const worker = async (w: number): Promise<void> => {
      const r = seededRandom(options.seed * 1000 + w) // per worker: the interleaving is real, the choices are seeded
      // eslint-disable-next-line no-unmodified-loop-condition -- `stopLoad` is set by the run's other tasks
      while (!stopLoad && Date.now() < end && report.transfers < maxTransfers) {
        report.transfers++
        const fromA = r() < 0.5
        const from: BankName = fromA ? 'bank-a' : 'bank-b'
        const to: BankName = fromA ? 'bank-b' : 'bank-a'
        const amount = 1 + Math.floor(r() * 400)
        const body = {
          participants: [
            { name: from, url: `http://127.0.0.1:${httpProxies[from].port}/2pc`, payload: { account: ACCOUNTS[from][Math.floor(r() * 4)], delta: -amount } },
            { name: to, url: `http://127.0.0.1:${httpProxies[to].port}/2pc`, payload: { account: ACCOUNTS[to][Math.floor(r() * 4)], delta: amount } }
          ],
          commit: true,
          timeoutMs: 5000
        }
        try {
          const res = await httpJson('POST', `${coordinatorUrl}/v1/transactions`, body, 15_000)
          if (res.status === 200 && (res.body.state === 'committed' || res.body.state === 'aborted')) {
            answers.set(res.body.id, res.body.state)
            if (res.body.state === 'committed') report.answeredCommitted++
            else report.answeredAborted++
          } else {
            report.unanswered++
            await sleep(50)
          }
        } catch {
          report.unanswered++
          await sleep(100) // the coordinator is down: the initiator backs off
        }
      }
    }
    const workers = Array.from({ length: options.workers ?? 4 }, async (_, i) => { await worker(i) })

    // ---- chaos ----------------------------------------------------------------------------
    const inFlight = new Set<Promise<void>>()
    const busy = new Set<string>()
    const act = (key: string, what: () => Promise<void>): void => {
      if (busy.has(key)) return
      busy.add(key)
      const p = what().catch(err => { log(`chaos action ${key} failed: ${String(err)}`) }).finally(() => { busy.delete(key); inFlight.delete(p) })
      inFlight.add(p)
    }
    const count = (map: Record<string, number>, key: string): void => { map[key] = (map[key] ?? 0) + 1 }
    // A calm start: transfers flow (and commit) before the first fault.
    await sleep(Math.min(options.calmMs ?? 3000, options.durationMs))
    while (Date.now() < end && report.transfers < maxTransfers) {
      await sleep(between(200, 1500))
      const r = rnd()
      if (r < 0.3) {
        const name = r < 0.1 ? 'coordinator' : r < 0.2 ? 'bank-a' : 'bank-b'
        const slot = slots[name] as Slot
        if (slot.proc?.alive() !== true) continue // still (re)starting: nothing to kill
        // Sometimes the restart arms a crash point: it dies there, later, by itself.
        if (rnd() < 0.35) {
          slot.nextCrashAt = `${pick(name === 'coordinator' ? COORDINATOR_POINTS : PARTICIPANT_POINTS)}:${between(1, 6)}`
          report.crashPointsArmed++
        }
        act(`kill-${name}`, async () => {
          log(`SIGKILL ${name}${slot.nextCrashAt === undefined ? '' : ` (restart armed with ${slot.nextCrashAt})`}`)
          count(report.kills, name)
          await slot.kill()
        })
      } else if (r < 0.52) {
        act('rabbit', async () => {
          const ms = between(200, 3000)
          log(`cut RabbitMQ for ${ms} ms`)
          report.rabbitCuts++
          rabbitProxy.cut()
          await sleep(ms)
          rabbitProxy.restore()
        })
      } else {
        const name: BankName = rnd() < 0.5 ? 'bank-a' : 'bank-b'
        const proxy = httpProxies[name]
        act(`http-${name}`, async () => {
          const ms = between(200, 2500)
          const kind = rnd()
          if (kind < 0.5) {
            const lag = between(20, 1500)
            log(`delay HTTP to ${name} by ${lag} ms for ${ms} ms`)
            report.httpDelays++
            proxy.delay(lag)
          } else {
            log(`${kind < 0.75 ? 'cut' : 'black-hole'} HTTP to ${name} for ${ms} ms`)
            report.httpDrops++
            if (kind < 0.75) proxy.cut()
            else proxy.blackhole()
          }
          await sleep(ms)
          proxy.restore()
        })
      }
    }

    // ---- settle ---------------------------------------------------------------------------
    stopLoad = true
    await Promise.all(workers)
    await Promise.all([...inFlight])
    for (const proxy of [rabbitProxy, httpProxies['bank-a'], httpProxies['bank-b']]) proxy.restore()
    for (const slot of allSlots) {
      slot.nextCrashAt = undefined
      if (slot.crashAt !== undefined) await slot.kill() // restarted without its crash point
    }
    for (const [name, slot] of Object.entries(slots)) {
      report.kills[name] = slot.kills
      report.crashPointDeaths[name] = slot.crashPointDeaths
    }
    log(`chaos stopped after ${Math.round((Date.now() - started) / 1000)} s: settling`)
    const settleStarted = Date.now()
    let final: TxRecord[] = []
    let views: Record<BankName, BankView> | undefined
    try {
      await waitFor('everything settled: all up and clean, every transaction completed, nothing in doubt, the outbox empty', async () => {
        // A process started with a crash point armed (its start was under way when chaos stopped): restart it clean.
        for (const slot of allSlots) if (slot.proc?.alive() === true && slot.crashAt !== undefined) await slot.kill()
        if (!allSlots.every(s => s.clean())) return false
        const ready = await httpJson('GET', `${coordinatorUrl}/readyz`)
        if (ready.status !== 200 || ready.body.amqp.connected !== true || ready.body.amqp.outboxDepth !== 0) return false
        const list = await listTransactions(coordinatorUrl)
        if (list.some(tx => !tx.completed)) return false
        const v = { 'bank-a': readBank(dbs['bank-a']), 'bank-b': readBank(dbs['bank-b']) }
        if (Object.values(v).some(b => b.holds.length > 0 || [...b.log.values()].includes('prepared'))) return false
        final = list
        views = v
        return true
      }, options.settleTimeoutMs ?? 120_000, {
        everyMs: 200,
        state: async () => {
          const list = await listTransactions(coordinatorUrl).catch(() => [])
          return { slots: allSlots.map(s => `${s.name}:${String(s.clean())}`), unfinished: list.filter(tx => !tx.completed).slice(0, 5) }
        }
      })
    } catch (err) {
      violation(`did not settle: ${String(err)}`)
    }
    report.settleMs = Date.now() - settleStarted

    // ---- verdict --------------------------------------------------------------------------
    if (views !== undefined) {
      const v = views as Record<BankName, BankView>
      const ready = (await httpJson('GET', `${coordinatorUrl}/readyz`)).body
      checkInvariants(final, v, answers, ready, violation)
      const names = amqpNames(options.prefix)
      const conn = await amqp.connect(options.amqpUrl)
      try {
        for (const bank of ['bank-a', 'bank-b']) {
          const ch = await conn.createChannel()
          ch.on('error', () => {})
          const dead = await ch.checkQueue(names.deadLetterQueue(names.participantQueue(bank))).then(q => q.messageCount, () => 0)
          if (dead > 0) violation(`${dead} decision notices dead-lettered for ${bank}`)
          await ch.close().catch(() => {})
        }
      } finally {
        await conn.close().catch(() => {})
      }
    }
    report.committed = final.filter(tx => tx.state === 'committed').length
    report.aborted = final.filter(tx => tx.state === 'aborted').length
    return report
  } finally {
    await cleanup()
  }
}

export function checkInvariants (list: TxRecord[], banks: Record<BankName, BankView>, answers: Map<string, string>, ready: any, violation: (v: string) => void): void {
  const a = banks['bank-a']
  const b = banks['bank-b']
  const expectedTotal = INITIAL * (ACCOUNTS['bank-a'].length + ACCOUNTS['bank-b'].length)
  if (a.total + b.total !== expectedTotal) violation(`money not conserved: ${a.total} + ${b.total} != ${expectedTotal}`)
  if (a.reserved + b.reserved !== 0) violation(`money still reserved: ${a.reserved + b.reserved}`)
  if (a.holds.length + b.holds.length > 0) violation(`holds left: ${[...a.holds, ...b.holds].join(', ')}`)
  if (ready?.amqp?.outboxDepth !== 0 || ready?.amqp?.outboxDead !== 0) violation(`outbox not empty: ${JSON.stringify(ready?.amqp)}`)
  const byId = new Map(list.map(tx => [tx.id, tx]))
  for (const tx of list) {
    const inA = a.applied.get(tx.id)
    const inB = b.applied.get(tx.id)
    if (!tx.completed) violation(`${tx.id}: not completed`)
    if (tx.participants.some(p => p.ack === 'heuristic')) violation(`${tx.id}: heuristic outcome ${JSON.stringify(tx.participants)}`)
    if (tx.state === 'committed') {
      if (inA === undefined || inB === undefined) violation(`${tx.id}: committed but applied on ${inA === undefined ? '' : 'bank-a'}${inB === undefined ? '' : 'bank-b'} only`)
      else if (inA + inB !== 0) violation(`${tx.id}: applied ${inA} and ${inB}: not one transfer`)
    } else if (tx.state === 'aborted') {
      if (inA !== undefined || inB !== undefined) violation(`${tx.id}: aborted but applied (${String(inA)}, ${String(inB)})`)
    } else {
      violation(`${tx.id}: undecided (${tx.state})`)
    }
    const answer = answers.get(tx.id)
    if (answer !== undefined && answer !== tx.state) violation(`${tx.id}: the initiator was answered ${answer}, the log says ${tx.state}`)
  }
  for (const [name, bank] of Object.entries(banks)) {
    for (const id of bank.applied.keys()) if (byId.get(id)?.state !== 'committed') violation(`${name} applied ${id}, which the coordinator did not commit (${byId.get(id)?.state ?? 'unknown'})`)
    for (const [id, state] of bank.log) {
      if (state === 'prepared') violation(`${name} holds ${id} prepared`)
      const decided = byId.get(id)?.state ?? 'aborted' // presumed abort
      if (state === 'committed' && decided !== 'committed') violation(`${name} committed ${id}, the coordinator: ${decided}`)
      if ((state === 'aborted' || state === 'tombstone') && decided === 'committed') violation(`${name} aborted ${id}, the coordinator committed it`)
    }
  }
  for (const id of answers.keys()) if (!byId.has(id)) violation(`${id}: answered to the initiator, unknown to the coordinator`)
}
