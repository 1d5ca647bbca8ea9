/**
 * The one path a coordinator's decision takes into the participant log, whether it came as an
 * HTTP callback (`POST {prefix}/commit|abort`) or as a RabbitMQ decision notice: the engine's
 * `decide` (one local unit — a savepoint of the group-committed batch transaction: read the
 * record, run the user's handler, write the new state; resolved once committed), then the
 * in-doubt recovery forgets its backoff for that transaction.
 */
import type { EventContext, ParticipantEngine } from './engine.js'
import type { InDoubtRecovery } from './recovery.js'
import type { Reply } from './state-machine.js'

export interface AppliedDecision {
  reply: Reply
  /** True when this call changed the record (first application; false for a repeat). */
  changed: boolean
}

/**
 * Rejects with `HandlerThrew` when the user's handler threw, or `LogWriteFailed` when the local
 * transaction could not be committed (nothing changed either way, retry later).
 */
export async function applyDecision (engine: ParticipantEngine, recovery: InDoubtRecovery, txid: string, decision: 'commit' | 'abort', context: EventContext): Promise<AppliedDecision> {
  let changed = false
  const reply = await engine.decide(txid, decision, step => { changed = step.next !== undefined }, context)
  recovery.forget(txid)
  return { reply, changed }
}
