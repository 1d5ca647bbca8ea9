import t from 'tap'
import { transition, recoveryDelayMs } from '../src/state-machine.js'
import type { ParticipantEvent, RecordState, Step } from '../src/state-machine.js'

const STATES: RecordState[] = ['none', 'prepared', 'committed', 'aborted', 'read-only', 'tombstone']
const NOW = 1_000_000
const inTime: ParticipantEvent = { type: 'prepare', now: NOW, deadline: NOW + 1000, onePhase: false }
const late: ParticipantEvent = { type: 'prepare', now: NOW + 1001, deadline: NOW + 1000, onePhase: false }

const vote = (v: 'yes' | 'no' | 'read-only'): Step['reply'] => ({ type: 'vote', vote: v })

// The expected step for every (state, event) pair, written out as a table so that a change in
// the machine shows up as a diff here. Reasons are checked separately (free text).
const table: Array<[RecordState, ParticipantEvent, Step]> = [
  ['none', inTime, { next: undefined, effects: [{ type: 'run-prepare-handler', onePhase: false }], reply: { type: 'none' } }],
  ['none', { ...inTime, onePhase: true } as ParticipantEvent, { next: undefined, effects: [{ type: 'run-prepare-handler', onePhase: true }], reply: { type: 'none' } }],
  ['none', late, { next: 'aborted', effects: [], reply: vote('no') }],
  ['prepared', inTime, { next: undefined, effects: [], reply: vote('yes') }],
  ['prepared', late, { next: undefined, effects: [], reply: vote('yes') }],
  ['committed', inTime, { next: undefined, effects: [], reply: vote('yes') }],
  ['aborted', inTime, { next: undefined, effects: [], reply: vote('no') }],
  ['read-only', inTime, { next: undefined, effects: [], reply: vote('read-only') }],
  ['tombstone', inTime, { next: undefined, effects: [], reply: vote('no') }],
  ['tombstone', late, { next: undefined, effects: [], reply: vote('no') }],

  ['none', { type: 'prepare-handled', outcome: 'yes', onePhase: false }, { next: 'prepared', effects: [], reply: vote('yes') }],
  ['none', { type: 'prepare-handled', outcome: 'yes', onePhase: true }, { next: 'committed', effects: [], reply: vote('yes') }],
  ['none', { type: 'prepare-handled', outcome: 'no', onePhase: false }, { next: 'aborted', effects: [{ type: 'discard-handler-writes' }], reply: vote('no') }],
  ['none', { type: 'prepare-handled', outcome: 'no', onePhase: true }, { next: 'aborted', effects: [{ type: 'discard-handler-writes' }], reply: vote('no') }],
  ['none', { type: 'prepare-handled', outcome: 'read-only', onePhase: false }, { next: 'read-only', effects: [{ type: 'discard-handler-writes' }], reply: vote('read-only') }],
  ['none', { type: 'prepare-handled', outcome: 'threw', onePhase: false }, { next: 'aborted', effects: [{ type: 'discard-handler-writes' }], reply: vote('no') }],
  ['none', { type: 'prepare-handled', outcome: 'threw', onePhase: true }, { next: 'aborted', effects: [{ type: 'discard-handler-writes' }], reply: vote('no') }],

  ['none', { type: 'commit' }, { next: undefined, effects: [], reply: { type: 'error', statusCode: 404, code: 'TX_UNKNOWN', message: '' } }],
  ['prepared', { type: 'commit' }, { next: 'committed', effects: [{ type: 'run-commit-handler' }], reply: { type: 'ok' } }],
  ['committed', { type: 'commit' }, { next: undefined, effects: [], reply: { type: 'ok' } }],
  ['aborted', { type: 'commit' }, { next: undefined, effects: [], reply: { type: 'error', statusCode: 409, code: 'TX_ALREADY_ABORTED', message: '' } }],
  ['read-only', { type: 'commit' }, { next: undefined, effects: [], reply: { type: 'ok' } }],
  ['tombstone', { type: 'commit' }, { next: undefined, effects: [], reply: { type: 'error', statusCode: 409, code: 'TX_ALREADY_ABORTED', message: '' } }],

  ['none', { type: 'abort' }, { next: 'tombstone', effects: [], reply: { type: 'ok' } }],
  ['prepared', { type: 'abort' }, { next: 'aborted', effects: [{ type: 'run-abort-handler' }], reply: { type: 'ok' } }],
  ['committed', { type: 'abort' }, { next: undefined, effects: [], reply: { type: 'error', statusCode: 409, code: 'TX_ALREADY_COMMITTED', message: '' } }],
  ['aborted', { type: 'abort' }, { next: undefined, effects: [], reply: { type: 'ok' } }],
  ['read-only', { type: 'abort' }, { next: undefined, effects: [], reply: { type: 'ok' } }],
  ['tombstone', { type: 'abort' }, { next: undefined, effects: [], reply: { type: 'ok' } }],

  ['prepared', { type: 'decision-answer', decision: 'commit' }, { next: 'committed', effects: [{ type: 'run-commit-handler' }], reply: { type: 'none' } }],
  ['prepared', { type: 'decision-answer', decision: 'abort' }, { next: 'aborted', effects: [{ type: 'run-abort-handler' }], reply: { type: 'none' } }],
  ['prepared', { type: 'decision-answer', decision: 'pending' }, { next: undefined, effects: [], reply: { type: 'none' } }]
]

