/**
 * The initiator's client for the coordinator's HTTP API.
 *
 * Design: `client.begin()` makes no request. It returns a local handle; `enlist` and `publish`
 * only buffer. `commit()` then sends begin + enlist + commit as ONE request (the one-shot form)
 * unless something needed the server transaction earlier: `await tx.start()` creates it and
 * returns its id (for logs, or to hand the id to someone before committing). After `start()`,
 * `commit()` sends the buffered enlistments and messages one by one, then the commit.
 */
import { Pool } from 'undici'
import type { Dispatcher } from 'undici'
import { PARTICIPANT_NAME_PATTERN, TX_ID_PATTERN, readDecisionAnswer } from '@fastify-2pc/protocol'
import type { DecisionAnswer } from '@fastify-2pc/protocol'
import { CoordinatorError } from './errors.js'
import { parseTraceparent } from './trace.js'

export interface CoordinatorClientOptions {
  /** Base URL of the coordinator, e.g. `http://127.0.0.1:7070` (a path prefix is kept). */
  url: string
  /** Sent as `authorization: Bearer <token>` when the coordinator has `TWOPC_API_TOKEN`. */
  token?: string
  /** Keep-alive connections in the pool (default 8). */
  connections?: number
  /** Longest wait for an answer, except commit which also waits the transaction's timeout (default 30 s). */
  requestTimeoutMs?: number
  /**
   * The W3C `traceparent` of the caller's current span, asked at `begin()` when
   * `begin({ traceparent })` gives none (e.g. read from your tracer's active context). Its
   * requests for that transaction carry it; the coordinator passes it on to every participant
   * callback as a child span. An invalid value is ignored.
   */
  traceparent?: () => string | undefined
}

export interface BeginOptions {
  /** Time the coordinator gives the transaction before it aborts it (server default when unset). */
  timeoutMs?: number
  metadata?: Record<string, unknown>
  /**
   * W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`) sent on every
   * request of this transaction; the coordinator keeps it and passes a child span of it to every
   * participant callback. Default: the client's `traceparent()` option, if any.
   */
  traceparent?: string
}

export interface EnlistParticipant {
  name: string
  /** The participant's callback base, e.g. `http://inventory:3000/2pc`. */
  url: string
  payload?: unknown
  /** Allows one-phase commit when this is the only participant that votes yes. */
  onePhase?: boolean
}

export interface TransactionalMessage {
  exchange: string
  routingKey: string
  body: unknown
  headers?: Record<string, string>
}

export interface CommitOutcome {
  id: string
  state: 'committed' | 'aborted'
  reason?: string
}

export interface AbortOutcome {
  /** Undefined when the transaction never existed on the server (aborted before `start()`). */
  id: string | undefined
  state: 'aborted'
}

export type TransactionStatus = 'local' | 'active' | 'committing' | 'committed' | 'aborted' | 'failed'

/** Buffer caps: a handle is a small in-memory object, not a queue. */
export const MAX_PARTICIPANTS_PER_TRANSACTION = 100
export const MAX_MESSAGES_PER_TRANSACTION = 1000
/** Coordinator answers are small JSON documents; anything bigger is refused unread. */
const MAX_RESPONSE_BYTES = 1024 * 1024
/** Extra time on top of the transaction's own timeout that commit waits for the answer. */
const COMMIT_GRACE_MS = 10_000

const TX_ID = new RegExp(TX_ID_PATTERN)
const PARTICIPANT_NAME = new RegExp(PARTICIPANT_NAME_PATTERN)

interface RequestOptions {
  body?: unknown
  timeoutMs?: number
  signal?: AbortSignal
  txid?: string
  /** For commit: a lost answer means the outcome is unknown, not that nothing happened. */
  outcomeMayBeApplied?: boolean
  traceparent?: string | undefined
}

export class CoordinatorClient {
  readonly #pool: Pool
  readonly #basePath: string
  readonly #headers: Record<string, string>
  readonly #requestTimeoutMs: number
  readonly #traceparent: (() => string | undefined) | undefined
  #closed = false

