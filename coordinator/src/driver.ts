/**
 * Over 500 lines (just): the single call, the batch and the bounded reading of answers share
 * the dispatcher's handler and the timeout signal; apart, each would need the others' state.
 *
 * The HTTP adapter: calls a participant's prepare / commit / abort callback with undici and
 * turns the answer into a state-machine event. Bodies are signed when a secret is set; every
 * answer body is read (bounded) or dumped so connections go back to the pool.
 *
 * Batching: a participant whose prepare answer advertises `batch: {maxCalls, maxBytes}` (the SDK
 * does) also serves `POST {url}/batch`. Calls to it made in one event-loop turn then go out
 * together at the end of the turn (`setImmediate`), as few requests as its limits allow, and each
 * call gets its own result: the engine sees the same outcome a single call would have had. At
 * high load this is most of the coordinator's HTTP cost saved (one request, one signature, one
 * write per participant per turn instead of per transaction). A lone call goes out as the plain
 * single callback. Every callback is idempotent, so a batch the participant could not take
 * (404, 400, a garbled answer) is resent call by call, and the participant is called singly from
 * then on until a prepare answer advertises batching again.
 */
import { setMaxListeners } from 'node:events'
import type { Phase2Attention } from './core/machine.js'
import { Agent, type Dispatcher } from 'undici'
import {
  signBody, SIGNATURE_HEADER, CallbackPath, MAX_BATCH_CALLS, ParticipantErrorCodes, type SignedOperation,
  readBatchAnswer, readErrorCode, readPrepareAnswer, ERROR_CODE_PATTERN, type PrepareAnswerRead,
  type BatchCapability, type Decision, type DecisionRequest, type PrepareRequest, type Vote
} from '@fastify-2pc/protocol'

/** The signed operation of a callback path: `/commit` -> `commit` (the signature binds it). */
function operationOf (path: typeof CallbackPath[keyof typeof CallbackPath]): SignedOperation {
  return path.slice(1) as SignedOperation
}

export interface DriverOptions {
  secret?: string
  maxResponseBytes: number
  connectionsPerOrigin: number
  /** Calls per batch request at most (also bounded by what the participant advertises); 1 = never batch. */
  batchMaxCalls?: number
  /** Observer of each batch request sent (calls it carried). */
  onBatch?: (calls: number) => void
}

export type PrepareOutcome =
  | { ok: true, vote: Vote, reason?: string }
  | { ok: false, error: string }

/**
 * A phase-2 answer that is retried but will not get better by itself: `unauthorized` (401: a
 * wrong or rotated secret, clock skew), `not-found` (404 without the protocol's TX_UNKNOWN: no
 * such route, an ingress not ready yet).
 */
export type { Phase2Attention }

export type DecisionOutcome =
  | { ok: true }
  /**
   * `refused`: a definite answer — retrying the same call cannot help (see `classifyDecisionAnswer`).
   * `attention`: retried, and the transaction flagged for an operator meanwhile.
   */
  | { ok: false, error: string, refused: boolean, attention?: Phase2Attention }

const RETRYABLE_4XX = new Set([408, 425, 429])
/** The protocol's codes for "this participant cannot apply that decision": definite whatever the 4xx status. */
const DEFINITE_CODES = new Set<string>([ParticipantErrorCodes.TX_UNKNOWN, ParticipantErrorCodes.TX_ALREADY_COMMITTED, ParticipantErrorCodes.TX_ALREADY_ABORTED])
/** A transport error's code, recorded when it has the form of the protocol's codes (never an error's message). */
const SAFE_CODE = new RegExp(ERROR_CODE_PATTERN)

/**
 * How a non-2xx phase-2 answer counts.
 * - Definite (`refused`, recorded as a heuristic, not retried blindly): a 4xx carrying one of the
 *   protocol's codes (TX_UNKNOWN, TX_ALREADY_COMMITTED, TX_ALREADY_ABORTED), or any other 4xx
 *   except those below.
 * - Retried and flagged for attention: 401 (whatever its code) and a 404 without TX_UNKNOWN.
 * - Retried: 408, 425, 429, 5xx, anything else (1xx/3xx).
 */
