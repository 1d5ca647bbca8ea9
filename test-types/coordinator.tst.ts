// The coordinator's exports, for programs that embed it instead of running its binary.
import type { FastifyInstance } from 'fastify'
import { describe, expect, test } from 'tstyche'
import {
  buildCoordinator, coordinatorPlugin, configFromEnv, resolveOptions, parseDuration, Engine, CoordinatorLog, machine,
  type Coordinator, type CoordinatorOptions, type ServerConfig, type Outcome
} from '@fastify-2pc/coordinator'

describe('buildCoordinator', () => {
  test('takes the options and resolves to a Fastify app with app.coordinator', async () => {
    expect(buildCoordinator({ dbPath: 'coordinator.db' })).type.toBe<Promise<FastifyInstance>>()
    const app = await buildCoordinator({ dbPath: ':memory:' })
    expect(app.coordinator).type.toBe<Coordinator>()
    expect(app.coordinator.id).type.toBe<string>()
    expect(app.coordinator.engine).type.toBe<Engine>()
    expect(app.coordinator.log).type.toBe<CoordinatorLog>()
    expect(app.coordinator.options.maxParticipants).type.toBe<number>()
    expect(app.coordinator.options.secret).type.toBe<string | undefined>()
  })

  test('dbPath is the one required option', () => {
    expect(buildCoordinator({})).type.toRaiseError("Property 'dbPath' is missing")
    expect<{ dbPath: string }>().type.toBeAssignableTo<CoordinatorOptions>()
  })

  test('the optional fields and their types', () => {
    const all: CoordinatorOptions = {
      dbPath: 'coordinator.db',
      coordinatorId: 'c1',
      amqpUrl: 'amqp://127.0.0.1',
      amqpPrefix: 'twopc',
      secret: 's3cret',
      apiToken: 'token',
      participantAllowlist: 'http://127.0.0.1:*',
      defaultTimeoutMs: 30_000,
      minTimeoutMs: 100,
      maxTimeoutMs: 600_000,
      prepareTimeoutMs: 10_000,
      maxParticipants: 32,
      maxMessages: 32,
      maxPayloadBytes: 65_536,
      bodyLimitBytes: 1_048_576,
      retryBaseMs: 250,
      retryMaxMs: 30_000,
      retryBudget: 10,
      sweepIntervalMs: 1_000,
      maxResponseBytes: 65_536,
      connectionsPerOrigin: 64,
      batchMaxCalls: 64,
      logInlineSyncMaxMs: 1,
      outboxMaxRows: 100_000,
      retentionMs: 604_800_000,
      pruneIntervalMs: 60_000,
      logger: { level: 'info' }
    }
    expect(all).type.toBeAssignableTo<CoordinatorOptions>()
    expect<CoordinatorOptions['logger']>().type.toBe<boolean | { level?: string } | undefined>()
  })

  test('wrong option types are refused', () => {
    expect(buildCoordinator({ dbPath: 1 })).type.toRaiseError("Type 'number' is not assignable to type 'string'")
    expect(buildCoordinator({ dbPath: 'c.db', secret: Buffer.from('s') })).type.toRaiseError("is not assignable to type 'string'")
    expect(buildCoordinator({ dbPath: 'c.db', defaultTimeoutMs: '30s' })).type.toRaiseError("Type 'string' is not assignable to type 'number'")
    expect(buildCoordinator({ dbPath: 'c.db', logger: 'info' })).type.toRaiseError("Type 'string' is not assignable to type 'boolean | { level?: string")
    expect(buildCoordinator({ dbPath: 'c.db', participantAllowlist: ['http://127.0.0.1:*'] })).type.toRaiseError("Type 'string[]' is not assignable to type 'string'")
    // A misspelt option is an error, not silently ignored.
    expect(buildCoordinator({ dbPath: 'c.db', retryBudgets: 3 })).type.toRaiseError("'retryBudgets' does not exist")
  })
})

describe('configuration helpers', () => {
  test('configFromEnv reads the environment into a ServerConfig', () => {
    expect(configFromEnv()).type.toBe<ServerConfig>()
    expect(configFromEnv({ TWOPC_DB: 'c.db' })).type.toBe<ServerConfig>()
    expect(configFromEnv({ PORT: 7070 })).type.toRaiseError("Type 'number' is not assignable to type 'string'")
    expect<ServerConfig['options']>().type.toBe<CoordinatorOptions>()
    expect<ServerConfig['port']>().type.toBe<number>()
    expect<ServerConfig['amqpUrl']>().type.toBe<string | undefined>()
  })

  test('resolveOptions fills the defaults; parseDuration reads 30s, 15m, 7d', () => {
    const resolved = resolveOptions({ dbPath: 'c.db' })
    expect(resolved.retryBudget).type.toBe<number>()
    expect(resolved.logger).type.toBe<boolean | { level?: string }>()
    expect(resolved.amqpUrl).type.toBe<string | undefined>()
    expect(parseDuration('30s')).type.toBe<number>()
    expect(parseDuration(30)).type.toRaiseError("'number' is not assignable to parameter of type 'string'")
  })

  test('coordinatorPlugin takes resolved options', () => {
    expect(coordinatorPlugin).type.toBeCallableWith({} as FastifyInstance, { options: resolveOptions({ dbPath: 'c.db' }) }, () => {})
    expect(coordinatorPlugin).type.not.toBeCallableWith({} as FastifyInstance, { options: { dbPath: 'c.db' } }, () => {})
  })
})

describe('the engine, the log and the state machine', () => {
  test('Engine.commit resolves to the outcome', () => {
    expect<Outcome>().type.toBe<{ id: string, state: 'committed' | 'aborted', reason?: string }>()
    expect<ReturnType<Engine['commit']>>().type.toBe<Promise<Outcome>>()
    expect<Engine['recover']>().type.toBeCallableWith()
  })

  test('CoordinatorLog opens a path', () => {
    expect(CoordinatorLog).type.toBeConstructableWith('coordinator.db')
    expect(CoordinatorLog).type.not.toBeConstructableWith(42)
  })

  test('machine.step is the pure transition', () => {
    const tx = machine.newTransaction('c1.01h', 0, 1_000)
    expect(tx).type.toBe<machine.Transaction>()
    expect(tx.state).type.toBe<machine.TxState>()
    expect<machine.TxState>().type.toBe<'active' | 'preparing' | 'committed' | 'aborted'>()
    expect(machine.isDecided(tx)).type.toBe<boolean>()
    expect(machine.step).type.toBeCallableWith(tx, { type: 'commit-requested', now: 1 }, {} as machine.Policy)
    expect(machine.step).type.not.toBeCallableWith(tx, { type: 'no-such-event' }, {} as machine.Policy)
  })
})
