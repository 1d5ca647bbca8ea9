/**
 * `twoPhaseParticipant`: one `register` call mounts `POST {prefix}/prepare|commit|abort` (and,
 * unless `batchMaxCalls: 0`, `POST {prefix}/batch`: several of them in one request), keeps the
 * participant log in the service's own database (a store: `db` builds the SQLite one) and
 * resolves in-doubt transactions with the coordinator after the server listens.
 *
 * The plugin is wrapped with fastify-plugin so `app.twoPhase` and the onListen/onClose hooks
 * reach the host app; the routes live in an inner, encapsulated plugin so their raw-body JSON
 * parser and their error handler do not leak into (or get overridden by) the host app.
 */
import { Ajv, type FuncKeywordDefinition } from 'ajv'
import createError from '@fastify/error'
import { STATUS_CODES } from 'node:http'
import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyPluginAsync, FastifyRequest } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { SIGNATURE_HEADER, verifySignature, JSON_LIMITS, JSON_LIMITS_KEYWORD, JSON_LIMIT_CODES, jsonLimitExceeded, jsonLimitMessage, type SignedOperation } from '@fastify-2pc/protocol'
import { BatchAnswer, DecisionRequest, OkAnswer, PrepareAnswer, PrepareRequest, batchEnvelope } from '@fastify-2pc/protocol'
import type { BatchCapability, BatchResult } from '@fastify-2pc/protocol'
import { createCoordinatorClient } from './client.js'
import type { Registry } from 'prom-client'
import { HandlerThrew, LogWriteFailed, ParticipantEngine } from './engine.js'
import type { FlushStats } from './engine.js'
import {
  BadSignatureError, CallValidationError, HandlerFailedError, LogWriteFailedError, ParticipantMismatchError,
  TxAlreadyAbortedError, TxAlreadyCommittedError, TxUnknownError
} from './errors.js'
import { mustBeSync } from './store/steps.js'
import { applyDecision } from './decision.js'
import { InDoubtRecovery } from './recovery.js'
import type { InDoubtTransaction, RecoveryReport } from './recovery.js'
import { DecisionReceiver } from './amqp.js'
import type { ParticipantAmqpStatus } from './amqp.js'
import type { RecordState, Reply } from './state-machine.js'
import { createParticipantMetrics } from './metrics.js'
import type { ParticipantMetrics } from './metrics.js'
import { parseTraceparent, traceFields } from './trace.js'
import { checkOptions, positiveInteger } from './participant-options.js'
import type { TwoPhaseParticipantRegisterOptions } from './participant-options.js'

export type {
  TwoPhaseParticipantOptions, TwoPhaseParticipantStoreOptions, TwoPhaseParticipantRegisterOptions, ParticipantCommonOptions
} from './participant-options.js'

/** `app.twoPhase` */
export interface TwoPhaseParticipantApi {
  readonly name: string
  readonly prefix: string
  /** Transactions this participant holds prepared (it voted yes and knows no decision yet). */
  inDoubt (options?: { limit?: number }): InDoubtTransaction[]
  /** Asks the coordinator about every prepared transaction now (e.g. on a "coordinator restarted" notice). */
  recover (): Promise<RecoveryReport>
  /** The participant-log state of one transaction (`none` when there is no record). */
  stateOf (txid: string): RecordState
  /** The RabbitMQ link and its counters; undefined without `amqpUrl`. */
  amqpStatus (): ParticipantAmqpStatus | undefined
  /** The participant's Prometheus registry; undefined with `metrics: false`. */
  readonly metrics: Registry | undefined
  /** Participant-log flush counters: with group commit, fewer flushes (fsyncs) than callbacks. */
  flushStats (): FlushStats
  /** Deletes one bounded batch of settled records older than `retentionMs` now; returns how many (the timer does this each tick). */
  prune (): number
}

declare module 'fastify' {
  interface FastifyInstance {
    twoPhase: TwoPhaseParticipantApi
  }
}

