/**
 * Every transition of the coordinator's state machine, one event at a time.
 */
import t from 'tap'
import { step, newTransaction, backoffMs, decisionOf, type Transaction, type Event, type Policy, type StepResult } from '../src/core/machine.js'

const policy: Policy = { maxParticipants: 3, maxMessages: 2, retryBaseMs: 100, retryMaxMs: 1000, retryBudget: 3 }

function ok (r: StepResult): Extract<StepResult, { ok: true }> {
  if (!r.ok) throw new Error(`rejected: ${r.code}`)
  return r
}

function run (tx: Transaction, ...events: Event[]): Extract<StepResult, { ok: true }> {
  let r: Extract<StepResult, { ok: true }> = { ok: true, tx, effects: [], changed: false }
  for (const e of events) r = ok(step(r.tx, e, policy))
  return r
}

const enlist = (name: string, extra: { onePhase?: boolean } = {}): Event =>
  ({ type: 'enlist', participant: { name, url: `http://127.0.0.1/${name}`, payload: { n: name }, ...extra }, now: 1 })
const vote = (participant: string, v: 'yes' | 'no' | 'read-only', now = 2): Event => ({ type: 'vote', participant, vote: v, now })

function twoEnlisted (): Transaction {
  return run(newTransaction('c1.x', 0, 1000), enlist('a'), enlist('b')).tx
}

t.test('enlist: only while active, unique names, bounded count', async t => {
  const tx = twoEnlisted()
  t.equal(tx.participants.length, 2)
  t.same(tx.participants[0], {
    name: 'a',
    url: 'http://127.0.0.1/a',
    payload: { n: 'a' },
    onePhase: false,
    vote: null,
    voteReason: null,
    ack: 'none',
    attempts: 0,
    lastError: null,
    nextAttemptAt: null
  })
  t.match(step(tx, enlist('a'), policy), { ok: false, code: 'PARTICIPANT_EXISTS' })
  const three = run(tx, enlist('c')).tx
  t.match(step(three, enlist('d'), policy), { ok: false, code: 'TOO_MANY_PARTICIPANTS' })
  const preparing = run(tx, { type: 'commit-requested', now: 1 }).tx
  t.match(step(preparing, enlist('c'), policy), { ok: false, code: 'TX_NOT_ACTIVE' })
  const aborted = run(tx, { type: 'abort-requested', now: 1 }).tx
  t.match(step(aborted, enlist('c'), policy), { ok: false, code: 'TX_ALREADY_DECIDED' })
})

t.test('commit-requested: prepare to everyone; an empty transaction commits at once', async t => {
  const r = run(twoEnlisted(), { type: 'commit-requested', now: 5 })
  t.equal(r.tx.state, 'preparing')
  t.same(r.effects, [
    { type: 'send-prepare', participant: 'a', onePhase: false },
    { type: 'send-prepare', participant: 'b', onePhase: false }
  ])
  t.match(step(r.tx, { type: 'commit-requested', now: 6 }, policy), { ok: false, code: 'TX_NOT_ACTIVE' })

  const empty = run(newTransaction('c1.e', 0, 1000), { type: 'commit-requested', now: 5 })
  t.equal(empty.tx.state, 'committed')
  t.equal(empty.tx.completedAt, 5)
  t.same(empty.effects, [{ type: 'decided', decision: 'commit', reason: null }])
  t.match(step(empty.tx, { type: 'commit-requested', now: 6 }, policy), { ok: false, code: 'TX_ALREADY_DECIDED' })
})

t.test('all yes: commit decided, commit sent to every yes voter', async t => {
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  const first = run(preparing, vote('a', 'yes'))
  t.equal(first.tx.state, 'preparing')
  t.same(first.effects, [])
  const second = run(first.tx, vote('b', 'yes', 7))
  t.equal(second.tx.state, 'committed')
  t.equal(second.tx.decidedAt, 7)
  t.same(second.effects, [
    { type: 'decided', decision: 'commit', reason: null },
    { type: 'send-decision', participant: 'a', decision: 'commit' },
    { type: 'send-decision', participant: 'b', decision: 'commit' }
  ])
  t.same(second.tx.participants.map(p => p.ack), ['pending', 'pending'])
  // acks complete it
  const acked = run(second.tx, { type: 'phase2-acked', participant: 'a', now: 8 }, { type: 'phase2-acked', participant: 'b', now: 9 })
  t.same(acked.tx.participants.map(p => p.ack), ['acked', 'acked'])
  t.equal(acked.tx.completedAt, 9)
  // a duplicate ack changes nothing
  t.equal(run(acked.tx, { type: 'phase2-acked', participant: 'a', now: 10 }).changed, false)
})

