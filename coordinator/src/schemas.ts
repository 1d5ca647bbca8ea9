/** TypeBox schemas of the coordinator API: validation, serialization and (later) OpenAPI. */
import { Type, type Static } from '@sinclair/typebox'
import { JSON_LIMITS, JSON_LIMITS_KEYWORD, PARTICIPANT_NAME_PATTERN, jsonLimitExceeded, jsonLimitMessage } from '@fastify-2pc/protocol'

/** Upper bound of array sizes in any body; the configured limits are checked in the handlers. */
const HARD_MAX_ITEMS = 1000

// The limits and their check are the protocol's (protocol/src/json-limits.ts), shared with the SDK.
export { JSON_LIMITS, JSON_LIMITS_KEYWORD, jsonLimitExceeded, jsonLimitMessage }
const limited = { [JSON_LIMITS_KEYWORD]: JSON_LIMITS }

interface KeywordError { keyword: string, message: string, params: { limit: 'depth' | 'keys' } }
type LimitsValidator = ((limits: { maxDepth: number, maxKeys: number }, data: unknown) => boolean) & { errors?: KeywordError[] | null }

/** Ajv plugin: the `x-json-limits` keyword (Fastify's `ajv.plugins`). */
export function jsonLimitsKeyword<A extends { addKeyword: (definition: any) => unknown }> (ajv: A): A {
  const validate: LimitsValidator = (limits, data) => {
    const over = jsonLimitExceeded(data, limits.maxDepth, limits.maxKeys)
    validate.errors = over === undefined ? null : [{ keyword: JSON_LIMITS_KEYWORD, message: jsonLimitMessage(over, limits), params: { limit: over } }]
    return over === undefined
  }
  ajv.addKeyword({ keyword: JSON_LIMITS_KEYWORD, schemaType: 'object', errors: true, validate })
  return ajv
}

export const ParticipantInput = Type.Object({
  name: Type.String({ pattern: PARTICIPANT_NAME_PATTERN, description: 'unique within the transaction' }),
  url: Type.String({ minLength: 1, maxLength: 2048, description: 'callback base: the coordinator POSTs to url + "/prepare" etc.' }),
  payload: Type.Optional(Type.Unknown({ description: 'handed to the participant\'s prepare', ...limited })),
  onePhase: Type.Optional(Type.Boolean({ description: 'may be committed in one phase when it is the only participant' }))
}, { additionalProperties: false })
export type ParticipantInput = Static<typeof ParticipantInput>

export const MessageInput = Type.Object({
  exchange: Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,255}$', description: 'an existing exchange; published there after the commit decision' }),
  routingKey: Type.String({ maxLength: 255 }),
  body: Type.Unknown({ description: 'published as JSON', ...limited }),
  headers: Type.Optional(Type.Record(Type.String({ maxLength: 128 }), Type.String({ maxLength: 1024 }), { maxProperties: 32 }))
}, { additionalProperties: false })
export type MessageInput = Static<typeof MessageInput>

export const BeginBody = Type.Object({
  timeoutMs: Type.Optional(Type.Integer()),
  metadata: Type.Optional(Type.Record(Type.String(), Type.Unknown(), limited)),
  participants: Type.Optional(Type.Array(ParticipantInput, { maxItems: HARD_MAX_ITEMS })),
  messages: Type.Optional(Type.Array(MessageInput, { maxItems: HARD_MAX_ITEMS })),
  commit: Type.Optional(Type.Boolean({ description: 'one-shot form: begin, enlist and commit in one request' }))
}, { additionalProperties: false })
export type BeginBody = Static<typeof BeginBody>

export const TxParams = Type.Object({
  id: Type.String({ maxLength: 128 })
})
export type TxParams = Static<typeof TxParams>

export const ListQuery = Type.Object({
  state: Type.Optional(Type.Union([Type.Literal('active'), Type.Literal('preparing'), Type.Literal('committed'), Type.Literal('aborted')])),
  needsAttention: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
  cursor: Type.Optional(Type.String({ maxLength: 256 }))
}, { additionalProperties: false })
export type ListQuery = Static<typeof ListQuery>

