/**
 * The participant callbacks (README, "Participant callbacks") as TypeBox schemas: what the
 * coordinator POSTs to `{url}/prepare|commit|abort|batch`, what a participant answers, and the
 * decision answer participants read from the coordinator. The SDK validates requests and
 * serializes answers with them; the coordinator reads answers through the checks in
 * `readers.ts`, built from these. `protocol/schema/callbacks.schema.json` is generated from
 * them (`npm run schema`) for participants written in other languages.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { JSON_LIMITS, JSON_LIMITS_KEYWORD } from '../json-limits.js'
import { MAX_BATCH_CALLS, PARTICIPANT_NAME_PATTERN, TX_ID_PATTERN } from '../wire.js'

/** The error codes the coordinator keeps of an error answer (anything else: only the status). */
export const ERROR_CODE_PATTERN = '^[A-Z][A-Z0-9_]{0,63}$'

export const TxId = Type.String({ pattern: TX_ID_PATTERN, maxLength: 64, description: '<coordinator id>.<26 chars of Crockford base32>' })
export const ParticipantName = Type.String({ pattern: PARTICIPANT_NAME_PATTERN, maxLength: 64 })

export const Vote = Type.Union([Type.Literal('yes'), Type.Literal('no'), Type.Literal('read-only')])
export type Vote = Static<typeof Vote>
export const Decision = Type.Union([Type.Literal('commit'), Type.Literal('abort')])
export type Decision = Static<typeof Decision>

/** Body of `POST {participant url}/prepare`. */
export const PrepareRequest = Type.Object({
  txid: TxId,
  participant: ParticipantName,
  // The limits every JSON value of a transaction keeps (json-limits.ts); over them: 400.
  payload: Type.Optional(Type.Unknown({ [JSON_LIMITS_KEYWORD]: JSON_LIMITS })),
  deadline: Type.Integer({ minimum: 0, description: 'Unix ms after which the coordinator no longer waits for this vote' }),
  onePhase: Type.Optional(Type.Boolean({
    description: 'One-phase commit: prepare AND commit in one step, a yes means committed. Sent only to a participant enlisted with onePhase: true'
  }))
}, { additionalProperties: false, description: 'body of POST {url}/prepare' })
export type PrepareRequest = Static<typeof PrepareRequest>

/** Body of `POST {participant url}/commit` and `/abort`. */
export const DecisionRequest = Type.Object({
  txid: TxId,
  participant: Type.Optional(ParticipantName)
}, { additionalProperties: false, description: 'body of POST {url}/commit and {url}/abort' })
export type DecisionRequest = Static<typeof DecisionRequest>

/** What a participant's `/batch` route accepts; advertised in its prepare answers. */
export const BatchCapability = Type.Object({
  maxCalls: Type.Integer({ minimum: 1, maximum: MAX_BATCH_CALLS, description: 'calls per batch request at most' }),
  maxBytes: Type.Integer({ minimum: 1, description: 'body bytes per batch request at most' })
}, { additionalProperties: false })
export type BatchCapability = Static<typeof BatchCapability>

/** `200` answer of `/prepare`. */
export const PrepareAnswer = Type.Object({
  vote: Vote,
  reason: Type.Optional(Type.String()),
  // fast-json-stringify drops what the response schema does not name: `batch` must be listed
  // here or the advertisement never leaves the single route.
  batch: Type.Optional(BatchCapability)
}, { additionalProperties: false, description: '200 answer of /prepare' })
export type PrepareAnswer = Static<typeof PrepareAnswer>

/** `2xx` answer of `/commit` and `/abort` (the coordinator reads only the status). */
export const OkAnswer = Type.Object({ ok: Type.Literal(true) }, { additionalProperties: false, description: '2xx answer of /commit and /abort' })
export type OkAnswer = Static<typeof OkAnswer>

/** A failed callback's answer (4xx, 5xx); the coordinator keeps the status and a well-formed `code`. */
export const ErrorAnswer = Type.Object({
  statusCode: Type.Optional(Type.Integer({ minimum: 400, maximum: 599 })),
  code: Type.String({ pattern: ERROR_CODE_PATTERN }),
  error: Type.Optional(Type.String()),
  message: Type.Optional(Type.String())
}, { description: '4xx/5xx answer of a callback; the coordinator keeps the status and a code of this form' })
export type ErrorAnswer = Static<typeof ErrorAnswer>

const Traceparent = Type.String({ maxLength: 128, description: 'the traceparent header the single call would carry' })
const CommitOrAbort = Type.Union([Type.Literal('commit'), Type.Literal('abort')])

/** One callback inside a batch: the body the single route would get, and its `traceparent` header. */
export const BatchCall = Type.Union([
  Type.Object({ op: Type.Literal('prepare'), body: PrepareRequest, traceparent: Type.Optional(Traceparent) }, { additionalProperties: false }),
  Type.Object({ op: CommitOrAbort, body: DecisionRequest, traceparent: Type.Optional(Traceparent) }, { additionalProperties: false })
])
export type BatchCall = Static<typeof BatchCall>

/** Body of `POST {participant url}/batch`. */
export const BatchRequest = Type.Object({
  calls: Type.Array(BatchCall, { minItems: 1, maxItems: MAX_BATCH_CALLS })
}, { additionalProperties: false, description: 'body of POST {url}/batch' })
export type BatchRequest = Static<typeof BatchRequest>

/**
 * The batch body as a participant checks it first, for its own `maxCalls`: each call's `body` is
 * then checked on its own (against its single route's schema), so that one bad call fails alone
 * instead of the whole batch.
 */
export function batchEnvelope (maxCalls: number) {
  return Type.Object({
    calls: Type.Array(Type.Object({
      op: Type.Union([Type.Literal('prepare'), CommitOrAbort]),
      body: Type.Object({}),
      traceparent: Type.Optional(Traceparent)
    }, { additionalProperties: false }), { minItems: 1, maxItems: maxCalls })
  }, { additionalProperties: false })
}

/** One call's answer: the status and body the single route would have answered. */
export const BatchResult = Type.Object({
  status: Type.Integer({ minimum: 100, maximum: 599 }),
  body: Type.Unknown({ description: 'a PrepareAnswer, an OkAnswer or an ErrorAnswer' })
}, { additionalProperties: false })
export type BatchResult = Static<typeof BatchResult>

/** `200` answer of `/batch`: one result per call, in the calls' order. */
export const BatchAnswer = Type.Object({ results: Type.Array(BatchResult) }, { additionalProperties: false, description: '200 answer of /batch: one result per call, in order' })
export type BatchAnswer = Static<typeof BatchAnswer>

/** Answer of the coordinator's `GET /v1/transactions/:id/decision` (unknown fields are ignored). */
export const DecisionAnswer = Type.Object({
  decision: Type.Union([Type.Literal('commit'), Type.Literal('abort'), Type.Literal('pending')])
}, { description: 'answer of the coordinator GET /v1/transactions/:id/decision; unknown fields are ignored' })
export type DecisionAnswer = Static<typeof DecisionAnswer>

/** The schemas of the callbacks' bodies and answers, by name (the generated file's `$defs`). */
export const CALLBACK_SCHEMAS: Readonly<Record<string, TSchema>> = {
  TxId,
  ParticipantName,
  Vote,
  Decision,
  PrepareRequest,
  PrepareAnswer,
  BatchCapability,
  DecisionRequest,
  OkAnswer,
  ErrorAnswer,
  BatchCall,
  BatchRequest,
  BatchResult,
  BatchAnswer,
  DecisionAnswer
}
