/**
 * The app factory: builds the coordinator's Fastify app from an options object. Tests use it
 * directly; the `twopc-coordinator` bin builds the options from the environment.
 */
import Fastify, { type FastifyInstance, type FastifyError, type FastifyRequest } from 'fastify'
import type { Socket } from 'node:net'
import fp from 'fastify-plugin'
import { STATUS_CODES } from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import { resolveOptions, type CoordinatorOptions, type ResolvedOptions } from './config.js'
import { CoordinatorLog } from './log/store.js'
import { ParticipantDriver } from './driver.js'
import { Engine } from './engine.js'
import { parseAllowlist } from './allowlist.js'
import { newCoordinatorId } from './ids.js'
import { CLIENT_ERROR_DEFAULT, CLIENT_ERRORS, Errors, FRAMEWORK_CODES, JSON_LIMIT_CODES } from './errors.js'
import { JSON_LIMITS_KEYWORD, jsonLimitsKeyword } from './schemas.js'
import { transactionRoutes } from './routes.js'
import { operatorRoutes } from './admin/api.js'
import { adminConsole } from './admin/console.js'
import { OutboxPublisher } from './outbox.js'
import { AmqpLink, PoisonMessageError, verifyBrokerMessage } from '@fastify-2pc/amqp'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { createMetrics, type CoordinatorMetrics } from './metrics.js'
import { RetentionPruner } from './retention.js'
import { amqpNames, parseAckNotice } from '@fastify-2pc/protocol'
import { SyncPlacement } from '@fastify-2pc/storage'

export interface Coordinator {
  id: string
  engine: Engine
  log: CoordinatorLog
  options: ResolvedOptions
  /** The RabbitMQ link; undefined without `amqpUrl`. */
  amqp: AmqpLink | undefined
  outbox: OutboxPublisher | undefined
  metrics: CoordinatorMetrics
  pruner: RetentionPruner
}

declare module 'fastify' {
  interface FastifyInstance {
    coordinator: Coordinator
  }
}

function sha256 (text: string): Buffer {
  return createHash('sha256').update(text).digest()
}

