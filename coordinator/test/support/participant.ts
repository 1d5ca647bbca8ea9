/**
 * Test support for the coordinator's end-to-end, bad-input and crash tests. Real parts only:
 * a real Fastify participant on 127.0.0.1, the real coordinator app on a real SQLite file.
 *
 * - `startParticipant(t, behaviour?)`: a small participant server implementing docs/protocol.md's
 *   `POST {base}/prepare`, `/commit`, `/abort`. Its `behaviour` is a plain mutable object (vote,
 *   prepare delay, injected phase-2 failures); it records every call and keeps per-txid state.
 *   `down()` closes the server; `up()` starts it again on the SAME port, with state and calls kept.
 * - `startCoordinator(t, overrides?)`: the coordinator (`buildCoordinator`) on a temp SQLite file
 *   with small timeouts, listening on 127.0.0.1:0, ready (`/readyz` 200); closed in t.teardown.
 * - `waitFor(fn, timeoutMs?)`: polls `fn` until it returns a truthy value (returned) or throws
 *   after `timeoutMs` with the last value / error in the message. Bounded; never a fixed sleep.
 * - `http(base)`: tiny undici JSON client that always consumes the answer body.
 */
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import { request } from 'undici'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { verifySignature, SIGNATURE_HEADER, type Vote, type SignedOperation } from '@fastify-2pc/protocol'
import type { Test } from 'tap'
import { buildCoordinator, type CoordinatorOptions } from '../../src/index.js'
import { waitFor as kitWaitFor } from '../../../test/kit/wait.js'

// ---- polling ---------------------------------------------------------------------------------

/** Polls `fn` (every 10 ms) until it returns a truthy value; throws after `timeoutMs` (the kit's waitFor, arguments in this module's order). */
export async function waitFor<T> (fn: () => T | Promise<T>, timeoutMs = 5000, what = 'condition'): Promise<NonNullable<T>> {
  return await kitWaitFor(what, fn, timeoutMs, { everyMs: 10 })
}

// ---- HTTP client -----------------------------------------------------------------------------

export interface HttpAnswer<T = any> {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: T
  text: string
}

export interface HttpClient {
  get: <T = any>(path: string, headers?: Record<string, string>) => Promise<HttpAnswer<T>>
  /** `body` undefined: no body and no content-type; a string is sent as is (set content-type yourself). */
  post: <T = any>(path: string, body?: unknown, headers?: Record<string, string>) => Promise<HttpAnswer<T>>
}

/** A JSON client over undici `request`; always reads the whole answer body. */
export function http (base: string, defaultHeaders: Record<string, string> = {}): HttpClient {
  async function send<T> (method: 'GET' | 'POST', path: string, body: unknown, headers: Record<string, string>): Promise<HttpAnswer<T>> {
    const h: Record<string, string> = { ...defaultHeaders, ...headers }
    let raw: string | undefined
    if (typeof body === 'string') raw = body
    else if (body !== undefined) {
      raw = JSON.stringify(body)
      h['content-type'] ??= 'application/json'
    }
    const res = await request(base + path, { method, headers: h, ...(raw !== undefined ? { body: raw } : {}) })
    const text = await res.body.text()
    let parsed: unknown = text
    try { parsed = JSON.parse(text) } catch { /* not JSON: keep the text */ }
    return { status: res.statusCode, headers: res.headers, body: parsed as T, text }
  }
  return {
    get: async (path, headers = {}) => await send('GET', path, undefined, headers),
    post: async (path, body, headers = {}) => await send('POST', path, body, headers)
  }
}

// ---- participant -----------------------------------------------------------------------------

export type CallbackName = 'prepare' | 'commit' | 'abort'

export interface ParticipantBehaviour {
  /** Vote given to a new prepare (a repeated prepare answers the vote already given). */
  vote: Vote
  /** Wait this long before answering a prepare. */
  prepareDelayMs: number
  /**
   * Answer the next `times` commit/abort calls with `status` (Infinity: forever), without
   * applying them. Decremented per failed call.
   */
  phase2Failure?: { status: number, times: number, body?: unknown }
  /** Never answer commit/abort calls (held until `down()`), without applying them. */
  phase2Hang?: boolean
  /**
   * Go down (as `down()`) right after answering the next prepare: the vote reaches the
   * coordinator, phase 2 finds the port closed until `up()`. Reset to false when it fires.
   */
  downAfterPrepare: boolean
}

export interface RecordedCall {
  path: CallbackName
  body: any
  headers: Record<string, string | string[] | undefined>
  /** With a secret: whether x-2pc-signature verified; undefined without a secret. */
  signatureOk?: boolean
  /** What this participant answered. */
  status: number
  at: number
}

/**
 * Per-txid state: `prepared` (voted yes), `committed`, `aborted` (aborted after prepare, voted
 * no, or tombstoned by an abort before any prepare), `read-only` (voted read-only).
 */