const strip = (step: Step): unknown => {
  const reply = { ...step.reply } as Record<string, unknown>
  delete reply.reason
  if ('message' in reply) reply.message = ''
  return { ...step, reply }
}

t.test('every listed (state, event) pair gives the expected step', async t => {
  for (const [state, event, expected] of table) {
    t.same(strip(transition(state, event)), expected, `${state} + ${JSON.stringify(event)}`)
  }
})

t.test('the deadline is inclusive: a prepare exactly at its deadline still runs the handler', async t => {
  const step = transition('none', { type: 'prepare', now: NOW, deadline: NOW, onePhase: false })
  t.same(step.effects, [{ type: 'run-prepare-handler', onePhase: false }])
})

t.test('a decision answer changes nothing outside the prepared state', async t => {
  for (const state of STATES.filter(s => s !== 'prepared')) {
    for (const decision of ['commit', 'abort', 'pending'] as const) {
      t.same(transition(state, { type: 'decision-answer', decision }), { next: undefined, effects: [], reply: { type: 'none' } }, `${state} + ${decision}`)
    }
  }
})

t.test('handler outcomes are only accepted in the none state (adapter bug guard votes no, writes nothing)', async t => {
  for (const state of STATES.filter(s => s !== 'none')) {
    for (const outcome of ['yes', 'no', 'read-only', 'threw'] as const) {
      const step = transition(state, { type: 'prepare-handled', outcome, onePhase: false })
      t.equal(step.next, undefined, `${state} + ${outcome}`)
      t.match(step.reply, { type: 'vote', vote: 'no' })
    }
  }
})

t.test('properties that hold over every state and event', async t => {
  const events: ParticipantEvent[] = [
    inTime, late, { ...inTime, onePhase: true } as ParticipantEvent, { type: 'commit' }, { type: 'abort' },
    { type: 'decision-answer', decision: 'commit' }, { type: 'decision-answer', decision: 'abort' }, { type: 'decision-answer', decision: 'pending' },
    ...(['yes', 'no', 'read-only', 'threw'] as const).flatMap(outcome => [true, false].map(onePhase => ({ type: 'prepare-handled', outcome, onePhase }) as ParticipantEvent))
  ]
  for (const state of STATES) {
    for (const event of events) {
      const step = transition(state, event)
      const label = `${state} + ${JSON.stringify(event)}`
      // Settled decisions never flip: committed never becomes aborted and vice versa.
      if (state === 'committed') t.ok(step.next === undefined, `${label}: committed is final`)
      if (state === 'aborted' || state === 'tombstone') t.not(step.next, 'committed', `${label}: aborted never commits`)
      // The prepare handler only ever runs for a transaction with no record.
      if (step.effects.some(e => e.type === 'run-prepare-handler')) t.equal(state, 'none', `${label}: handler only from none`)
      // Commit/abort handlers only run from prepared, and move it out of prepared.
      if (step.effects.some(e => e.type === 'run-commit-handler')) t.same([state, step.next], ['prepared', 'committed'], label)
      if (step.effects.some(e => e.type === 'run-abort-handler')) t.same([state, step.next], ['prepared', 'aborted'], label)
      // Pure: the same input gives the same output.
      t.same(transition(state, event), step, `${label}: deterministic`)
    }
  }
  // Commit and abort are idempotent: applying the same event to the resulting state is a no-op with the same answer.
  for (const state of STATES) {
    for (const event of [{ type: 'commit' }, { type: 'abort' }] as ParticipantEvent[]) {
      const first = transition(state, event)
      if (first.reply.type !== 'ok') continue
      const second = transition(first.next ?? state, event)
      t.same(second, { next: undefined, effects: [], reply: { type: 'ok' } }, `${state} + ${event.type} twice`)
    }
  }
})

t.test('recovery backoff grows exponentially, is capped, jitters within 20%', async t => {
  t.equal(recoveryDelayMs(0, 100, 10_000, 1), 100)
  t.equal(recoveryDelayMs(1, 100, 10_000, 1), 200)
  t.equal(recoveryDelayMs(3, 100, 10_000, 1), 800)
  t.equal(recoveryDelayMs(20, 100, 10_000, 1), 10_000)
  t.equal(recoveryDelayMs(10_000, 100, 10_000, 1), 10_000, 'huge attempt counts do not overflow')
  t.equal(recoveryDelayMs(0, 100, 10_000, 0), 80)
  t.equal(recoveryDelayMs(-5, 100, 10_000, 0.5), 90)
})