  constructor (options: CoordinatorClientOptions) {
    let base: URL
    try {
      base = new URL(options.url)
    } catch (err) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `url is not a URL: ${String(options.url)}`, { cause: err })
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `url must be http(s), got ${base.protocol}`)
    }
    const connections = options.connections ?? 8
    if (!Number.isInteger(connections) || connections < 1 || connections > 1024) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', 'connections must be an integer in 1..1024')
    }
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 30_000
    if (!Number.isInteger(this.#requestTimeoutMs) || this.#requestTimeoutMs < 1) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', 'requestTimeoutMs must be a positive integer')
    }
    if (options.traceparent !== undefined && typeof options.traceparent !== 'function') {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', 'traceparent must be a function returning the current traceparent')
    }
    this.#traceparent = options.traceparent
    this.#basePath = base.pathname.replace(/\/+$/, '')
    this.#pool = new Pool(base.origin, { connections, keepAliveTimeout: 10_000, keepAliveMaxTimeout: 60_000 })
    this.#headers = { accept: 'application/json' }
    if (options.token !== undefined) this.#headers.authorization = `Bearer ${options.token}`
  }

  /** A local transaction handle; no request is made until `start()` or `commit()`. */
  async begin (options: BeginOptions = {}): Promise<CoordinatorTransaction> {
    this.#assertOpen()
    if (options.timeoutMs !== undefined && (!Number.isInteger(options.timeoutMs) || options.timeoutMs < 1)) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', 'timeoutMs must be a positive integer')
    }
    let traceparent: string | undefined
    if (options.traceparent !== undefined) {
      traceparent = parseTraceparent(options.traceparent)
      if (traceparent === undefined) {
        throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', 'traceparent must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>')
      }
    } else if (this.#traceparent !== undefined) {
      let current: unknown
      try { current = this.#traceparent() } catch { current = undefined }
      traceparent = parseTraceparent(current)
    }
    return new CoordinatorTransaction(this, options, traceparent)
  }

  /** The coordinator's decision for a transaction, as participants ask for it. */
  async decision (txid: string, options: { signal?: AbortSignal } = {}): Promise<DecisionAnswer> {
    assertTxid(txid)
    const answer = readDecisionAnswer(await this.request('GET', `/v1/transactions/${txid}/decision`, { txid, ...options }))
    if (answer === undefined) {
      throw new CoordinatorError('COORDINATOR_BAD_RESPONSE', 'decision answer without a valid decision', { txid })
    }
    return answer
  }

  /** Closes the keep-alive pool; in-flight requests finish first. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#pool.close()
  }

  #assertOpen (): void {
    if (this.#closed) throw new CoordinatorError('CLIENT_CLOSED', 'the coordinator client is closed')
  }

  /** @internal One JSON request; always consumes the response body. */
  async request (method: 'GET' | 'POST', path: string, options: RequestOptions = {}): Promise<unknown> {
    this.#assertOpen()
    const timeout = options.timeoutMs ?? this.#requestTimeoutMs
    const headers: Record<string, string> = { ...this.#headers }
    let body: string | undefined
    if (options.traceparent !== undefined) headers.traceparent = options.traceparent
    if (options.body !== undefined) {
      body = JSON.stringify(options.body)
      headers['content-type'] = 'application/json'
    }
    let response: Dispatcher.ResponseData
    try {
      response = await this.#pool.request({
        method,
        path: this.#basePath + path,
        headers,
        body,
        headersTimeout: timeout,
        bodyTimeout: timeout,
        signal: options.signal
      })
    } catch (err) {
      const refused = (err as { code?: string }).code === 'ECONNREFUSED'
      const code = options.outcomeMayBeApplied === true && !refused ? 'COMMIT_OUTCOME_UNKNOWN' : 'COORDINATOR_UNREACHABLE'
      throw new CoordinatorError(code, `${method} ${path} failed: ${(err as Error).message}`, errorDetails(options.txid, err))
    }
    const text = await readLimited(response.body, MAX_RESPONSE_BYTES, options.txid)
    let parsed: unknown
    try {
      parsed = text === '' ? null : JSON.parse(text)
    } catch (err) {
      throw new CoordinatorError('COORDINATOR_BAD_RESPONSE', `${method} ${path}: answer ${response.statusCode} is not JSON`, { statusCode: response.statusCode, ...errorDetails(options.txid, err) })
    }
    if (response.statusCode >= 400) {
      const error = (parsed ?? {}) as { code?: unknown, message?: unknown }
      const code = typeof error.code === 'string' ? error.code : `HTTP_${response.statusCode}`
      const message = typeof error.message === 'string' ? error.message : `${method} ${path} answered ${response.statusCode}`
      throw new CoordinatorError(code, message, { statusCode: response.statusCode, ...errorDetails(options.txid) })
    }
    return parsed
  }
}