/** Fastify plugin: the log, the engine, the routes, recovery and the sweeper, closed in onClose. */
export const coordinatorPlugin = fp<{ options: ResolvedOptions }>(async (app, { options }) => {
  const allowlist = parseAllowlist(options.participantAllowlist)
  const names = amqpNames(options.amqpPrefix)
  const log = new CoordinatorLog(options.dbPath, options.amqpUrl === undefined
    ? null
    : { exchange: names.decisionsExchange, routingKey: names.participantRoutingKey })
  log.syncPlacement = new SyncPlacement(options.logInlineSyncMaxMs)
  let coordinatorId: string
  try {
    coordinatorId = log.bindCoordinatorId(options.coordinatorId, newCoordinatorId)
  } catch (err) {
    log.close()
    throw err
  }
  const driver = new ParticipantDriver({
    ...(options.secret !== undefined ? { secret: options.secret } : {}),
    maxResponseBytes: options.maxResponseBytes,
    connectionsPerOrigin: options.connectionsPerOrigin,
    batchMaxCalls: options.batchMaxCalls,
    onBatch: (calls) => { metrics.callbackBatch.observe(calls) }
  })
  let link: AmqpLink | undefined
  let outbox: OutboxPublisher | undefined
  if (options.amqpUrl !== undefined) {
    link = new AmqpLink({ url: options.amqpUrl, prefix: options.amqpPrefix, logger: app.log.child({ component: 'amqp' }), connectionName: `twopc-coordinator ${coordinatorId}` })
    outbox = new OutboxPublisher(log, link, {
      batchSize: 500,
      intervalMs: 1000,
      maxBatchesPerFlush: 20,
      publishTimeoutMs: 10_000,
      logger: app.log.child({ component: 'outbox' }),
      ...(options.secret !== undefined ? { secret: options.secret } : {})
    })
  } else {
    app.log.warn('AMQP_URL is not set: running WITHOUT RabbitMQ — undelivered decisions are retried over HTTP only, transactional messages are refused')
  }
  const metrics = createMetrics(log, () => outbox !== undefined)
  if (outbox !== undefined) outbox.onPublished = (n) => metrics.outboxPublished.inc(n)
  log.onFlush = (steps, ms) => {
    metrics.flushBatch.observe(steps)
    metrics.flushSeconds.observe(ms / 1000)
  }
  log.onSync = (steps, ms) => {
    metrics.syncBatch.observe(steps)
    metrics.syncSeconds.observe(ms / 1000)
  }
  const engine = new Engine(log, driver, {
    coordinatorId,
    policy: {
      maxParticipants: options.maxParticipants,
      maxMessages: options.maxMessages,
      retryBaseMs: options.retryBaseMs,
      retryMaxMs: options.retryMaxMs,
      retryBudget: options.retryBudget
    },
    prepareTimeoutMs: options.prepareTimeoutMs,
    phase2TimeoutMs: options.phase2TimeoutMs,
    sweepIntervalMs: options.sweepIntervalMs,
    maxConcurrentPhase2: 256,
    logger: app.log,
    observer: {
      begun: () => metrics.begun.inc(),
      decided: (decision, reason, phase1Ms) => {
        if (decision === 'commit') metrics.committed.inc()
        else metrics.aborted.inc({ reason: reason ?? 'unknown' })
        if (phase1Ms !== null) metrics.phase1.observe(phase1Ms / 1000)
      },
      completed: (phase2Ms) => metrics.phase2.observe(phase2Ms / 1000),
      retry: () => metrics.retries.inc(),
      attention: (kind) => metrics.heuristics.inc({ kind })
    },
    ...(outbox !== undefined ? { onOutboxWrite: () => outbox.kick(), outboxMaxRows: options.outboxMaxRows } : {})
  })
  const pruner = new RetentionPruner(log, {
    retentionMs: options.retentionMs,
    intervalMs: options.pruneIntervalMs,
    batchSize: 500,
    maxBatchesPerRun: 20,
    logger: app.log.child({ component: 'retention' })
  })
  app.decorate('coordinator', { id: coordinatorId, engine, log, options, amqp: link, outbox, metrics, pruner })

  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched'
    metrics.httpRequests.inc({ method: req.method, route, status: String(reply.statusCode) })
    metrics.httpSeconds.observe({ method: req.method, route }, reply.elapsedTime / 1000)
  })
  app.get('/metrics', { schema: { hide: true } as object }, async (_req, reply) => {
    reply.type(metrics.registry.contentType)
    return await metrics.registry.metrics()
  })

  let closing = false
  // Fastify closes the server (waiting for every open connection) before onClose hooks run, and
  // a keep-alive connection whose request was in flight at close (a commit waiting for votes)
  // would stay open until the client drops it. Answer with `connection: close` once closing.
  app.addHook('preClose', async () => { closing = true })
  app.addHook('onSend', async (_req, reply) => {
    if (closing) void reply.header('connection', 'close')
  })
  app.addHook('onClose', async () => {
    closing = true
    pruner.stop()
    await engine.stop()
    await outbox?.stop()
    await link?.close()
    await driver.close()
    log.close()
  })

  // Recovery runs once the app is ready; /readyz says 503 until it is done.
  app.addHook('onReady', async () => {
    app.log.info({ coordinatorId, db: options.dbPath, allowlist: allowlist.describe, amqp: link !== undefined }, 'coordinator log open')
    if (link !== undefined) {
      const amqp = link
      // start() resolves after the first attempt either way: a down broker never blocks start-up.
      await amqp.start()
      const secret = options.secret
      await amqp.consumeAcks(async (msg) => {
        if (secret !== undefined) {
          // Authenticate before parsing: anyone who can publish on the vhost could otherwise
          // mark a participant acked and stop phase 2 for it. Dead-lettered, never requeued.
          const check = verifyBrokerMessage(secret, 'amqp.ack', msg.properties.headers, msg.content)
          if (!check.ok) {
            metrics.amqpRejected.inc({ reason: check.reason })
            app.log.warn({ queue: names.acksQueue, messageId: msg.properties.messageId, reason: check.reason, bytes: msg.content.length },
              'RabbitMQ: ack refused: bad signature; dead-lettered')
            throw new PoisonMessageError(`ack refused: signature ${check.reason}`)
          }
        }
        const ack = parseAckNotice(msg.content)
        if (ack === undefined) throw new PoisonMessageError('not an ack notice')
        // Closing: fail the delivery so the broker keeps the ack for the next start — returning
        // here would ack the message and lose it (the participant sends its ack once).
        if (closing) throw new Error('the coordinator is closing: the ack stays on the queue for the next start')
        await engine.acknowledge(ack.txid, ack.participant, ack.decision)
      }).catch((err: unknown) => { app.log.warn({ err }, 'acks consumer not started yet; the link retries on reconnect') })
    }
    void engine.recover().then(() => {
      engine.startSweeper()
      pruner.start()
      if (outbox !== undefined) {
        const at = Date.now()
        // Participants re-check what they hold in doubt when they hear this.
        log.enqueueEvent(names.eventsExchange, '', `${coordinatorId}:started:${at}`, { type: 'coordinator.started', coordinatorId, at }, at)
        outbox.start()
      }
    }, (err: unknown) => {
      app.log.fatal({ err }, 'recovery failed')
    })
  })

  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const ready = engine.recovered && !closing && log.failure === undefined
    reply.code(ready ? 200 : 503)
    // The broker is reported, not required: a broker outage only grows the outbox.
    let amqp: Record<string, unknown> = { configured: false }
    if (link !== undefined && log.open) {
      const stats = log.outboxStats()
      const status = link.status()
      amqp = {
        configured: true,
        connected: status.connected,
        lastError: status.lastError ?? outbox?.status().lastError ?? null,
        outboxDepth: stats.depth,
        outboxDead: stats.dead,
        outboxOldestAgeMs: stats.oldestCreatedAt === null ? null : Date.now() - stats.oldestCreatedAt,
        // Full: work that would add messages answers 503 OUTBOX_FULL; the rest goes on (still ready).
        outboxMaxRows: options.outboxMaxRows,
        outboxFull: stats.depth >= options.outboxMaxRows
      }
    }
    // `full` / `failed`: the log cannot be written (latched until a restart; logError says why).
    const logState = closing ? 'closing' : log.failureKind ?? 'open'
    return { ready, log: logState, logError: log.failure?.message ?? null, recovery: engine.recovered ? 'done' : 'running', coordinatorId, amqp }
  })

  await app.register(async (v1) => {
    if (options.apiToken !== undefined) {
      const expected = sha256(options.apiToken)
      v1.addHook('onRequest', async (req) => {
        const header = req.headers.authorization
        const given = typeof header === 'string' && /^bearer /i.test(header) ? header.slice(7).trim() : '' // the scheme is case-insensitive (RFC 9110)
        if (!timingSafeEqual(sha256(given), expected)) throw new Errors.UNAUTHORIZED()
      })
    }
    await transactionRoutes(v1, { engine, log, allowlist, options, coordinatorId })
    await operatorRoutes(v1, { engine, log })
  })
  // The admin console: its own scope (form bodies, cookie or bearer token); see admin/console.ts.
  await app.register(async (admin) => { await adminConsole(admin, { engine, log, apiToken: options.apiToken, coordinatorId }) })
}, { name: '@fastify-2pc/coordinator', fastify: '5.x' })