function classifyDecisionAnswer (status: number, code: string | undefined): { refused: boolean, attention?: Phase2Attention } {
  if (status >= 400 && status < 500 && code !== undefined && DEFINITE_CODES.has(code)) return { refused: true }
  if (status === 401) return { refused: false, attention: 'unauthorized' }
  if (status === 404) return { refused: false, attention: 'not-found' }
  return { refused: status >= 400 && status < 500 && !RETRYABLE_4XX.has(status) }
}

/**
 * What of an error answer is recorded: the `code` of a JSON body when it is a well-formed code
 * (protocol's ERROR_CODE_PATTERN), never the text (the answer may come from anything listening at the url).
 */
function errorCode (answer: Answer): string | undefined {
  return readErrorCode(answerValue(answer))
}

/** `commit answered 409: TX_ALREADY_ABORTED`: the status, and the code when there is one. */
function answered (what: string, status: number, code: string | undefined): string {
  return code === undefined ? `${what} answered ${status}` : `${what} answered ${status}: ${code}`
}

/**
 * A call that failed on the coordinator's side of the wire, with a fixed message: recorded as
 * is (`describe`), unlike errors carrying text that came from the participant's end.
 */
class CallError extends Error {
  constructor (readonly code: string, message: string) { super(message) }
}

/** A participant URL split once into what the dispatcher wants (no URL parsing per call). */
interface Target { origin: string, basePath: string }
const MAX_TARGETS = 10_000
const SHARED_SIGNAL_MS = 5
/** Smallest `maxBytes` a batch capability may advertise to be used. */
const MIN_BATCH_BYTES = 1024
/** `{"calls":[` + `]}` */
const BATCH_ENVELOPE_BYTES = 12

/** A participant's answer: the raw text of a single call, or a batch result's parsed body. */
interface Answer { status: number, text?: string, body?: unknown }

/** The answer's JSON value (undefined when its text is not JSON); what it holds is for the protocol's readers to check. */
function answerValue (answer: Answer): unknown {
  return answer.text !== undefined ? parseJson(answer.text) : answer.body
}

type Op = 'prepare' | 'commit' | 'abort'

/** One call waiting for the end of the turn to go out in a batch. */
interface QueuedCall {
  op: Op
  body: PrepareRequest | DecisionRequest
  traceparent: string | undefined
  /** `{"op":…,"body":…}`: its part of the batch body, and its size in bytes (UTF-8). */
  json: string
  bytes: number
  timeoutMs: number
  deadline: number
  signal: AbortSignal
  onAbort: () => void
  settled: boolean
  resolve: (answer: Answer) => void
  reject: (err: Error) => void
}

