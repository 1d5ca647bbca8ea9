/**
 * The one path a coordinator's decision takes into the participant log, whether it came as an
 * HTTP callback (`POST {prefix}/commit|abort`) or as a RabbitMQ decision notice: the engine's
 * `decide` (one local SQLite transaction: read the record, run the user's handler, write the new
 * state), then the in-doubt recovery forgets its backoff for that transaction.
 */
import type { ParticipantEngine } from './engine.js'
import type { InDoubtRecovery } from './recovery.js'
import type { Reply } from './state-machine.js'

export interface AppliedDecision {
  reply: Reply
  /** True when this call changed the record (first application; false for a repeat). */
  changed: boolean
}

/** Throws `HandlerThrew` when the user's handler threw (nothing changed, retry later). */
export function applyDecision (engine: ParticipantEngine, recovery: InDoubtRecovery, txid: string, decision: 'commit' | 'abort'): AppliedDecision {
  let changed = false
  const reply = engine.decide(txid, decision, step => { changed = step.next !== undefined })
  recovery.forget(txid)
  return { reply, changed }
}
