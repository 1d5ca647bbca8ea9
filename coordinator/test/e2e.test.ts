/**
 * Over 500 lines: one subtest per end-to-end behaviour, sharing the participant servers' setup.
 *
 * End-to-end: the real coordinator (real SQLite file, real HTTP on 127.0.0.1) driving real
 * participant servers. Outcomes are awaited with a bounded waitFor, never a fixed sleep.
 */
import t from 'tap'
import { Agent, request } from 'undici'
import { SIGNATURE_HEADER } from '@fastify-2pc/protocol'
import { startCoordinator, startParticipant, waitFor, type HttpClient, type TestParticipant } from './support/participant.js'

interface ParticipantView {
  name: string
  url: string
  onePhase: boolean
  vote: 'yes' | 'no' | 'read-only' | null
  voteReason: string | null
  ack: string
  attempts: number
  lastError: string | null
  nextAttemptAt: string | null
}
interface TxView {
  id: string
  state: string
  decision: 'commit' | 'abort' | null
  reason: string | null
  completed: boolean
  completedAt: string | null
  decidedAt: string | null
  needsAttention: boolean
  onePhase: boolean
  metadata: unknown
  participants: ParticipantView[]
  heuristics: Array<{ participant: string | null, kind: string, detail: string, resolvedAt: string | null }>
}

async function getTx (api: HttpClient, id: string): Promise<TxView> {
  const res = await api.get<TxView>(`/v1/transactions/${id}`)
  if (res.status !== 200) throw new Error(`GET ${id}: ${res.status} ${res.text}`)
  return res.body
}

function part (tx: TxView, name: string): ParticipantView {
  const p = tx.participants.find(x => x.name === name)
  if (p === undefined) throw new Error(`no participant ${name} in ${tx.id}`)
  return p
}

/** Begins a transaction and enlists the given participants one by one. */
async function begin (api: HttpClient, participants: Array<[string, TestParticipant, Record<string, unknown>?]>, timeoutMs?: number): Promise<string> {
  const res = await api.post<{ id: string, state: string, expiresAt: string }>('/v1/transactions', timeoutMs === undefined ? {} : { timeoutMs })
  if (res.status !== 201) throw new Error(`begin: ${res.status} ${res.text}`)
  const id = res.body.id
  for (const [name, p, extra] of participants) {
    const r = await api.post(`/v1/transactions/${id}/participants`, { name, url: p.url, ...(extra ?? {}) })
    if (r.status !== 201) throw new Error(`enlist ${name}: ${r.status} ${r.text}`)
  }
  return id
}

/** Waits until the transaction's phase 2 is complete and returns the record. */
async function completed (api: HttpClient, id: string, timeoutMs = 5000): Promise<TxView> {
  return await waitFor(async () => {
    const tx = await getTx(api, id)
    return tx.completed ? tx : undefined
  }, timeoutMs, `${id} completed`)
}

/** Absence checks (no retry, no phase 2) need some time to pass: several capped retry periods. */
async function settle (ms = 400): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

