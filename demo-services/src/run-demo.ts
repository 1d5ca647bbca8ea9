#!/usr/bin/env node
/**
 * Over 500 lines: the scenario and its verdicts are read as one script, step by step, by whoever
 * wants to know what `npm start` shows.
 *
 * `npm start`: the whole createOrder demo in one command.
 *
 * Starts the coordinator and the order, inventory and payment services as child processes
 * (from dist), with RabbitMQ when one answers at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672),
 * seeds stock and balances, runs a scripted scenario — orders that succeed, orders rejected for
 * stock and for funds, payment SIGKILLed while transactions are in flight and restarted — and
 * checks that the three databases, the coordinator's log and the `order.placed` messages agree.
 * Exit 0 only if everything is consistent.
 *
 *   node demo-services/dist/run-demo.js [--serve] [--no-scenario] [--data-dir DIR] [--no-amqp] [--report FILE]
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import amqp from 'amqplib'
import { amqpNames } from '@fastify-2pc/protocol'
import { topologyObjects } from '@fastify-2pc/amqp'
import { PRICES } from './catalog.js'
import type { ServiceName } from './config.js'

export const DEFAULT_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672'

type ProcName = 'coordinator' | ServiceName

export interface DemoOptions {
  /** Where the SQLite files and logs go; wiped first. Default: a fresh temp dir. */
  dataDir?: string
  /** RabbitMQ URL to try; `null` runs without it. Default: AMQP_URL or the local default. */
  amqpUrl?: string | null
  /** Run the scripted scenario (default true). */
  scenario?: boolean
  /** Fixed ports to try first (serve mode); a busy one is replaced by a free one. */
  preferredPorts?: Partial<Record<ProcName, number>>
  /** Progress output (default: stdout). */
  print?: (line: string) => void
}

export interface Check { name: string, ok: boolean, detail: string }
export interface Verdict { phase: string, consistent: boolean, settledMs: number, checks: Check[] }
export interface OrderResult {
  request: { sku: string, qty: number, account: string }
  status: number
  state: 'committed' | 'aborted' | 'error'
  orderId?: string
  txid?: string
  rejected?: string
  error?: string
}
export interface DemoReport {
  dataDir: string
  amqp: boolean
  amqpPrefix: string
  urls: Record<ProcName, string>
  results: OrderResult[]
  verdicts: Verdict[]
  kill?: { service: ServiceName, heldAtKill: number, restartedPid: number | undefined }
  consistent: boolean
}

// ---------------------------------------------------------------------------------------------
// Small helpers

const here = dirname(fileURLToPath(import.meta.url))
/** demo-services/ (from src/ under tests, from dist/ otherwise): children always run from dist. */
const packageRoot = resolve(here, '..')
function coordinatorBin (): string {
  // Resolves to coordinator/src/index.ts or coordinator/dist/index.js: its bin is in dist either way.
  const entry = fileURLToPath(import.meta.resolve('@fastify-2pc/coordinator'))
  return join(dirname(dirname(entry)), 'dist', 'bin.js')
}
const serviceBin = (name: ServiceName): string => join(packageRoot, 'dist', `${name}-bin.js`)

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

export function redact (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString().replace(/\/$/, '')
  } catch { return '<bad url>' }
}

async function freePort (preferred?: number): Promise<number> {
  const tryListen = (port: number): Promise<number | undefined> => new Promise(resolve => {
    const srv = createServer()
    srv.once('error', () => resolve(undefined))
    srv.listen(port, '127.0.0.1', () => {
      const addr = srv.address()
      const got = typeof addr === 'object' && addr !== null ? addr.port : undefined
      srv.close(() => resolve(got))
    })
  })
  if (preferred !== undefined) {
    const p = await tryListen(preferred)
    if (p !== undefined) return p
  }
  const p = await tryListen(0)
  if (p === undefined) throw new Error('no free port')
  return p
}

async function probeAmqp (url: string): Promise<string | undefined> {
  try {
    const conn = await amqp.connect(url, { timeout: 2000 })
    conn.on('error', () => {})
    await conn.close()
    return undefined
  } catch (err) {
    return (err as Error).message
  }
}

