/**
 * What each side reads of the other's answers and messages, checked with validators compiled
 * once from the schemas (TypeBox's TypeCompiler: plain generated code, no allocation per check).
 *
 * Readers are tolerant where the protocol says so: an answer is checked for what the reader
 * needs (a prepare answer's vote, an error answer's code, a batch answer's statuses) and
 * unknown fields are ignored; an optional field that is malformed is dropped, not fatal
 * (a prepare answer's `reason` that is not a string, a `batch` that is not two safe integers).
 */
import { Type } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { AckNotice, CoordinatorStarted, DecisionNotice } from './schemas/messages.js'
import { BatchResult, DecisionAnswer, ErrorAnswer, Vote } from './schemas/callbacks.js'

const SafeCount = Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER })
const BatchAdvert = Type.Object({ maxCalls: SafeCount, maxBytes: SafeCount })
/** The usual prepare answer (the SDK's): read in one check. */
const wellFormedVote = TypeCompiler.Compile(Type.Object({ vote: Vote, reason: Type.Optional(Type.String()), batch: Type.Optional(BatchAdvert) }))
const hasVote = TypeCompiler.Compile(Type.Object({ vote: Vote }))
const hasReason = TypeCompiler.Compile(Type.Object({ reason: Type.String() }))
const hasBatch = TypeCompiler.Compile(Type.Object({ batch: BatchAdvert }))
const hasCode = TypeCompiler.Compile(Type.Object({ code: ErrorAnswer.properties.code }))
const isBatchAnswer = TypeCompiler.Compile(Type.Object({
  results: Type.Array(Type.Object({ status: BatchResult.properties.status, body: Type.Optional(Type.Unknown()) }))
}))
const isDecisionAnswer = TypeCompiler.Compile(DecisionAnswer)
const isDecisionNotice = TypeCompiler.Compile(DecisionNotice)
const isAckNotice = TypeCompiler.Compile(AckNotice)
const isCoordinatorStarted = TypeCompiler.Compile(CoordinatorStarted)

/**
 * A prepare answer as the coordinator reads it: these fields are checked; an answer may carry
 * others, which are not read.
 */
export interface PrepareAnswerRead {
  vote: Vote
  reason?: string
  /** The advertised batch route: two safe positive integers (the coordinator applies its own bounds). */
  batch?: { maxCalls: number, maxBytes: number }
}

/**
 * A `200` prepare answer's vote, and its reason and batch advertisement when well formed;
 * undefined: no valid vote. The usual answer is checked in one pass and returned as it is.
 */
export function readPrepareAnswer (value: unknown): PrepareAnswerRead | undefined {
  if (wellFormedVote.Check(value)) return value
  if (!hasVote.Check(value)) return undefined
  // A valid vote with a malformed reason or batch advertisement: the vote counts, the rest is dropped.
  const read: PrepareAnswerRead = { vote: value.vote }
  if (hasReason.Check(value)) read.reason = value.reason
  if (hasBatch.Check(value)) read.batch = { maxCalls: value.batch.maxCalls, maxBytes: value.batch.maxBytes }
  return read
}

/** An error answer's `code` when it is a well-formed code (`ERROR_CODE_PATTERN`); never its text. */
export function readErrorCode (value: unknown): string | undefined {
  return hasCode.Check(value) ? value.code : undefined
}

/** A batch answer's results when it is well formed and has one per call; a result's body may be missing. */
export function readBatchAnswer (value: unknown, calls: number): Array<{ status: number, body?: unknown }> | undefined {
  if (!isBatchAnswer.Check(value) || value.results.length !== calls) return undefined
  return value.results.map(r => ({ status: r.status, body: r.body }))
}

/** The coordinator's decision answer (only its decision), or undefined when it has no valid one. */
export function readDecisionAnswer (value: unknown): DecisionAnswer | undefined {
  return isDecisionAnswer.Check(value) ? { decision: value.decision } : undefined
}

/** Accepts a parsed object, a JSON string or a Buffer holding JSON (undefined: not JSON). */
function jsonOf (input: unknown): unknown {
  let v = input
  if (typeof Buffer !== 'undefined' && Buffer.isBuffer(v)) v = v.toString('utf8')
  if (typeof v !== 'string') return v
  try {
    return JSON.parse(v)
  } catch {
    return undefined
  }
}

/** A valid {@link DecisionNotice} (only its known fields), or undefined for a malformed message. */
export function parseDecisionNotice (input: unknown): DecisionNotice | undefined {
  const v = jsonOf(input)
  return isDecisionNotice.Check(v) ? { txid: v.txid, participant: v.participant, decision: v.decision } : undefined
}

/** A valid {@link AckNotice} (only its known fields), or undefined for a malformed message. */
export function parseAckNotice (input: unknown): AckNotice | undefined {
  const v = jsonOf(input)
  return isAckNotice.Check(v) ? { txid: v.txid, participant: v.participant, decision: v.decision } : undefined
}

/** A valid {@link CoordinatorStarted} (only its known fields), or undefined for a malformed message. */
export function parseCoordinatorStarted (input: unknown): CoordinatorStarted | undefined {
  const v = jsonOf(input)
  return isCoordinatorStarted.Check(v) ? { type: v.type, coordinatorId: v.coordinatorId, at: v.at } : undefined
}
