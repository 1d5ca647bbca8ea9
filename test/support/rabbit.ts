/**
 * RabbitMQ helpers for tests against the real broker.
 *
 * `AMQP_URL` overrides the default `amqp://guest:guest@127.0.0.1:5672`. A test that needs the
 * broker calls `requireRabbit(t)` first: when the broker does not answer, the test is skipped with
 * a LOUD message on stderr — except in CI (`CI=true` or `CI=1`), where it fails instead, so a CI
 * run without RabbitMQ can never pass silently.
 */

import { randomBytes } from 'node:crypto'
import amqp from 'amqplib'
import { isCI, missingTool, type ToolTest } from '../kit/tools.js'

export const DEFAULT_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672'

export function amqpUrl (): string {
  const env = process.env.AMQP_URL
  return env !== undefined && env !== '' ? env : DEFAULT_AMQP_URL
}

/** The URL with its host and port replaced (to go through a TCP proxy). */
export function amqpUrlVia (port: number, host = '127.0.0.1', base = amqpUrl()): string {
  const u = new URL(base)
  u.hostname = host
  u.port = String(port)
  return u.toString()
}

/** Password-free form of a URL, for messages. */
export function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    return u.toString()
  } catch {
    return '<unparseable url>'
  }
}

export { isCI } from '../kit/tools.js'

export interface RabbitAvailability {
  ok: boolean
  url: string
  error?: string
}

let cached: Promise<RabbitAvailability> | undefined

/** Connects once (short timeout), cached for the process. Never throws. */
export function rabbitAvailable (timeoutMs = 2000): Promise<RabbitAvailability> {
  if (cached !== undefined) return cached
  const url = amqpUrl()
  cached = (async () => {
    let conn: amqp.ChannelModel | undefined
    try {
      conn = await amqp.connect(url, { timeout: timeoutMs })
      conn.on('error', () => {})
      return { ok: true, url }
    } catch (err) {
      return { ok: false, url, error: err instanceof Error ? err.message : String(err) }
    } finally {
      if (conn !== undefined) await conn.close().catch(() => {})
    }
  })()
  return cached
}

/** The subset of a tap Test these helpers use (keeps them independent of tap's types). */
export type TapLike = ToolTest

/**
 * Resolves true when RabbitMQ answers. Otherwise: in CI the test fails; elsewhere a loud
 * "SKIPPED" line goes to stderr and a skip is recorded. Resolves false in both cases: the caller
 * returns at once.
 */
export async function requireRabbit (t: TapLike): Promise<boolean> {
  const r = await rabbitAvailable()
  if (r.ok) return true
  const msg = `${t.name} needs RabbitMQ at ${redactUrl(r.url)}: ${r.error ?? 'unavailable'}`
  if (isCI()) {
    t.fail(`FAILED (CI): ${msg}`)
  } else {
    process.stderr.write(`\n${'!'.repeat(78)}\n!!! SKIPPED: ${msg}\n!!! (set AMQP_URL, or start RabbitMQ; in CI this is a failure)\n${'!'.repeat(78)}\n\n`)
    t.skip(`SKIPPED: ${msg}`)
  }
  return false
}

/** A fresh, unique name prefix for one test: `twopc-test-<random>`. */
export function testPrefix (label = 'test'): string {
  return `twopc-${label}-${randomBytes(4).toString('hex')}`
}

export interface CleanupTarget {
  queues?: Iterable<string>
  exchanges?: Iterable<string>
}

/**
 * Deletes the given queues and exchanges (missing ones are fine). Each delete runs on its own
 * channel, so one failure cannot abort the rest. Returns the names it could not delete.
 */
export async function cleanupPrefix (target: CleanupTarget, url = amqpUrl()): Promise<string[]> {
  const failed: string[] = []
  const conn = await amqp.connect(url, { timeout: 5000 })
  conn.on('error', () => {})
  try {
    const run = async (name: string, op: (ch: amqp.Channel) => Promise<unknown>): Promise<void> => {
      try {
        const ch = await conn.createChannel()
        ch.on('error', () => {})
        await op(ch)
        await ch.close().catch(() => {})
      } catch {
        failed.push(name)
      }
    }
    for (const q of target.queues ?? []) await run(q, (ch) => ch.deleteQueue(q))
    for (const x of target.exchanges ?? []) await run(x, (ch) => ch.deleteExchange(x))
  } finally {
    await conn.close().catch(() => {})
  }
  return failed
}

/**
 * Queue and exchange names on the broker that start with `prefix` (via rabbitmqctl, so the
 * check does not depend on the management plugin). Undefined when rabbitmqctl is unavailable.
 */
export async function listBrokerNames (prefix: string): Promise<{ queues: string[], exchanges: string[] } | undefined> {
  const queues = await rabbitmqctlList(['list_queues', 'name'])
  const exchanges = await rabbitmqctlList(['list_exchanges', 'name'])
  if (queues === undefined || exchanges === undefined) return undefined
  const mine = (n: string): boolean => n.startsWith(prefix)
  return { queues: queues.map((r) => r[0] ?? '').filter(mine), exchanges: exchanges.map((r) => r[0] ?? '').filter(mine) }
}

/** What installs rabbitmqctl, for the message of a check that needs it. */
export const RABBITMQCTL_INSTALL = 'apt-get install -y rabbitmq-server (rabbitmqctl, run as root on the broker\'s machine)'

/**
 * The end of a file's broker tests: no queue or exchange starting with `prefix` is left. Lists
 * them with rabbitmqctl; without it the check is a failure in CI and a loud skip elsewhere.
 */
export async function checkBrokerClean (t: TapLike & { same: (found: any, wanted: any, message: string) => unknown }, prefix: string): Promise<void> {
  if (!(await requireRabbit(t))) return
  const left = await listBrokerNames(prefix)
  if (left === undefined) {
    missingTool(t, 'rabbitmqctl is not available: cannot list the broker\'s names', RABBITMQCTL_INSTALL)
    return
  }
  t.same(left, { queues: [], exchanges: [] }, `no queue or exchange starting with ${prefix}`)
}

/** Rows of a `rabbitmqctl list_*` command (tab-separated, no headers), undefined on failure. */
export async function rabbitmqctlList (args: string[]): Promise<string[][] | undefined> {
  const { execFile } = await import('node:child_process')
  return new Promise((resolve) => {
    execFile('rabbitmqctl', [...args, '--quiet', '--no-table-headers'], { timeout: 20000 }, (err, stdout) => {
      if (err !== null) {
        resolve(undefined)
        return
      }
      resolve(stdout.split('\n').filter((l) => l.trim() !== '').map((l) => l.split('\t')))
    })
  })
}

/** Runs `rabbitmqctl args…` (the local node); never throws. */
export async function rabbitmqctl (args: string[], timeoutMs = 30_000): Promise<{ ok: boolean, stdout: string, stderr: string }> {
  const { execFile } = await import('node:child_process')
  return new Promise((resolve) => {
    execFile('rabbitmqctl', args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ ok: err === null, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** `url` (default `amqpUrl()`) with another user and vhost. */
export function amqpUrlAs (user: string, password: string, vhost: string, base = amqpUrl()): string {
  const u = new URL(base)
  u.username = encodeURIComponent(user)
  u.password = encodeURIComponent(password)
  u.pathname = `/${encodeURIComponent(vhost)}`
  return u.toString()
}