/** Query parameters whose values never reach a log line (matched anywhere in the name, any case). */
const SECRET_PARAM = /token|secret|passw|pwd|key|auth|credential|session|cookie|signature/i

/** The URL with the value of every secret-like query parameter replaced by `[REDACTED]`. */
function redactUrl (url: string): string {
  const q = url.indexOf('?')
  if (q === -1) return url
  const params = url.slice(q + 1).split('&').map(param => {
    const eq = param.indexOf('=')
    const raw = eq === -1 ? param : param.slice(0, eq)
    let name = raw
    try { name = decodeURIComponent(raw.replace(/\+/g, ' ')) } catch { /* malformed escape: match the raw name */ }
    return SECRET_PARAM.test(name) ? `${raw}=[REDACTED]` : param
  })
  return `${url.slice(0, q + 1)}${params.join('&')}`
}

/**
 * Fastify's request serializer with the query's secrets redacted (`/admin?token=…` is how an
 * operator opens the console). Headers are not logged at all (the bearer token is one).
 */
function serializeRequest (req: FastifyRequest): Record<string, unknown> {
  return {
    method: req.method,
    url: redactUrl(req.url),
    version: req.headers['accept-version'],
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort
  }
}

/** The charset a content-type names, lower-cased, unquoted; undefined when it names none. */
function charsetOf (contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined
  for (const param of contentType.split(';').slice(1)) {
    const eq = param.indexOf('=')
    if (eq === -1 || param.slice(0, eq).trim().toLowerCase() !== 'charset') continue
    return param.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1').toLowerCase()
  }
  return undefined
}

