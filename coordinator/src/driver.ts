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

  /**
   * One POST through the dispatcher's handler interface: no response stream, no promise per
   * stage — the answer's chunks are collected (bounded) and the call settles once. The timeout
   * covers the whole call, queueing and connecting included, as a request signal would.
   */
  private async post (baseUrl: string, path: string, body: unknown, timeoutMs: number, traceparent: string | undefined): Promise<{ status: number, text: string }> {
    const raw = JSON.stringify(body)
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (traceparent !== undefined) headers.traceparent = traceparent
    if (this.options.secret !== undefined) headers[SIGNATURE_HEADER] = signBody(this.options.secret, raw)
    const target = this.target(baseUrl)
    const signal = this.timeoutSignal(timeoutMs)
    return await new Promise((resolve, reject) => {
      const call = new BoundedCall(this.options.maxResponseBytes, signal, resolve, reject)
      try {
        this.agent.dispatch({ origin: target.origin, path: target.basePath + path, method: 'POST', body: raw, headers }, call)
      } catch (err) {
        call.onError(err as Error)
      }
    })
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

/**
 * undici's handler for one call: the status and at most `limit` bytes of the answer (a longer
 * one is cut off there and the connection dropped), or the error. Settles exactly once.
 */
class BoundedCall implements Dispatcher.DispatchHandler {
  private status = 0
  private chunks: Buffer[] = []
  private size = 0
  private settled = false
  private abort: ((err?: Error) => void) | undefined
  private readonly onAbort = (): void => { this.abort?.(this.signal.reason as Error) }

  constructor (
    private readonly limit: number,
    private readonly signal: AbortSignal,
    private readonly resolve: (value: { status: number, text: string }) => void,
    private readonly reject: (err: Error) => void
  ) {}

  onConnect (abort: (err?: Error) => void): void {
    if (this.settled) { abort(); return }
    this.abort = abort
    if (this.signal.aborted) { abort(this.signal.reason as Error); return }
    this.signal.addEventListener('abort', this.onAbort, { once: true })
  }

  onHeaders (statusCode: number): boolean {
    this.status = statusCode
    return true
  }

  onData (chunk: Buffer): boolean {
    if (this.settled) return true
    if (this.size + chunk.length > this.limit) {
      this.chunks.push(chunk.subarray(0, this.limit - this.size))
      this.finish()
      this.abort?.(new Error('answer longer than maxResponseBytes: cut off'))
      return false
    }
    this.chunks.push(chunk)
    this.size += chunk.length
    return true
  }

  onComplete (): void {
    this.finish()
  }

  onError (err: Error): void {
    if (this.settled) return
    this.settled = true
    this.signal.removeEventListener('abort', this.onAbort)
    this.reject(err)
  }

  private finish (): void {
    if (this.settled) return
    this.settled = true
    this.signal.removeEventListener('abort', this.onAbort)
    const text = this.chunks.length === 1 ? (this.chunks[0] as Buffer).toString('utf8') : Buffer.concat(this.chunks).toString('utf8')
    this.chunks = []
    this.resolve({ status: this.status, text })
  }
}