t.test('read-only voters take no part in phase 2; all read-only completes at once', async t => {
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  const r = run(preparing, vote('a', 'read-only'), vote('b', 'yes'))
  t.equal(r.tx.state, 'committed')
  t.same(r.tx.participants.map(p => p.ack), ['not-needed', 'pending'])
  t.same(r.effects.filter(e => e.type === 'send-decision'), [{ type: 'send-decision', participant: 'b', decision: 'commit' }])
  const allRo = run(preparing, vote('a', 'read-only'), vote('b', 'read-only'))
  t.equal(allRo.tx.state, 'committed')
  t.not(allRo.tx.completedAt, null)
})

t.test('a no vote aborts: abort goes to whoever may have prepared, not to the no voter', async t => {
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  const r = run(preparing, vote('a', 'yes'), vote('b', 'no'))
  t.equal(r.tx.state, 'aborted')
  t.equal(r.tx.reason, 'vote-no')
  t.same(r.tx.participants.map(p => p.ack), ['pending', 'not-needed'])
  t.same(r.effects, [
    { type: 'decided', decision: 'abort', reason: 'vote-no' },
    { type: 'send-decision', participant: 'a', decision: 'abort' }
  ])
  // the first no decides; a participant that has not answered yet may still prepare late, so it hears abort
  const early = run(preparing, vote('b', 'no'))
  t.same(early.tx.participants.map(p => p.ack), ['pending', 'not-needed'])
  // a late yes after the decision changes nothing
  t.equal(run(early.tx, vote('a', 'yes', 9)).changed, false)
  t.equal(early.tx.participants[0]?.vote, null)
})

t.test('a prepare failure aborts and records the error', async t => {
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  const r = run(preparing, { type: 'prepare-failed', participant: 'a', error: 'timeout', now: 6 })
  t.equal(r.tx.state, 'aborted')
  t.equal(r.tx.reason, 'prepare-failed')
  t.equal(r.tx.participants[0]?.lastError, 'timeout')
  t.same(r.tx.participants.map(p => p.ack), ['pending', 'pending'])
  t.equal(run(r.tx, { type: 'prepare-failed', participant: 'b', error: 'x', now: 7 }).changed, false)
  t.equal(run(r.tx, { type: 'prepare-failed', participant: 'zz', error: 'x', now: 7 }).changed, false)
})

t.test('abort-requested: active aborts with nobody to tell; aborted is idempotent; committed refuses', async t => {
  const r = run(twoEnlisted(), { type: 'abort-requested', now: 3 })
  t.equal(r.tx.state, 'aborted')
  t.equal(r.tx.reason, 'requested')
  t.same(r.tx.participants.map(p => p.ack), ['not-needed', 'not-needed'])
  t.not(r.tx.completedAt, null)
  t.equal(run(r.tx, { type: 'abort-requested', now: 4 }).changed, false)
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }, vote('a', 'yes')).tx
  const mid = run(preparing, { type: 'abort-requested', now: 6 })
  t.same(mid.tx.participants.map(p => p.ack), ['pending', 'pending'])
  const committed = run(preparing, vote('b', 'yes')).tx
  t.match(step(committed, { type: 'abort-requested', now: 7 }, policy), { ok: false, code: 'TX_ALREADY_DECIDED' })
})

