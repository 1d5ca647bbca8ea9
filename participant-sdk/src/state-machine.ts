/**
 * The participant's protocol logic, with no I/O: given the state of one transaction's record in
 * the participant log and an event, it says what the new state is, which user handlers must run
 * (inside the same local SQLite transaction as the state change) and what to answer.
 *
 * The routes, the recovery loop and the SQLite log are thin adapters around `transition`.
 */
import type { Vote } from '@fastify-2pc/protocol'

/**
 * State of one transaction in the participant log.
 * - `none`: no record (never heard of it).
 * - `prepared`: voted yes; the handler's tentative changes are durable; waiting for the decision.
 * - `committed`: commit applied (or one-phase prepare committed).
 * - `aborted`: voted no, or prepared then aborted.
 * - `read-only`: voted read-only; takes no part in phase 2, so commit and abort are both fine.
 * - `tombstone`: abort arrived before any prepare; a late prepare must vote no.
 */
export type RecordState = 'none' | 'prepared' | 'committed' | 'aborted' | 'read-only' | 'tombstone'

/** What the user's prepare handler ended with ('threw' also covers an invalid return value). */
export type PrepareOutcome = Vote | 'threw'

export type ParticipantEvent =
  /** The coordinator asks for a vote. `now` and `deadline` are unix ms. */
  | { type: 'prepare', now: number, deadline: number, onePhase: boolean }
  /** The prepare handler (and, for one-phase with a yes, the commit handler) ran. */
  | { type: 'prepare-handled', outcome: PrepareOutcome, onePhase: boolean }
  /** The coordinator delivers the decision. */
  | { type: 'commit' }
  | { type: 'abort' }
  /** In-doubt recovery got the coordinator's answer to "what was decided?". */
  | { type: 'decision-answer', decision: 'commit' | 'abort' | 'pending' }

/**
 * A user handler to run inside the local transaction that also writes the new state.
 * `run-prepare-handler` asks the caller to run the prepare handler (plus the commit handler
 * when `thenCommit`, for one-phase) and feed the outcome back as `prepare-handled`.
 * `discard-handler-writes` means the prepare handler's writes must be rolled back (vote no,
 * read-only, or a throw) while the new state is still recorded.
 */
export type Effect =
  | { type: 'run-prepare-handler', onePhase: boolean }
  | { type: 'run-commit-handler' }
  | { type: 'run-abort-handler' }
  | { type: 'discard-handler-writes' }

export type ParticipantErrorCode = 'TX_UNKNOWN' | 'TX_ALREADY_COMMITTED' | 'TX_ALREADY_ABORTED'

export type Reply =
  | { type: 'vote', vote: Vote, reason?: string }
  | { type: 'ok' }
  | { type: 'error', statusCode: 404 | 409, code: ParticipantErrorCode, message: string }
  /** Events that nobody waits an answer for (recovery). */
  | { type: 'none' }

export interface Step {
  /** The state to record; `undefined` leaves the log as it is (nothing written). */
  next: RecordState | undefined
  effects: Effect[]
  reply: Reply
}

const stay = (reply: Reply): Step => ({ next: undefined, effects: [], reply })
const ok: Reply = { type: 'ok' }

export function transition (state: RecordState, event: ParticipantEvent): Step {
  switch (event.type) {
    case 'prepare': return onPrepare(state, event)
    case 'prepare-handled': return onPrepareHandled(state, event)
    case 'commit': return onCommit(state)
    case 'abort': return onAbort(state)
    case 'decision-answer': return onDecisionAnswer(state, event.decision)
  }
}

function onPrepare (state: RecordState, event: { now: number, deadline: number, onePhase: boolean }): Step {
  switch (state) {
    case 'none':
      // Past the deadline the coordinator has given up waiting and will abort (presumed
      // abort), so preparing now would only hold a reservation nobody will resolve quickly.
      if (event.now > event.deadline) {
        return { next: 'aborted', effects: [], reply: { type: 'vote', vote: 'no', reason: 'prepare arrived after its deadline' } }
      }
      return { next: undefined, effects: [{ type: 'run-prepare-handler', onePhase: event.onePhase }], reply: { type: 'none' } }
    // A repeated prepare answers the vote already given, without calling the handler again.
    case 'prepared': return stay({ type: 'vote', vote: 'yes' })
    case 'committed': return stay({ type: 'vote', vote: 'yes' })
    case 'read-only': return stay({ type: 'vote', vote: 'read-only' })
    case 'aborted': return stay({ type: 'vote', vote: 'no', reason: 'transaction already aborted here' })
    case 'tombstone': return stay({ type: 'vote', vote: 'no', reason: 'abort arrived before prepare' })
  }
}