t.test('commit: two yes votes, both committed, the record shows votes, acks and completion', async t => {
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const begun = await c.api.post<{ id: string, state: string, expiresAt: string }>('/v1/transactions', { timeoutMs: 5000, metadata: { order: 7 } })
  t.equal(begun.status, 201)
  t.equal(begun.body.state, 'active')
  t.match(begun.body.id, new RegExp(`^${c.id}\\.`))
  t.ok(Date.parse(begun.body.expiresAt) > Date.now())
  const id = begun.body.id
  const enlisted = await c.api.post<TxView>(`/v1/transactions/${id}/participants`, { name: 'a', url: a.url, payload: { sku: 'x', qty: 2 } })
  t.equal(enlisted.status, 201)
  t.equal(enlisted.body.participants.length, 1)
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'b', url: b.url })).status, 201)

  const res = await c.api.post(`/v1/transactions/${id}/commit`)
  t.equal(res.status, 200)
  t.same(res.body, { id, state: 'committed' })

  const tx = await completed(c.api, id)
  t.equal(tx.state, 'committed')
  t.equal(tx.decision, 'commit')
  t.equal(tx.reason, null)
  t.same(tx.metadata, { order: 7 })
  t.ok(tx.decidedAt !== null && tx.completedAt !== null)
  for (const name of ['a', 'b']) {
    t.match(part(tx, name), { vote: 'yes', ack: 'acked', attempts: 0, lastError: null })
  }
  t.equal(a.state(id), 'committed')
  t.equal(b.state(id), 'committed')
  for (const p of [a, b]) {
    t.equal(p.callsTo('prepare', id).length, 1)
    t.equal(p.callsTo('commit', id).length, 1)
    t.equal(p.callsTo('abort', id).length, 0)
  }
  const prepare = a.callsTo('prepare', id)[0]
  t.match(prepare?.body, { txid: id, participant: 'a', payload: { sku: 'x', qty: 2 } })
  t.equal(typeof prepare?.body.deadline, 'number')
  t.notOk('onePhase' in (prepare?.body ?? {}), 'a two-participant prepare is not one-phase')
  t.match(a.callsTo('commit', id)[0]?.body, { txid: id, participant: 'a' })
  t.notOk(SIGNATURE_HEADER in (prepare?.headers ?? {}), 'no signature without a secret')
  t.same((await c.api.get(`/v1/transactions/${id}/decision`)).body, { decision: 'commit' })
})

t.test('a no vote aborts: the yes voter hears abort, the no voter hears nothing in phase 2', async t => {
  const c = await startCoordinator(t)
  const yes = await startParticipant(t, { vote: 'yes' })
  const no = await startParticipant(t, { vote: 'no' })
  const id = await begin(c.api, [['yes', yes], ['no', no]])
  const res = await c.api.post(`/v1/transactions/${id}/commit`)
  t.equal(res.status, 200)
  t.same(res.body, { id, state: 'aborted', reason: 'vote-no' })
  const tx = await completed(c.api, id)
  t.equal(tx.state, 'aborted')
  t.equal(tx.decision, 'abort')
  t.match(part(tx, 'no'), { vote: 'no', ack: 'not-needed' })
  t.match(part(tx, 'yes'), { ack: 'acked' })
  t.equal(yes.state(id), 'aborted')
  t.equal(yes.callsTo('abort', id).length, 1)
  t.equal(yes.callsTo('commit', id).length, 0)
  t.equal(no.callsTo('prepare', id).length, 1)
  await settle()
  t.equal(no.callsTo('commit').length + no.callsTo('abort').length, 0, 'the no voter gets no phase 2')
})

t.test('a participant that does not answer prepare in time aborts the transaction', async t => {
  const c = await startCoordinator(t, { prepareTimeoutMs: 200 })
  const fast = await startParticipant(t)
  const slow = await startParticipant(t, { prepareDelayMs: 3000 })
  const id = await begin(c.api, [['fast', fast], ['slow', slow]])
  const started = Date.now()
  const res = await c.api.post(`/v1/transactions/${id}/commit`)
  t.same(res.body, { id, state: 'aborted', reason: 'prepare-failed' })
  t.ok(Date.now() - started < 2500, 'answered after the prepare timeout, not after the slow answer')
  const tx = await completed(c.api, id)
  // The prepare error is kept after the abort is acked: the record says which participant failed and why.
  t.match(part(tx, 'slow'), { vote: null, ack: 'acked', lastError: /prepare got no answer within/ })
  t.match(part(tx, 'fast'), { ack: 'acked' })
  t.equal(fast.state(id), 'aborted')
  t.equal(slow.state(id), 'aborted', 'the slow participant, which may yet prepare, is told abort')
  t.equal(slow.callsTo('abort', id).length, 1)
  t.equal(fast.callsTo('commit').length + slow.callsTo('commit').length, 0)
})