interface HttpAnswer<T> { status: number, body: T }

async function http<T = unknown> (method: 'GET' | 'POST', url: string, body?: unknown, headers: Record<string, string> = {}, timeoutMs = 15_000): Promise<HttpAnswer<T>> {
  const res = await fetch(url, {
    method,
    headers: { ...headers, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(timeoutMs)
  })
  const text = await res.text()
  return { status: res.status, body: (text === '' ? null : JSON.parse(text)) as T }
}

/** Polls `probe` until it returns a value (not undefined), bounded. */
async function until<T> (what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await probe()
      if (v !== undefined) return v
    } catch (err) { last = err }
    if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs} ms${last !== undefined ? ` (${(last as Error).message})` : ''}`)
    await sleep(intervalMs)
  }
}

// ---------------------------------------------------------------------------------------------
// The stack: the coordinator and the three services as child processes

interface Proc { name: ProcName, child: ChildProcess | undefined, port: number, env: NodeJS.ProcessEnv, script: string }

/** Variables of the parent that must not leak into the children (they get their own). */
const OWN_VARS = /^(TWOPC_|AMQP_URL$|PORT$|HOST$|DB_PATH$|LOG_LEVEL$|ORDER_|INVENTORY_URL$|PAYMENT_URL$|DEMO_)/

export class DemoStack {
  readonly dataDir: string
  readonly amqpUrl: string | undefined
  readonly prefix: string
  readonly token = randomBytes(16).toString('hex')
  readonly secret = randomBytes(16).toString('hex')
  readonly procs = new Map<ProcName, Proc>()
  #stopped = false
  readonly #onExit = (): void => { for (const p of this.procs.values()) p.child?.kill('SIGKILL') }

  constructor (dataDir: string, amqpUrl: string | undefined, prefix: string) {
    this.dataDir = dataDir
    this.amqpUrl = amqpUrl
    this.prefix = prefix
    process.on('exit', this.#onExit)
  }

  url (name: ProcName): string {
    const p = this.procs.get(name)
    if (p === undefined) throw new Error(`no ${name}`)
    return `http://127.0.0.1:${p.port}`
  }

  get ordersExchange (): string { return `${this.prefix}.demo.orders` }
  get orderPlacedQueue (): string { return `${this.prefix}.demo.order-placed` }
  get authHeaders (): Record<string, string> { return { authorization: `Bearer ${this.token}` } }

  async start (preferred: Partial<Record<ProcName, number>> = {}): Promise<void> {
    mkdirSync(join(this.dataDir, 'logs'), { recursive: true })
    const ports = {} as Record<ProcName, number>
    for (const name of ['coordinator', 'order', 'inventory', 'payment'] as const) ports[name] = await freePort(preferred[name])
    const base: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !OWN_VARS.test(k)))
    const shared = {
      HOST: '127.0.0.1',
      TWOPC_SECRET: this.secret,
      TWOPC_API_TOKEN: this.token,
      TWOPC_AMQP_PREFIX: this.prefix,
      LOG_LEVEL: 'info',
      ...(this.amqpUrl !== undefined ? { AMQP_URL: this.amqpUrl } : {})
    }
    const coordinatorUrl = `http://127.0.0.1:${ports.coordinator}`
    this.procs.set('coordinator', {
      name: 'coordinator',
      script: coordinatorBin(),
      port: ports.coordinator,
      child: undefined,
      env: {
        ...base,
        ...shared,
        PORT: String(ports.coordinator),
        TWOPC_DB: join(this.dataDir, 'coordinator.db'),
        TWOPC_COORDINATOR_ID: 'demo',
        // Short retries so a restarted participant hears its decisions quickly.
        TWOPC_RETRY_BASE_MS: '100',
        TWOPC_RETRY_MAX_MS: '1000',
        // ... and a participant down for a while is expected here, not worth an operator's attention.
        TWOPC_RETRY_BUDGET: '1000',
        TWOPC_PREPARE_TIMEOUT_MS: '5000'
      }
    })
    for (const name of ['inventory', 'payment', 'order'] as const) {
      this.procs.set(name, {
        name,
        script: serviceBin(name),
        port: ports[name],
        child: undefined,
        env: {
          ...base,
          ...shared,
          PORT: String(ports[name]),
          DB_PATH: join(this.dataDir, `${name}.db`),
          TWOPC_COORDINATOR_URL: coordinatorUrl,
          TWOPC_IN_DOUBT_AFTER_MS: '1000',
          ...(name === 'order'
            ? {
                ORDER_PUBLIC_URL: `http://127.0.0.1:${ports.order}`,
                INVENTORY_URL: `http://127.0.0.1:${ports.inventory}`,
                PAYMENT_URL: `http://127.0.0.1:${ports.payment}`,
                DEMO_ORDERS_EXCHANGE: this.ordersExchange,
                DEMO_ORDER_PLACED_QUEUE: this.orderPlacedQueue
              }
            : {})
        }
      })
    }
    // All at once: a participant that starts before the coordinator answers just asks again later.
    await Promise.all((['coordinator', 'inventory', 'payment', 'order'] as const).map(async name => { await this.launch(name) }))
  }

  logFile (name: ProcName): string { return join(this.dataDir, 'logs', `${name}.log`) }

  /** Starts (or restarts) one process and waits until it is ready. */
  async launch (name: ProcName): Promise<void> {
    const p = this.procs.get(name) as Proc
    for (const s of [p.script]) if (!existsSync(s)) throw new Error(`${s} is missing: build first (npm run build)`)
    const fd = openSync(this.logFile(name), 'a')
    const child = spawn(process.execPath, [p.script], { env: p.env, stdio: ['ignore', fd, fd] })
    closeSync(fd)
    p.child = child
    let exited: string | undefined
    child.once('exit', (code, signal) => { exited = `exited (${signal ?? code})` })
    const readyPath = name === 'coordinator' ? '/readyz' : name === 'order' ? '/orders' : '/healthz'
    await until(`${name} ready`, 60_000, async () => {
      if (exited !== undefined) throw new Error(`${name} ${exited}; see ${this.logFile(name)}:\n${this.tail(name)}`)
      const r = await http<{ messages?: { exchangeReady?: boolean } }>('GET', this.url(name) + readyPath, undefined, {}, 2000)
      if (r.status !== 200) return undefined
      // The order service needs the orders exchange declared before it may publish to it.
      if (name === 'order' && this.amqpUrl !== undefined && r.body.messages?.exchangeReady !== true) return undefined
      return true
    }, 50).catch((err: Error) => {
      if (exited !== undefined) throw new Error(`${name} ${exited}; see ${this.logFile(name)}:\n${this.tail(name)}`)
      throw err
    })
  }

  /** SIGKILL: no cleanup, no goodbye — what a crash or an OOM kill looks like. */
  async kill (name: ProcName): Promise<number | undefined> {
    const p = this.procs.get(name) as Proc
    const child = p.child
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return undefined
    const pid = child.pid
    const gone = once(child, 'exit')
    child.kill('SIGKILL')
    await gone
    return pid
  }

  pid (name: ProcName): number | undefined { return this.procs.get(name)?.child?.pid }

  tail (name: ProcName, lines = 15): string {
    try {
      return readFileSync(this.logFile(name), 'utf8').trimEnd().split('\n').slice(-lines).map(l => `      ${l}`).join('\n')
    } catch { return '' }
  }

  /** SIGTERM everything (services first), SIGKILL what is still there after 5 s; removes the run's RabbitMQ objects. */
  async stop (): Promise<void> {
    if (this.#stopped) return
    this.#stopped = true
    const order: ProcName[] = ['order', 'inventory', 'payment', 'coordinator']
    for (const group of [order.slice(0, 3), order.slice(3)]) {
      await Promise.all(group.map(async name => {
        const child = this.procs.get(name)?.child
        if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
        const gone = once(child, 'exit')
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
        await gone
        clearTimeout(timer)
      }))
    }
    process.off('exit', this.#onExit)
    if (this.amqpUrl !== undefined) await this.deleteAmqpObjects().catch(() => {})
  }

  async deleteAmqpObjects (): Promise<void> {
    if (this.amqpUrl === undefined) return
    const conn = await amqp.connect(this.amqpUrl, { timeout: 2000 })
    conn.on('error', () => {})
    try {
      const ch = await conn.createChannel()
      ch.on('error', () => {})
      const objects = topologyObjects(amqpNames(this.prefix), ['order', 'inventory', 'payment'])
      for (const q of [...objects.queues, this.orderPlacedQueue]) await ch.deleteQueue(q)
      for (const x of [...objects.exchanges, this.ordersExchange]) await ch.deleteExchange(x)
    } finally {
      await conn.close().catch(() => {})
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The scenario and the consistency verdict

const SEED_STOCK: Record<string, number> = { apple: 20, pear: 5, fig: 2 }
const SEED_BALANCES: Record<string, number> = { alice: 100, bob: 20, carol: 60 }

interface StockItem { sku: string, available: number, reserved: number, sold: number }
interface BalanceItem { account: string, balance: number, held: number, spent: number }
interface OrderItem { id: string, txid: string, sku: string, qty: number, account: string, total: number, status: string, notified: boolean }
interface TxItem { id: string, state: string, completed: boolean, needsAttention: boolean }

async function placeOrder (stack: DemoStack, request: OrderResult['request']): Promise<OrderResult> {
  try {
    const r = await http<{ order?: { id: string, txid: string }, outcome?: { state: 'committed' | 'aborted' }, rejected?: string, message?: string, code?: string }>(
      'POST', stack.url('order') + '/orders', request)
    if ((r.status === 201 || r.status === 409) && r.body.outcome !== undefined && r.body.order !== undefined) {
      return {
        request,
        status: r.status,
        state: r.body.outcome.state,
        orderId: r.body.order.id,
        txid: r.body.order.txid,
        ...(r.body.rejected !== undefined ? { rejected: r.body.rejected } : {})
      }
    }
    return { request, status: r.status, state: 'error', error: `${r.body.code ?? r.status}: ${r.body.message ?? ''}` }
  } catch (err) {
    return { request, status: 0, state: 'error', error: (err as Error).message }
  }
}

function describe (r: OrderResult): string {
  const { sku, qty, account } = r.request
  const total = (PRICES[sku] ?? 0) * qty
  const head = `${account.padEnd(7)} ${String(qty).padStart(2)} × ${sku.padEnd(6)} = ${String(total).padStart(3)}`
  if (r.state === 'committed') return `  ✔ ${head}  placed     ${r.txid ?? ''}`
  if (r.state === 'aborted') return `  ✘ ${head}  rejected: ${r.rejected ?? 'aborted'}`
  return `  ! ${head}  error: ${r.error ?? ''}`
}

async function listTransactions (stack: DemoStack): Promise<TxItem[]> {
  const items: TxItem[] = []
  let cursor: string | null = null
  do {
    const q: string = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`
    const r: HttpAnswer<{ items: TxItem[], nextCursor: string | null }> = await http('GET', `${stack.url('coordinator')}/v1/transactions?limit=500${q}`, undefined, stack.authHeaders)
    if (r.status !== 200) throw new Error(`coordinator list answered ${r.status}`)
    items.push(...r.body.items)
    cursor = r.body.nextCursor
  } while (cursor !== null)
  return items
}

/** Reads every service and the coordinator, and checks that they agree. */
export async function checkConsistency (stack: DemoStack, results: OrderResult[]): Promise<Check[]> {
  const [stock, balances, orders, txs, ...inDoubt] = await Promise.all([
    http<{ items: StockItem[] }>('GET', stack.url('inventory') + '/stock'),
    http<{ items: BalanceItem[] }>('GET', stack.url('payment') + '/balances'),
    http<{ items: OrderItem[], messages: { received: number } }>('GET', stack.url('order') + '/orders'),
    listTransactions(stack),
    ...(['order', 'inventory', 'payment'] as const).map(async name => ({ name, r: await http<{ inDoubt: unknown[] }>('GET', stack.url(name) + '/in-doubt') }))
  ])
  const checks: Check[] = []
  const placed = orders.body.items.filter(o => o.status === 'placed')
  const pending = orders.body.items.filter(o => o.status !== 'placed')

  // Stock taken = orders placed.
  const stockBad: string[] = []
  const stockText: string[] = []
  for (const [sku, seeded] of Object.entries(SEED_STOCK)) {
    const s = stock.body.items.find(i => i.sku === sku) ?? { available: 0, reserved: 0, sold: 0 }
    const ordered = placed.filter(o => o.sku === sku).reduce((n, o) => n + o.qty, 0)
    const taken = seeded - s.available
    stockText.push(`${sku} ${taken}/${ordered}`)
    if (taken !== ordered || s.sold !== ordered || s.reserved !== 0) stockBad.push(`${sku}: taken ${taken}, sold ${s.sold}, reserved ${s.reserved}, in placed orders ${ordered}`)
  }
  checks.push({ name: 'stock taken = units in placed orders', ok: stockBad.length === 0, detail: stockBad.length === 0 ? stockText.join(', ') : stockBad.join('; ') })

  // Money moved = the orders' totals.
  const moneyBad: string[] = []
  const moneyText: string[] = []
  for (const [account, seeded] of Object.entries(SEED_BALANCES)) {
    const b = balances.body.items.find(i => i.account === account) ?? { balance: 0, held: 0, spent: 0 }
    const owed = placed.filter(o => o.account === account).reduce((n, o) => n + o.total, 0)
    const moved = seeded - b.balance
    moneyText.push(`${account} ${moved}/${owed}`)
    if (moved !== owed || b.spent !== owed || b.held !== 0) moneyBad.push(`${account}: moved ${moved}, captured ${b.spent}, held ${b.held}, placed orders' total ${owed}`)
  }
  checks.push({ name: "money moved = placed orders' totals", ok: moneyBad.length === 0, detail: moneyBad.length === 0 ? moneyText.join(', ') : moneyBad.join('; ') })

  // Orders = committed transactions, and = what the callers were told.
  const committed = new Set(txs.filter(t => t.state === 'committed').map(t => t.id))
  const placedTx = new Set(placed.map(o => o.txid))
  const orderBad: string[] = []
  if (pending.length > 0) orderBad.push(`${pending.length} order row(s) still pending`)
  for (const id of committed) if (!placedTx.has(id)) orderBad.push(`committed ${id} has no placed order`)
  for (const id of placedTx) if (!committed.has(id)) orderBad.push(`order of ${id} placed but the coordinator did not commit it`)
  for (const r of results) {
    if (r.state === 'committed' && !placedTx.has(r.txid ?? '')) orderBad.push(`told "placed" for ${r.txid} but no order row`)
    if (r.state === 'aborted' && orders.body.items.some(o => o.txid === r.txid)) orderBad.push(`told "rejected" for ${r.txid} but an order row exists`)
  }
  const told = results.filter(r => r.state === 'committed').length
  checks.push({ name: 'orders placed = transactions committed = orders answered "placed"', ok: orderBad.length === 0, detail: orderBad.length === 0 ? `${placed.length} = ${committed.size} = ${told}` : orderBad.slice(0, 5).join('; ') })

  // Nothing left prepared anywhere; every transaction finished at the coordinator.
  const held = inDoubt.filter(x => x.r.body.inDoubt.length > 0).map(x => `${x.name} holds ${x.r.body.inDoubt.length}`)
  const unfinished = txs.filter(t => !t.completed || t.needsAttention)
  checks.push({
    name: 'no transaction left prepared anywhere',
    ok: held.length === 0 && unfinished.length === 0,
    detail: held.length === 0 && unfinished.length === 0
      ? `0 in doubt at order, inventory, payment; ${txs.length} transactions completed at the coordinator`
      : [...held, ...(unfinished.length > 0 ? [`${unfinished.length} transaction(s) not completed at the coordinator (${unfinished.slice(0, 3).map(t => `${t.id} ${t.state}`).join(', ')})`] : [])].join('; ')
  })

  if (stack.amqpUrl !== undefined) {
    const msgs = await http<{ items: Array<{ orderId: string }> }>('GET', stack.url('order') + '/order-placed')
    const got = new Set(msgs.body.items.map(m => m.orderId))
    const want = new Set(placed.map(o => o.id))
    const missing = [...want].filter(id => !got.has(id))
    const extra = [...got].filter(id => !want.has(id))
    checks.push({
      name: 'order.placed messages consumed = orders placed',
      ok: missing.length === 0 && extra.length === 0,
      detail: missing.length === 0 && extra.length === 0 ? `${got.size} = ${want.size}` : `${missing.length} missing, ${extra.length} for orders that were not placed`
    })
  }
  return checks
}

/** Waits (bounded polling) until the checks pass — phase 2 and messages are asynchronous — and returns the verdict. */
async function verdict (stack: DemoStack, phase: string, results: OrderResult[], timeoutMs = 30_000): Promise<Verdict> {
  const started = Date.now()
  let checks: Check[] = []
  for (;;) {
    try {
      checks = await checkConsistency(stack, results)
    } catch (err) {
      checks = [{ name: 'read every service', ok: false, detail: (err as Error).message }]
    }
    if (checks.every(c => c.ok) || Date.now() - started > timeoutMs) break
    await sleep(100)
  }
  return { phase, consistent: checks.every(c => c.ok), settledMs: Date.now() - started, checks }
}

function printVerdict (print: (l: string) => void, v: Verdict): void {
  print(`== verdict ${v.phase}: ${v.consistent ? 'CONSISTENT' : 'INCONSISTENT'} (settled in ${v.settledMs} ms)`)
  for (const c of v.checks) print(`  ${c.ok ? '✔' : '✘'} ${c.name}: ${c.detail}`)
}

export async function runScenario (stack: DemoStack, print: (l: string) => void): Promise<Pick<DemoReport, 'results' | 'verdicts' | 'kill'>> {
  const results: OrderResult[] = []
  const verdicts: Verdict[] = []
  const order = async (sku: string, qty: number, account: string): Promise<OrderResult> => {
    const r = await placeOrder(stack, { sku, qty, account })
    results.push(r)
    return r
  }

  print('== 1. orders one by one')
  for (const [sku, qty, account] of [
    ['apple', 2, 'alice'], // placed
    ['pear', 1, 'bob'], // placed
    ['fig', 2, 'carol'], // placed: the last two figs
    ['fig', 1, 'alice'], // out of stock
    ['pear', 4, 'bob'], // 20 credits, bob has 15 left: insufficient funds
    ['pear', 10, 'alice'], // out of stock
    ['apple', 1, 'mallory'] // no such account
  ] as const) print(describe(await order(sku, qty, account)))
  const v1 = await verdict(stack, 'after step 1', results)
  printVerdict(print, v1)
  verdicts.push(v1)

  print('== 2. payment SIGKILLed while orders are in flight, then restarted')
  const burst = Array.from({ length: 12 }, (_, i) => order('apple', 1, i % 2 === 0 ? 'alice' : 'carol'))
  let settled = false
  void Promise.allSettled(burst).then(() => { settled = true })
  // Kill it the moment it holds funds for a transaction whose decision it has not heard yet.
  let heldAtKill = 0
  const watchUntil = Date.now() + 10_000
  // eslint-disable-next-line no-unmodified-loop-condition -- `settled` is set by the burst's promise
  while (!settled && Date.now() < watchUntil) {
    try {
      const b = await http<{ items: BalanceItem[] }>('GET', stack.url('payment') + '/balances', undefined, {}, 1000)
      heldAtKill = b.body.items.reduce((n, i) => n + i.held, 0)
      if (heldAtKill > 0) break
    } catch { break }
  }
  const killedPid = await stack.kill('payment')
  print(`  payment (pid ${killedPid ?? '?'}) SIGKILLed ${heldAtKill > 0 ? `while holding ${heldAtKill} credits for prepared transactions` : 'after the burst (no hold caught in flight)'}`)
  for (const r of await Promise.all(burst)) print(describe(r))
  print('  while payment is down:')
  print(describe(await order('pear', 1, 'alice')))
  print(describe(await order('apple', 1, 'bob')))
  await stack.launch('payment')
  const back = await http<{ inDoubt: unknown[] }>('GET', stack.url('payment') + '/in-doubt')
  print(`  payment restarted (pid ${stack.pid('payment') ?? '?'}); in doubt right after start: ${back.body.inDoubt.length} (the SDK asks the coordinator about each)`)
  print('  after the restart:')
  print(describe(await order('pear', 1, 'alice')))
  print(describe(await order('apple', 1, 'bob')))
  const v2 = await verdict(stack, 'after the kill and restart', results)
  printVerdict(print, v2)
  verdicts.push(v2)
  return { results, verdicts, kill: { service: 'payment', heldAtKill, restartedPid: stack.pid('payment') } }
}

async function seed (stack: DemoStack, print: (l: string) => void): Promise<void> {
  for (const [sku, available] of Object.entries(SEED_STOCK)) {
    const r = await http('POST', stack.url('inventory') + '/stock', { sku, available })
    if (r.status !== 201) throw new Error(`seeding stock answered ${r.status}`)
  }
  for (const [account, balance] of Object.entries(SEED_BALANCES)) {
    const r = await http('POST', stack.url('payment') + '/balances', { account, balance })
    if (r.status !== 201) throw new Error(`seeding balances answered ${r.status}`)
  }
  print(`== seeded  stock: ${Object.entries(SEED_STOCK).map(([k, v]) => `${k} ${v}`).join(', ')}   balances: ${Object.entries(SEED_BALANCES).map(([k, v]) => `${k} ${v}`).join(', ')}   prices: ${Object.entries(PRICES).map(([k, v]) => `${k} ${v}`).join(', ')}`)
}

/** Starts the stack, seeds it and runs the scenario. With `serve`, returns the running stack too. */
export async function runDemo (options: DemoOptions = {}): Promise<{ report: DemoReport, stack: DemoStack }> {
  const print = options.print ?? ((l: string) => { process.stdout.write(l + '\n') })
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'twopc-demo-'))
  rmSync(dataDir, { recursive: true, force: true })
  mkdirSync(dataDir, { recursive: true })

  let amqpUrl: string | undefined
  if (options.amqpUrl !== null) {
    const candidate = options.amqpUrl ?? (process.env.AMQP_URL !== undefined && process.env.AMQP_URL !== '' ? process.env.AMQP_URL : DEFAULT_AMQP_URL)
    const error = await probeAmqp(candidate)
    if (error === undefined) {
      amqpUrl = candidate
    } else {
      print('!!! ---------------------------------------------------------------------------')
      print(`!!! RabbitMQ does not answer at ${redact(candidate)} (${error})`)
      print('!!! running WITHOUT RabbitMQ: decisions over HTTP only, no order.placed messages')
      print('!!! ---------------------------------------------------------------------------')
    }
  } else {
    print('!!! RabbitMQ disabled (--no-amqp): decisions over HTTP only, no order.placed messages')
  }
  const prefix = `demo-${randomBytes(3).toString('hex')}`
  const stack = new DemoStack(dataDir, amqpUrl, prefix)
  print('== fastify-2pc demo: createOrder across order, inventory and payment')
  print(`   data and logs: ${dataDir}`)
  print(`   RabbitMQ: ${amqpUrl !== undefined ? `on, ${redact(amqpUrl)} (names prefixed ${prefix}.)` : 'OFF'}`)
  const t0 = Date.now()
  try {
    return await runOn(stack, options, print, t0)
  } catch (err) {
    await stack.stop().catch(() => {})
    throw err
  }
}

async function runOn (stack: DemoStack, options: DemoOptions, print: (l: string) => void, t0: number): Promise<{ report: DemoReport, stack: DemoStack }> {
  await stack.start(options.preferredPorts)
  print(`== started  coordinator ${stack.url('coordinator')}  order ${stack.url('order')}  inventory ${stack.url('inventory')}  payment ${stack.url('payment')}  (${Date.now() - t0} ms)`)
  await seed(stack, print)
  const report: DemoReport = {
    dataDir: stack.dataDir,
    amqp: stack.amqpUrl !== undefined,
    amqpPrefix: stack.prefix,
    urls: { coordinator: stack.url('coordinator'), order: stack.url('order'), inventory: stack.url('inventory'), payment: stack.url('payment') },
    results: [],
    verdicts: [],
    consistent: true
  }
  if (options.scenario !== false) {
    const s = await runScenario(stack, print)
    Object.assign(report, s)
    report.consistent = s.verdicts.every(v => v.consistent)
  }
  return { report, stack }
}

export function curlCommands (stack: DemoStack): string[] {
  const auth = `-H 'authorization: Bearer ${stack.token}'`
  return [
    `curl -s -XPOST ${stack.url('order')}/orders -H 'content-type: application/json' -d '{"sku":"apple","qty":1,"account":"alice"}'`,
    `curl -s ${stack.url('order')}/orders`,
    `curl -s ${stack.url('inventory')}/stock`,
    `curl -s ${stack.url('payment')}/balances`,
    `curl -s ${stack.url('payment')}/in-doubt`,
    `curl -s '${stack.url('coordinator')}/v1/transactions?limit=5' ${auth}`,
    `curl -s ${stack.url('coordinator')}/readyz`
  ]
}

// ---------------------------------------------------------------------------------------------
// CLI

interface Args { serve: boolean, scenario: boolean, dataDir?: string, amqp: boolean, report?: string }

function parseArgs (argv: string[]): Args {
  const args: Args = { serve: false, scenario: true, amqp: true }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--serve') args.serve = true
    else if (a === '--no-scenario') args.scenario = false
    else if (a === '--no-amqp') args.amqp = false
    else if (a === '--data-dir') args.dataDir = argv[++i]
    else if (a === '--report') args.report = argv[++i]
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: npm start -- [--serve] [--no-scenario] [--data-dir DIR] [--no-amqp] [--report FILE]\n')
      process.exit(0)
    } else {
      process.stderr.write(`unknown argument ${a ?? ''} (try --help)\n`)
      process.exit(64)
    }
  }
  if (!args.serve && !args.scenario) args.scenario = true
  return args
}