const DAY_MS = 24 * 60 * 60 * 1000
/** Coordinator's default longest transaction timeout (10 min) plus 5 min of clock skew. */
const MIN_SAFE_RETENTION_MS = 15 * 60 * 1000
const MAX_IN_DOUBT_LIST = 10_000

/**
 * Limits of a prepare's `payload` — the coordinator's (it refuses more when it is enlisted), from
 * the protocol (protocol/src/json-limits.ts), applied by the `x-json-limits` keyword the
 * protocol's PrepareRequest schema carries on `payload`. Over them a prepare is refused 400
 * `JSON_TOO_DEEP` / `JSON_TOO_MANY_KEYS`, the handler not called.
 */
const PAYLOAD_LIMITS = JSON_LIMITS
const JsonTooDeepError = createError(JSON_LIMIT_CODES.depth, '%s', 400)
const JsonTooManyKeysError = createError(JSON_LIMIT_CODES.keys, '%s', 400)
/** A body in another charset than UTF-8 (JSON is UTF-8): refused, not misread. */
const UnsupportedCharsetError = createError('FST_ERR_CTP_INVALID_MEDIA_TYPE', 'Unsupported charset %s: callbacks are UTF-8 JSON', 415)

type LimitsValidator = ((limits: typeof PAYLOAD_LIMITS, data: unknown) => boolean) & { errors?: Array<{ keyword: string, message: string, params: { limit: string } }> | null }
const validateLimits: LimitsValidator = (limits, data) => {
  const over = jsonLimitExceeded(data, limits.maxDepth, limits.maxKeys)
  validateLimits.errors = over === undefined
    ? null
    : [{ keyword: JSON_LIMITS_KEYWORD, message: jsonLimitMessage(over, limits), params: { limit: over } }]
  return over === undefined
}
const jsonLimitsKeyword: FuncKeywordDefinition = { keyword: JSON_LIMITS_KEYWORD, schemaType: 'object', errors: true, validate: validateLimits as FuncKeywordDefinition['validate'] }

/** The error of a body over the payload limits (from its validation errors), else undefined. */
function jsonLimitError (errors: ReadonlyArray<{ keyword: string, instancePath?: string, message?: string, params?: Record<string, unknown> }> | null | undefined): FastifyError | undefined {
  const first = errors?.[0]
  if (first?.keyword !== JSON_LIMITS_KEYWORD) return undefined
  const message = `body${first.instancePath ?? ''} ${first.message ?? ''}`
  return first.params?.limit === 'depth' ? new JsonTooDeepError(message) : new JsonTooManyKeysError(message)
}

/** The charset a content-type names (lower-cased, unquoted), or undefined. */
function charsetOf (contentType: string | undefined): string | undefined {
  for (const param of (contentType ?? '').split(';').slice(1)) {
    const eq = param.indexOf('=')
    if (eq !== -1 && param.slice(0, eq).trim().toLowerCase() === 'charset') return param.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').toLowerCase()
  }
  return undefined
}

// The callbacks' schemas (bodies, answers, the batch envelope) are the protocol's (protocol/src/schemas/callbacks.ts).
type BatchOp = 'prepare' | 'commit' | 'abort'

/** Maps a state-machine reply to the HTTP answer (throws the protocol's error codes). */
function answer (reply: Reply): { vote: 'yes' | 'no' | 'read-only', reason?: string } | { ok: true } {
  switch (reply.type) {
    case 'vote': return reply.reason === undefined ? { vote: reply.vote } : { vote: reply.vote, reason: reply.reason }
    case 'ok': return { ok: true }
    case 'error':
      if (reply.code === 'TX_UNKNOWN') throw new TxUnknownError(reply.message)
      if (reply.code === 'TX_ALREADY_COMMITTED') throw new TxAlreadyCommittedError(reply.message)
      throw new TxAlreadyAbortedError(reply.message)
    case 'none': throw new Error('a callback event produced no reply')
  }
}