t.test('a transaction never committed is aborted by the sweeper when it expires', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t)
  const id = await begin(c.api, [['p', p]], 1500)
  t.equal((await getTx(c.api, id)).state, 'active')
  const tx = await waitFor(async () => {
    const x = await getTx(c.api, id)
    return x.state === 'aborted' ? x : undefined
  }, 8000, 'expiry abort')
  t.equal(tx.reason, 'timeout')
  t.equal(tx.decision, 'abort')
  t.equal(tx.completed, true, 'never asked to prepare: nobody to tell')
  t.match(part(tx, 'p'), { vote: null, ack: 'not-needed' })
  t.equal(p.calls.length, 0)
  const commit = await c.api.post(`/v1/transactions/${id}/commit`)
  t.equal(commit.status, 409)
  t.equal(commit.body.code, 'TX_ALREADY_DECIDED')
  t.same((await c.api.get(`/v1/transactions/${id}/decision`)).body, { decision: 'abort' })
})

t.test('phase 2 is retried while a participant is down, until it comes back', async t => {
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const b = await startParticipant(t, { downAfterPrepare: true })
  const port = b.port
  const id = await begin(c.api, [['a', a], ['b', b]])
  const res = await c.api.post(`/v1/transactions/${id}/commit`)
  t.same(res.body, { id, state: 'committed' }, 'the decision does not wait for phase 2')
  t.equal(b.isUp, false)
  const retrying = await waitFor(async () => {
    const tx = await getTx(c.api, id)
    return part(tx, 'b').attempts >= 3 ? tx : undefined
  }, 5000, 'several failed deliveries to b')
  t.match(part(retrying, 'b'), { ack: 'pending', lastError: /commit failed/ })
  t.ok(part(retrying, 'b').nextAttemptAt !== null)
  t.equal(retrying.completed, false)
  t.equal(a.state(id), 'committed')
  t.equal(b.state(id), 'prepared')

  await b.up()
  t.equal(b.port, port, 'back on the same port')
  const tx = await completed(c.api, id)
  t.equal(b.state(id), 'committed')
  t.equal(b.callsTo('commit', id).length, 1)
  t.match(part(tx, 'b'), { ack: 'acked', lastError: /commit failed/, nextAttemptAt: null })
  t.ok(part(tx, 'b').attempts > 0, 'failed attempts are counted')
  t.equal(tx.needsAttention, false, 'within the retry budget')
})

t.test('an exhausted retry budget flags the transaction while retries go on', async t => {
  const c = await startCoordinator(t, { retryBudget: 3 })
  const p = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const id = await begin(c.api, [['p', p]])
  t.same((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'committed' })
  const flagged = await waitFor(async () => {
    const tx = await getTx(c.api, id)
    return tx.needsAttention && part(tx, 'p').attempts >= 5 ? tx : undefined
  }, 5000, 'needsAttention and retries beyond the budget')
  t.match(part(flagged, 'p'), { ack: 'pending', lastError: /commit answered 503/ })
  const budget = flagged.heuristics.filter(h => h.kind === 'retry-budget')
  t.equal(budget.length, 1, 'one attention entry for the exhausted budget')
  t.match(budget[0], { participant: 'p', detail: /3 failed deliveries/, resolvedAt: null })
  t.ok(p.callsTo('commit', id).length >= 5, 'the participant keeps being called')
  const listed = await c.api.get<{ items: TxView[] }>('/v1/transactions?needsAttention=true')
  t.same(listed.body.items.map(x => x.id), [id])

  p.behaviour.phase2Failure = undefined
  const tx = await completed(c.api, id)
  t.equal(p.state(id), 'committed')
  t.equal(part(tx, 'p').ack, 'acked')
  t.equal(tx.needsAttention, false, 'delivered at last: nothing left for an operator')
  t.match(tx.heuristics.filter(h => h.kind === 'retry-budget')[0], { resolvedAt: String, resolution: /delivered/ }, 'the entry stays, resolved')
})