async function main (): Promise<void> {
  const args = parseArgs(process.argv.slice(2))
  const print = (l: string): void => { process.stdout.write(l + '\n') }
  const tempDir = args.dataDir === undefined && !args.serve
  const dataDir = args.dataDir ?? (args.serve ? resolve('data', 'demo') : mkdtempSync(join(tmpdir(), 'twopc-demo-')))
  let stack: DemoStack | undefined
  let stopping = false
  const shutdown = async (code: number): Promise<never> => {
    if (!stopping) {
      stopping = true
      await stack?.stop().catch(() => {})
    }
    process.exit(code)
  }
  process.on('SIGINT', () => { print('\n== stopping everything'); void shutdown(130) })
  process.on('SIGTERM', () => { void shutdown(143) })

  let report: DemoReport
  try {
    const result = await runDemo({
      dataDir,
      scenario: args.scenario,
      ...(args.amqp ? {} : { amqpUrl: null }),
      ...(args.serve ? { preferredPorts: { coordinator: 7070, order: 3001, inventory: 3002, payment: 3003 } } : {}),
      print
    })
    stack = result.stack
    report = result.report
  } catch (err) {
    print(`!!! the demo failed: ${(err as Error).message}`)
    print(`    logs: ${join(dataDir, 'logs')}`)
    await shutdown(1)
    return
  }
  if (args.report !== undefined) writeFileSync(args.report, JSON.stringify(report, null, 2))
  if (args.scenario) {
    print(report.consistent
      ? `== CONSISTENT: ${report.results.filter(r => r.state === 'committed').length} orders placed, ${report.results.filter(r => r.state === 'aborted').length} rejected, every one all-or-nothing across order, inventory and payment${report.amqp ? ' and its order.placed message' : ''}`
      : `== INCONSISTENT — see the checks above and the logs in ${join(dataDir, 'logs')}`)
  }
  if (args.serve) {
    print('== serving (Ctrl-C stops everything). Try:')
    for (const c of curlCommands(stack)) print(`   ${c}`)
    return // the children keep the event loop alive; SIGINT stops them
  }
  await stack.stop()
  if (tempDir && report.consistent) rmSync(dataDir, { recursive: true, force: true })
  process.exit(report.consistent ? 0 : 1)
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main()
}
