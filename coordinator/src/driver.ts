/**
 * The HTTP adapter: calls a participant's prepare / commit / abort callback with undici and
 * turns the answer into a state-machine event. Bodies are signed when a secret is set; every
 * answer body is read (bounded) or dumped so connections go back to the pool.
 */
import { setMaxListeners } from 'node:events'
import { Agent, type Dispatcher } from 'undici'
import { signBody, SIGNATURE_HEADER, CallbackPath, type Decision, type PrepareRequest, type Vote } from '@fastify-2pc/protocol'

export interface DriverOptions {
  secret?: string
  maxResponseBytes: number
  connectionsPerOrigin: number
}

export type PrepareOutcome =
  | { ok: true, vote: Vote, reason?: string }
  | { ok: false, error: string }

export type DecisionOutcome =
  | { ok: true }
  /** `refused`: a definite 4xx answer (not 408/425/429) — retrying the same call cannot help. */
  | { ok: false, error: string, refused: boolean }

const RETRYABLE_4XX = new Set([408, 425, 429])

/** A participant URL split once into what the dispatcher wants (no URL parsing per call). */
interface Target { origin: string, basePath: string }
const MAX_TARGETS = 10_000
const SHARED_SIGNAL_MS = 5

export class ParticipantDriver {
  private readonly agent: Agent
  private readonly targets = new Map<string, Target>()
  private readonly signals = new Map<number, { signal: AbortSignal, createdAt: number }>()
  constructor (private readonly options: DriverOptions) {
    this.agent = new Agent({
      connections: options.connectionsPerOrigin,
      keepAliveTimeout: 10_000,
      // Participants are called on a bounded budget; undici's own timeouts are the backstop.
      headersTimeout: 60_000,
      bodyTimeout: 60_000
    })
  }

  private async post (baseUrl: string, path: string, body: unknown, timeoutMs: number, traceparent: string | undefined): Promise<{ status: number, text: string }> {
    const raw = JSON.stringify(body)
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (traceparent !== undefined) headers.traceparent = traceparent
    if (this.options.secret !== undefined) headers[SIGNATURE_HEADER] = signBody(this.options.secret, raw)
    const target = this.target(baseUrl)
    const res = await this.agent.request({
      origin: target.origin,
      path: target.basePath + path,
      method: 'POST',
      body: raw,
      headers,
      signal: this.timeoutSignal(timeoutMs)
    })
    return { status: res.statusCode, text: await readBounded(res, this.options.maxResponseBytes) }
  }

  /**
   * A timeout signal shared by the calls with the same timeout started within the same
   * SHARED_SIGNAL_MS: each call's deadline is kept to within that much, and a busy coordinator
   * creates a few signals (timers) per second instead of one per call.
   */
  private timeoutSignal (timeoutMs: number): AbortSignal {
    const now = performance.now()
    const shared = this.signals.get(timeoutMs)
    if (shared !== undefined && now - shared.createdAt < SHARED_SIGNAL_MS) return shared.signal
    const signal = AbortSignal.timeout(timeoutMs)
    setMaxListeners(0, signal) // one listener per call in flight on it, each removed when its call ends
    if (this.signals.size >= 64) this.signals.clear() // timeouts vary with each transaction's expiry
    this.signals.set(timeoutMs, { signal, createdAt: now })
    return signal
  }

  private target (baseUrl: string): Target {
    let target = this.targets.get(baseUrl)
    if (target === undefined) {
      const url = new URL(baseUrl)
      const basePath = url.pathname.endsWith('/') ? url.pathname.slice(0, -1) : url.pathname
      target = { origin: url.origin, basePath }
      if (this.targets.size >= MAX_TARGETS) this.targets.clear()
      this.targets.set(baseUrl, target)
    }
    return target
  }

  async prepare (baseUrl: string, body: PrepareRequest, timeoutMs: number, traceparent?: string): Promise<PrepareOutcome> {
    try {
      const res = await this.post(baseUrl, CallbackPath.prepare, body, timeoutMs, traceparent)
      if (res.status !== 200) return { ok: false, error: `prepare answered ${res.status}: ${res.text.slice(0, 500)}` }
      const answer = parseObject(res.text)
      const vote = answer?.vote
      if (vote !== 'yes' && vote !== 'no' && vote !== 'read-only') {
        return { ok: false, error: `prepare answered without a valid vote: ${res.text.slice(0, 500)}` }
      }
      const reason = typeof answer?.reason === 'string' ? answer.reason.slice(0, 1000) : undefined
      return reason === undefined ? { ok: true, vote } : { ok: true, vote, reason }
    } catch (err) {
      return { ok: false, error: describe(err, 'prepare', timeoutMs) }
    }
  }

  async decide (baseUrl: string, decision: Decision, txid: string, participant: string, timeoutMs: number, traceparent?: string): Promise<DecisionOutcome> {
    const path = decision === 'commit' ? CallbackPath.commit : CallbackPath.abort
    try {
      const res = await this.post(baseUrl, path, { txid, participant }, timeoutMs, traceparent)
      if (res.status >= 200 && res.status < 300) return { ok: true }
      const refused = res.status >= 400 && res.status < 500 && !RETRYABLE_4XX.has(res.status)
      return { ok: false, refused, error: `${decision} answered ${res.status}: ${res.text.slice(0, 1000)}` }
    } catch (err) {
      return { ok: false, refused: false, error: describe(err, decision, timeoutMs) }
    }
  }

  async close (): Promise<void> {
    await this.agent.close()
  }
}

function parseObject (text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text)
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

function describe (err: unknown, what: string, timeoutMs: number): string {
  const e = err as { name?: string, code?: string, message?: string }
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return `${what} got no answer within ${timeoutMs} ms`
  return `${what} failed: ${e.code ?? e.name ?? 'Error'} ${e.message ?? String(err)}`.slice(0, 1000)
}

/** Reads at most `limit` bytes of an answer; a longer one is cut off and the rest dropped. */
async function readBounded (res: Dispatcher.ResponseData, limit: number): Promise<string> {
  const body = res.body
  const length = Number(res.headers['content-length'])
  // The usual case, a short answer of known length: read it in one go.
  if (Number.isInteger(length) && length <= limit) return await body.text()
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    const buf = chunk as Buffer
    if (size + buf.length > limit) {
      chunks.push(buf.subarray(0, limit - size))
      body.destroy()
      break
    }
    chunks.push(buf)
    size += buf.length
  }
  return Buffer.concat(chunks).toString('utf8')
}
