/**
 * The conformance kit's only way to reach a participant: POST JSON over HTTP with undici, the
 * way the coordinator does (coordinator/src/driver.ts), signed with `--secret` unless a check
 * asks for a missing or forged signature. Every answer body is read (bounded) or destroyed, so
 * connections always go back to the pool, and every answer is recorded for the run-wide shape
 * checks.
 */
import { Agent, request } from 'undici'
import { SIGNATURE_HEADER, signBody } from '@fastify-2pc/protocol'

/** `batch`: the optional `POST {base}/batch`, only called when prepare answers advertise it. */
export type Route = 'prepare' | 'commit' | 'abort' | 'batch'

/** How a request is signed: with `--secret` (the default), not at all, or with a given header. */
export type Signing =
  | { kind: 'valid' }
  | { kind: 'none' }
  | { kind: 'header', value: string }

export interface Answer {
  route: Route
  status: number
  contentType: string | undefined
  text: string
  /** The parsed body; undefined when it is not JSON. */
  json: unknown
  isJson: boolean
}

/** The request never got an answer (connection refused, reset, timeout). */
export class TransportError extends Error {
  constructor (message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'TransportError'
  }
}

const MAX_ANSWER_BYTES = 1024 * 1024

export interface ParticipantHttpOptions {
  /** The participant's callback base, e.g. `http://127.0.0.1:3001/2pc` (no trailing slash). */
  baseUrl: string
  secret: string | undefined
  timeoutMs: number
}

export class ParticipantHttp {
  readonly answers: Answer[] = []
  private readonly agent: Agent

  constructor (private readonly options: ParticipantHttpOptions) {
    this.agent = new Agent({
      connections: 4,
      keepAliveTimeout: 5_000,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs
    })
  }

  /** The header `--secret` gives this exact body (for replay checks). */
  sign (route: Route, raw: string, now: number = Date.now()): string {
    if (this.options.secret === undefined) throw new Error('no secret to sign with')
    return signBody(this.options.secret, route, raw, now)
  }

  /** POSTs `body` (an object is serialized; a string is sent as is) to `base + /route`. */
  async post (route: Route, body: unknown, signing: Signing = { kind: 'valid' }): Promise<Answer> {
    const raw = typeof body === 'string' ? body : JSON.stringify(body)
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (signing.kind === 'valid' && this.options.secret !== undefined) headers[SIGNATURE_HEADER] = signBody(this.options.secret, route, raw)
    if (signing.kind === 'header') headers[SIGNATURE_HEADER] = signing.value
    const url = `${this.options.baseUrl}/${route}`
    let status: number
    let contentType: string | undefined
    let text: string
    try {
      const res = await request(url, {
        method: 'POST',
        headers,
        body: raw,
        dispatcher: this.agent,
        signal: AbortSignal.timeout(this.options.timeoutMs)
      })
      status = res.statusCode
      const ct = res.headers['content-type']
      contentType = Array.isArray(ct) ? ct[0] : ct
      text = await readBounded(res.body)
    } catch (err) {
      const e = err as { name?: string, code?: string, message?: string }
      if (e.name === 'TimeoutError' || e.name === 'AbortError' || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT') {
        throw new TransportError(`POST /${route}: no answer within ${this.options.timeoutMs} ms`, { cause: err })
      }
      throw new TransportError(`POST /${route}: ${e.code ?? e.name ?? 'Error'} ${e.message ?? String(err)}`, { cause: err })
    }
    let json: unknown
    let isJson = false
    try {
      json = JSON.parse(text)
      isJson = true
    } catch {
      json = undefined
    }
    const answer: Answer = { route, status, contentType, text, json, isJson }
    this.answers.push(answer)
    return answer
  }

  async close (): Promise<void> {
    await this.agent.close()
  }
}

/** Reads at most MAX_ANSWER_BYTES of an answer; the rest is dropped and the stream destroyed. */
async function readBounded (body: AsyncIterable<unknown> & { destroy: () => unknown }): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    const buf = chunk as Buffer
    if (size + buf.length > MAX_ANSWER_BYTES) {
      chunks.push(buf.subarray(0, MAX_ANSWER_BYTES - size))
      body.destroy()
      break
    }
    chunks.push(buf)
    size += buf.length
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** `200 {"vote":"yes"}`, cut to a table-friendly length. */
export function show (answer: Answer, max = 140): string {
  const body = answer.text.replace(/\s+/g, ' ').trim()
  const line = `${answer.status} ${body === '' ? '(empty body)' : body}`
  return line.length > max ? `${line.slice(0, max - 1)}…` : line
}
