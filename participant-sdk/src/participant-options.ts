/**
 * The options of `twoPhaseParticipant` and their checks at register: every option is validated
 * (InvalidOptionError) and the store — `db` builds the SQLite one, or `store` — is checked for
 * durability (DatabaseNotDurableError) before anything is written.
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Database } from 'better-sqlite3'
import { AMQP_PREFIX_PATTERN, MAX_BATCH_CALLS, MAX_INLINE_SYNC_MS, PARTICIPANT_NAME_PATTERN } from '@fastify-2pc/protocol'
import type { AbortHandler, CommitHandler, PrepareHandler } from './engine.js'
import { DatabaseNotDurableError, InvalidOptionError } from './errors.js'
import type { ParticipantAmqpOptions } from './amqp.js'
import { SqliteStore } from './store/sqlite.js'
import type { ParticipantStore } from './store/store.js'

/** The options of `register`: `db` (TwoPhaseParticipantOptions) or `store` (TwoPhaseParticipantStoreOptions). */
export type TwoPhaseParticipantRegisterOptions = TwoPhaseParticipantOptions | TwoPhaseParticipantStoreOptions

/** With `db`: the SDK builds the SQLite store on it. */
export interface TwoPhaseParticipantOptions extends ParticipantCommonOptions {
  /** The service's own better-sqlite3 Database; the SDK's tables live next to the business ones. */
  db: Database
  /** Mutually exclusive with `db`. */
  store?: undefined
}

/** With `store`: where the participant records live (`sqliteStore(db)`). */
export interface TwoPhaseParticipantStoreOptions extends ParticipantCommonOptions {
  store: ParticipantStore<Database>
  /** Mutually exclusive with `store`. */
  db?: undefined
}

/** Every option but where the records live. */
export interface ParticipantCommonOptions {
  /** This participant's name, as enlisted with the coordinator. */
  name: string
  prepare: PrepareHandler
  commit: CommitHandler
  abort: AbortHandler
  /** Where in-doubt recovery asks for decisions, e.g. `http://127.0.0.1:7070`. */
  coordinatorUrl: string
  /** HMAC secret shared with the coordinator; when set, unsigned callbacks get 401. */
  secret?: string
  /**
   * Also accept the legacy `v1` signature (default false: 401 `BAD_SIGNATURE`, `legacy-scheme`).
   * `v1` does not bind the route: a signed abort replayed onto `/commit` verifies. Only while an
   * older coordinator still signs `v1`; needs `secret`. Logged as a warning at register.
   */
  acceptLegacySignatures?: boolean
  /** Route prefix of the callbacks (default `/2pc`); the enlisted url is `origin + prefix`. */
  prefix?: string
  /** Bearer token for the coordinator's API (its `TWOPC_API_TOKEN`). */
  coordinatorToken?: string
  /** A prepared transaction older than this is re-checked with the coordinator (default 10 s). */
  inDoubtAfterMs?: number
  /** Backoff of repeated decision queries for one transaction (defaults 1 s .. 60 s). */
  recoveryBaseDelayMs?: number
  recoveryMaxDelayMs?: number
  /** Decision queries per recovery tick (default 100). */
  recoveryBatchSize?: number
  /**
   * How long settled records (committed, aborted, read-only) and tombstones are kept (default 7
   * days), then pruned in bounded batches. Keep it well above the coordinator's longest
   * transaction timeout (`TWOPC_MAX_TIMEOUT_MS`, 10 min) plus clock skew: a tombstone must
   * outlive any late prepare for its transaction.
   */
  retentionMs?: number
  /**
   * Group commit (default true): callbacks arriving in one event-loop turn share one local
   * SQLite transaction (one fsync), each in its own savepoint; each is answered after the
   * COMMIT. `false`: one transaction per callback.
   */
  groupCommit?: boolean
  /** Callbacks per group-committed transaction at most (default 128). */
  groupCommitMaxBatch?: number
  /**
   * The log's fdatasync (a file database in WAL mode) runs on the event loop while recent syncs
   * averaged at most this many ms and no other sync runs — cheaper than the thread pool's two
   * hand-offs on a quick disk — else on the thread pool. Default 1; 0: always on the thread pool.
   */
  inlineSyncMaxMs?: number
  /** Prometheus metrics in `app.twoPhase.metrics`, a prom-client Registry of its own (default true). */
  metrics?: boolean
  /**
   * Also serve the registry: `true` mounts `GET {prefix}/metrics`, a string mounts that path
   * (default false: merge `app.twoPhase.metrics` into the service's own `/metrics`).
   */
  metricsRoute?: boolean | string
  /** Largest callback body in bytes (default 1 MiB); also the largest batch body. */
  bodyLimit?: number
  /**
   * Calls per `POST {prefix}/batch` request at most (default 128; an integer 1 ..
   * MAX_BATCH_CALLS). Every prepare answer advertises `batch: {maxCalls, maxBytes: bodyLimit}`,
   * and a coordinator that understands it sends the calls of one turn to this participant in one
   * request (they then share one group-committed local transaction). `0`: no batch route, nothing
   * advertised — the coordinator calls one callback per request.
   */
  batchMaxCalls?: number
  /**
   * RabbitMQ (`amqp://` or `amqps://`). Set: the participant also consumes its decision queue
   * `<amqpPrefix>.participant.<name>`, acks to `<amqpPrefix>.acks` and re-checks in-doubt
   * transactions on `coordinator.started`. Unset: HTTP callbacks and in-doubt recovery only.
   */
  amqpUrl?: string
  /** Prefix of every exchange and queue name (the coordinator's `TWOPC_AMQP_PREFIX`; default `twopc`). */
  amqpPrefix?: string
  /** Tuning of the RabbitMQ link: `prefetch` (default 16), heartbeat, reconnect backoff, timeouts. */
  amqpOptions?: ParticipantAmqpOptions
  /** Defaults to a child of the app's logger. */
  logger?: FastifyBaseLogger
}