export type ParticipantTxState = 'prepared' | 'committed' | 'aborted' | 'read-only'

export interface TestParticipant {
  /** Callback base to enlist: `http://127.0.0.1:<port>/2pc`. */
  readonly url: string
  readonly port: number
  readonly behaviour: ParticipantBehaviour
  readonly calls: RecordedCall[]
  /** Calls of one kind, optionally for one txid. */
  callsTo: (path: CallbackName, txid?: string) => RecordedCall[]
  state: (txid: string) => ParticipantTxState | undefined
  readonly isUp: boolean
  /** Commit/abort calls received while `phase2Hang` was set (answered only at `down()`). */
  readonly held: number
  /** Closes the server (open connections destroyed); calls get connection refused. */
  down: () => Promise<void>
  /** Listens again on the same port; state and recorded calls are kept. */
  up: () => Promise<void>
  close: () => Promise<void>
}

export interface ParticipantOptions extends Partial<ParticipantBehaviour> {
  /** Verify x-2pc-signature with this secret; a bad one is answered 401 (like the SDK). */
  secret?: string
  /** Callback prefix, default '/2pc'. */
  prefix?: string
}

export async function startParticipant (t: Test, options: ParticipantOptions = {}): Promise<TestParticipant> {
  const prefix = options.prefix ?? '/2pc'
  const behaviour: ParticipantBehaviour = {
    vote: options.vote ?? 'yes',
    prepareDelayMs: options.prepareDelayMs ?? 0,
    downAfterPrepare: options.downAfterPrepare ?? false,
    ...(options.phase2Failure !== undefined ? { phase2Failure: options.phase2Failure } : {}),
    ...(options.phase2Hang !== undefined ? { phase2Hang: options.phase2Hang } : {})
  }
  const calls: RecordedCall[] = []
  const states = new Map<string, ParticipantTxState>()
  const votes = new Map<string, Vote>()
  const pendingDelays = new Set<() => void>()
  let app: FastifyInstance | undefined
  let port = 0
  let held = 0

  async function delay (ms: number): Promise<void> {
    if (ms <= 0) return
    await new Promise<void>(resolve => {
      const done = (): void => { clearTimeout(timer); pendingDelays.delete(done); resolve() }
      const timer = setTimeout(done, ms)
      pendingDelays.add(done)
    })
  }

  /** Waits until `down()` releases it. */
  async function hold (): Promise<void> {
    await new Promise<void>(resolve => {
      const done = (): void => { pendingDelays.delete(done); resolve() }
      pendingDelays.add(done)
    })
  }

  function build (): FastifyInstance {
    const server = Fastify({ logger: false, forceCloseConnections: true })
    const raw = new WeakMap<FastifyRequest, string>()
    server.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
      raw.set(req, body as string)
      try { done(null, JSON.parse(body as string)) } catch (err) { done(err as Error, undefined) }
    })

    function record (path: CallbackName, req: FastifyRequest, status: number, signatureOk: boolean | undefined): void {
      calls.push({ path, body: req.body, headers: { ...req.headers }, status, at: Date.now(), ...(signatureOk !== undefined ? { signatureOk } : {}) })
    }

    /** Checks the signature; false (and 401 already decided) when a secret is set and it fails. */
    function signatureOf (path: CallbackName, req: FastifyRequest): boolean | undefined {
      if (options.secret === undefined) return undefined
      return verifySignature(options.secret, path as SignedOperation, req.headers[SIGNATURE_HEADER], raw.get(req) ?? '').ok
    }

    server.addHook('onResponse', async (req) => {
      if (behaviour.downAfterPrepare && req.routeOptions.url === `${prefix}/prepare`) {
        behaviour.downAfterPrepare = false
        setImmediate(() => { void down() })
      }
    })

    server.post(`${prefix}/prepare`, async (req, reply) => {
      const sig = signatureOf('prepare', req)
      if (sig === false) {
        record('prepare', req, 401, sig)
        return await reply.code(401).send({ code: 'BAD_SIGNATURE' })
      }
      const body = req.body as { txid: string, onePhase?: boolean }
      await delay(behaviour.prepareDelayMs)
      let vote = votes.get(body.txid)
      if (vote === undefined) {
        // An abort that came first left a tombstone: a late prepare votes no.
        vote = states.get(body.txid) === 'aborted' ? 'no' : behaviour.vote
        votes.set(body.txid, vote)
        if (states.get(body.txid) === undefined) {
          states.set(body.txid, vote === 'yes' ? (body.onePhase === true ? 'committed' : 'prepared') : vote === 'no' ? 'aborted' : 'read-only')
        }
      }
      record('prepare', req, 200, sig)
      return { vote }
    })

    for (const path of ['commit', 'abort'] as const) {
      server.post(`${prefix}/${path}`, async (req, reply) => {
        const sig = signatureOf(path, req)
        if (sig === false) {
          record(path, req, 401, sig)
          return await reply.code(401).send({ code: 'BAD_SIGNATURE' })
        }
        if (behaviour.phase2Hang === true) {
          held++
          await hold()
          record(path, req, 503, sig)
          return await reply.code(503).send({ code: 'HELD' })
        }
        const failure = behaviour.phase2Failure
        if (failure !== undefined && failure.times > 0) {
          failure.times--
          record(path, req, failure.status, sig)
          return await reply.code(failure.status).send(failure.body ?? { code: 'INJECTED_FAILURE' })
        }
        const { txid } = req.body as { txid: string }
        const current = states.get(txid)
        if (path === 'commit') {
          if (current === 'prepared' || current === 'committed') {
            states.set(txid, 'committed')
          } else {
            const code = current === 'aborted' ? 'TX_ALREADY_ABORTED' : 'TX_UNKNOWN'
            record(path, req, 409, sig)
            return await reply.code(409).send({ code })
          }
        } else {
          if (current === 'committed') {
            record(path, req, 409, sig)
            return await reply.code(409).send({ code: 'TX_ALREADY_COMMITTED' })
          }
          states.set(txid, 'aborted') // also the tombstone of an abort before any prepare
        }
        record(path, req, 200, sig)
        return { ok: true }
      })
    }
    return server
  }

  async function up (): Promise<void> {
    if (app !== undefined) return
    const server = build()
    await server.listen({ host: '127.0.0.1', port })
    const address = server.server.address()
    if (address === null || typeof address === 'string') throw new Error('participant: no TCP address')
    port = address.port
    app = server
  }

  async function down (): Promise<void> {
    const server = app
    app = undefined
    for (const release of [...pendingDelays]) release()
    if (server !== undefined) await server.close()
  }

  await up()
  t.teardown(down)

  return {
    get url () { return `http://127.0.0.1:${port}${prefix}` },
    get port () { return port },
    behaviour,
    calls,
    callsTo: (path, txid) => calls.filter(c => c.path === path && (txid === undefined || c.body?.txid === txid)),
    state: txid => states.get(txid),
    get isUp () { return app !== undefined },
    get held () { return held },
    down,
    up,
    close: down
  }
}