t.test('expired: aborts an active or preparing transaction past expiresAt only', async t => {
  const tx = twoEnlisted()
  t.equal(run(tx, { type: 'expired', now: 999 }).changed, false)
  const r = run(tx, { type: 'expired', now: 1000 })
  t.equal(r.tx.state, 'aborted')
  t.equal(r.tx.reason, 'timeout')
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  t.equal(run(preparing, { type: 'expired', now: 1001 }).tx.reason, 'timeout')
  t.equal(run(r.tx, { type: 'expired', now: 2000 }).changed, false)
})

t.test('phase-2 failures back off, exhaust the budget into needs-attention, and keep retrying', async t => {
  const committed = run(twoEnlisted(), { type: 'commit-requested', now: 5 }, vote('a', 'yes'), vote('b', 'yes', 10)).tx
  const fail = (now: number): Event => ({ type: 'phase2-failed', participant: 'a', error: 'ECONNREFUSED', refused: false, jitter: 0, now })
  const f1 = run(committed, fail(20))
  t.equal(f1.tx.participants[0]?.attempts, 1)
  t.equal(f1.tx.participants[0]?.nextAttemptAt, 20 + 50)
  t.same(f1.effects, [
    { type: 'schedule-phase2', participant: 'a', at: 70 },
    { type: 'notify', participant: 'a', decision: 'commit' }
  ], 'the first failure also queues a decision notice for the participant\'s queue')
  t.equal(f1.tx.needsAttention, false)
  const f3 = run(f1.tx, fail(100), fail(300))
  t.equal(f3.tx.needsAttention, true)
  t.same(f3.effects.map(e => e.type), ['schedule-phase2', 'record-attention'], 'no second notice')
  t.match(f3.effects, [{ type: 'schedule-phase2' }, { type: 'record-attention', participant: 'a', kind: 'retry-budget' }])
  const due = run(f3.tx, { type: 'phase2-due', participant: 'a', now: 800 })
  t.same(due.effects, [{ type: 'send-decision', participant: 'a', decision: 'commit' }])
  t.equal(due.changed, false)
  // the fourth failure records no second attention entry
  t.same(run(f3.tx, fail(900)).effects.map(e => e.type), ['schedule-phase2'])
  // delivered at last: completed, and nobody's attention is needed anymore
  const late = run(f3.tx, { type: 'phase2-acked', participant: 'a', now: 950 }, { type: 'phase2-acked', participant: 'b', now: 960 })
  t.not(late.tx.completedAt, null)
  t.equal(late.tx.needsAttention, false)
  // an acked participant is not due anymore
  const acked = run(committed, { type: 'phase2-acked', participant: 'a', now: 30 })
  t.same(run(acked.tx, { type: 'phase2-due', participant: 'a', now: 40 }).effects, [])
  t.equal(run(acked.tx, fail(50)).changed, false)
})

t.test('a definite refusal is recorded as a heuristic, not retried', async t => {
  const committed = run(twoEnlisted(), { type: 'commit-requested', now: 5 }, vote('a', 'yes'), vote('b', 'yes', 10)).tx
  const r = run(committed, { type: 'phase2-failed', participant: 'b', error: 'commit answered 404: TX_UNKNOWN', refused: true, jitter: 0.5, now: 20 })
  t.equal(r.tx.participants[1]?.ack, 'heuristic')
  t.equal(r.tx.needsAttention, true)
  t.same(r.effects, [{ type: 'record-attention', participant: 'b', kind: 'heuristic', detail: 'commit answered 404: TX_UNKNOWN' }])
  const done = run(r.tx, { type: 'phase2-acked', participant: 'a', now: 30 })
  t.equal(done.tx.completedAt, null, 'a heuristic participant keeps the transaction open for an operator')
})

