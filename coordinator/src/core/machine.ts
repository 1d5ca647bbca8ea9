/**
 * The coordinator's 2PC decision logic as a pure state machine: `step(tx, event, policy)`
 * returns the next transaction record and the effects to carry out. No I/O, no clock, no
 * randomness: time and jitter arrive inside events. The shell (engine.ts) persists the new
 * record — in one SQLite transaction, forced to disk — *before* it carries out any effect,
 * so nobody hears of a decision that is not durable.
 */
import type { Vote, Decision } from '@fastify-2pc/protocol'

export type TxState = 'active' | 'preparing' | 'committed' | 'aborted'

/**
 * Phase-2 state of one participant.
 * - `none`: no decision yet.
 * - `pending`: the decision must reach it; retried until acked.
 * - `acked`: it confirmed the decision.
 * - `not-needed`: it takes no part in phase 2 (read-only, voted no, never asked to prepare).
 * - `heuristic`: it definitely refused the decision; recorded and left to an operator.
 * - `resolved`: an operator marked it handled (`operator-resolve`) without an ack; no more deliveries.
 */
export type AckState = 'none' | 'pending' | 'acked' | 'not-needed' | 'heuristic' | 'resolved'

export interface Participant {
  name: string
  url: string
  payload: unknown
  /** Opted in to one-phase commit (used only when it is the sole participant). */
  onePhase: boolean
  vote: Vote | null
  voteReason: string | null
  ack: AckState
  /** Failed phase-2 deliveries so far. */
  attempts: number
  lastError: string | null
  /** When the next phase-2 delivery is due (unix ms); null when none is scheduled. */
  nextAttemptAt: number | null
}

export interface Transaction {
  id: string
  state: TxState
  createdAt: number
  updatedAt: number
  expiresAt: number
  decidedAt: number | null
  completedAt: number | null
  /** Why it aborted: 'requested', 'vote-no', 'prepare-failed', 'timeout', 'coordinator-restarted'. */
  reason: string | null
  /** Phase 2 exhausted its retry budget or met a heuristic outcome. */
  needsAttention: boolean
  /** One-phase commit was used: the sole participant decided. */
  onePhase: boolean
  metadata: unknown
  participants: Participant[]
  /** Transactional messages enlisted (kept in their own table; published only on commit). */
  messageCount: number
  /** W3C trace context of the request that began it, passed on to the participants' callbacks. */
  traceparent: string | null
  /** A participant definitely refused the decision at some point: only an operator clears the flag then. */
  heuristic: boolean
}

export interface Policy {
  maxParticipants: number
  /** First phase-2 retry delay; doubles per attempt up to retryMaxMs. */
  retryBaseMs: number
  retryMaxMs: number
  /** Failed phase-2 deliveries to one participant after which the transaction needs attention. */
  retryBudget: number
  maxMessages: number
}

export interface TxMessage {
  exchange: string
  routingKey: string
  body: unknown
  headers?: Record<string, string>
}

export interface NewParticipant {
  name: string
  url: string
  payload?: unknown
  onePhase?: boolean
}

export type Event =
  | { type: 'enlist', participant: NewParticipant, now: number }
  | { type: 'add-message', message: TxMessage, now: number }
  | { type: 'commit-requested', now: number }
  | { type: 'abort-requested', now: number }
  | { type: 'vote', participant: string, vote: Vote, reason?: string, now: number }
  | { type: 'prepare-failed', participant: string, error: string, now: number }
  | { type: 'expired', now: number }
  | { type: 'phase2-acked', participant: string, now: number }
  /**
   * `refused`: a definite answer (the driver's `classifyDecisionAnswer`) — not retried blindly.
   * `attention`: retried, but it will not get better by itself (a 401, a 404 without TX_UNKNOWN):
   * the transaction is flagged for an operator meanwhile.
   */
  | { type: 'phase2-failed', participant: string, error: string, refused: boolean, attention?: Phase2Attention, jitter: number, now: number }
  | { type: 'phase2-due', participant: string, now: number }
  /** The coordinator restarted and found this record in its log. */
  | { type: 'recovered', now: number }
  /**
   * An operator asks to deliver the decision now: `pending` participants are sent it at once
   * (the engine cancels their backoff timer), `heuristic` ones go back to `pending` with a fresh
   * attempt count. The decision itself never changes.
   */
  | { type: 'operator-retry', actor: string, now: number }
  /**
   * An operator marks the transaction handled: `pending`/`heuristic` participants become
   * `resolved`, open attention entries get the resolution, `needsAttention` clears and the
   * transaction is completed. The decision itself never changes.
   */
  | { type: 'operator-resolve', actor: string, reason: string, now: number }