t.test('a definite refusal (409) is recorded as a heuristic and not retried blindly', async t => {
  const c = await startCoordinator(t)
  const ok = await startParticipant(t)
  const refuses = await startParticipant(t, { phase2Failure: { status: 409, times: Infinity, body: { code: 'TX_ALREADY_ABORTED' } } })
  const id = await begin(c.api, [['ok', ok], ['refuses', refuses]])
  t.same((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'committed' })
  const tx = await waitFor(async () => {
    const x = await getTx(c.api, id)
    return part(x, 'refuses').ack === 'heuristic' && part(x, 'ok').ack === 'acked' ? x : undefined
  }, 5000, 'heuristic recorded')
  t.equal(tx.needsAttention, true)
  t.match(part(tx, 'refuses'), { attempts: 1, nextAttemptAt: null, lastError: /commit answered 409.*TX_ALREADY_ABORTED/ })
  t.equal(tx.heuristics.length, 1)
  t.match(tx.heuristics[0], { participant: 'refuses', kind: 'heuristic', detail: /409/ })
  t.equal(tx.completed, false, 'a heuristic participant is not acked')
  await settle()
  t.equal(refuses.callsTo('commit', id).length, 1, 'no blind retry')
  t.equal((await getTx(c.api, id)).heuristics.length, 1)
})

t.test('a read-only voter takes no part in phase 2', async t => {
  const c = await startCoordinator(t)
  const writer = await startParticipant(t)
  const reader = await startParticipant(t, { vote: 'read-only' })
  const id = await begin(c.api, [['writer', writer], ['reader', reader]])
  t.same((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'committed' })
  const tx = await completed(c.api, id)
  t.match(part(tx, 'reader'), { vote: 'read-only', ack: 'not-needed' })
  t.match(part(tx, 'writer'), { vote: 'yes', ack: 'acked' })
  t.equal(writer.state(id), 'committed')
  await settle()
  t.equal(reader.callsTo('prepare', id).length, 1)
  t.equal(reader.callsTo('commit').length + reader.callsTo('abort').length, 0)
})

t.test('an abort while preparing decides abort; the waiting commit answers aborted', async t => {
  const c = await startCoordinator(t, { prepareTimeoutMs: 5000 })
  const slow = await startParticipant(t, { prepareDelayMs: 400 })
  const id = await begin(c.api, [['slow', slow]])
  const commit = c.api.post(`/v1/transactions/${id}/commit`)
  await waitFor(async () => (await getTx(c.api, id)).state === 'preparing', 2000, 'preparing')
  const abort = await c.api.post(`/v1/transactions/${id}/abort`)
  t.equal(abort.status, 200)
  t.same(abort.body, { id, state: 'aborted', reason: 'requested' })
  t.same((await commit).body, { id, state: 'aborted', reason: 'requested' })
  const tx = await completed(c.api, id)
  t.match(part(tx, 'slow'), { vote: null, ack: 'acked' }, 'its late vote is ignored')
  await waitFor(() => slow.callsTo('prepare', id).length === 1, 2000, 'the late prepare answered')
  t.equal(slow.state(id), 'aborted', 'asked to prepare, so told abort; the late prepare found the tombstone')
  t.equal(slow.callsTo('commit').length, 0)
})