t.test('one-phase commit: the only participant, opted in, decides', async t => {
  const tx = run(newTransaction('c1.o', 0, 1000), enlist('a', { onePhase: true })).tx
  const preparing = run(tx, { type: 'commit-requested', now: 5 })
  t.same(preparing.effects, [{ type: 'send-prepare', participant: 'a', onePhase: true }])
  t.equal(preparing.tx.onePhase, true)
  const yes = run(preparing.tx, vote('a', 'yes'))
  t.equal(yes.tx.state, 'committed')
  t.same(yes.tx.participants.map(p => p.ack), ['acked'])
  t.not(yes.tx.completedAt, null)
  t.same(yes.effects, [{ type: 'decided', decision: 'commit', reason: null }])
  const no = run(preparing.tx, vote('a', 'no'))
  t.same(no.effects, [{ type: 'decided', decision: 'abort', reason: 'vote-no' }])
  // unknown outcome: abort is sent; a participant that did commit will refuse it (a heuristic)
  const failed = run(preparing.tx, { type: 'prepare-failed', participant: 'a', error: 'timeout', now: 6 })
  t.same(failed.effects.map(e => e.type), ['decided', 'send-decision'])
  // opted in, but not alone: ordinary two-phase commit
  const two = run(newTransaction('c1.p', 0, 1000), enlist('a', { onePhase: true }), enlist('b'), { type: 'commit-requested', now: 5 })
  t.equal(two.tx.onePhase, false)
  t.same(two.effects.map(e => e.type === 'send-prepare' && e.onePhase), [false, false])
})

t.test('recovered: undecided aborts (presumed abort); decided resends to the unacked', async t => {
  const active = run(twoEnlisted(), { type: 'recovered', now: 50 })
  t.equal(active.tx.state, 'aborted')
  t.equal(active.tx.reason, 'coordinator-restarted')
  t.same(active.effects.filter(e => e.type === 'send-decision'), [], 'nobody was asked to prepare')
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }, vote('a', 'yes'))
  const rp = run(preparing.tx, { type: 'recovered', now: 50 })
  t.same(rp.effects.filter(e => e.type === 'send-decision'), [
    { type: 'send-decision', participant: 'a', decision: 'abort' },
    { type: 'send-decision', participant: 'b', decision: 'abort' }
  ])
  const committed = run(preparing.tx, vote('b', 'yes'), { type: 'phase2-acked', participant: 'a', now: 9 })
  const rc = run(committed.tx, { type: 'recovered', now: 50 })
  t.equal(rc.changed, false)
  t.same(rc.effects, [{ type: 'send-decision', participant: 'b', decision: 'commit' }])
})

t.test('stray events for unknown participants or wrong states change nothing', async t => {
  const tx = twoEnlisted()
  t.equal(run(tx, vote('a', 'yes')).changed, false, 'vote while active')
  t.equal(run(tx, { type: 'phase2-acked', participant: 'a', now: 3 }).changed, false)
  t.equal(run(tx, { type: 'phase2-due', participant: 'a', now: 3 }).effects.length, 0)
  const preparing = run(tx, { type: 'commit-requested', now: 5 }).tx
  t.equal(run(preparing, vote('zz', 'yes')).changed, false)
  t.equal(run(preparing, vote('a', 'yes'), vote('a', 'no')).tx.state, 'preparing', 'a second vote is ignored')
  t.equal(decisionOf(preparing), null)
})

t.test('backoff: capped exponential with half jitter', async t => {
  t.equal(backoffMs(policy, 1, 0), 50)
  t.equal(backoffMs(policy, 1, 1), 100)
  t.equal(backoffMs(policy, 3, 1), 400)
  t.equal(backoffMs(policy, 10, 1), 1000)
  t.equal(backoffMs(policy, 1000, 0), 500)
})

t.test('add-message: only while active, bounded; stored as an effect with its position', async t => {
  const message = { exchange: 'orders', routingKey: 'order.placed', body: { id: 1 } }
  const tx = twoEnlisted()
  const one = run(tx, { type: 'add-message', message, now: 2 })
  t.equal(one.tx.messageCount, 1)
  t.same(one.effects, [{ type: 'record-message', position: 0, message }])
  const two = run(one.tx, { type: 'add-message', message, now: 3 })
  t.same(two.effects, [{ type: 'record-message', position: 1, message }])
  t.match(step(two.tx, { type: 'add-message', message, now: 4 }, policy), { ok: false, code: 'TOO_MANY_MESSAGES' })
  const preparing = run(one.tx, { type: 'commit-requested', now: 5 }).tx
  t.match(step(preparing, { type: 'add-message', message, now: 6 }, policy), { ok: false, code: 'TX_NOT_ACTIVE' })
  const aborted = run(one.tx, { type: 'abort-requested', now: 5 }).tx
  t.match(step(aborted, { type: 'add-message', message, now: 6 }, policy), { ok: false, code: 'TX_ALREADY_DECIDED' })
  t.equal(run(preparing, vote('a', 'yes'), vote('b', 'yes')).tx.messageCount, 1, 'the count survives the decision')
})

