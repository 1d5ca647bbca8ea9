/**
 * Expiry is enforced by every request, not by the sweeper: a transaction past its `expiresAt`
 * with no decision is aborted (reason `timeout`) by the first request that finds it so, and an
 * enlist, a message or a commit is refused with 409 TX_EXPIRED. The sweeper (here made unable to
 * run: an hour between sweeps) only cleans up the ones nobody asks about.
 */
import t from 'tap'
import { step, newTransaction, type Event, type Policy, type StepResult, type Transaction } from '../src/core/machine.js'
import { startCoordinator, startParticipant, waitFor, type HttpClient } from './support/participant.js'

const policy: Policy = { maxParticipants: 4, maxMessages: 4, retryBaseMs: 100, retryMaxMs: 1000, retryBudget: 3 }
const enlist = (name: string, now: number, onePhase = false): Event =>
  ({ type: 'enlist', participant: { name, url: `http://127.0.0.1/${name}`, onePhase }, now })

function ok (r: StepResult): Extract<StepResult, { ok: true }> {
  if (!r.ok) throw new Error(`rejected: ${r.code}`)
  return r
}

function active (...names: string[]): Transaction {
  let tx = newTransaction('c1.x', 0, 1000)
  for (const n of names) tx = ok(step(tx, enlist(n, 1), policy)).tx
  return tx
}

t.test('machine: a request at or past expiresAt aborts for timeout and is refused with TX_EXPIRED', async t => {
  const events: Array<[string, (now: number) => Event]> = [
    ['enlist', now => enlist('b', now)],
    ['add-message', now => ({ type: 'add-message', message: { exchange: 'x', routingKey: 'k', body: 1 }, now })],
    ['commit-requested', now => ({ type: 'commit-requested', now })]
  ]
  for (const [name, event] of events) {
    t.equal(ok(step(active('a'), event(999), policy)).refused, undefined, `${name} just before the expiry: accepted`)
    const r = ok(step(active('a'), event(1000), policy))
    t.equal(r.refused, 'TX_EXPIRED', `${name} at the expiry: refused`)
    t.match(r.tx, { state: 'aborted', reason: 'timeout', decidedAt: 1000 }, `${name}: the timeout abort is taken at that request`)
    t.equal(r.tx.participants.length, 1, `${name}: nothing was added`)
    t.same(r.effects, [{ type: 'decided', decision: 'abort', reason: 'timeout' }], `${name}: never asked to prepare, nobody to tell`)
  }
  const empty = ok(step(newTransaction('c1.e', 0, 1000), { type: 'commit-requested', now: 5000 }, policy))
  t.match(empty, { refused: 'TX_EXPIRED', tx: { state: 'aborted', reason: 'timeout' } }, 'an empty expired transaction never commits')

  const preparing = ok(step(active('a', 'b'), { type: 'commit-requested', now: 10 }, policy)).tx
  const late = ok(step(preparing, enlist('c', 1200), policy))
  t.match(late, { refused: 'TX_EXPIRED', tx: { state: 'aborted', reason: 'timeout' } }, 'preparing and expired: aborted by the request too')
  t.same(late.effects.filter(e => e.type === 'send-decision').map(e => e.type === 'send-decision' && e.participant), ['a', 'b'], 'asked to prepare: told abort')

  const abort = ok(step(active('a'), { type: 'abort-requested', now: 1000 }, policy))
  t.match(abort, { tx: { state: 'aborted', reason: 'timeout' } }, 'an abort past the expiry: reason timeout, as the sweeper would have given')
  t.equal(abort.refused, undefined)
  t.match(ok(step(active('a'), { type: 'abort-requested', now: 999 }, policy)).tx, { reason: 'requested' })

  const decided = ok(step(active('a'), { type: 'abort-requested', now: 5 }, policy)).tx
  t.match(step(decided, enlist('b', 5000), policy), { ok: false, code: 'TX_ALREADY_DECIDED' }, 'once decided, the decision is the answer')
})

t.test('machine: a vote that would decide commit after the expiry aborts instead (two-phase); a one-phase yes is its commit', async t => {
  const preparing = ok(step(active('a', 'b'), { type: 'commit-requested', now: 10 }, policy)).tx
  const first = ok(step(preparing, { type: 'vote', participant: 'a', vote: 'yes', now: 20 }, policy)).tx
  t.equal(ok(step(first, { type: 'vote', participant: 'b', vote: 'yes', now: 999 }, policy)).tx.state, 'committed', 'in time: commit')
  const late = ok(step(first, { type: 'vote', participant: 'b', vote: 'yes', now: 1000 }, policy))
  t.match(late.tx, { state: 'aborted', reason: 'timeout' })
  t.same(late.effects.filter(e => e.type === 'send-decision').map(e => e.type === 'send-decision' && [e.participant, e.decision]), [['a', 'abort'], ['b', 'abort']])

  let one = newTransaction('c1.o', 0, 1000)
  one = ok(step(one, enlist('solo', 1, true), policy)).tx
  one = ok(step(one, { type: 'commit-requested', now: 2 }, policy)).tx
  t.equal(one.onePhase, true)
  t.match(ok(step(one, { type: 'vote', participant: 'solo', vote: 'yes', now: 1500 }, policy)).tx, { state: 'committed' }, 'one-phase: the participant already committed')
})

