// The participant plugin's public types, as a service that registers it sees them (the built
// declarations in dist/, the way an installed package resolves).
import Fastify from 'fastify'
import Database from 'better-sqlite3'
import type { Database as SqliteDatabase } from 'better-sqlite3'
import type { Registry } from 'prom-client'
import { describe, expect, test } from 'tstyche'
import {
  twoPhaseParticipant,
  type TwoPhaseParticipantOptions, type TwoPhaseParticipantApi,
  type PrepareHandler, type CommitHandler, type AbortHandler, type TransactionContext, type PrepareContext,
  type FlushStats, type InDoubtTransaction, type RecoveryReport, type RecordState, type Step,
  type ParticipantAmqpOptions, type ParticipantAmqpStatus,
  BadSignatureError, DatabaseNotDurableError, HandlerFailedError, InvalidOptionError, LogWriteFailedError,
  ParticipantMismatchError, TxAlreadyAbortedError, TxAlreadyCommittedError, TxUnknownError, SchemaTooNewError,
  migrate, parseTraceparent, transition, recoveryDelayMs
} from '@fastify-2pc/participant-sdk'

const db = new Database(':memory:')
const minimal = {
  name: 'inventory',
  db,
  coordinatorUrl: 'http://127.0.0.1:7070',
  prepare: () => 'yes' as const,
  commit: () => {},
  abort: () => {}
}

describe('twoPhaseParticipant options', () => {
  test('the six required fields are enough', () => {
    expect(minimal).type.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(Fastify().register(twoPhaseParticipant, minimal)).type.not.toRaiseError()
  })

  test('each required field is required', () => {
    const { name: _name, ...noName } = minimal
    const { db: _db, ...noDb } = minimal
    const { prepare: _prepare, ...noPrepare } = minimal
    const { commit: _commit, ...noCommit } = minimal
    const { abort: _abort, ...noAbort } = minimal
    const { coordinatorUrl: _url, ...noUrl } = minimal
    expect(noName).type.not.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(noDb).type.not.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(noPrepare).type.not.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(noCommit).type.not.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(noAbort).type.not.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(noUrl).type.not.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect(Fastify().register(twoPhaseParticipant, noDb)).type.toRaiseError()
  })

  test('the optional fields and their types', () => {
    const all: TwoPhaseParticipantOptions = {
      ...minimal,
      secret: 's3cret',
      acceptLegacySignatures: true,
      prefix: '/2pc',
      coordinatorToken: 'token',
      inDoubtAfterMs: 5_000,
      recoveryBaseDelayMs: 100,
      recoveryMaxDelayMs: 10_000,
      recoveryBatchSize: 100,
      retentionMs: 86_400_000,
      groupCommit: true,
      groupCommitMaxBatch: 64,
      inlineSyncMaxMs: 1,
      metrics: false,
      metricsRoute: '/metrics',
      bodyLimit: 1024 * 1024,
      batchMaxCalls: 0,
      amqpUrl: 'amqp://127.0.0.1',
      amqpPrefix: 'twopc',
      amqpOptions: { prefetch: 16, heartbeat: 10 },
      logger: Fastify().log
    }
    expect(all).type.toBeAssignableTo<TwoPhaseParticipantOptions>()
    expect<TwoPhaseParticipantOptions['secret']>().type.toBe<string | undefined>()
    expect<TwoPhaseParticipantOptions['acceptLegacySignatures']>().type.toBe<boolean | undefined>()
    expect<TwoPhaseParticipantOptions['metricsRoute']>().type.toBe<boolean | string | undefined>()
    expect<TwoPhaseParticipantOptions['db']>().type.toBe<SqliteDatabase>()
    expect<TwoPhaseParticipantOptions['amqpOptions']>().type.toBe<ParticipantAmqpOptions | undefined>()
    // The link's url, prefix and logger come from amqpUrl, amqpPrefix and the plugin's logger.
    expect<ParticipantAmqpOptions>().type.not.toHaveProperty('url')
    expect<ParticipantAmqpOptions>().type.not.toHaveProperty('prefix')
  })

  test('wrong option types are refused', () => {
    const app = Fastify()
    expect(app.register(twoPhaseParticipant, { ...minimal, name: 42 })).type.toRaiseError("Type 'number' is not assignable to type 'string'")
    expect(app.register(twoPhaseParticipant, { ...minimal, db: 'inventory.db' })).type.toRaiseError("Type 'string' is not assignable to type") // 'Database' (the db form) or 'undefined' (the store form)
    expect(app.register(twoPhaseParticipant, { ...minimal, secret: Buffer.from('s') })).type.toRaiseError("is not assignable to type 'string'")
    expect(app.register(twoPhaseParticipant, { ...minimal, acceptLegacySignatures: 'yes' })).type.toRaiseError("Type 'string' is not assignable to type 'boolean")
    expect(app.register(twoPhaseParticipant, { ...minimal, inDoubtAfterMs: '5s' })).type.toRaiseError("Type 'string' is not assignable to type 'number'")
    expect(app.register(twoPhaseParticipant, { ...minimal, metricsRoute: 1 })).type.toRaiseError("Type 'number' is not assignable to type 'string | boolean")
    expect(app.register(twoPhaseParticipant, { ...minimal, amqpOptions: { url: 'amqp://127.0.0.1' } })).type.toRaiseError("'url' does not exist")
    // A misspelt option is an error, not silently ignored.
    expect(app.register(twoPhaseParticipant, { ...minimal, secrets: 's' })).type.toRaiseError("'secrets' does not exist")
  })
})

