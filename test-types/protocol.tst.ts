// The wire contract: signatures and the callback bodies both sides type against.
import { describe, expect, test } from 'tstyche'
import {
  signBody, signBodyV1, verifySignature, SIGNATURE_HEADER, SIGNED_OPERATIONS,
  type SignedOperation, type SignatureCheck, type VerifyOptions,
  type Vote, type Decision, type PrepareRequest, type PrepareResponse, type DecisionRequest, type DecisionResponse,
  type DecisionQueryResponse, type BatchCall, type BatchRequest, type BatchResponse, type BatchCapability,
  ParticipantErrorCodes, CallbackPath, coordinatorIdOf
} from '@fastify-2pc/protocol'

describe('signatures', () => {
  test('signBody binds the operation', () => {
    expect(signBody('secret', 'prepare', '{"txid":"c1.01h"}')).type.toBe<string>()
    expect(signBody('secret', 'amqp.decision', Buffer.from('{}'), Date.now())).type.toBe<string>()
    expect(signBody('secret', 'prepared', '{}')).type.toRaiseError("'\"prepared\"' is not assignable to parameter of type 'SignedOperation'")
    expect(signBody('secret', '{}')).type.toRaiseError('Expected 3-4 arguments')
    expect(signBody(Buffer.from('secret'), 'commit', '{}')).type.toRaiseError("is not assignable to parameter of type 'string'")
    expect(signBodyV1('secret', '{}')).type.toBe<string>()
  })

  test('SignedOperation lists the seven routes and messages', () => {
    expect<SignedOperation>().type.toBe<'prepare' | 'commit' | 'abort' | 'batch' | 'amqp.decision' | 'amqp.ack' | 'amqp.event'>()
    expect(SIGNED_OPERATIONS).type.toBe<readonly SignedOperation[]>()
    expect(SIGNATURE_HEADER).type.toBe<'x-2pc-signature'>()
  })

  test('verifySignature answers ok with the scheme, or the reason', () => {
    const check = verifySignature('secret', 'commit', 't=1,v2=00', '{}', { now: 1, maxAgeMs: 300_000, acceptV1: false })
    expect(check).type.toBe<SignatureCheck>()
    if (check.ok) expect(check.scheme).type.toBe<'v1' | 'v2'>()
    else expect(check.reason).type.toBe<'missing' | 'malformed' | 'stale' | 'mismatch' | 'legacy-scheme'>()
    // A header as Node gives it: possibly repeated, possibly absent.
    expect(verifySignature('secret', 'batch', ['a', 'b'], Buffer.from('{}'))).type.toBe<SignatureCheck>()
    expect(verifySignature('secret', 'batch', undefined, '')).type.toBe<SignatureCheck>()
    expect(verifySignature('secret', 'commit', 'h', '{}', { acceptV1: 'yes' })).type.toRaiseError("Type 'string' is not assignable to type 'boolean")
    expect(verifySignature('secret', 'commit', 'h', '{}', { maxAge: 1 })).type.toRaiseError("'maxAge' does not exist")
    expect(verifySignature('secret', 'h', '{}')).type.toRaiseError()
    expect<VerifyOptions>().type.toBe<{ now?: number, maxAgeMs?: number, acceptV1?: boolean }>()
  })
})

describe('wire types', () => {
  test('prepare', () => {
    expect<Vote>().type.toBe<'yes' | 'no' | 'read-only'>()
    expect<PrepareRequest>().type.toBe<{ txid: string, participant: string, payload?: unknown, deadline: number, onePhase?: boolean }>()
    expect<PrepareResponse>().type.toBe<{ vote: Vote, reason?: string, batch?: BatchCapability }>()
    expect({ vote: 'maybe' }).type.not.toBeAssignableTo<PrepareResponse>()
  })

  test('decisions', () => {
    expect<Decision>().type.toBe<'commit' | 'abort'>()
    expect<DecisionRequest>().type.toBe<{ txid: string, participant?: string }>()
    expect<DecisionResponse>().type.toBe<{ ok: true }>()
    expect<DecisionQueryResponse>().type.toBe<{ decision: Decision | 'pending' }>()
  })

  test('batch', () => {
    const call: BatchCall = { op: 'commit', body: { txid: 'c1.01h' } }
    expect<BatchRequest>().type.toBe<{ calls: BatchCall[] }>()
    expect(call).type.toBeAssignableTo<BatchCall>()
    // A prepare call needs a prepare body.
    expect({ op: 'prepare' as const, body: { txid: 'c1.01h' } }).type.not.toBeAssignableTo<BatchCall>()
    expect<BatchResponse['results'][number]>().type.toBe<{ status: number, body: unknown }>()
  })

  test('codes and paths are literal', () => {
    expect(ParticipantErrorCodes.TX_UNKNOWN).type.toBe<'TX_UNKNOWN'>()
    expect(ParticipantErrorCodes.BAD_SIGNATURE).type.toBe<'BAD_SIGNATURE'>()
    expect(CallbackPath.prepare).type.toBe<'/prepare'>()
    expect(coordinatorIdOf('c1.01h')).type.toBe<string>()
  })
})