export const BeginReply = Type.Object({
  id: Type.String(),
  state: Type.Literal('active'),
  expiresAt: Type.String({ format: 'date-time' })
})

export const OutcomeReply = Type.Object({
  id: Type.String(),
  state: Type.Union([Type.Literal('committed'), Type.Literal('aborted')]),
  reason: Type.Optional(Type.String())
})

export const MessageReply = Type.Object({
  id: Type.String(),
  messageCount: Type.Integer()
})

export const DecisionReply = Type.Object({
  decision: Type.Union([Type.Literal('commit'), Type.Literal('abort'), Type.Literal('pending')])
})

const NullableString = Type.Union([Type.String(), Type.Null()])

export const ParticipantView = Type.Object({
  name: Type.String(),
  url: Type.String(),
  onePhase: Type.Boolean(),
  vote: Type.Union([Type.Literal('yes'), Type.Literal('no'), Type.Literal('read-only'), Type.Null()]),
  voteReason: NullableString,
  ack: Type.String(),
  attempts: Type.Integer(),
  lastError: NullableString,
  nextAttemptAt: NullableString
})

const AttentionView = Type.Object({
  participant: NullableString,
  kind: Type.String(),
  detail: Type.String(),
  createdAt: Type.String(),
  resolvedAt: NullableString,
  resolution: NullableString
})

const OutboxView = Type.Object({
  kind: Type.String(),
  messageId: Type.String(),
  exchange: Type.String(),
  routingKey: Type.String(),
  publishedAt: NullableString,
  attempts: Type.Integer(),
  lastError: NullableString,
  deadAt: NullableString
})

const AuditView = Type.Object({
  action: Type.String(),
  reason: NullableString,
  actor: Type.String(),
  at: Type.String()
})

/** Operator headers: who acts (recorded in the audit table; default 'api'). */
export const ActorHeaders = Type.Object({
  'x-twopc-actor': Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[\\x20-\\x7e]+$' }))
})

export const ResolveBody = Type.Object({
  reason: Type.String({ minLength: 1, maxLength: 2000, description: 'why it is handled; recorded in the audit table and on the attention entries' })
}, { additionalProperties: false })
export type ResolveBody = Static<typeof ResolveBody>

export const ForgetBody = Type.Object({
  reason: Type.String({ minLength: 1, maxLength: 2000, description: 'why no participant can still need the commit decision; recorded in the audit table' })
}, { additionalProperties: false })
export type ForgetBody = Static<typeof ForgetBody>

/** The compact record of a pruned commit that `forget` dropped. */
export const ForgetReply = Type.Object({
  id: Type.String(),
  decision: Type.Literal('commit'),
  decidedAt: Type.String(),
  prunedAt: Type.String(),
  forgottenAt: Type.String()
})

export const TransactionView = Type.Object({
  id: Type.String(),
  state: Type.String(),
  decision: Type.Union([Type.Literal('commit'), Type.Literal('abort'), Type.Null()]),
  reason: NullableString,
  createdAt: Type.String(),
  updatedAt: Type.String(),
  expiresAt: Type.String(),
  decidedAt: NullableString,
  completedAt: NullableString,
  completed: Type.Boolean(),
  needsAttention: Type.Boolean(),
  onePhase: Type.Boolean(),
  metadata: Type.Unknown(),
  /** Set (true) when the stored metadata is over JSON_LIMITS (written before they existed): `metadata` is null. */
  metadataOmitted: Type.Optional(Type.Boolean()),
  traceparent: NullableString,
  participants: Type.Array(ParticipantView),
  messageCount: Type.Integer(),
  heuristics: Type.Array(AttentionView),
  outbox: Type.Array(OutboxView),
  /** Operator actions on it (retry, resolve), oldest first. */
  audit: Type.Optional(Type.Array(AuditView))
})

export const ListReply = Type.Object({
  items: Type.Array(Type.Omit(TransactionView, ['heuristics', 'outbox'])),
  nextCursor: NullableString
})

export const ErrorReply = Type.Object({
  statusCode: Type.Integer(),
  code: Type.String(),
  error: Type.String(),
  message: Type.String()
})