function errorDetails (txid: string | undefined, cause?: unknown): { txid?: string, cause?: unknown } {
  const details: { txid?: string, cause?: unknown } = {}
  if (txid !== undefined) details.txid = txid
  if (cause !== undefined) details.cause = cause
  return details
}

async function readLimited (body: Dispatcher.ResponseData['body'], limit: number, txid: string | undefined): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += (chunk as Buffer).length
    if (size > limit) {
      body.destroy()
      throw new CoordinatorError('COORDINATOR_BAD_RESPONSE', `answer larger than ${limit} bytes`, errorDetails(txid))
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

function assertTxid (txid: string): void {
  if (typeof txid !== 'string' || !TX_ID.test(txid)) {
    throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `not a transaction id: ${String(txid)}`)
  }
}

function parseOutcome (answer: unknown, txid: string | undefined): CommitOutcome {
  const value = answer as { id?: unknown, state?: unknown, reason?: unknown } | null
  if (value === null || typeof value.id !== 'string' || (value.state !== 'committed' && value.state !== 'aborted')) {
    throw new CoordinatorError('COORDINATOR_BAD_RESPONSE', 'commit answer without id and a final state', errorDetails(txid))
  }
  const outcome: CommitOutcome = { id: value.id, state: value.state }
  if (typeof value.reason === 'string') outcome.reason = value.reason
  return outcome
}

/** A transaction as the initiator sees it. Not safe to share between unrelated requests. */
export class CoordinatorTransaction {
  readonly #client: CoordinatorClient
  readonly #options: BeginOptions
  readonly #traceparent: string | undefined
  readonly #participants: EnlistParticipant[] = []
  readonly #messages: TransactionalMessage[] = []
  #id: string | undefined
  #status: TransactionStatus = 'local'
  #starting: Promise<string> | undefined
  #committing: Promise<CommitOutcome> | undefined
  #finishing: Promise<CommitOutcome | AbortOutcome> | undefined

  /** @internal use `client.begin()` */
  constructor (client: CoordinatorClient, options: BeginOptions, traceparent?: string) {
    this.#client = client
    this.#options = options
    this.#traceparent = traceparent
  }

  /** The traceparent this transaction's requests carry (undefined: none; the coordinator starts a trace). */
  get traceparent (): string | undefined { return this.#traceparent }

  /** The server's transaction id: undefined until `start()` or `commit()` created it. */
  get id (): string | undefined { return this.#id }
  get status (): TransactionStatus { return this.#status }

  /** Creates the transaction on the coordinator now (once) and returns its id. */
  async start (): Promise<string> {
    if (this.#starting !== undefined) return await this.#starting
    this.#assertOpen('start')
    this.#starting = (async () => {
      const body: Record<string, unknown> = {}
      if (this.#options.timeoutMs !== undefined) body.timeoutMs = this.#options.timeoutMs
      if (this.#options.metadata !== undefined) body.metadata = this.#options.metadata
      const answer = await this.#client.request('POST', '/v1/transactions', { traceparent: this.#traceparent, body }) as { id?: unknown } | null
      if (typeof answer?.id !== 'string') {
        throw new CoordinatorError('COORDINATOR_BAD_RESPONSE', 'begin answer without an id')
      }
      this.#id = answer.id
      this.#status = 'active'
      return answer.id
    })()
    return await this.#starting
  }

  /** Buffers a participant; sent with the commit. */
  enlist (participant: EnlistParticipant): this {
    this.#assertOpen('enlist')
    if (typeof participant?.name !== 'string' || !PARTICIPANT_NAME.test(participant.name)) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `participant name must match ${PARTICIPANT_NAME_PATTERN}`)
    }
    try {
      const url = new URL(participant.url)
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(url.protocol)
    } catch (err) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `participant url must be an http(s) URL: ${String(participant.url)}`, { cause: err })
    }
    if (this.#participants.some(p => p.name === participant.name)) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `participant ${participant.name} is already enlisted`)
    }
    if (this.#participants.length >= MAX_PARTICIPANTS_PER_TRANSACTION) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `at most ${MAX_PARTICIPANTS_PER_TRANSACTION} participants per transaction`)
    }
    const copy: EnlistParticipant = { name: participant.name, url: participant.url }
    if (participant.payload !== undefined) copy.payload = participant.payload
    if (participant.onePhase !== undefined) copy.onePhase = participant.onePhase
    this.#participants.push(copy)
    return this
  }

