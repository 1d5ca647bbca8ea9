/**
 * What every conformance check works with: the run's options and report types, the Context (the
 * participant over HTTP, fresh transaction ids, what the run left prepared) and the expectations
 * a check fails with.
 */
import { randomBytes } from 'node:crypto'
import { TX_ID_PATTERN, type BatchCapability, type Vote } from '@fastify-2pc/protocol'
import { show, type Answer, type ParticipantHttp, type Route, type Signing } from '../http.js'

export type Level = 'MUST' | 'SHOULD'
/** `fail` is a failed MUST check, `warn` a failed SHOULD check. */
export type Result = 'pass' | 'fail' | 'warn' | 'skip'

export interface CheckResult {
  id: string
  level: Level
  result: Result
  /** What the check verifies. */
  description: string
  /** What was seen (or why it was skipped). */
  detail: string
}

export interface ConformanceOptions {
  /** Callback base, e.g. `http://127.0.0.1:3001/2pc`. */
  url: string
  /** The participant name sent in prepare bodies (the SDK refuses another name). */
  name: string
  /** Sent as `payload` in every prepare: one the participant votes `yes` to enables the yes-path checks. */
  payload: unknown
  /** Prefix of the generated transaction ids. */
  coordinatorId: string
  secret?: string | undefined
  timeoutMs: number
}

export interface ConformanceReport {
  participant: string
  name: string
  payload: unknown
  signed: boolean
  /** The participant's vote for `--payload` (undefined when prepare gave no valid vote). */
  vote: Vote | undefined
  checks: CheckResult[]
  summary: { passed: number, failed: number, warnings: number, skipped: number }
  /** Transactions the kit left prepared and then aborted at the end (and those it could not). */
  cleanup: { aborted: number, failed: string[] }
  /** Every MUST check passed (skipped ones aside). */
  ok: boolean
}

export class Fail extends Error {}
export class Skip extends Error {}

export const fail = (detail: string): never => { throw new Fail(detail) }
export const is2xx = (a: Answer): boolean => a.status >= 200 && a.status < 300
export const is4xx = (a: Answer): boolean => a.status >= 400 && a.status < 500
export const codeOf = (a: Answer): string | undefined => {
  const code = (a.json as { code?: unknown } | undefined)?.code
  return typeof a.json === 'object' && a.json !== null && typeof code === 'string' ? code : undefined
}
export const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

export const TXID = new RegExp(TX_ID_PATTERN)
/** Crockford base32, lower case, as in TX_ID_PATTERN. */
export const BASE32 = '0123456789abcdefghjkmnpqrstvwxyz'

export type Prepared = { txid: string, body: Record<string, unknown> }
/** One call of a batch, as the coordinator sends it. */
export type BatchCall = { op: 'prepare' | 'commit' | 'abort', body: Record<string, unknown> }

export class Context {
  vote: Vote | undefined
  /** Set when nothing else can run (unreachable, prepare gives no vote). */
  blocked: string | undefined
  probeTx: string | undefined
  committedTx: string | undefined
  abortedTx: string | undefined
  tombstoneTx: string | undefined
  /** What the first prepare answer said in `batch` (undefined: no batch route advertised). */
  advertised: unknown
  /** The advertised batch capability, once batch-advertised-valid found it well formed. */
  batch: BatchCapability | undefined
  readonly saved = new Map<string, Answer>()
  /** Transactions the participant voted yes for and that are not known settled yet. */
  readonly held = new Set<string>()

  constructor (readonly http: ParticipantHttp, readonly options: ConformanceOptions) {}

  get signed (): boolean { return this.options.secret !== undefined }

  newTx (): string {
    const bytes = randomBytes(26)
    let id = ''
    for (const b of bytes) id += BASE32[b & 31]
    return `${this.options.coordinatorId}.${id}`
  }

  prepareBody (txid: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { txid, participant: this.options.name, payload: this.options.payload, deadline: Date.now() + 60_000, ...extra }
  }

  /** Sends a body about `txid` and keeps track of what is left prepared. */
  async post (route: Route, txid: string | undefined, body: unknown, signing?: Signing): Promise<Answer> {
    const a = await this.http.post(route, body, signing)
    if (txid !== undefined && a.status === 200) {
      if (route === 'prepare' && isObject(a.json) && a.json.vote === 'yes') this.held.add(txid)
      if (route !== 'prepare') this.held.delete(txid)
    }
    return a
  }

