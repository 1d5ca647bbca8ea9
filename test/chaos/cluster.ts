/**
 * Real processes for the crash-point and chaos tests: the coordinator from coordinator/dist/bin.js
 * and bank participants from test/dist/fixtures/bank-participant.js (both built by `tsc -b`,
 * so a child starts in about a second). Killed with SIGKILL, started again on the same port
 * and database.
 */
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
export { freePort } from '../kit/port.js'
export { sleep, waitFor } from '../kit/wait.js'
import { waitFor } from '../kit/wait.js'
import { spawnNode, type NodeChild } from '../kit/child.js'

const HERE = dirname(fileURLToPath(import.meta.url))
/** The repository root, from test/chaos (source) or test/dist/chaos (compiled). */
export const ROOT = HERE.split('/').includes('dist') ? resolve(HERE, '../../..') : resolve(HERE, '../..')
export const COORDINATOR_BIN = resolve(ROOT, 'coordinator/dist/bin.js')
export const BANK_BIN = resolve(ROOT, 'test/dist/fixtures/bank-participant.js')

export type { Exit } from '../kit/child.js'
export type Proc = NodeChild

function spawnProc (name: string, file: string, env: Record<string, string>): Proc {
  return spawnNode(file, { name, cwd: ROOT, env: { TWOPC_CRASH_AT: '', NODE_OPTIONS: '', ...env }, keep: 20_000 })
}

export interface CoordinatorSpec {
  port: number
  db: string
  id?: string
  secret?: string
  amqpUrl?: string
  amqpPrefix?: string
  crashAt?: string
  env?: Record<string, string>
}

/**
 * Starts a coordinator; resolves when /readyz answers 200 — or when the process exited first
 * (a crash point reached during start-up recovery): check `alive()`.
 */
export async function startCoordinator (spec: CoordinatorSpec, readyTimeoutMs = 90_000): Promise<Proc> {
  const env: Record<string, string> = {
    PORT: String(spec.port),
    HOST: '127.0.0.1',
    TWOPC_DB: spec.db,
    TWOPC_COORDINATOR_ID: spec.id ?? 'bank',
    TWOPC_RETRY_BASE_MS: '20',
    TWOPC_RETRY_MAX_MS: '300',
    TWOPC_RETRY_BUDGET: '100000',
    LOG_LEVEL: 'error',
    ...spec.env
  }
  if (spec.secret !== undefined) env.TWOPC_SECRET = spec.secret
  if (spec.amqpUrl !== undefined) env.AMQP_URL = spec.amqpUrl
  if (spec.amqpPrefix !== undefined) env.TWOPC_AMQP_PREFIX = spec.amqpPrefix
  if (spec.crashAt !== undefined) env.TWOPC_CRASH_AT = spec.crashAt
  const proc = spawnProc('coordinator', COORDINATOR_BIN, env)
  const url = `http://127.0.0.1:${spec.port}`
  try {
    await waitFor('coordinator ready', async () => {
      if (!proc.alive()) return true
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) })
      await res.arrayBuffer()
      return res.status === 200
    }, readyTimeoutMs, { everyMs: 50 })
  } catch (err) {
    await proc.kill()
    throw new Error(`${String(err)}\n${proc.stderr()}`)
  }
  return proc
}

export interface BankSpec {
  name: string
  port: number
  db: string
  coordinatorUrl: string
  accounts?: string[]
  initial?: number
  secret?: string
  amqpUrl?: string
  amqpPrefix?: string
  failPhase2Http?: boolean
  crashAt?: string
}

/** Starts a bank participant; resolves once it listens (or when it exited first: check `alive()`). */
export async function startBank (spec: BankSpec, timeoutMs = 90_000): Promise<Proc> {
  const env: Record<string, string> = {
    BANK_NAME: spec.name,
    BANK_DB: spec.db,
    BANK_PORT: String(spec.port),
    BANK_COORDINATOR_URL: spec.coordinatorUrl,
    BANK_ACCOUNTS: (spec.accounts ?? []).join(','),
    BANK_INITIAL: String(spec.initial ?? 0),
    BANK_SECRET: spec.secret ?? '',
    BANK_AMQP_URL: spec.amqpUrl ?? '',
    BANK_AMQP_PREFIX: spec.amqpPrefix ?? '',
    BANK_FAIL_PHASE2_HTTP: spec.failPhase2Http === true ? '1' : ''
  }
  if (spec.crashAt !== undefined) env.TWOPC_CRASH_AT = spec.crashAt
  const proc = spawnProc(spec.name, BANK_BIN, env)
  let stdout = ''
  const listening = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${spec.name} did not start: ${proc.stderr()}`)), timeoutMs)
    proc.child.stdout?.on('data', (d: Buffer) => {
      stdout += d.toString()
      if (/LISTENING \d+/.test(stdout)) { clearTimeout(timer); resolve() }
    })
    void proc.exited.then(() => { clearTimeout(timer); resolve() })
  })
  try {
    await listening
  } catch (err) {
    await proc.kill()
    throw err
  }
  return proc
}

/** JSON over HTTP with a timeout; throws on a network error. */
export async function httpJson (method: string, url: string, body?: unknown, timeoutMs = 10_000): Promise<{ status: number, body: any }> {
  const init: RequestInit = { method, signal: AbortSignal.timeout(timeoutMs) }
  if (body !== undefined) {
    init.body = JSON.stringify(body)
    init.headers = { 'content-type': 'application/json' }
  }
  const res = await fetch(url, init)
  const text = await res.text()
  let parsed: unknown = text
  try { parsed = JSON.parse(text) } catch {}
  return { status: res.status, body: parsed }
}

export interface TxRecord {
  id: string
  state: string
  reason: string | null
  completed: boolean
  needsAttention: boolean
  participants: Array<{ name: string, vote: string | null, ack: string }>
  heuristics?: unknown[]
}

/** Every transaction of a coordinator (paged), with the whole record of each one not `completed`. */
export async function listTransactions (coordinatorUrl: string): Promise<TxRecord[]> {
  const out: TxRecord[] = []
  let cursor: string | undefined
  for (;;) {
    const q = `${coordinatorUrl}/v1/transactions?limit=500${cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`}`
    const page = await httpJson('GET', q)
    if (page.status !== 200) throw new Error(`list: ${page.status} ${JSON.stringify(page.body)}`)
    out.push(...(page.body.items as TxRecord[]))
    cursor = page.body.nextCursor ?? undefined
    if (cursor === undefined || cursor === null) return out
  }
}