t.test('one-shot form: begin, enlist and commit in one request', async t => {
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const res = await c.api.post<{ id: string, state: string }>('/v1/transactions', {
    timeoutMs: 5000,
    participants: [{ name: 'a', url: a.url, payload: { n: 1 } }, { name: 'b', url: b.url }],
    commit: true
  })
  t.equal(res.status, 200)
  t.equal(res.body.state, 'committed')
  const id = res.body.id
  t.same(res.body, { id, state: 'committed' })
  const tx = await completed(c.api, id)
  t.same(tx.participants.map(p => [p.name, p.vote, p.ack]), [['a', 'yes', 'acked'], ['b', 'yes', 'acked']])
  t.equal(a.state(id), 'committed')
  t.equal(b.state(id), 'committed')
  t.match(a.callsTo('prepare', id)[0]?.body, { payload: { n: 1 } })

  b.behaviour.vote = 'no'
  const aborted = await c.api.post<{ id: string, state: string, reason?: string }>('/v1/transactions', {
    participants: [{ name: 'a', url: a.url }, { name: 'b', url: b.url }],
    commit: true
  })
  t.equal(aborted.status, 200)
  t.match(aborted.body, { state: 'aborted', reason: 'vote-no' })
  await waitFor(() => a.state(aborted.body.id) === 'aborted', 5000, 'a aborted')

  const begunOnly = await c.api.post<{ id: string, state: string }>('/v1/transactions', { participants: [{ name: 'a', url: a.url }] })
  t.equal(begunOnly.status, 201, 'participants without commit:true only begin')
  t.equal((await getTx(c.api, begunOnly.body.id)).participants.length, 1)
})

t.test('one-phase commit for a single participant that opted in', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t)
  const id = await begin(c.api, [['solo', p, { onePhase: true }]])
  t.same((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'committed' })
  const tx = await completed(c.api, id)
  t.equal(tx.onePhase, true)
  t.match(part(tx, 'solo'), { onePhase: true, vote: 'yes', ack: 'acked' })
  t.match(p.callsTo('prepare', id)[0]?.body, { txid: id, onePhase: true })
  t.equal(p.state(id), 'committed')
  await settle()
  t.equal(p.callsTo('commit').length + p.callsTo('abort').length, 0, 'no phase 2')

  // Opting in means nothing with two participants: a normal two-phase round.
  const q = await startParticipant(t)
  const two = await begin(c.api, [['solo', p, { onePhase: true }], ['other', q]])
  t.same((await c.api.post(`/v1/transactions/${two}/commit`)).body, { id: two, state: 'committed' })
  const tx2 = await completed(c.api, two)
  t.equal(tx2.onePhase, false)
  t.notOk('onePhase' in (p.callsTo('prepare', two)[0]?.body ?? {}))
  t.equal(p.callsTo('commit', two).length, 1)
})

t.test('decision endpoint: commit, abort, pending, presumed abort, foreign id', async t => {
  const c = await startCoordinator(t)
  const decision = async (id: string): Promise<{ status: number, body: unknown }> => {
    const res = await c.api.get(`/v1/transactions/${id}/decision`)
    return { status: res.status, body: res.body }
  }
  const committed = await begin(c.api, [])
  await c.api.post(`/v1/transactions/${committed}/commit`)
  const aborted = await begin(c.api, [])
  t.same((await c.api.post(`/v1/transactions/${aborted}/abort`)).body, { id: aborted, state: 'aborted', reason: 'requested' })
  const active = await begin(c.api, [])
  t.same(await decision(committed), { status: 200, body: { decision: 'commit' } })
  t.same(await decision(aborted), { status: 200, body: { decision: 'abort' } })
  t.same(await decision(active), { status: 200, body: { decision: 'pending' } })
  const unknown = `${c.id}.${'0'.repeat(26)}`
  t.same(await decision(unknown), { status: 200, body: { decision: 'abort' } }, 'presumed abort')
  t.equal((await c.api.get(`/v1/transactions/${unknown}`)).status, 404, 'yet there is no record of it')
  const foreign = await decision(`other-coordinator.${'0'.repeat(26)}`)
  t.equal(foreign.status, 404)
  t.match(foreign.body, { statusCode: 404, code: 'FOREIGN_ID', error: 'Not Found' })
})