  /** Sends a batch and keeps track of what its calls may have left prepared. */
  async postBatch (calls: BatchCall[], signing?: Signing): Promise<Answer> {
    // A batched prepare may have been applied whatever the answer says (results garbled, out of
    // order, lost): it is held — aborted at the end — until a decision for it succeeds.
    for (const call of calls) {
      if (call.op === 'prepare' && typeof call.body.txid === 'string' && TXID.test(call.body.txid)) this.held.add(call.body.txid)
    }
    const a = await this.http.post('batch', { calls }, signing)
    const results = isObject(a.json) ? a.json.results : undefined
    if (a.status === 200 && Array.isArray(results) && results.length === calls.length) {
      calls.forEach((call, i) => {
        const txid = call.body.txid
        if (call.op !== 'prepare' && typeof txid === 'string' && (results[i] as { status?: unknown } | undefined)?.status === 200) this.held.delete(txid)
      })
    }
    return a
  }

  async prepare (txid: string, signing?: Signing, extra?: Record<string, unknown>): Promise<Answer> {
    return await this.post('prepare', txid, this.prepareBody(txid, extra), signing)
  }

  async decide (route: 'commit' | 'abort', txid: string, signing?: Signing): Promise<Answer> {
    return await this.post(route, txid, { txid, participant: this.options.name }, signing)
  }

  /** A fresh transaction the participant votes yes for (it did for the first prepare). */
  async prepareYes (): Promise<Prepared> {
    const txid = this.newTx()
    const body = this.prepareBody(txid)
    const a = await this.post('prepare', txid, body)
    const vote = expectVote(a, 'prepare')
    if (vote !== 'yes') fail(`a fresh prepare with --payload voted "${vote}" this time (it voted yes at first; out of stock or funds?): ${show(a)}`)
    return { txid, body }
  }
}

/** A 200 answer `{vote, reason?}` with a valid vote. */
export function expectVote (a: Answer, what: string): Vote {
  if (a.status !== 200) fail(`${what} answered ${show(a)}, expected 200 {"vote":…}`)
  if (!a.isJson || !isObject(a.json)) fail(`${what} answered a body that is not a JSON object: ${show(a)}`)
  const { vote, reason } = a.json as { vote?: unknown, reason?: unknown }
  if (vote !== 'yes' && vote !== 'no' && vote !== 'read-only') fail(`${what} answered without a vote "yes" | "no" | "read-only": ${show(a)}`)
  if (reason !== undefined && typeof reason !== 'string') fail(`${what} answered a reason that is not a string: ${show(a)}`)
  return vote as Vote
}

/** A 2xx answer `{ok:true}`. */
export function expectOk (a: Answer, what: string): void {
  if (!is2xx(a)) fail(`${what} answered ${show(a)}, expected 200 {"ok":true}`)
  if (!isObject(a.json) || a.json.ok !== true) fail(`${what} answered ${show(a)}, expected the body {"ok":true}`)
}

export function expect4xx (a: Answer, what: string): void {
  if (is2xx(a)) fail(`${what} was accepted: ${show(a)}; expected a 4xx refusal`)
  if (!is4xx(a)) fail(`${what} answered ${show(a)}; expected a 4xx refusal (5xx tells a coordinator to retry forever)`)
}

export function expectRefusedSafely (a: Answer, what: string): void {
  if (is2xx(a)) fail(`${what} was accepted: ${show(a)}; it must be refused (a heuristic outcome is never hidden)`)
  if (a.status < 400) fail(`${what} answered ${show(a)}; expected an error status`)
}

export function expect401 (a: Answer, what: string): void {
  if (a.status !== 401) fail(`${what} answered ${show(a)}, expected 401`)
}

export interface CheckDef {
  id: string
  level: Level
  description: string
  /** `yes`: needs a yes vote for --payload; `secret`: needs --secret. */
  needs?: 'yes' | 'secret'
  /** If it fails, nothing after it can run. */
  gate?: boolean
  run: (c: Context) => Promise<string>
}

export const SECRET_SKIP = 'skipped: no --secret given (signature checks need the participant\'s secret)'

export function yesSkip (vote: Vote | undefined): string {
  if (vote === 'no') return 'skipped: the participant voted no to --payload (pass a --payload it votes yes to)'
  if (vote === 'read-only') return 'skipped: the participant voted read-only to --payload (it takes no part in phase 2; pass a --payload it votes yes to)'
  return 'skipped: no vote for --payload'
}