interface RouteOptions {
  engine: ParticipantEngine
  recovery: InDoubtRecovery
  secret: string | undefined
  /** Accept `v1` signatures too (`acceptLegacySignatures`). */
  acceptV1: boolean
  bodyLimit: number
  /** What prepare answers advertise and `/batch` accepts; undefined: no batch route. */
  batch: BatchCapability | undefined
  /** Observes the calls of each batch request (metrics). */
  onBatch: ((calls: number) => void) | undefined
  logger: FastifyBaseLogger
}

/** Maps the engine's failures to the protocol's errors (5xx: the coordinator retries). */
function callbackError (err: unknown, decision: 'prepare' | 'commit' | 'abort'): unknown {
  if (err instanceof HandlerThrew && decision !== 'prepare') return new HandlerFailedError(decision, { cause: err.cause })
  if (err instanceof LogWriteFailed) return new LogWriteFailedError({ cause: err.cause })
  return err
}

/** The protocol's error answer: `{statusCode, code, error, message}`. */
interface ErrorAnswer { statusCode: number, code: string, error: string, message: string }

/**
 * The error answer of a failed callback, the same for a single route (its error handler) and
 * for one call of a batch (its result): the coordinator reads `code` either way. A status outside
 * 400..599 becomes 500, and the message of an unexpected 5xx is hidden (it may carry internals).
 */
function errorAnswer (failure: FastifyError): ErrorAnswer {
  const error = jsonLimitError(failure.validation) ?? failure
  const statusCode = typeof error.statusCode === 'number' && error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 500
  const known = statusCode < 500 || error.code === 'HANDLER_FAILED' || error.code === 'LOG_WRITE_FAILED'
  return {
    statusCode,
    code: typeof error.code === 'string' ? error.code : 'INTERNAL_ERROR',
    error: STATUS_CODES[statusCode] ?? 'Error',
    message: known ? error.message : 'Internal Server Error'
  }
}

/** A 5xx is the participant's failure (error); a 4xx is the caller's (info). */
function logFailure (log: FastifyBaseLogger, error: unknown, statusCode: number, fields: Record<string, unknown>): void {
  if (statusCode >= 500) log.error({ err: error, ...fields }, '2pc callback failed')
  else log.info({ err: error, ...fields }, '2pc callback refused')
}

/** One callback's request context: its trace, and its child logger once its txid is known. */
interface CallScope {
  reqId: string
  traceparent: string | undefined
  /** txid, traceId and spanId of its traceparent, the request id; set once the participant name was checked. */
  log?: FastifyBaseLogger
}

/**
 * The operation a callback's signature must bind: the route's last segment (`{prefix}/commit` ->
 * `commit`). A signed abort sent to `/commit` fails to verify.
 */
function signedOperationOf (request: FastifyRequest): SignedOperation {
  const url = request.routeOptions.url ?? ''
  return url.slice(url.lastIndexOf('/') + 1) as SignedOperation
}