t.test('list: state filter and cursor paging, newest first', async t => {
  const c = await startCoordinator(t)
  const committed: string[] = []
  const all: string[] = []
  for (let i = 0; i < 3; i++) {
    const id = await begin(c.api, [])
    t.equal((await c.api.post(`/v1/transactions/${id}/commit`)).status, 200)
    committed.push(id)
    all.push(id)
  }
  for (let i = 0; i < 2; i++) all.push(await begin(c.api, []))
  const aborted = await begin(c.api, [])
  await c.api.post(`/v1/transactions/${aborted}/abort`)
  all.push(aborted)

  const onlyCommitted = await c.api.get<{ items: TxView[], nextCursor: string | null }>('/v1/transactions?state=committed')
  t.equal(onlyCommitted.status, 200)
  t.same(onlyCommitted.body.items.map(x => x.id), [...committed].reverse())
  t.ok(onlyCommitted.body.items.every(x => x.state === 'committed'))
  t.equal(onlyCommitted.body.nextCursor, null)
  const active = await c.api.get<{ items: TxView[] }>('/v1/transactions?state=active')
  t.equal(active.body.items.length, 2)

  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const page: { status: number, body: { items: TxView[], nextCursor: string | null } } =
      await c.api.get(`/v1/transactions?limit=4${cursor !== null ? `&cursor=${cursor}` : ''}`)
    t.equal(page.status, 200)
    t.ok(page.body.items.length <= 4)
    seen.push(...page.body.items.map(x => x.id))
    cursor = page.body.nextCursor
    pages++
  } while (cursor !== null && pages < 10)
  t.equal(pages, 2)
  t.same(seen, [...all].reverse(), 'every transaction once, newest first')

  const paged: string[] = []
  cursor = null
  do {
    const page: { body: { items: TxView[], nextCursor: string | null } } =
      await c.api.get(`/v1/transactions?state=committed&limit=1${cursor !== null ? `&cursor=${cursor}` : ''}`)
    paged.push(...page.body.items.map(x => x.id))
    cursor = page.body.nextCursor
  } while (cursor !== null && paged.length < 10)
  t.same(paged, [...committed].reverse(), 'the filter holds across pages')
})

t.test('callbacks are signed when the coordinator has a secret', async t => {
  const secret = 'test-secret-0123456789'
  const c = await startCoordinator(t, { secret })
  const a = await startParticipant(t, { secret })
  const b = await startParticipant(t, { secret })
  const id = await begin(c.api, [['a', a], ['b', b]])
  t.same((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'committed' })
  await completed(c.api, id)
  for (const p of [a, b]) {
    t.equal(p.calls.length, 2)
    for (const call of p.calls) {
      t.match(call.headers[SIGNATURE_HEADER], /^t=\d+,v2=[0-9a-f]{64}$/)
      t.equal(call.signatureOk, true, `${call.path} signature verifies`)
    }
  }

  // A participant with another secret rejects the prepare (401): the transaction aborts.
  const wrong = await startParticipant(t, { secret: 'another-secret-0123456789' })
  const id2 = await begin(c.api, [['wrong', wrong]])
  t.match((await c.api.post(`/v1/transactions/${id2}/commit`)).body, { state: 'aborted', reason: 'prepare-failed' })
  t.equal(wrong.callsTo('prepare', id2)[0]?.signatureOk, false)
})