describe('handlers', () => {
  test('prepare gets the context, the payload and the database, and returns a vote', () => {
    expect<Parameters<PrepareHandler>>().type.toBe<[tx: PrepareContext, payload: unknown, db: SqliteDatabase]>()
    expect<ReturnType<PrepareHandler>>().type.toBe<'yes' | 'no' | 'read-only'>()
    expect<PrepareContext>().type.toBeAssignableTo<TransactionContext>()
    expect<PrepareContext['deadline']>().type.toBe<number>()
    expect<PrepareContext['onePhase']>().type.toBe<boolean>()
    expect<TransactionContext['id']>().type.toBe<string>()
    expect<TransactionContext['traceparent']>().type.toBe<string | undefined>()
  })

  test('commit and abort are synchronous and get the context and the database', () => {
    expect<CommitHandler>().type.toBe<(tx: TransactionContext, db: SqliteDatabase) => void>()
    expect<AbortHandler>().type.toBe<(tx: TransactionContext, db: SqliteDatabase) => void>()
  })

  test('a handler with the wrong shape is refused', () => {
    const app = Fastify()
    // A vote that is not one of the three.
    expect(app.register(twoPhaseParticipant, { ...minimal, prepare: () => 'maybe' as const })).type.toRaiseError("Type '\"maybe\"' is not assignable")
    // An async prepare: it must vote inside the local transaction.
    expect(app.register(twoPhaseParticipant, { ...minimal, prepare: async () => 'yes' as const })).type.toRaiseError("Type 'Promise<\"yes\">' is not assignable")
    // The context of a commit has no payload.
    expect(app.register(twoPhaseParticipant, { ...minimal, commit: (tx: { payload: unknown }) => { void tx } })).type.toRaiseError("Property 'payload' is missing")
  })
})

describe('app.twoPhase', () => {
  const app = Fastify()

  test('is declared on every FastifyInstance', () => {
    expect(app.twoPhase).type.toBe<TwoPhaseParticipantApi>()
    expect(app.twoPhase.name).type.toBe<string>()
    expect(app.twoPhase.prefix).type.toBe<string>()
  })

  test('its methods', () => {
    expect(app.twoPhase.stateOf('c1.01h')).type.toBe<RecordState>()
    expect<RecordState>().type.toBe<'none' | 'prepared' | 'committed' | 'aborted' | 'read-only' | 'tombstone'>()
    expect(app.twoPhase.inDoubt()).type.toBe<InDoubtTransaction[]>()
    expect(app.twoPhase.inDoubt({ limit: 10 })).type.toBe<InDoubtTransaction[]>()
    expect(app.twoPhase.recover()).type.toBe<Promise<RecoveryReport>>()
    expect(app.twoPhase.amqpStatus()).type.toBe<ParticipantAmqpStatus | undefined>()
    expect(app.twoPhase.metrics).type.toBe<Registry | undefined>()
    expect(app.twoPhase.flushStats()).type.toBe<FlushStats>()
    expect(app.twoPhase.prune()).type.toBe<number>()
  })

  test('misuse is refused', () => {
    expect(app.twoPhase.stateOf(42)).type.toRaiseError("'number' is not assignable to parameter of type 'string'")
    expect(app.twoPhase.inDoubt({ limit: '10' })).type.toRaiseError("Type 'string' is not assignable to type 'number'")
    expect(app.twoPhase.name = 'other').type.toRaiseError('read-only property')
  })

  test('the records it returns', () => {
    expect<InDoubtTransaction>().type.toBe<{ txid: string, preparedAt: number, attempts: number, nextCheckAt: number, lastResult?: string }>()
    expect<RecoveryReport>().type.toBe<{ checked: number, committed: number, aborted: number, pending: number, failed: number }>()
    expect<ParticipantAmqpStatus>().type.toHaveProperty('queue')
    expect<ParticipantAmqpStatus>().type.toHaveProperty('rejected')
    expect<FlushStats>().type.toHaveProperty('syncs')
  })
})

describe('errors', () => {
  test('are @fastify/error constructors with a code and a status', () => {
    for (const E of [TxUnknownError, TxAlreadyCommittedError, TxAlreadyAbortedError, BadSignatureError, HandlerFailedError, LogWriteFailedError]) {
      expect(new E()).type.toBeAssignableTo<Error & { code: string, statusCode?: number }>()
    }
    expect(new ParticipantMismatchError('a', 'b')).type.toBeAssignableTo<Error>()
    expect(new InvalidOptionError('why')).type.toBeAssignableTo<Error>()
    expect(new DatabaseNotDurableError('why')).type.toBeAssignableTo<Error>()
    expect(SchemaTooNewError).type.toBeConstructableWith(3, 2)
    expect(new SchemaTooNewError(3, 2)).type.toBeAssignableTo<Error>()
  })
})

describe('helpers', () => {
  test('migrate, transition, recoveryDelayMs and parseTraceparent', () => {
    expect(migrate).type.toBeCallableWith(db)
    expect(migrate).type.not.toBeCallableWith('inventory.db')
    expect(recoveryDelayMs(1, 100, 10_000, Math.random())).type.toBe<number>()
    expect(transition('none', { type: 'prepare', now: 0, deadline: 1, onePhase: false })).type.toBe<Step>()
    expect(transition('none', { type: 'prepare' })).type.toRaiseError()
    expect(transition('unknown', { type: 'commit' })).type.toRaiseError()
    expect(parseTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')).type.toBe<string | undefined>()
  })
})