/** Waits (a bounded poll of the clock) until the transaction's expiry has passed. */
async function pastExpiry (expiresAt: string): Promise<void> {
  const at = Date.parse(expiresAt)
  await waitFor(() => Date.now() > at + 1, 5000, 'the expiry passed')
}

async function beginExpired (api: HttpClient, participants: Array<{ name: string, url: string }> = []): Promise<string> {
  const begun = await api.post<{ id: string, expiresAt: string }>('/v1/transactions', { timeoutMs: 100, ...(participants.length > 0 ? { participants } : {}) })
  if (begun.status !== 201) throw new Error(`begin: ${begun.status} ${begun.text}`)
  await pastExpiry(begun.body.expiresAt)
  return begun.body.id
}

const noSweeps = { sweepIntervalMs: 3_600_000, amqpUrl: 'amqp://guest:guest@127.0.0.1:1', amqpPrefix: 'expiry' }

t.test('API, with no sweep possible: an expired transaction refuses enlist, messages and commit with 409 TX_EXPIRED; an empty one never commits', async t => {
  const c = await startCoordinator(t, noSweeps)
  const p = await startParticipant(t)

  const empty = await beginExpired(c.api)
  const commit = await c.api.post(`/v1/transactions/${empty}/commit`)
  t.equal(commit.status, 409, commit.text)
  t.match(commit.body, { statusCode: 409, code: 'TX_EXPIRED', error: 'Conflict', message: /expired at .*aborted \(reason timeout\)/ })
  t.match((await c.api.get(`/v1/transactions/${empty}`)).body, { state: 'aborted', decision: 'abort', reason: 'timeout', completed: true })
  t.same((await c.api.get(`/v1/transactions/${empty}/decision`)).body, { decision: 'abort' })
  t.match((await c.api.post(`/v1/transactions/${empty}/commit`)).body, { code: 'TX_ALREADY_DECIDED' }, 'asked again: the decision answers')

  const withP = await beginExpired(c.api, [{ name: 'p', url: p.url }])
  const enlist = await c.api.post(`/v1/transactions/${withP}/participants`, { name: 'q', url: p.url })
  t.match([enlist.status, enlist.body.code], [409, 'TX_EXPIRED'], 'enlist')
  t.match((await c.api.get(`/v1/transactions/${withP}`)).body, { state: 'aborted', reason: 'timeout', participants: [{ name: 'p', ack: 'not-needed' }] })
  t.equal(p.calls.length, 0, 'never asked to prepare, never told anything')

  const msg = await beginExpired(c.api)
  const message = await c.api.post(`/v1/transactions/${msg}/messages`, { exchange: 'orders', routingKey: 'placed', body: {} })
  t.match([message.status, message.body.code], [409, 'TX_EXPIRED'], 'messages')
  t.match((await c.api.get(`/v1/transactions/${msg}`)).body, { state: 'aborted', reason: 'timeout', messageCount: 0 })

  const commitP = await beginExpired(c.api, [{ name: 'p', url: p.url }])
  const refused = await c.api.post(`/v1/transactions/${commitP}/commit`)
  t.match([refused.status, refused.body.code], [409, 'TX_EXPIRED'], 'commit with a participant')
  t.equal(p.callsTo('prepare', commitP).length, 0, 'no prepare went out')

  const ab = await beginExpired(c.api)
  const abort = await c.api.post(`/v1/transactions/${ab}/abort`)
  t.same([abort.status, abort.body], [200, { id: ab, state: 'aborted', reason: 'timeout' }], 'abort: the answer the sweeper would have left')

  const console = await c.api.get('/admin?state=committed')
  t.match(console.text, /data-counter="committed"><b>0</, 'nothing committed')
})

t.test('the one-shot form, with no sweep possible: a participant slower than the expiry never lets it commit', async t => {
  const c = await startCoordinator(t, noSweeps)
  const slow = await startParticipant(t, { prepareDelayMs: 600 })
  const fast = await startParticipant(t)
  const res = await c.api.post<{ id: string, state: string, reason?: string }>('/v1/transactions', {
    timeoutMs: 150,
    commit: true,
    participants: [{ name: 'fast', url: fast.url }, { name: 'slow', url: slow.url }]
  })
  t.equal(res.status, 200, res.text)
  t.equal(res.body.state, 'aborted')
  const id = res.body.id
  await waitFor(async () => (await c.api.get<{ completed: boolean }>(`/v1/transactions/${id}`)).body.completed, 5000, 'phase 2 done')
  t.equal(fast.state(id), 'aborted', 'the yes voter is told abort')
  t.same((await c.api.get(`/v1/transactions/${id}/decision`)).body, { decision: 'abort' })
})