/** The callback routes, encapsulated (NOT wrapped in fastify-plugin). */
const callbackRoutes: FastifyPluginAsync<RouteOptions> = async (instance, { engine, recovery, secret, acceptV1, bodyLimit, batch, onBatch, logger }) => {
  // Requests whose signature was checked against their exact raw bytes.
  const verified = new WeakSet<FastifyRequest>()
  // Each single callback's scope, so that the error handler logs through its child logger.
  const scopes = new WeakMap<FastifyRequest, CallScope>()
  const parseJson = instance.getDefaultJsonParser('error', 'error')
  // The protocol's bodies are strict: an unknown field is refused, not silently dropped (Fastify's
  // default Ajv removes additional properties), whatever validator options the host app chose.
  const ajv = new Ajv({ removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false, strict: false, keywords: [jsonLimitsKeyword] })
  instance.setValidatorCompiler(({ schema }) => ajv.compile(schema))

  // Only JSON is accepted here, and the raw string must be seen before parsing to check the
  // HMAC: authenticate first, then parse (with Fastify's prototype-poisoning-safe parser).
  instance.removeAllContentTypeParsers()
  instance.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit }, (request, rawBody, done) => {
    if (secret !== undefined) {
      const check = verifySignature(secret, signedOperationOf(request), request.headers[SIGNATURE_HEADER], rawBody as string, { acceptV1 })
      if (!check.ok) {
        done(new BadSignatureError(check.reason), undefined)
        return
      }
      verified.add(request)
    }
    parseJson(request, rawBody as string, done)
  })

  if (secret !== undefined) {
    // A request without a JSON body never reached the parser: it is unsigned by definition.
    instance.addHook('preValidation', async request => {
      if (!verified.has(request)) throw new BadSignatureError('missing')
    })
  }

  // The coordinator reads `code`: whatever error handler the host app set, answer the protocol's shape.
  instance.setErrorHandler((error: FastifyError, request, reply) => {
    const body = errorAnswer(error)
    logFailure(scopes.get(request)?.log ?? logger, error, body.statusCode, { url: request.url })
    void reply.code(body.statusCode).send(body)
  })

  // JSON is UTF-8 (RFC 8259): a body declared in another charset is refused before it is read.
  instance.addHook('preParsing', async request => {
    const charset = charsetOf(request.headers['content-type'])
    if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') throw new UnsupportedCharsetError(charset.slice(0, 64))
  })

  const app = instance.withTypeProvider<TypeBoxTypeProvider>()
  const checkParticipant = (participant: string | undefined): void => {
    if (participant !== undefined && participant !== engine.name) throw new ParticipantMismatchError(engine.name, participant)
  }
  const callLogger = (scope: CallScope, txid: string): FastifyBaseLogger => {
    scope.log = logger.child({ txid, ...traceFields(scope.traceparent), reqId: scope.reqId })
    return scope.log
  }

  // One function per callback kind: a single route and each call of a batch run exactly this,
  // so a batched call is answered what the single route would have answered.
  const runPrepare = async (body: PrepareRequest, scope: CallScope): Promise<PrepareAnswer> => {
    checkParticipant(body.participant)
    const log = callLogger(scope, body.txid)
    let reply: Reply
    try {
      reply = await engine.prepare(body, { source: 'http', traceparent: scope.traceparent, logger: log })
    } catch (err) {
      throw callbackError(err, 'prepare')
    }
    const vote = answer(reply) as PrepareAnswer
    // Every vote says the batch route is there: a coordinator learns it from any prepare answer.
    return batch === undefined ? vote : { ...vote, batch }
  }
  const runDecision = async (decision: 'commit' | 'abort', body: DecisionRequest, scope: CallScope): Promise<{ ok: true }> => {
    checkParticipant(body.participant)
    const log = callLogger(scope, body.txid)
    let reply: Reply
    try {
      // The same path as a decision notice over RabbitMQ (amqp.ts).
      reply = (await applyDecision(engine, recovery, body.txid, decision, { source: 'http', traceparent: scope.traceparent, logger: log })).reply
    } catch (err) {
      // Not swallowed: logged (by the error handler, or as the batch call's failure) with its
      // cause; 5xx tells the coordinator to retry.
      throw callbackError(err, decision)
    }
    return answer(reply) as { ok: true }
  }
  const scopeOf = (request: FastifyRequest): CallScope => {
    const scope: CallScope = { reqId: request.id, traceparent: parseTraceparent(request.headers.traceparent) }
    scopes.set(request, scope)
    return scope
  }

  app.post('/prepare', {
    bodyLimit,
    schema: { body: PrepareRequest, response: { 200: PrepareAnswer } }
  }, async request => await runPrepare(request.body, scopeOf(request)))

  for (const decision of ['commit', 'abort'] as const) {
    app.post(`/${decision}`, {
      bodyLimit,
      schema: { body: DecisionRequest, response: { 200: OkAnswer } }
    }, async request => await runDecision(decision, request.body, scopeOf(request)))
  }

  if (batch === undefined) return
  // Each call's body against its single route's schema, with the same strict Ajv, compiled once.
  const validatePrepare = ajv.compile<PrepareRequest>(PrepareRequest)
  const validateDecision = ajv.compile<DecisionRequest>(DecisionRequest)
  const runCall = async (op: BatchOp, body: object, scope: CallScope): Promise<unknown> => {
    if (op === 'prepare') {
      if (!validatePrepare(body)) throw jsonLimitError(validatePrepare.errors) ?? new CallValidationError(ajv.errorsText(validatePrepare.errors, { dataVar: 'body' }))
      return await runPrepare(body, scope)
    }
    if (!validateDecision(body)) throw new CallValidationError(ajv.errorsText(validateDecision.errors, { dataVar: 'body' }))
    return await runDecision(op, body, scope)
  }

  // Several callbacks in one request (signature, parser and error handler as above: a bad
  // signature or a malformed envelope fails the whole request). Each call gets its own result.
  app.post('/batch', {
    bodyLimit,
    schema: { body: batchEnvelope(batch.maxCalls), response: { 200: BatchAnswer } }
  }, async request => {
    const { calls } = request.body
    onBatch?.(calls.length)
    // Every call is started before any is awaited: all of them are queued in this turn, so they
    // share one group-committed local transaction (one fsync), like concurrent single callbacks.
    const results = await Promise.all(calls.map(async (call, index): Promise<BatchResult> => {
      const scope: CallScope = { reqId: request.id, traceparent: parseTraceparent(call.traceparent) }
      try {
        return { status: 200, body: await runCall(call.op, call.body, scope) }
      } catch (err) {
        const body = errorAnswer(err as FastifyError)
        logFailure(scope.log ?? logger, err, body.statusCode, { url: request.url, op: call.op, call: index })
        return { status: body.statusCode, body }
      }
    }))
    return { results }
  })
}