/** The tests' own connections to log files, one per path (the log keeps its handle private). */
const logFiles = new Map<string, Database.Database>()

/** A connection of the test's own to a coordinator log file (foreign keys on, as the log has them). */
export function logFile (path: string): Database.Database {
  let db = logFiles.get(path)
  if (db === undefined || !db.open) {
    db = new Database(path)
    db.pragma('foreign_keys = ON')
    db.pragma('busy_timeout = 5000')
    logFiles.set(path, db)
  }
  return db
}

// ---- coordinator -----------------------------------------------------------------------------

export interface TestCoordinator {
  app: FastifyInstance
  /** `http://127.0.0.1:<port>` */
  url: string
  /** The coordinator id (prefix of its transaction ids). */
  id: string
  dbPath: string
  /** undici JSON client for this coordinator (with the bearer token when `apiToken` is set). */
  api: HttpClient
  close: () => Promise<void>
}

/** Small timeouts so retries and sweeps happen within a test's patience. */
export const testCoordinatorDefaults = {
  retryBaseMs: 20,
  retryMaxMs: 200,
  sweepIntervalMs: 50,
  prepareTimeoutMs: 2000,
  phase2TimeoutMs: 2000,
  logger: false
} satisfies Partial<CoordinatorOptions>

const dirs = new WeakMap<Test, string>()
let dbCounter = 0

/** A fresh SQLite file path in the test's directory (t.testdir(), created once per test). */
export function tempDbPath (t: Test): string {
  let dir = dirs.get(t)
  if (dir === undefined) {
    dir = t.testdir()
    dirs.set(t, dir)
  }
  return join(dir, `coordinator-${++dbCounter}.db`)
}

/**
 * Builds and starts a coordinator for a test: temp SQLite file (unless `overrides.dbPath`),
 * small timeouts, 127.0.0.1:0; resolves once /readyz answers 200; closed in t.teardown.
 */
export async function startCoordinator (t: Test, overrides: Partial<CoordinatorOptions> = {}): Promise<TestCoordinator> {
  const dbPath = overrides.dbPath ?? tempDbPath(t)
  const app = await buildCoordinator({ ...testCoordinatorDefaults, ...overrides, dbPath })
  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    await app.close()
  }
  t.teardown(close)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('coordinator: no TCP address')
  const url = `http://127.0.0.1:${address.port}`
  const auth: Record<string, string> = overrides.apiToken !== undefined ? { authorization: `Bearer ${overrides.apiToken}` } : {}
  const api = http(url, auth)
  await waitFor(async () => (await api.get('/readyz')).status === 200, 5000, 'coordinator /readyz 200')
  return { app, url, id: app.coordinator.id, dbPath, api, close }
}