/** Builds the coordinator app (not yet listening). */
export async function buildCoordinator (input: CoordinatorOptions): Promise<FastifyInstance> {
  const options = resolveOptions(input)
  const app = Fastify({
    logger: options.logger === false
      ? false
      : { ...(options.logger === true ? {} : options.logger), serializers: { req: serializeRequest } },
    bodyLimit: options.bodyLimitBytes,
    return503OnClosing: true,
    ajv: {
      // Unknown fields are an error, not silently dropped; bodies are not coerced.
      customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false },
      plugins: [jsonLimitsKeyword]
    },
    // A request Node's HTTP parser refuses (bad content-length, a body cut short, bytes that are
    // not HTTP) never reaches a route: answer it in the one error shape too.
    clientErrorHandler (err: NodeJS.ErrnoException, socket: Socket) {
      if (err.code === 'ECONNRESET' || socket.destroyed) return
      const [statusCode, code, message] = CLIENT_ERRORS[err.code ?? ''] ?? CLIENT_ERROR_DEFAULT
      app.log.debug({ err }, 'malformed HTTP request refused')
      if (socket.writable) {
        const body = JSON.stringify({ statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message })
        socket.write(`HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode] ?? 'Error'}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
      }
      socket.destroy(err)
    }
  })

  // The API is JSON only: without this, Fastify's default text/plain parser hands a string to
  // the body schema and a wrong content type answers 400 VALIDATION_FAILED instead of 415.
  app.removeContentTypeParser('text/plain')
  // JSON is UTF-8 (RFC 8259): a body declared in another charset is refused, not misread as UTF-8.
  const parseJson = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    const charset = charsetOf(req.headers['content-type'])
    if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
      done(new Errors.UNSUPPORTED_MEDIA_TYPE(`charset ${charset.slice(0, 64)} is not supported: JSON bodies are UTF-8`), undefined)
      return
    }
    parseJson(req, body as string, done)
  })

  app.setErrorHandler((err: FastifyError, req, reply) => {
    let statusCode = err.statusCode ?? 500
    let code = err.code ?? 'INTERNAL_ERROR'
    let message = err.message
    if (err.validation !== undefined) {
      statusCode = 400
      const first = err.validation[0]
      code = first?.keyword === JSON_LIMITS_KEYWORD ? JSON_LIMIT_CODES[(first.params as { limit: 'depth' | 'keys' }).limit] : 'VALIDATION_FAILED'
    } else if (FRAMEWORK_CODES[code] !== undefined) {
      code = FRAMEWORK_CODES[code] as string
    }
    if (statusCode >= 500) {
      req.log.error({ err }, 'request failed')
      if (code.startsWith('FST_') || err.code === undefined) { code = 'INTERNAL_ERROR'; message = 'internal error' }
    }
    void reply.code(statusCode).send({ statusCode, code, error: STATUS_CODES[statusCode] ?? 'Error', message })
  })
  app.setNotFoundHandler((req, reply) => {
    void reply.code(404).send({ statusCode: 404, code: 'ROUTE_NOT_FOUND', error: 'Not Found', message: `no route ${req.method} ${req.url.split('?')[0]}` })
  })

  // OpenAPI from the routes' TypeBox schemas; Swagger UI at /docs.
  await app.register(swagger, {
    openapi: {
      info: {
        title: 'fastify-2pc coordinator',
        description: 'Two-phase-commit coordinator: begin, enlist, commit, abort, inspect. See the README.',
        version: '0.1.0'
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: options.apiToken !== undefined ? [{ bearer: [] }] : []
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
  await app.register(coordinatorPlugin, { options })
  return app
}