export class ParticipantDriver {
  private readonly agent: Agent
  private readonly targets = new Map<string, Target>()
  private readonly signals = new Map<number, { signal: AbortSignal, createdAt: number }>()
  /** Participants (by enlisted url) that advertised a batch route, with the limits used. */
  private readonly batchable = new Map<string, BatchCapability>()
  /** Calls queued in this turn, by participant url. */
  private queued = new Map<string, QueuedCall[]>()
  private flushScheduled = false
  /**
   * Called when a call is queued for the end of the turn; the engine's TurnEnd sets it (and then
   * flushes). Unset, the driver flushes itself at the end of the turn.
   */
  onQueued: (() => void) | undefined
  /** See takeSent. */
  private sentSinceAsked = false
  private closed = false
  private readonly batchMaxCalls: number
  constructor (private readonly options: DriverOptions) {
    this.batchMaxCalls = Math.min(options.batchMaxCalls ?? 64, MAX_BATCH_CALLS)
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
  private async post (baseUrl: string, path: typeof CallbackPath[keyof typeof CallbackPath], raw: string, timeoutMs: number, traceparent: string | undefined, limit = this.options.maxResponseBytes): Promise<Answer> {
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (traceparent !== undefined) headers.traceparent = traceparent
    if (this.options.secret !== undefined) headers[SIGNATURE_HEADER] = signBody(this.options.secret, operationOf(path), raw)
    const target = this.target(baseUrl)
    const signal = this.timeoutSignal(timeoutMs)
    return await new Promise((resolve, reject) => {
      const call = new BoundedCall(limit, signal, resolve, reject)
      this.sentSinceAsked = true
      try {
        this.agent.dispatch({ origin: target.origin, path: target.basePath + path, method: 'POST', body: raw, headers }, call)
      } catch (err) {
        call.onError(err as Error)
      }
    })
  }

  /** One callback: batched when the participant can take batches, else a single POST. */
  private async call (baseUrl: string, op: Op, body: PrepareRequest | DecisionRequest, timeoutMs: number, traceparent: string | undefined): Promise<Answer> {
    if (this.closed) throw new CallError('DRIVER_CLOSED', 'the participant driver is closed')
    if (this.batchMaxCalls < 2 || !this.batchable.has(baseUrl)) {
      return await this.post(baseUrl, CallbackPath[op], JSON.stringify(body), timeoutMs, traceparent)
    }
    return await new Promise((resolve, reject) => {
      const json = traceparent === undefined
        ? `{"op":"${op}","body":${JSON.stringify(body)}}`
        : `{"op":"${op}","body":${JSON.stringify(body)},"traceparent":${JSON.stringify(traceparent)}}`
      const signal = this.timeoutSignal(timeoutMs)
      const queued: QueuedCall = {
        op,
        body,
        traceparent,
        json,
        bytes: Buffer.byteLength(json),
        timeoutMs,
        deadline: performance.now() + timeoutMs,
        signal,
        settled: false,
        // Each call keeps its own deadline inside a batch: it settles as timed out on its own.
        onAbort: () => { settle(queued, undefined, signal.reason as Error) },
        resolve,
        reject
      }
      if (signal.aborted) { reject(signal.reason); return }
      signal.addEventListener('abort', queued.onAbort, { once: true })
      let calls = this.queued.get(baseUrl)
      if (calls === undefined) this.queued.set(baseUrl, calls = [])
      calls.push(queued)
      if (this.onQueued !== undefined) this.onQueued()
      else if (!this.flushScheduled) {
        this.flushScheduled = true
        setImmediate(() => { this.flush() })
      }
    })
  }

  /**
   * Sends every call queued in this turn: per participant, as few batches as its limits allow.
   * Runs at the end of the turn, before the log's write (the engine's TurnEnd).
   */
  flush (): void {
    this.flushScheduled = false
    const queued = this.queued
    this.queued = new Map()
    for (const [baseUrl, calls] of queued) {
      const live = calls.filter(c => !c.settled)
      const capability = this.batchable.get(baseUrl)
      if (capability === undefined || live.length === 1) {
        for (const c of live) this.sendSingly(baseUrl, c)
        continue
      }
      let chunk: QueuedCall[] = []
      let bytes = BATCH_ENVELOPE_BYTES
      for (const c of live) {
        if (c.bytes + 1 + BATCH_ENVELOPE_BYTES > capability.maxBytes) { this.sendSingly(baseUrl, c); continue }
        if (chunk.length === capability.maxCalls || bytes + c.bytes + 1 > capability.maxBytes) {
          if (chunk.length === 1) this.sendSingly(baseUrl, chunk[0] as QueuedCall)
          else this.sendBatch(baseUrl, chunk)
          chunk = []
          bytes = BATCH_ENVELOPE_BYTES
        }
        chunk.push(c)
        bytes += c.bytes + 1
      }
      if (chunk.length === 1) this.sendSingly(baseUrl, chunk[0] as QueuedCall)
      else if (chunk.length > 1) this.sendBatch(baseUrl, chunk)
    }
  }

  /**
   * Whether requests went out since the last time this was asked. undici writes a request on a
   * reused idle socket only in a later `setImmediate`, so a request sent in this turn (by the
   * end-of-turn flush, or an unbatched call) may not be on
   * the wire yet.
   */
  takeSent (): boolean {
    const sent = this.sentSinceAsked
    this.sentSinceAsked = false
    return sent
  }

  private sendSingly (baseUrl: string, c: QueuedCall): void {
    if (c.settled) return
    const remaining = Math.max(1, Math.ceil(c.deadline - performance.now()))
    this.post(baseUrl, CallbackPath[c.op], JSON.stringify(c.body), remaining, c.traceparent)
      .then(answer => { settle(c, answer) }, err => { settle(c, undefined, err as Error) })
  }

  private sendBatch (baseUrl: string, calls: QueuedCall[]): void {
    this.options.onBatch?.(calls.length)
    let timeoutMs = 1
    for (const c of calls) timeoutMs = Math.max(timeoutMs, c.timeoutMs)
    const raw = '{"calls":[' + calls.map(c => c.json).join(',') + ']}'
    this.post(baseUrl, CallbackPath.batch, raw, timeoutMs, undefined, this.options.maxResponseBytes * calls.length).then(answer => {
      const results = answer.status === 200 ? readBatchAnswer(parseJson(answer.text ?? ''), calls.length) : undefined
      if (results !== undefined) {
        for (let i = 0; i < calls.length; i++) settle(calls[i] as QueuedCall, results[i])
        return
      }
      if (answer.status === 401 || answer.status >= 500 || RETRYABLE_4XX.has(answer.status)) {
        // What each single call would have got (a wrong secret, an overloaded participant).
        for (const c of calls) settle(c, answer)
        return
      }
      // No batch route after all (404: an older version behind the same url), or it refused
      // what we sent: call by call — safe, every callback is idempotent — and singly from now on.
      this.batchable.delete(baseUrl)
      for (const c of calls) this.sendSingly(baseUrl, c)
    }, err => {
      for (const c of calls) settle(c, undefined, err as Error)
    })
  }

  /** Notes what a prepare answer says about the participant's batch route. */
  private learnBatching (baseUrl: string, answer: PrepareAnswerRead): void {
    if (this.batchMaxCalls < 2) return
    if (answer.batch === undefined || answer.batch.maxCalls < 2 || answer.batch.maxBytes < MIN_BATCH_BYTES) {
      this.batchable.delete(baseUrl)
      return
    }
    const { maxCalls, maxBytes } = answer.batch
    const known = this.batchable.get(baseUrl)
    const calls = Math.min(maxCalls, this.batchMaxCalls)
    if (known?.maxCalls === calls && known.maxBytes === maxBytes) return
    if (known === undefined && this.batchable.size >= MAX_TARGETS) this.batchable.clear()
    this.batchable.set(baseUrl, { maxCalls: calls, maxBytes })
  }

  /** True when calls to this participant url may go out batched (it advertised a batch route). */
  batches (baseUrl: string): boolean {
    return this.batchMaxCalls >= 2 && this.batchable.has(baseUrl)
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
      const res = await this.call(baseUrl, 'prepare', body, timeoutMs, traceparent)
      if (res.status !== 200) return { ok: false, error: answered('prepare', res.status, errorCode(res)) }
      const answer = readPrepareAnswer(answerValue(res))
      if (answer === undefined) return { ok: false, error: 'prepare answered 200 without a valid vote' }
      this.learnBatching(baseUrl, answer)
      return answer.reason === undefined ? { ok: true, vote: answer.vote } : { ok: true, vote: answer.vote, reason: answer.reason.slice(0, 1000) }
    } catch (err) {
      return { ok: false, error: describe(err, 'prepare', timeoutMs) }
    }
  }