export type Effect =
  | { type: 'send-prepare', participant: string, onePhase: boolean }
  | { type: 'send-decision', participant: string, decision: Decision }
  | { type: 'schedule-phase2', participant: string, at: number }
  /** The decision is durable: answer whoever waits for it. */
  | { type: 'decided', decision: Decision, reason: string | null }
  /** Written to the attention table in the same SQLite transaction as the record; `kind` is the metric's label too. */
  | { type: 'record-attention', participant: string | null, kind: AttentionKind, detail: string }
  /** Stored with the record; on a commit decision the log moves it to the outbox in the same transaction. */
  | { type: 'record-message', position: number, message: TxMessage }
  /**
   * A decision notice for the participant's queue, written to the outbox in the same SQLite
   * transaction: the path that still reaches it when HTTP does not.
   */
  | { type: 'notify', participant: string, decision: Decision }
  /** An operator action, written to the audit table in the same SQLite transaction as the record. */
  | { type: 'record-audit', action: AuditAction, actor: string, reason: string | null }
  /** Marks the transaction's open attention entries resolved, in the same SQLite transaction. */
  | { type: 'resolve-attention', resolution: string }

export type AuditAction = 'retry' | 'resolve'

/**
 * `retry-budget`: deliveries to a participant are still being retried and the budget ran out;
 * `unauthorized` / `not-found` (Phase2Attention): still retried, but the answer will not get
 * better by itself (the entry's detail starts with the kind). These three are resolved as
 * delivered once every participant acked. `heuristic`: a participant refused the decision.
 */
export type AttentionKind = 'heuristic' | 'retry-budget' | Phase2Attention

/** A retried phase-2 answer that needs attention: 401 (`unauthorized`), a 404 without TX_UNKNOWN (`not-found`). */
export type Phase2Attention = 'unauthorized' | 'not-found'

export type RejectCode =
  | 'TX_NOT_ACTIVE'
  | 'TX_ALREADY_DECIDED'
  | 'PARTICIPANT_EXISTS'
  | 'TOO_MANY_PARTICIPANTS'
  | 'TOO_MANY_MESSAGES'
  | 'TX_NOT_DECIDED'
  | 'NOTHING_TO_RETRY'
  | 'NOTHING_TO_RESOLVE'
  /** A request (enlist, message, commit) after the transaction's expiry, before any decision. */
  | 'TX_EXPIRED'

/**
 * `refused`: the step changed the record but the request it answers is refused with this code —
 * a request that comes after the transaction's expiry aborts it (reason `timeout`) and is told so.
 */
export type StepResult =
  | { ok: true, tx: Transaction, effects: Effect[], changed: boolean, refused?: RejectCode }
  | { ok: false, code: RejectCode, tx: Transaction }

export function newTransaction (id: string, now: number, expiresAt: number, metadata: unknown = null, traceparent: string | null = null): Transaction {
  return {
    id,
    state: 'active',
    createdAt: now,
    updatedAt: now,
    expiresAt,
    decidedAt: null,
    completedAt: null,
    reason: null,
    needsAttention: false,
    onePhase: false,
    metadata,
    participants: [],
    messageCount: 0,
    traceparent,
    heuristic: false
  }
}

export function isDecided (tx: Transaction): boolean {
  return tx.state === 'committed' || tx.state === 'aborted'
}

export function decisionOf (tx: Transaction): Decision | null {
  if (tx.state === 'committed') return 'commit'
  if (tx.state === 'aborted') return 'abort'
  return null
}

/** Phase-2 delay before retry number `attempts` (1-based): capped exponential, half jittered. */
export function backoffMs (policy: Policy, attempts: number, jitter: number): number {
  const exp = Math.min(policy.retryMaxMs, policy.retryBaseMs * 2 ** Math.min(attempts - 1, 30))
  return Math.round(exp / 2 + (exp / 2) * jitter)
}

function unchanged (tx: Transaction): StepResult {
  return { ok: true, tx, effects: [], changed: false }
}

function reject (tx: Transaction, code: RejectCode): StepResult {
  return { ok: false, code, tx }
}