const plugin: FastifyPluginAsync<TwoPhaseParticipantRegisterOptions> = async (fastify: FastifyInstance, options) => {
  const { store, warning } = checkOptions(options)
  const prefix = options.prefix ?? '/2pc'
  const bodyLimit = positiveInteger('bodyLimit', options.bodyLimit, 1024 * 1024)
  const logger = options.logger ?? fastify.log.child({ plugin: '@fastify-2pc/participant-sdk', participant: options.name })
  const recoveryOptions = {
    inDoubtAfterMs: positiveInteger('inDoubtAfterMs', options.inDoubtAfterMs, 10_000),
    baseDelayMs: positiveInteger('recoveryBaseDelayMs', options.recoveryBaseDelayMs, 1_000),
    maxDelayMs: positiveInteger('recoveryMaxDelayMs', options.recoveryMaxDelayMs, 60_000),
    maxQueriesPerTick: positiveInteger('recoveryBatchSize', options.recoveryBatchSize, 100),
    retentionMs: positiveInteger('retentionMs', options.retentionMs, 7 * DAY_MS)
  }
  const maxBatch = positiveInteger('groupCommitMaxBatch', options.groupCommitMaxBatch, 128)
  const batchMaxCalls = options.batchMaxCalls ?? 128
  // The largest batch body is the largest callback body: one limit, enforced by the same parser.
  const batch: BatchCapability | undefined = batchMaxCalls === 0 ? undefined : Object.freeze({ maxCalls: batchMaxCalls, maxBytes: bodyLimit })
  if (recoveryOptions.retentionMs < MIN_SAFE_RETENTION_MS) {
    logger.warn({ retentionMs: recoveryOptions.retentionMs },
      'retentionMs is shorter than the longest transaction timeout plus clock skew (15 min): a late prepare may outlive its tombstone')
  }

  if (warning !== undefined) logger.warn(warning)
  await store.migrate()
  let metrics: ParticipantMetrics | undefined
  const engine = new ParticipantEngine(store, options.name, {
    prepare: options.prepare, commit: options.commit, abort: options.abort
  }, {
    logger,
    groupCommit: options.groupCommit ?? true,
    maxBatch,
    ...(options.inlineSyncMaxMs !== undefined ? { inlineSyncMaxMs: options.inlineSyncMaxMs } : {}),
    observer: {
      onFlush: (size, ms, ok) => metrics?.observer.onFlush?.(size, ms, ok),
      onSync: (events, ms) => metrics?.observer.onSync?.(events, ms),
      onEvent: (kind, source, outcome) => metrics?.observer.onEvent?.(kind, source, outcome)
    }
  })
  if (options.metrics !== false) metrics = createParticipantMetrics(options.name, engine.records)
  const clientOptions: { url: string, token?: string, connections: number } = { url: options.coordinatorUrl, connections: 2 }
  if (options.coordinatorToken !== undefined) clientOptions.token = options.coordinatorToken
  const client = createCoordinatorClient(clientOptions)
  const recovery = new InDoubtRecovery(engine, client, logger, {
    ...recoveryOptions,
    ...(metrics !== undefined ? { onQuery: metrics.onQuery, onPrune: metrics.onPrune } : {})
  })
  let receiver: DecisionReceiver | undefined
  if (options.amqpUrl !== undefined) {
    receiver = new DecisionReceiver({
      url: options.amqpUrl,
      prefix: options.amqpPrefix ?? 'twopc',
      engine,
      recovery,
      logger,
      ...(options.secret !== undefined ? { secret: options.secret } : {}),
      ...(metrics !== undefined ? { onCount: metrics.onAmqp, onRejected: metrics.onAmqpRejected } : {}),
      ...(options.amqpOptions !== undefined ? { link: options.amqpOptions } : {})
    })
  } else {
    logger.info('amqpUrl is not set: running WITHOUT RabbitMQ — decisions arrive over HTTP callbacks and in-doubt recovery only')
  }

  fastify.decorate('twoPhase', {
    name: options.name,
    prefix,
    inDoubt: ({ limit = 1000 }: { limit?: number } = {}) => recovery.inDoubt(Math.min(Math.max(1, limit), MAX_IN_DOUBT_LIST)),
    recover: async () => await recovery.recover(),
    stateOf: (txid: string) => mustBeSync(engine.records.stateOf(txid), 'stateOf'),
    amqpStatus: () => receiver?.status(),
    metrics: metrics?.registry,
    flushStats: () => engine.flushStats(),
    prune: () => recovery.prune()
  } satisfies TwoPhaseParticipantApi)

  const acceptV1 = options.acceptLegacySignatures === true
  if (acceptV1) {
    logger.warn({ prefix },
      'acceptLegacySignatures: v1 signatures are accepted, and v1 does not bind the route: a signed abort replayed onto /commit would verify. Turn it off once the coordinator signs v2')
  }
  await fastify.register(callbackRoutes, { prefix, engine, recovery, secret: options.secret, acceptV1, bodyLimit, batch, onBatch: metrics?.onBatch, logger })
  if (metrics !== undefined && options.metricsRoute !== undefined && options.metricsRoute !== false) {
    // Outside the callback routes: no signature (a scraper has none), like any /metrics.
    const registry = metrics.registry
    fastify.get(options.metricsRoute === true ? `${prefix}/metrics` : options.metricsRoute, async (_request, reply) => {
      return await reply.header('content-type', registry.contentType).send(await registry.metrics())
    })
  }

  // After listen, not at ready: by then the callback routes are reachable, so a decision the
  // coordinator pushes while recovery runs is applied by whichever comes first (both go through
  // the same state machine, so the second is a no-op); and a process that never listens
  // (inject-only tests, scripts) does not call out on its own.
  // The RabbitMQ link starts there too, without waiting for the broker (a broker that is down
  // never blocks start-up; the link keeps reconnecting).
  fastify.addHook('onListen', async () => {
    recovery.start()
    receiver?.start()
  })
  // Nothing queued for the next group commit is dropped by a graceful close: flush it before the
  // host's own onClose hooks (which usually close the database) run.
  fastify.addHook('preClose', async () => { engine.flushAndSync() })
  fastify.addHook('onClose', async () => {
    // First the link: it stops consuming and lets a notice being applied finish (bounded).
    await receiver?.close()
    await recovery.stop()
    engine.close()
    await client.close()
  })
}

export const twoPhaseParticipant = fp(plugin, { name: '@fastify-2pc/participant-sdk', fastify: '5.x' })
export default twoPhaseParticipant