export function positiveInteger (name: string, value: number | undefined, fallback: number): number {
  const result = value ?? fallback
  if (!Number.isSafeInteger(result) || result < 1) throw new InvalidOptionError(`${name} must be a positive integer`)
  return result
}

/** The store of `db` or `store` (exactly one of them). */
function storeOf (options: TwoPhaseParticipantRegisterOptions): ParticipantStore<Database> {
  if (options.db !== undefined && options.store !== undefined) {
    throw new InvalidOptionError('db and store are mutually exclusive: pass the database as db, or store: sqliteStore(db)')
  }
  if (options.store !== undefined) {
    if (typeof options.store?.open !== 'function' || typeof options.store.check !== 'function' || typeof options.store.migrate !== 'function') {
      throw new InvalidOptionError('store must be a participant store, e.g. sqliteStore(db)')
    }
    if (options.store instanceof SqliteStore) checkDb(options.store.db)
    return options.store
  }
  checkDb(options.db)
  return new SqliteStore(options.db as Database)
}

function checkDb (db: Database | undefined): void {
  if (typeof db?.transaction !== 'function' || db.open !== true) {
    throw new InvalidOptionError('db must be an open better-sqlite3 Database')
  }
}

/** Checks every option (throws InvalidOptionError); returns the store, checked durable, and its warning. */
export function checkOptions (options: TwoPhaseParticipantRegisterOptions): { store: ParticipantStore<Database>, warning: string | undefined } {
  if (typeof options.name !== 'string' || !new RegExp(PARTICIPANT_NAME_PATTERN).test(options.name)) {
    throw new InvalidOptionError(`name must match ${PARTICIPANT_NAME_PATTERN}`)
  }
  const store = storeOf(options)
  const check = store.check()
  if (check.unsafe !== undefined) throw new DatabaseNotDurableError(check.unsafe)
  const warning = check.warning
  for (const handler of ['prepare', 'commit', 'abort'] as const) {
    if (typeof options[handler] !== 'function') throw new InvalidOptionError(`${handler} must be a function`)
  }
  if (typeof options.coordinatorUrl !== 'string' || !URL.canParse(options.coordinatorUrl)) {
    throw new InvalidOptionError('coordinatorUrl must be a URL')
  }
  if (options.secret !== undefined && (typeof options.secret !== 'string' || options.secret.length === 0)) {
    throw new InvalidOptionError('secret must be a non-empty string')
  }
  if (options.prefix !== undefined && !/^\/[A-Za-z0-9/_.-]*[A-Za-z0-9_.-]$/.test(options.prefix)) {
    throw new InvalidOptionError('prefix must start with / and not end with /')
  }
  if (options.amqpUrl !== undefined && (typeof options.amqpUrl !== 'string' || !/^amqps?:\/\//.test(options.amqpUrl) || !URL.canParse(options.amqpUrl))) {
    throw new InvalidOptionError('amqpUrl must be an amqp:// or amqps:// URL')
  }
  for (const flag of ['groupCommit', 'metrics', 'acceptLegacySignatures'] as const) {
    if (options[flag] !== undefined && typeof options[flag] !== 'boolean') throw new InvalidOptionError(`${flag} must be a boolean`)
  }
  if (options.acceptLegacySignatures === true && options.secret === undefined) {
    throw new InvalidOptionError('acceptLegacySignatures needs secret (without one nothing is verified)')
  }
  if (options.metricsRoute !== undefined && options.metricsRoute !== false) {
    if (options.metrics === false) throw new InvalidOptionError('metricsRoute needs metrics')
    if (options.metricsRoute !== true && (typeof options.metricsRoute !== 'string' || !/^\/[A-Za-z0-9/_.-]*$/.test(options.metricsRoute))) {
      throw new InvalidOptionError('metricsRoute must be a boolean or a path starting with /')
    }
  }
  if (options.amqpPrefix !== undefined && (typeof options.amqpPrefix !== 'string' || !new RegExp(AMQP_PREFIX_PATTERN).test(options.amqpPrefix))) {
    throw new InvalidOptionError(`amqpPrefix must match ${AMQP_PREFIX_PATTERN}`)
  }
  if (options.inlineSyncMaxMs !== undefined && !(typeof options.inlineSyncMaxMs === 'number' && options.inlineSyncMaxMs >= 0 && options.inlineSyncMaxMs <= MAX_INLINE_SYNC_MS)) {
    throw new InvalidOptionError(`inlineSyncMaxMs must be a number from 0 to ${MAX_INLINE_SYNC_MS}`)
  }
  const maxCalls = options.batchMaxCalls
  if (maxCalls !== undefined && (!Number.isSafeInteger(maxCalls) || maxCalls < 0 || maxCalls > MAX_BATCH_CALLS)) {
    throw new InvalidOptionError(`batchMaxCalls must be 0 (no batch route) or an integer 1 .. ${MAX_BATCH_CALLS}`)
  }
  return { store, warning }
}