  async decide (baseUrl: string, decision: Decision, txid: string, participant: string, timeoutMs: number, traceparent?: string): Promise<DecisionOutcome> {
    try {
      const res = await this.call(baseUrl, decision, { txid, participant }, timeoutMs, traceparent)
      if (res.status >= 200 && res.status < 300) return { ok: true }
      const code = errorCode(res)
      const { refused, attention } = classifyDecisionAnswer(res.status, code)
      const error = answered(decision, res.status, code)
      return attention === undefined ? { ok: false, refused, error } : { ok: false, refused, attention, error }
    } catch (err) {
      return { ok: false, refused: false, error: describe(err, decision, timeoutMs) }
    }
  }

  async close (): Promise<void> {
    this.closed = true
    // Calls queued for this turn go out now (their answers may still be read before the agent closes).
    if (this.queued.size > 0) this.flush()
    await this.agent.close()
  }
}

/** Settles a queued call once: with the participant's answer, or with an error. */
function settle (c: QueuedCall, answer: Answer | undefined, err?: Error): void {
  if (c.settled) return
  c.settled = true
  c.signal.removeEventListener('abort', c.onAbort)
  if (answer !== undefined) c.resolve(answer)
  else c.reject(err ?? new Error('no answer'))
}

/** The JSON value of an answer's text; undefined when it is not JSON. */
function parseJson (text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/**
 * A failed call in words that carry nothing of what answered: a timeout, the driver's own
 * errors, or the error's class (ECONNREFUSED, UND_ERR_SOCKET, HPE_INVALID_CONSTANT, …) — never
 * its message, which may quote bytes a service at that address sent.
 */
function describe (err: unknown, what: string, timeoutMs: number): string {
  const e = err as { name?: unknown, code?: unknown }
  if (e.name === 'TimeoutError' || e.name === 'AbortError') return `${what} got no answer within ${timeoutMs} ms`
  if (err instanceof CallError && err.code === 'DRIVER_CLOSED') return `${what} failed: ${err.message}`
  if (typeof e.code === 'string' && SAFE_CODE.test(e.code)) return `${what} failed: ${e.code}`
  if (typeof e.name === 'string' && /^[A-Za-z]{1,64}$/.test(e.name)) return `${what} failed: ${e.name}`
  return `${what} failed`
}

/**
 * undici's handler for one call: the status and the whole answer, or the error. An answer
 * longer than `limit` bytes is cut off there (the connection dropped) and one shorter than its
 * content-length is incomplete: both are errors, never the part that arrived. Settles exactly once.
 */
class BoundedCall implements Dispatcher.DispatchHandler {
  private status = 0
  private chunks: Buffer[] = []
  private size = 0
  /** The answer's content-length, when it gave one. */
  private expected = -1
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

  onHeaders (statusCode: number, rawHeaders: Buffer[] | string[] | null): boolean {
    this.status = statusCode
    // Raw name/value pairs; undici itself also fails an answer cut short of its content-length,
    // this keeps that true whatever the transport did.
    if (rawHeaders !== null) {
      for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
        const name = rawHeaders[i] as Buffer | string
        if (name.length === 14 && name.toString().toLowerCase() === 'content-length') {
          const n = Number(rawHeaders[i + 1]?.toString())
          if (Number.isSafeInteger(n) && n >= 0) this.expected = n
        }
      }
    }
    return true
  }

  onData (chunk: Buffer): boolean {
    if (this.settled) return true
    if (this.size + chunk.length > this.limit) {
      // A failed call: the part read may well parse (a vote padded with spaces), but it is not the answer.
      const err = new CallError('ANSWER_TOO_LARGE', 'answer longer than maxResponseBytes: cut off')
      this.onError(err)
      this.abort?.(err)
      return false
    }
    this.chunks.push(chunk)
    this.size += chunk.length
    return true
  }

  onComplete (): void {
    // (204 and 304 carry no body whatever their content-length says.)
    if (this.expected !== -1 && this.size !== this.expected && this.status !== 204 && this.status !== 304) {
      this.onError(new CallError('ANSWER_INCOMPLETE', 'answer shorter than its content-length'))
      return
    }
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
