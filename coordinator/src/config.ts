/**
 * Configuration: the options object the app factory takes, its defaults, and the one
 * environment schema the `twopc-coordinator` bin reads it from.
 */
import envSchema from 'env-schema'
import { Type, type Static } from '@sinclair/typebox'
import { COORDINATOR_ID_PATTERN, DEFAULT_INLINE_SYNC_MAX_MS, MAX_BATCH_CALLS, MAX_INLINE_SYNC_MS } from '@fastify-2pc/protocol'
import { parseAllowlist } from './allowlist.js'

export interface CoordinatorOptions {
  /** SQLite file of the log (TWOPC_DB). */
  dbPath: string
  /** Prefix of every transaction id; fixed by the log's first start (TWOPC_COORDINATOR_ID). */
  coordinatorId?: string
  /** RabbitMQ (AMQP_URL); unset: HTTP retries only. */
  amqpUrl?: string
  /** Prefix of every exchange and queue name (TWOPC_AMQP_PREFIX). */
  amqpPrefix?: string
  /** HMAC key for callback signatures (TWOPC_SECRET). */
  secret?: string
  /** Bearer token required on /v1 (TWOPC_API_TOKEN). */
  apiToken?: string
  /** Allowed participant origins / host patterns; unset = loopback only (TWOPC_PARTICIPANT_ALLOWLIST). */
  participantAllowlist?: string
  defaultTimeoutMs?: number
  minTimeoutMs?: number
  maxTimeoutMs?: number
  /** Longest wait for one prepare answer (also bounded by the transaction's expiry). */
  prepareTimeoutMs?: number
  /** Longest wait for one commit/abort answer. */
  phase2TimeoutMs?: number
  maxParticipants?: number
  /** Transactional messages per transaction. */
  maxMessages?: number
  maxPayloadBytes?: number
  bodyLimitBytes?: number
  retryBaseMs?: number
  retryMaxMs?: number
  retryBudget?: number
  sweepIntervalMs?: number
  /** Largest answer body read from a participant. */
  maxResponseBytes?: number
  /** Open connections per participant origin. */
  connectionsPerOrigin?: number
  /**
   * Callbacks per batch request at most, to participants that advertise a batch route (the
   * SDK's `/batch`); 1 = never batch (TWOPC_BATCH_MAX_CALLS).
   */
  batchMaxCalls?: number
  /**
   * The log's fdatasync runs on the event loop while recent syncs averaged at most this many ms
   * and no other sync runs, else on the thread pool; 0 = always on the thread pool
   * (TWOPC_LOG_INLINE_SYNC_MAX_MS).
   */
  logInlineSyncMaxMs?: number
  /**
   * Unpublished outbox rows at most before work that would add messages is refused with 503
   * OUTBOX_FULL; decision notices are exempt (TWOPC_OUTBOX_MAX_ROWS).
   */
  outboxMaxRows?: number
  /** Completed transactions older than this are pruned (TWOPC_RETENTION). */
  retentionMs?: number
  /** How often the retention pruner runs. */
  pruneIntervalMs?: number
  logger?: boolean | { level?: string }
}

type OptionalKeys = 'coordinatorId' | 'secret' | 'apiToken' | 'participantAllowlist' | 'amqpUrl'
export type ResolvedOptions = Required<Omit<CoordinatorOptions, OptionalKeys>> & Pick<CoordinatorOptions, OptionalKeys>

export const defaults = {
  defaultTimeoutMs: 30_000,
  minTimeoutMs: 100,
  maxTimeoutMs: 10 * 60_000,
  prepareTimeoutMs: 10_000,
  phase2TimeoutMs: 10_000,
  maxParticipants: 32,
  maxMessages: 32,
  amqpPrefix: 'twopc',
  maxPayloadBytes: 64 * 1024,
  bodyLimitBytes: 1024 * 1024,
  retryBaseMs: 250,
  retryMaxMs: 30_000,
  retryBudget: 10,
  sweepIntervalMs: 1_000,
  maxResponseBytes: 64 * 1024,
  connectionsPerOrigin: 64,
  batchMaxCalls: 64,
  logInlineSyncMaxMs: DEFAULT_INLINE_SYNC_MAX_MS,
  outboxMaxRows: 100_000,
  retentionMs: 7 * 86_400_000,
  pruneIntervalMs: 60_000,
  logger: false as boolean | { level?: string }
}