/**
 * Expiry is checked by every request, with the request's clock value: a transaction past its
 * `expiresAt` with no decision is aborted for timeout by the first request that finds it so (the
 * sweeper only does the same for those nobody asks about).
 */
function expired (tx: Transaction, now: number): boolean {
  return !isDecided(tx) && now >= tx.expiresAt
}

/** The abort for timeout, taken at a request that is then refused with TX_EXPIRED. */
function expire (tx: Transaction, now: number): StepResult {
  const effects: Effect[] = []
  return { ok: true, tx: decide(tx, 'abort', 'timeout', now, effects), effects, changed: true, refused: 'TX_EXPIRED' }
}

function usesOnePhase (tx: Transaction): boolean {
  return tx.participants.length === 1 && tx.participants[0]?.onePhase === true
}

/** Who must hear an abort: whoever may hold a prepared state (asked, and did not vote no/read-only). */
function mustHearAbort (p: Participant, asked: boolean): boolean {
  return asked && p.vote !== 'no' && p.vote !== 'read-only'
}

function decide (tx: Transaction, decision: Decision, reason: string | null, now: number, effects: Effect[]): Transaction {
  const asked = tx.state === 'preparing'
  const participants = tx.participants.map((p): Participant => {
    let ack: AckState
    if (decision === 'commit') {
      if (tx.onePhase) ack = 'acked' // its `yes` already was its commit
      else ack = p.vote === 'yes' ? 'pending' : 'not-needed'
    } else {
      ack = mustHearAbort(p, asked) ? 'pending' : 'not-needed'
    }
    return { ...p, ack, nextAttemptAt: ack === 'pending' ? now : null }
  })
  const next: Transaction = {
    ...tx,
    state: decision === 'commit' ? 'committed' : 'aborted',
    decidedAt: now,
    updatedAt: now,
    reason,
    participants
  }
  effects.push({ type: 'decided', decision, reason })
  for (const p of participants) {
    if (p.ack === 'pending') effects.push({ type: 'send-decision', participant: p.name, decision })
  }
  return completeIfDone(next, now)
}

function completeIfDone (tx: Transaction, now: number): Transaction {
  if (!isDecided(tx) || tx.completedAt !== null) return tx
  const done = tx.participants.every(p => p.ack === 'acked' || p.ack === 'not-needed')
  // Delivered at last: an exhausted retry budget alone needs nobody anymore (the log resolves its
  // entry); a heuristic outcome stays flagged until an operator resolves it.
  return done ? { ...tx, completedAt: now, updatedAt: now, needsAttention: tx.heuristic ? tx.needsAttention : false } : tx
}

/**
 * A change of one participant's row. `updatedAt` is the time of the transaction's own last
 * change (state, decision, completion, attention), so it stays: a vote or an ack rewrites only
 * that participant's row in the log.
 */
function withParticipant (tx: Transaction, name: string, change: (p: Participant) => Participant): Transaction {
  return {
    ...tx,
    participants: tx.participants.map(p => (p.name === name ? change(p) : p))
  }
}