function onPrepareHandled (state: RecordState, event: { outcome: PrepareOutcome, onePhase: boolean }): Step {
  // The handler only runs for a transaction with no record, inside the same local transaction
  // that read that state; any other state here is an adapter bug, answered safely with no.
  if (state !== 'none') {
    return stay({ type: 'vote', vote: 'no', reason: `prepare handled in state ${state}` })
  }
  switch (event.outcome) {
    case 'yes':
      // One-phase: the commit handler already ran in the same local transaction, so yes means
      // committed.
      return event.onePhase
        ? { next: 'committed', effects: [], reply: { type: 'vote', vote: 'yes' } }
        : { next: 'prepared', effects: [], reply: { type: 'vote', vote: 'yes' } }
    case 'read-only':
      return { next: 'read-only', effects: [{ type: 'discard-handler-writes' }], reply: { type: 'vote', vote: 'read-only' } }
    case 'no':
      return { next: 'aborted', effects: [{ type: 'discard-handler-writes' }], reply: { type: 'vote', vote: 'no', reason: 'prepare handler voted no' } }
    case 'threw':
      return { next: 'aborted', effects: [{ type: 'discard-handler-writes' }], reply: { type: 'vote', vote: 'no', reason: 'prepare handler failed' } }
  }
}

function onCommit (state: RecordState): Step {
  switch (state) {
    case 'prepared': return { next: 'committed', effects: [{ type: 'run-commit-handler' }], reply: ok }
    case 'committed': return stay(ok)
    case 'read-only': return stay(ok)
    case 'none':
      return stay({ type: 'error', statusCode: 404, code: 'TX_UNKNOWN', message: 'commit for a transaction this participant never prepared' })
    case 'aborted':
    case 'tombstone':
      return stay({ type: 'error', statusCode: 409, code: 'TX_ALREADY_ABORTED', message: 'commit for a transaction this participant aborted' })
  }
}

function onAbort (state: RecordState): Step {
  switch (state) {
    case 'prepared': return { next: 'aborted', effects: [{ type: 'run-abort-handler' }], reply: ok }
    // Leave a tombstone so a prepare that arrives late (reordered, retried) votes no.
    case 'none': return { next: 'tombstone', effects: [], reply: ok }
    case 'aborted': return stay(ok)
    case 'tombstone': return stay(ok)
    case 'read-only': return stay(ok)
    case 'committed':
      return stay({ type: 'error', statusCode: 409, code: 'TX_ALREADY_COMMITTED', message: 'abort for a transaction this participant committed' })
  }
}

function onDecisionAnswer (state: RecordState, decision: 'commit' | 'abort' | 'pending'): Step {
  // Only a prepared record is in doubt; any other state was settled meanwhile by a callback.
  if (state !== 'prepared' || decision === 'pending') return stay({ type: 'none' })
  return decision === 'commit'
    ? { next: 'committed', effects: [{ type: 'run-commit-handler' }], reply: { type: 'none' } }
    : { next: 'aborted', effects: [{ type: 'run-abort-handler' }], reply: { type: 'none' } }
}

/**
 * Delay before the nth (0-based) repeated decision query for one in-doubt transaction:
 * exponential from `baseMs`, capped at `maxMs`, with up to 20% jitter from `random` (0..1) so
 * that many participants restarting together do not query in lockstep.
 */
export function recoveryDelayMs (attempt: number, baseMs: number, maxMs: number, random: number): number {
  const exponent = Math.min(Math.max(attempt, 0), 30)
  const raw = Math.min(maxMs, baseMs * 2 ** exponent)
  return Math.round(raw * (0.8 + 0.2 * Math.min(Math.max(random, 0), 1)))
}