t.test('operator-retry: pending sent now, heuristic back to pending with a fresh count; the decision never changes', async t => {
  const committed = run(twoEnlisted(), { type: 'commit-requested', now: 5 }, vote('a', 'yes'), vote('b', 'yes', 10)).tx
  const failed = run(committed,
    { type: 'phase2-failed', participant: 'a', error: 'ECONNREFUSED', refused: false, jitter: 0, now: 20 },
    { type: 'phase2-failed', participant: 'b', error: 'commit answered 404: TX_UNKNOWN', refused: true, jitter: 0, now: 21 }).tx
  t.same(failed.participants.map(p => [p.ack, p.attempts]), [['pending', 1], ['heuristic', 1]])
  const r = run(failed, { type: 'operator-retry', actor: 'alice', now: 30 })
  t.equal(r.tx.state, 'committed', 'decision unchanged')
  t.equal(r.tx.decidedAt, failed.decidedAt)
  t.same(r.tx.participants.map(p => [p.ack, p.attempts, p.nextAttemptAt]), [['pending', 1, 30], ['pending', 0, 30]])
  t.equal(r.tx.needsAttention, true, 'attention stays until an ack completes it or an operator resolves it')
  t.same(r.effects, [
    { type: 'record-audit', action: 'retry', actor: 'alice', reason: null },
    { type: 'send-decision', participant: 'a', decision: 'commit' },
    { type: 'send-decision', participant: 'b', decision: 'commit' }
  ])
  // the retried heuristic participant can now ack and complete the transaction
  const done = run(r.tx, { type: 'phase2-acked', participant: 'a', now: 31 }, { type: 'phase2-acked', participant: 'b', now: 32 })
  t.equal(done.tx.completedAt, 32)
  // nothing left to retry; undecided cannot be retried
  t.match(step(done.tx, { type: 'operator-retry', actor: 'alice', now: 33 }, policy), { ok: false, code: 'NOTHING_TO_RETRY' })
  t.match(step(twoEnlisted(), { type: 'operator-retry', actor: 'alice', now: 33 }, policy), { ok: false, code: 'TX_NOT_DECIDED' })
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  t.match(step(preparing, { type: 'operator-retry', actor: 'alice', now: 33 }, policy), { ok: false, code: 'TX_NOT_DECIDED' })
  // an aborted transaction's pending abort is retried with the abort decision
  const aborted = run(preparing, vote('a', 'yes'), vote('b', 'no')).tx
  t.same(run(aborted, { type: 'operator-retry', actor: 'x', now: 40 }).effects.filter(e => e.type === 'send-decision'),
    [{ type: 'send-decision', participant: 'a', decision: 'abort' }])
})