t.test('bearer token required on /v1 when apiToken is set; health stays open', async t => {
  const apiToken = 'token-0123456789abcdef'
  const c = await startCoordinator(t, { apiToken })
  const { http } = await import('./support/participant.js')
  const anon = http(c.url)
  const noToken = await anon.post('/v1/transactions', {})
  t.equal(noToken.status, 401)
  t.match(noToken.body, { statusCode: 401, code: 'UNAUTHORIZED', error: 'Unauthorized' })
  const wrong = await anon.get('/v1/transactions', { authorization: 'Bearer not-the-token-at-all' })
  t.equal(wrong.status, 401)
  t.equal(wrong.body.code, 'UNAUTHORIZED')
  t.equal((await anon.get('/v1/transactions', { authorization: apiToken })).status, 401, 'the Bearer scheme is required')
  const list = await anon.get<{ items: unknown[] }>('/v1/transactions')
  t.equal(list.status, 401)
  t.equal((await anon.get('/healthz')).status, 200)
  t.equal((await anon.get('/readyz')).status, 200)
  const ok = await c.api.post('/v1/transactions', {})
  t.equal(ok.status, 201, 'with the token')
  t.equal((await c.api.get('/v1/transactions')).body.items.length, 1)
})

t.test('healthz and readyz', async t => {
  const c = await startCoordinator(t, { coordinatorId: 'c-e2e' })
  const health = await c.api.get('/healthz')
  t.equal(health.status, 200)
  t.same(health.body, { status: 'ok' })
  const ready = await c.api.get('/readyz')
  t.equal(ready.status, 200)
  t.match(ready.body, { ready: true, log: 'open', recovery: 'done', coordinatorId: 'c-e2e' })
  t.equal(c.id, 'c-e2e')
})

t.test('closing while a commit waits for votes: the commit is answered and close completes', async t => {
  const c = await startCoordinator(t, { prepareTimeoutMs: 5000 })
  const slow = await startParticipant(t, { prepareDelayMs: 500 })
  const id = await begin(c.api, [['slow', slow]])
  // Its own keep-alive connection, destroyed at the end so a regression fails instead of hanging.
  const agent = new Agent()
  t.teardown(async () => { await agent.destroy() })
  const commit = request(`${c.url}/v1/transactions/${id}/commit`, { method: 'POST', dispatcher: agent })
    .then(async res => ({ status: res.statusCode, connection: res.headers.connection, body: await res.body.json() }))
  await waitFor(async () => (await getTx(c.api, id)).state === 'preparing', 2000, 'preparing')
  const closed = c.close().then(() => 'closed' as const)
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<'timeout'>(resolve => { timer = setTimeout(() => resolve('timeout'), 4000) })
  t.equal(await Promise.race([closed, bound]), 'closed', 'close completes once the commit is answered')
  clearTimeout(timer)
  const answer = await commit
  t.same(answer, { status: 200, connection: 'close', body: { id, state: 'committed' } })
  // The decision is in the log: a coordinator restarted on it finishes phase 2 if it was cut short.
  const again = await startCoordinator(t, { dbPath: c.dbPath })
  t.equal(again.id, c.id)
  t.equal((await completed(again.api, id)).state, 'committed')
  t.equal(slow.state(id), 'committed')
})

t.test('an answer longer than maxResponseBytes is cut off there: a failed prepare (abort), the connection is dropped', async t => {
  const Fastify = (await import('fastify')).default
  const big = Fastify()
  let prepares = 0
  big.post('/2pc/prepare', async () => { prepares++; return { vote: 'yes', padding: 'x'.repeat(64 * 1024) } })
  big.post('/2pc/abort', async () => ({ ok: true }))
  big.post('/2pc/commit', async () => ({ ok: true }))
  await big.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => { await big.close() })
  const address = big.server.address() as { port: number }
  const c = await startCoordinator(t, { maxResponseBytes: 1024 })
  const other = await startParticipant(t)
  const res = await c.api.post('/v1/transactions', {
    participants: [{ name: 'big', url: `http://127.0.0.1:${address.port}/2pc` }, { name: 'other', url: other.url }],
    commit: true
  })
  t.match(res.body, { state: 'aborted', reason: 'prepare-failed' })
  t.equal(prepares, 1)
  const tx = await completed(c.api, res.body.id)
  t.match(part(tx, 'big'), { vote: null, lastError: 'prepare failed: ANSWER_TOO_LARGE' }, 'a failed call: nothing of the part read is used or kept')
})