function positiveInt (name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${name} must be a positive integer, got ${value}`)
}

export function resolveOptions (options: CoordinatorOptions): ResolvedOptions {
  const resolved: ResolvedOptions = { ...defaults, ...stripUndefined(options) }
  if (typeof resolved.dbPath !== 'string' || resolved.dbPath === '') throw new Error('dbPath is required')
  for (const key of ['defaultTimeoutMs', 'minTimeoutMs', 'maxTimeoutMs', 'prepareTimeoutMs', 'phase2TimeoutMs', 'maxParticipants', 'maxMessages',
    'maxPayloadBytes', 'bodyLimitBytes', 'retryBaseMs', 'retryMaxMs', 'retryBudget', 'sweepIntervalMs', 'maxResponseBytes',
    'connectionsPerOrigin', 'batchMaxCalls', 'outboxMaxRows', 'retentionMs', 'pruneIntervalMs'] as const) {
    positiveInt(key, resolved[key])
  }
  if (!(Number.isFinite(resolved.logInlineSyncMaxMs) && resolved.logInlineSyncMaxMs >= 0 && resolved.logInlineSyncMaxMs <= MAX_INLINE_SYNC_MS)) {
    throw new Error(`logInlineSyncMaxMs must be a number from 0 to ${MAX_INLINE_SYNC_MS}, got ${resolved.logInlineSyncMaxMs}`)
  }
  if (resolved.batchMaxCalls > MAX_BATCH_CALLS) throw new Error(`batchMaxCalls must be at most ${MAX_BATCH_CALLS}, got ${resolved.batchMaxCalls}`)
  if (resolved.minTimeoutMs > resolved.maxTimeoutMs) throw new Error('minTimeoutMs must not exceed maxTimeoutMs')
  if (resolved.defaultTimeoutMs < resolved.minTimeoutMs || resolved.defaultTimeoutMs > resolved.maxTimeoutMs) {
    throw new Error(`defaultTimeoutMs must be between minTimeoutMs (${resolved.minTimeoutMs}) and maxTimeoutMs (${resolved.maxTimeoutMs})`)
  }
  if (resolved.retryBaseMs > resolved.retryMaxMs) throw new Error('retryBaseMs must not exceed retryMaxMs')
  if (resolved.coordinatorId !== undefined && !new RegExp(COORDINATOR_ID_PATTERN).test(resolved.coordinatorId)) {
    throw new Error(`coordinatorId must match ${COORDINATOR_ID_PATTERN}, got "${resolved.coordinatorId}"`)
  }
  if (resolved.amqpUrl !== undefined && !/^amqps?:\/\//.test(resolved.amqpUrl)) throw new Error('amqpUrl must start with amqp:// or amqps://')
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(resolved.amqpPrefix)) throw new Error(`amqpPrefix "${resolved.amqpPrefix}" is not a valid name prefix`)
  if (resolved.secret !== undefined && resolved.secret.length < 16) throw new Error('secret must be at least 16 characters')
  if (resolved.apiToken !== undefined && resolved.apiToken.length < 16) throw new Error('apiToken must be at least 16 characters')
  return resolved
}

function stripUndefined<T extends object> (o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T
}

/** The environment the bin reads (docs/protocol.md, "Environment"; README "Configuration"), all validated. */
export const EnvSchema = Type.Object({
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 7070 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  TWOPC_DB: Type.String({ minLength: 1, default: './data/coordinator.db' }),
  AMQP_URL: Type.Optional(Type.String({ pattern: '^amqps?://' })),
  TWOPC_SECRET: Type.Optional(Type.String({ minLength: 16 })),
  TWOPC_API_TOKEN: Type.Optional(Type.String({ minLength: 16 })),
  TWOPC_PARTICIPANT_ALLOWLIST: Type.Optional(Type.String()),
  TWOPC_DEFAULT_TIMEOUT_MS: Type.Integer({ minimum: 1, default: defaults.defaultTimeoutMs }),
  TWOPC_MAX_TIMEOUT_MS: Type.Integer({ minimum: 1, default: defaults.maxTimeoutMs }),
  TWOPC_PREPARE_TIMEOUT_MS: Type.Integer({ minimum: 1, default: defaults.prepareTimeoutMs }),
  TWOPC_MAX_PARTICIPANTS: Type.Integer({ minimum: 1, maximum: 1000, default: defaults.maxParticipants }),
  TWOPC_MAX_MESSAGES: Type.Integer({ minimum: 1, maximum: 1000, default: defaults.maxMessages }),
  TWOPC_MAX_PAYLOAD_BYTES: Type.Integer({ minimum: 1, default: defaults.maxPayloadBytes }),
  TWOPC_BODY_LIMIT_BYTES: Type.Integer({ minimum: 1024, default: defaults.bodyLimitBytes }),
  TWOPC_RETRY_BASE_MS: Type.Integer({ minimum: 1, default: defaults.retryBaseMs }),
  TWOPC_RETRY_MAX_MS: Type.Integer({ minimum: 1, default: defaults.retryMaxMs }),
  TWOPC_RETRY_BUDGET: Type.Integer({ minimum: 1, default: defaults.retryBudget }),
  TWOPC_COORDINATOR_ID: Type.Optional(Type.String({ pattern: COORDINATOR_ID_PATTERN })),
  TWOPC_AMQP_PREFIX: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', default: 'twopc' }),
  TWOPC_BATCH_MAX_CALLS: Type.Integer({ minimum: 1, maximum: MAX_BATCH_CALLS, default: defaults.batchMaxCalls }),
  TWOPC_LOG_INLINE_SYNC_MAX_MS: Type.Number({ minimum: 0, maximum: MAX_INLINE_SYNC_MS, default: defaults.logInlineSyncMaxMs }),
  TWOPC_OUTBOX_MAX_ROWS: Type.Integer({ minimum: 1, default: defaults.outboxMaxRows }),
  TWOPC_RETENTION: Type.String({ pattern: '^[0-9]+(ms|s|m|h|d)$', default: '7d' }),
  LOG_LEVEL: Type.Union([
    Type.Literal('fatal'), Type.Literal('error'), Type.Literal('warn'),
    Type.Literal('info'), Type.Literal('debug'), Type.Literal('trace'), Type.Literal('silent')
  ], { default: 'info' })
})
export type Env = Static<typeof EnvSchema>

export interface ServerConfig {
  port: number
  host: string
  amqpUrl?: string
  amqpPrefix: string
  retentionMs: number
  options: CoordinatorOptions
}

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const

export function parseDuration (text: string): number {
  const match = /^([0-9]+)(ms|s|m|h|d)$/.exec(text)
  if (match === null) throw new Error(`"${text}" is not a duration like 500ms, 30s, 15m, 12h or 7d`)
  return Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS]
}

/** The variable each environment-set option comes from, for error messages. */
const ENV_NAMES: Record<string, string> = {
  defaultTimeoutMs: 'TWOPC_DEFAULT_TIMEOUT_MS',
  maxTimeoutMs: 'TWOPC_MAX_TIMEOUT_MS',
  prepareTimeoutMs: 'TWOPC_PREPARE_TIMEOUT_MS',
  maxParticipants: 'TWOPC_MAX_PARTICIPANTS',
  maxPayloadBytes: 'TWOPC_MAX_PAYLOAD_BYTES',
  bodyLimitBytes: 'TWOPC_BODY_LIMIT_BYTES',
  retryBaseMs: 'TWOPC_RETRY_BASE_MS',
  retryMaxMs: 'TWOPC_RETRY_MAX_MS',
  retryBudget: 'TWOPC_RETRY_BUDGET',
  batchMaxCalls: 'TWOPC_BATCH_MAX_CALLS',
  logInlineSyncMaxMs: 'TWOPC_LOG_INLINE_SYNC_MAX_MS',
  outboxMaxRows: 'TWOPC_OUTBOX_MAX_ROWS',
  coordinatorId: 'TWOPC_COORDINATOR_ID',
  secret: 'TWOPC_SECRET',
  apiToken: 'TWOPC_API_TOKEN',
  dbPath: 'TWOPC_DB'
}
const OPTION_KEYS = new RegExp(`\\b(${Object.keys(ENV_NAMES).join('|')})\\b`, 'g')

/**
 * Reads and validates the environment. A bad or missing value throws an error that names the
 * variable (env-schema's message: `env/PORT must be <= 65535`).
 */
export function configFromEnv (env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const e = envSchema<Env>({ schema: EnvSchema, data: env, dotenv: false })
  const options: CoordinatorOptions = {
    dbPath: e.TWOPC_DB,
    coordinatorId: e.TWOPC_COORDINATOR_ID,
    secret: e.TWOPC_SECRET,
    apiToken: e.TWOPC_API_TOKEN,
    participantAllowlist: e.TWOPC_PARTICIPANT_ALLOWLIST,
    defaultTimeoutMs: e.TWOPC_DEFAULT_TIMEOUT_MS,
    maxTimeoutMs: e.TWOPC_MAX_TIMEOUT_MS,
    prepareTimeoutMs: e.TWOPC_PREPARE_TIMEOUT_MS,
    maxParticipants: e.TWOPC_MAX_PARTICIPANTS,
    maxMessages: e.TWOPC_MAX_MESSAGES,
    amqpUrl: e.AMQP_URL,
    amqpPrefix: e.TWOPC_AMQP_PREFIX,
    retentionMs: parseDuration(e.TWOPC_RETENTION),
    maxPayloadBytes: e.TWOPC_MAX_PAYLOAD_BYTES,
    bodyLimitBytes: e.TWOPC_BODY_LIMIT_BYTES,
    retryBaseMs: e.TWOPC_RETRY_BASE_MS,
    retryMaxMs: e.TWOPC_RETRY_MAX_MS,
    retryBudget: e.TWOPC_RETRY_BUDGET,
    batchMaxCalls: e.TWOPC_BATCH_MAX_CALLS,
    logInlineSyncMaxMs: e.TWOPC_LOG_INLINE_SYNC_MAX_MS,
    outboxMaxRows: e.TWOPC_OUTBOX_MAX_ROWS,
    logger: e.LOG_LEVEL === 'silent' ? false : { level: e.LOG_LEVEL }
  }
  try {
    resolveOptions(options) // cross-field checks (e.g. default timeout within the range) fail here, at start
    parseAllowlist(options.participantAllowlist)
  } catch (err) {
    // Name the variables, not the option keys: the operator set TWOPC_*, not defaultTimeoutMs.
    throw new Error((err as Error).message.replace(OPTION_KEYS, key => ENV_NAMES[key] as string))
  }
  return {
    port: e.PORT,
    host: e.HOST,
    amqpUrl: e.AMQP_URL,
    amqpPrefix: e.TWOPC_AMQP_PREFIX,
    retentionMs: parseDuration(e.TWOPC_RETENTION),
    options
  }
}