t.test('operator-resolve: open participants resolved, attention cleared, completed; decision unchanged', async t => {
  const committed = run(twoEnlisted(), { type: 'commit-requested', now: 5 }, vote('a', 'yes'), vote('b', 'yes', 10)).tx
  const heuristic = run(committed,
    { type: 'phase2-acked', participant: 'a', now: 20 },
    { type: 'phase2-failed', participant: 'b', error: 'commit answered 409', refused: true, jitter: 0, now: 21 }).tx
  t.equal(heuristic.completedAt, null)
  const r = run(heuristic, { type: 'operator-resolve', actor: 'bob', reason: 'fixed by hand in the payment DB', now: 50 })
  t.equal(r.tx.state, 'committed')
  t.equal(r.tx.decidedAt, heuristic.decidedAt)
  t.same(r.tx.participants.map(p => p.ack), ['acked', 'resolved'])
  t.equal(r.tx.needsAttention, false)
  t.equal(r.tx.completedAt, 50)
  t.same(r.effects, [
    { type: 'record-audit', action: 'resolve', actor: 'bob', reason: 'fixed by hand in the payment DB' },
    { type: 'resolve-attention', resolution: 'fixed by hand in the payment DB' }
  ])
  // resolved participants are out of phase 2: a late ack, failure or due timer changes nothing
  t.equal(run(r.tx, { type: 'phase2-acked', participant: 'b', now: 51 }).changed, false)
  t.same(run(r.tx, { type: 'phase2-due', participant: 'b', now: 51 }).effects, [])
  t.match(step(r.tx, { type: 'operator-retry', actor: 'bob', now: 52 }, policy), { ok: false, code: 'NOTHING_TO_RETRY' })
  t.match(step(r.tx, { type: 'operator-resolve', actor: 'bob', reason: 'again', now: 52 }, policy), { ok: false, code: 'NOTHING_TO_RESOLVE' })
  // the retry budget ran out, then it acked: completed, the flag cleared by itself — nothing to resolve
  const fail = (now: number): Event => ({ type: 'phase2-failed', participant: 'a', error: 'down', refused: false, jitter: 0, now })
  const late = run(committed, fail(20), fail(21), fail(22), { type: 'phase2-acked', participant: 'a', now: 23 }, { type: 'phase2-acked', participant: 'b', now: 24 }).tx
  t.equal(late.needsAttention, false)
  t.equal(late.completedAt, 24)
  t.match(step(late, { type: 'operator-resolve', actor: 'bob', reason: 'delivered', now: 60 }, policy), { ok: false, code: 'NOTHING_TO_RESOLVE' })
  // a heuristic that a retry then delivered: completed, but flagged until an operator resolves it
  const refusedThenAcked = run(committed,
    { type: 'phase2-failed', participant: 'a', error: 'commit answered 404', refused: true, jitter: 0, now: 20 },
    { type: 'operator-retry', actor: 'bob', now: 21 },
    { type: 'phase2-acked', participant: 'a', now: 22 }, { type: 'phase2-acked', participant: 'b', now: 23 }).tx
  t.equal(refusedThenAcked.completedAt, 23)
  t.equal(refusedThenAcked.needsAttention, true)
  const cleared = run(refusedThenAcked, { type: 'operator-resolve', actor: 'bob', reason: 'checked the payment DB', now: 60 })
  t.equal(cleared.tx.needsAttention, false)
  t.equal(cleared.tx.completedAt, 23)
  t.same(cleared.tx.participants.map(p => p.ack), ['acked', 'acked'])
  // nothing open and nothing flagged, or no decision yet: refused
  const clean = run(committed, { type: 'phase2-acked', participant: 'a', now: 20 }, { type: 'phase2-acked', participant: 'b', now: 21 }).tx
  t.match(step(clean, { type: 'operator-resolve', actor: 'bob', reason: 'x', now: 60 }, policy), { ok: false, code: 'NOTHING_TO_RESOLVE' })
  t.match(step(twoEnlisted(), { type: 'operator-resolve', actor: 'bob', reason: 'x', now: 60 }, policy), { ok: false, code: 'TX_NOT_DECIDED' })
})

t.test('updatedAt is the transaction\'s own last change: a vote or an ack leaves it, a decision or completion moves it', async t => {
  const preparing = run(twoEnlisted(), { type: 'commit-requested', now: 5 }).tx
  t.equal(preparing.updatedAt, 5)
  const oneVote = run(preparing, vote('a', 'yes', 6)).tx
  t.equal(oneVote.updatedAt, 5, 'a vote changes only its participant')
  const decided = run(oneVote, vote('b', 'yes', 7)).tx
  t.equal(decided.state, 'committed')
  t.equal(decided.updatedAt, 7)
  const oneAck = run(decided, { type: 'phase2-acked', participant: 'a', now: 8 }).tx
  t.equal(oneAck.updatedAt, 7, 'an ack changes only its participant')
  const done = run(oneAck, { type: 'phase2-acked', participant: 'b', now: 9 }).tx
  t.equal(done.completedAt, 9)
  t.equal(done.updatedAt, 9, 'completion is a change of the transaction')
})