  /** Buffers a message the coordinator publishes after commit, never on abort. */
  publish (message: TransactionalMessage): this {
    this.#assertOpen('publish')
    if (typeof message?.exchange !== 'string' || typeof message.routingKey !== 'string') {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', 'a message needs an exchange and a routingKey')
    }
    if (this.#messages.length >= MAX_MESSAGES_PER_TRANSACTION) {
      throw new CoordinatorError('CLIENT_INVALID_ARGUMENT', `at most ${MAX_MESSAGES_PER_TRANSACTION} messages per transaction`)
    }
    const copy: TransactionalMessage = { exchange: message.exchange, routingKey: message.routingKey, body: message.body }
    if (message.headers !== undefined) copy.headers = message.headers
    this.#messages.push(copy)
    return this
  }

  /**
   * Asks the coordinator to commit; resolves once the decision is durable. An `aborted` outcome
   * (a participant voted no, timed out...) is an answer, not an error; errors are thrown as
   * `CoordinatorError`.
   */
  async commit (): Promise<CommitOutcome> {
    // A second commit shares the first one's outcome; a commit after abort is refused below.
    if (this.#committing !== undefined) return await this.#committing
    this.#assertOpen('commit')
    const finishing = this.#commit()
    this.#committing = finishing
    this.#finishing = finishing
    return await finishing
  }

  /** Aborts. Before `start()` nothing exists on the server, so nothing is sent. */
  async abort (): Promise<AbortOutcome> {
    if (this.#finishing !== undefined) {
      throw new CoordinatorError('CLIENT_TX_FINISHED', 'the transaction is already committing or finished', errorDetails(this.#id))
    }
    const finishing = this.#abort()
    this.#finishing = finishing
    return await finishing
  }

  async #abort (): Promise<AbortOutcome> {
    if (this.#starting === undefined) {
      this.#status = 'aborted'
      return { id: undefined, state: 'aborted' }
    }
    const id = await this.#starting
    await this.#client.request('POST', `/v1/transactions/${id}/abort`, { traceparent: this.#traceparent, body: {}, txid: id })
    this.#status = 'aborted'
    return { id, state: 'aborted' }
  }

  async #commit (): Promise<CommitOutcome> {
    const timeoutMs = (this.#options.timeoutMs ?? 30_000) + COMMIT_GRACE_MS
    try {
      if (this.#starting === undefined) {
        this.#status = 'committing'
        const body: Record<string, unknown> = { participants: this.#participants, commit: true }
        if (this.#options.timeoutMs !== undefined) body.timeoutMs = this.#options.timeoutMs
        if (this.#options.metadata !== undefined) body.metadata = this.#options.metadata
        if (this.#messages.length > 0) body.messages = this.#messages
        const answer = await this.#client.request('POST', '/v1/transactions', { traceparent: this.#traceparent, body, timeoutMs, outcomeMayBeApplied: true })
        return this.#settle(parseOutcome(answer, undefined))
      }
      const id = await this.#starting
      this.#status = 'committing'
      try {
        // Bounded by the caps in enlist/publish; sent in order so the coordinator sees them as given.
        for (const participant of this.#participants) {
          await this.#client.request('POST', `/v1/transactions/${id}/participants`, { traceparent: this.#traceparent, body: participant, txid: id })
        }
        for (const message of this.#messages) {
          await this.#client.request('POST', `/v1/transactions/${id}/messages`, { traceparent: this.#traceparent, body: message, txid: id })
        }
      } catch (err) {
        // Nothing was decided yet: abort now rather than leave the coordinator to time it out.
        await this.#client.request('POST', `/v1/transactions/${id}/abort`, { traceparent: this.#traceparent, body: {}, txid: id }).catch(() => {})
        throw err
      }
      const answer = await this.#client.request('POST', `/v1/transactions/${id}/commit`, { traceparent: this.#traceparent, body: {}, txid: id, timeoutMs, outcomeMayBeApplied: true })
      return this.#settle(parseOutcome(answer, id))
    } catch (err) {
      this.#status = 'failed'
      throw err
    }
  }

  #settle (outcome: CommitOutcome): CommitOutcome {
    this.#id = outcome.id
    this.#status = outcome.state
    return outcome
  }

  #assertOpen (what: string): void {
    if (this.#finishing !== undefined) {
      throw new CoordinatorError('CLIENT_TX_FINISHED', `cannot ${what}: the transaction is committing or finished`, errorDetails(this.#id))
    }
  }
}

export function createCoordinatorClient (options: CoordinatorClientOptions): CoordinatorClient {
  return new CoordinatorClient(options)
}
