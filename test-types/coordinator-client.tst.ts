// The SDK's initiator side: the coordinator client, its transaction and its Fastify plugin.
import Fastify from 'fastify'
import { describe, expect, test } from 'tstyche'
import type { DecisionQueryResponse } from '@fastify-2pc/protocol'
import {
  createCoordinatorClient, coordinatorClientPlugin, CoordinatorClient, CoordinatorTransaction, CoordinatorError,
  MAX_PARTICIPANTS_PER_TRANSACTION, MAX_MESSAGES_PER_TRANSACTION,
  type CoordinatorClientOptions, type BeginOptions, type EnlistParticipant, type TransactionalMessage,
  type CommitOutcome, type AbortOutcome, type TransactionStatus
} from '@fastify-2pc/participant-sdk'

const client = createCoordinatorClient({ url: 'http://127.0.0.1:7070' })

describe('createCoordinatorClient', () => {
  test('takes the options and returns a client', () => {
    expect(client).type.toBe<CoordinatorClient>()
    expect(new CoordinatorClient({ url: 'http://127.0.0.1:7070', token: 't', connections: 8, requestTimeoutMs: 30_000, traceparent: () => undefined }))
      .type.toBe<CoordinatorClient>()
    expect<CoordinatorClientOptions['url']>().type.toBe<string>()
    expect<CoordinatorClientOptions['traceparent']>().type.toBe<(() => string | undefined) | undefined>()
  })

  test('refuses wrong options', () => {
    expect(createCoordinatorClient({})).type.toRaiseError("Property 'url' is missing")
    expect(createCoordinatorClient({ url: new URL('http://127.0.0.1:7070') })).type.toRaiseError("Type 'URL' is not assignable to type 'string'")
    expect(createCoordinatorClient({ url: 'http://127.0.0.1:7070', requestTimeoutMs: '30s' })).type.toRaiseError("Type 'string' is not assignable to type 'number'")
    expect(createCoordinatorClient({ url: 'http://127.0.0.1:7070', traceparent: '00-...' })).type.toRaiseError("Type 'string' is not assignable to type '() => string | undefined'")
  })

  test('its methods', () => {
    expect(client.begin()).type.toBe<Promise<CoordinatorTransaction>>()
    expect(client.begin({ timeoutMs: 5_000, metadata: { order: 1 }, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' }))
      .type.toBe<Promise<CoordinatorTransaction>>()
    expect(client.begin({ timeoutMs: '5s' })).type.toRaiseError("Type 'string' is not assignable to type 'number'")
    expect(client.decision('c1.01h')).type.toBe<Promise<DecisionQueryResponse>>()
    expect(client.decision('c1.01h', { signal: AbortSignal.timeout(1000) })).type.toBe<Promise<DecisionQueryResponse>>()
    expect(client.close()).type.toBe<Promise<void>>()
    expect<BeginOptions>().type.toBe<{ timeoutMs?: number, metadata?: Record<string, unknown>, traceparent?: string }>()
  })
})

describe('CoordinatorTransaction', () => {
  const tx = new CoordinatorTransaction(client, {})

  test('begin, enlist, publish, commit', () => {
    expect(tx.enlist({ name: 'inventory', url: 'http://127.0.0.1:3001/2pc', payload: { sku: 'apple' } })).type.toBe<CoordinatorTransaction>()
    expect(tx.enlist({ name: 'inventory', url: 'http://127.0.0.1:3001/2pc' }).enlist({ name: 'payment', url: 'http://127.0.0.1:3002/2pc', onePhase: true }))
      .type.toBe<CoordinatorTransaction>()
    expect(tx.publish({ exchange: 'orders', routingKey: 'order.placed', body: { id: 1 }, headers: { 'x-kind': 'order' } })).type.toBe<CoordinatorTransaction>()
    expect(tx.start()).type.toBe<Promise<string>>()
    expect(tx.commit()).type.toBe<Promise<CommitOutcome>>()
    expect(tx.abort()).type.toBe<Promise<AbortOutcome>>()
  })

  test('its state', () => {
    expect(tx.id).type.toBe<string | undefined>()
    expect(tx.status).type.toBe<TransactionStatus>()
    expect(tx.traceparent).type.toBe<string | undefined>()
    expect<TransactionStatus>().type.toBe<'local' | 'active' | 'committing' | 'committed' | 'aborted' | 'failed'>()
    expect(tx.status = 'committed').type.toRaiseError()
  })

  test('the outcomes', () => {
    expect<CommitOutcome>().type.toBe<{ id: string, state: 'committed' | 'aborted', reason?: string }>()
    expect<AbortOutcome>().type.toBe<{ id: string | undefined, state: 'aborted' }>()
  })

  test('refuses a participant or a message without its required fields', () => {
    expect(tx.enlist({ name: 'inventory' })).type.toRaiseError("Property 'url' is missing")
    expect(tx.enlist({ name: 'inventory', url: 'http://127.0.0.1:3001/2pc', onePhase: 'yes' })).type.toRaiseError("Type 'string' is not assignable to type 'boolean")
    expect(tx.publish({ exchange: 'orders', body: {} })).type.toRaiseError("Property 'routingKey' is missing")
    expect(tx.publish({ exchange: 'orders', routingKey: 'k', body: {}, headers: { n: 1 } })).type.toRaiseError("Type 'number' is not assignable to type 'string'")
    expect<EnlistParticipant>().type.toBe<{ name: string, url: string, payload?: unknown, onePhase?: boolean }>()
    expect<TransactionalMessage>().type.toBe<{ exchange: string, routingKey: string, body: unknown, headers?: Record<string, string> }>()
  })
})

describe('CoordinatorError', () => {
  test('carries the code, the status and the transaction', () => {
    const err = new CoordinatorError('COORDINATOR_UNREACHABLE', 'down', { txid: 'c1.01h', cause: new Error('ECONNREFUSED') })
    expect(err).type.toBeAssignableTo<Error>()
    expect(err.code).type.toBe<string>()
    expect(err.statusCode).type.toBe<number | undefined>()
    expect(err.txid).type.toBe<string | undefined>()
    expect(new CoordinatorError('X', 'm', { statusCode: '500' })).type.toRaiseError("Type 'string' is not assignable to type 'number'")
  })
})

describe('coordinatorClientPlugin', () => {
  test('registers with the client options and decorates app.coordinatorClient', () => {
    const app = Fastify()
    expect(app.register(coordinatorClientPlugin, { url: 'http://127.0.0.1:7070' })).type.not.toRaiseError()
    expect(app.register(coordinatorClientPlugin, { token: 't' })).type.toRaiseError("Property 'url' is missing")
    expect(app.coordinatorClient).type.toBe<CoordinatorClient>()
  })

  test('the limits are numbers', () => {
    expect(MAX_PARTICIPANTS_PER_TRANSACTION).type.toBe<100>()
    expect(MAX_MESSAGES_PER_TRANSACTION).type.toBe<1000>()
  })
})