export function step (tx: Transaction, event: Event, policy: Policy): StepResult {
  const now = event.now
  switch (event.type) {
    case 'enlist': {
      if (expired(tx, now)) return expire(tx, now)
      if (tx.state !== 'active') return reject(tx, isDecided(tx) ? 'TX_ALREADY_DECIDED' : 'TX_NOT_ACTIVE')
      if (tx.participants.some(p => p.name === event.participant.name)) return reject(tx, 'PARTICIPANT_EXISTS')
      if (tx.participants.length >= policy.maxParticipants) return reject(tx, 'TOO_MANY_PARTICIPANTS')
      const participant: Participant = {
        name: event.participant.name,
        url: event.participant.url,
        payload: event.participant.payload ?? null,
        onePhase: event.participant.onePhase === true,
        vote: null,
        voteReason: null,
        ack: 'none',
        attempts: 0,
        lastError: null,
        nextAttemptAt: null
      }
      return { ok: true, tx: { ...tx, updatedAt: now, participants: [...tx.participants, participant] }, effects: [], changed: true }
    }

    case 'add-message': {
      if (expired(tx, now)) return expire(tx, now)
      if (tx.state !== 'active') return reject(tx, isDecided(tx) ? 'TX_ALREADY_DECIDED' : 'TX_NOT_ACTIVE')
      if (tx.messageCount >= policy.maxMessages) return reject(tx, 'TOO_MANY_MESSAGES')
      return {
        ok: true,
        tx: { ...tx, updatedAt: now, messageCount: tx.messageCount + 1 },
        effects: [{ type: 'record-message', position: tx.messageCount, message: event.message }],
        changed: true
      }
    }

    case 'commit-requested': {
      if (isDecided(tx)) return reject(tx, 'TX_ALREADY_DECIDED')
      if (expired(tx, now)) return expire(tx, now)
      if (tx.state !== 'active') return reject(tx, 'TX_NOT_ACTIVE')
      const effects: Effect[] = []
      if (tx.participants.length === 0) {
        return { ok: true, tx: decide(tx, 'commit', null, now, effects), effects, changed: true }
      }
      const onePhase = usesOnePhase(tx)
      const next: Transaction = { ...tx, state: 'preparing', onePhase, updatedAt: now }
      for (const p of next.participants) effects.push({ type: 'send-prepare', participant: p.name, onePhase })
      return { ok: true, tx: next, effects, changed: true }
    }

    case 'abort-requested': {
      if (tx.state === 'committed') return reject(tx, 'TX_ALREADY_DECIDED')
      if (tx.state === 'aborted') return unchanged(tx)
      const effects: Effect[] = []
      // Past its expiry it is aborted for timeout, as the sweeper would have: the same answer either way.
      return { ok: true, tx: decide(tx, 'abort', expired(tx, now) ? 'timeout' : 'requested', now, effects), effects, changed: true }
    }

    case 'expired': {
      if (isDecided(tx) || now < tx.expiresAt) return unchanged(tx)
      const effects: Effect[] = []
      return { ok: true, tx: decide(tx, 'abort', 'timeout', now, effects), effects, changed: true }
    }

    case 'vote': {
      const p = tx.participants.find(x => x.name === event.participant)
      // A late, duplicate or stray vote changes nothing: the round is over or it was counted.
      if (tx.state !== 'preparing' || p === undefined || p.vote !== null) return unchanged(tx)
      let next = withParticipant(tx, p.name, x => ({ ...x, vote: event.vote, voteReason: event.reason ?? null }))
      const effects: Effect[] = []
      if (event.vote === 'no') {
        // In one-phase commit a `no` means the participant already rolled back: nothing to tell it.
        next = decide(next, 'abort', 'vote-no', now, effects)
      } else if (next.participants.every(x => x.vote === 'yes' || x.vote === 'read-only')) {
        // No commit is decided past the expiry (a vote that arrives late: the sweeper may not
        // have run yet) — except one-phase, where the sole participant's `yes` already was its commit.
        next = !tx.onePhase && now >= tx.expiresAt ? decide(next, 'abort', 'timeout', now, effects) : decide(next, 'commit', null, now, effects)
      }
      return { ok: true, tx: next, effects, changed: true }
    }

    case 'prepare-failed': {
      const p = tx.participants.find(x => x.name === event.participant)
      if (tx.state !== 'preparing' || p === undefined || p.vote !== null) return unchanged(tx)
      const effects: Effect[] = []
      const next = withParticipant(tx, p.name, x => ({ ...x, lastError: event.error }))
      return { ok: true, tx: decide(next, 'abort', 'prepare-failed', now, effects), effects, changed: true }
    }

    case 'phase2-acked': {
      const p = tx.participants.find(x => x.name === event.participant)
      if (!isDecided(tx) || p === undefined || p.ack !== 'pending') return unchanged(tx)
      // lastError stays: it tells later readers what went wrong before (e.g. which prepare failed).
      const next = withParticipant(tx, p.name, x => ({ ...x, ack: 'acked', nextAttemptAt: null }))
      return { ok: true, tx: completeIfDone(next, now), effects: [], changed: true }
    }

    case 'phase2-failed': {
      const p = tx.participants.find(x => x.name === event.participant)
      if (!isDecided(tx) || p === undefined || p.ack !== 'pending') return unchanged(tx)
      const attempts = p.attempts + 1
      if (event.refused) {
        const next = withParticipant(tx, p.name, x => ({ ...x, ack: 'heuristic', attempts, lastError: event.error, nextAttemptAt: null }))
        return {
          ok: true,
          tx: { ...next, needsAttention: true, heuristic: true, updatedAt: now },
          effects: [{ type: 'record-attention', participant: p.name, kind: 'heuristic', detail: event.error }],
          changed: true
        }
      }
      const at = now + backoffMs(policy, attempts, event.jitter)
      let next = withParticipant(tx, p.name, x => ({ ...x, attempts, lastError: event.error, nextAttemptAt: at }))
      const effects: Effect[] = [{ type: 'schedule-phase2', participant: p.name, at }]
      // The first failure also queues the decision on the participant's queue (when a broker is configured).
      if (attempts === 1) effects.push({ type: 'notify', participant: p.name, decision: decisionOf(tx) as Decision })
      // An answer that needs someone (a rotated key, a missing route): flagged at once, one entry
      // per change of error, and, once the budget is spent and the flag is up, none more.
      if (event.attention !== undefined && p.lastError !== event.error && (attempts <= policy.retryBudget || !next.needsAttention)) {
        next = { ...next, needsAttention: true, updatedAt: now }
        effects.push({
          type: 'record-attention',
          participant: p.name,
          kind: event.attention,
          detail: `${event.attention}: ${event.error}; retried with backoff until it is delivered`
        })
      }
      if (attempts === policy.retryBudget) {
        next = { ...next, needsAttention: true, updatedAt: now }
        effects.push({
          type: 'record-attention',
          participant: p.name,
          kind: 'retry-budget',
          detail: `${attempts} failed deliveries; still retrying every ${policy.retryMaxMs} ms at most. Last error: ${event.error}`
        })
      }
      return { ok: true, tx: next, effects, changed: true }
    }

    case 'phase2-due': {
      const p = tx.participants.find(x => x.name === event.participant)
      const decision = decisionOf(tx)
      if (decision === null || p === undefined || p.ack !== 'pending') return unchanged(tx)
      return { ok: true, tx, effects: [{ type: 'send-decision', participant: p.name, decision }], changed: false }
    }

    case 'recovered': {
      const decision = decisionOf(tx)
      if (decision === null) {
        // Presumed abort: no decision in the log means abort, and whoever may have prepared hears it.
        const effects: Effect[] = []
        return { ok: true, tx: decide(tx, 'abort', 'coordinator-restarted', now, effects), effects, changed: true }
      }
      const effects: Effect[] = tx.participants
        .filter(p => p.ack === 'pending')
        .map(p => ({ type: 'send-decision', participant: p.name, decision }))
      return { ok: true, tx, effects, changed: false }
    }

    case 'operator-retry': {
      const decision = decisionOf(tx)
      if (decision === null) return reject(tx, 'TX_NOT_DECIDED')
      const targets = tx.participants.filter(p => p.ack === 'pending' || p.ack === 'heuristic')
      if (targets.length === 0) return reject(tx, 'NOTHING_TO_RETRY')
      const names = new Set(targets.map(p => p.name))
      const next: Transaction = {
        ...tx,
        updatedAt: now,
        participants: tx.participants.map(p => {
          if (!names.has(p.name)) return p
          // A heuristic one starts over (a fresh retry budget); a pending one keeps its count.
          return { ...p, ack: 'pending', attempts: p.ack === 'heuristic' ? 0 : p.attempts, nextAttemptAt: now }
        })
      }
      const effects: Effect[] = [{ type: 'record-audit', action: 'retry', actor: event.actor, reason: null }]
      for (const p of targets) effects.push({ type: 'send-decision', participant: p.name, decision })
      return { ok: true, tx: next, effects, changed: true }
    }

    case 'operator-resolve': {
      if (!isDecided(tx)) return reject(tx, 'TX_NOT_DECIDED')
      const open = tx.participants.some(p => p.ack === 'pending' || p.ack === 'heuristic')
      if (!open && !tx.needsAttention) return reject(tx, 'NOTHING_TO_RESOLVE')
      const next: Transaction = {
        ...tx,
        updatedAt: now,
        needsAttention: false,
        completedAt: tx.completedAt ?? now,
        participants: tx.participants.map(p =>
          p.ack === 'pending' || p.ack === 'heuristic' ? { ...p, ack: 'resolved', nextAttemptAt: null } : p)
      }
      return {
        ok: true,
        tx: next,
        effects: [
          { type: 'record-audit', action: 'resolve', actor: event.actor, reason: event.reason },
          { type: 'resolve-attention', resolution: event.reason }
        ],
        changed: true
      }
    }
  }
}
