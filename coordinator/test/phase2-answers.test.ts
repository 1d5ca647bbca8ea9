/**
 * Phase-2 answers that are not definite (401, a 404 without the protocol's TX_UNKNOWN) are
 * retried with backoff and flag the transaction until they get through; definite ones are
 * heuristics. And the record keeps the status and error code of what answered, never its text.
 * The state machine on its own, then the real coordinator against real servers on 127.0.0.1.
 */
import t, { type Test } from 'tap'
import net from 'node:net'
import http from 'node:http'
import { step, newTransaction, type Transaction, type Event, type Policy, type StepResult } from '../src/core/machine.js'
import { startCoordinator, startParticipant, waitFor, type HttpClient } from './support/participant.js'

const policy: Policy = { maxParticipants: 3, maxMessages: 2, retryBaseMs: 100, retryMaxMs: 1000, retryBudget: 5 }

function run (tx: Transaction, ...events: Event[]): Extract<StepResult, { ok: true }> {
  let r: Extract<StepResult, { ok: true }> = { ok: true, tx, effects: [], changed: false }
  for (const e of events) {
    const next = step(r.tx, e, policy)
    if (!next.ok) throw new Error(`rejected: ${next.code}`)
    r = next
  }
  return r
}

function committed (): Transaction {
  const enlist = (name: string): Event => ({ type: 'enlist', participant: { name, url: `http://127.0.0.1/${name}` }, now: 1 })
  return run(newTransaction('c1.x', 0, 1000), enlist('a'), enlist('b'), { type: 'commit-requested', now: 2 },
    { type: 'vote', participant: 'a', vote: 'yes', now: 3 }, { type: 'vote', participant: 'b', vote: 'yes', now: 4 }).tx
}

const failed = (participant: string, error: string, attention: 'unauthorized' | 'not-found' | undefined, now: number): Event =>
  ({ type: 'phase2-failed', participant, error, refused: false, ...(attention !== undefined ? { attention } : {}), jitter: 0, now })

t.test('machine: a 401 is retried with backoff and flags the transaction once; delivery clears the flag', async t => {
  const f1 = run(committed(), failed('a', 'commit answered 401: BAD_SIGNATURE', 'unauthorized', 10))
  t.match(f1.tx.participants[0], { ack: 'pending', attempts: 1, lastError: 'commit answered 401: BAD_SIGNATURE', nextAttemptAt: 60 })
  t.equal(f1.tx.needsAttention, true)
  t.equal(f1.tx.heuristic, false, 'not a heuristic')
  t.match(f1.effects, [
    { type: 'schedule-phase2', participant: 'a', at: 60 },
    { type: 'notify', participant: 'a', decision: 'commit' },
    { type: 'record-attention', participant: 'a', kind: 'unauthorized', detail: /^unauthorized: commit answered 401: BAD_SIGNATURE; / }
  ])
  // The same answer again: retried, no second entry.
  const f2 = run(f1.tx, failed('a', 'commit answered 401: BAD_SIGNATURE', 'unauthorized', 70))
  t.same(f2.effects.map(e => e.type), ['schedule-phase2'])
  t.equal(f2.tx.participants[0]?.attempts, 2)
  // Delivered at last (and the other participant acked): completed, nothing left for an operator.
  const done = run(f2.tx, { type: 'phase2-acked', participant: 'a', now: 300 }, { type: 'phase2-acked', participant: 'b', now: 301 })
  t.not(done.tx.completedAt, null)
  t.equal(done.tx.needsAttention, false)
})

t.test('machine: a bare 404 is retried and flagged as not-found; another kind of failure in between records it again, within the budget', async t => {
  const r = run(committed(), failed('b', 'abort answered 404', 'not-found', 10))
  t.match(r.effects.at(-1), { type: 'record-attention', participant: 'b', kind: 'not-found', detail: /^not-found: abort answered 404; / })
  t.equal(r.tx.participants[1]?.ack, 'pending')
  const again = run(r.tx, failed('b', 'abort failed: ECONNREFUSED', undefined, 20), failed('b', 'abort answered 404', 'not-found', 30))
  t.match(again.effects, [{ type: 'schedule-phase2' }, { type: 'record-attention', kind: 'not-found' }])
  // Beyond the budget, while flagged, no more entries of this kind: their number stays bounded.
  let tx = again.tx
  for (let i = 0; i < 10; i++) tx = run(tx, failed('b', 'abort failed: ECONNREFUSED', undefined, 40 + i)).tx
  const late = run(tx, failed('b', 'abort answered 404', 'not-found', 100))
  t.same(late.effects.map(e => e.type), ['schedule-phase2'])
})

// ---- the real coordinator ----------------------------------------------------------------------

interface Entry { participant: string | null, kind: string, detail: string, resolvedAt: string | null, resolution: string | null }
interface TxView { id: string, completed: boolean, needsAttention: boolean, participants: Array<{ name: string, ack: string, attempts: number, lastError: string | null }>, heuristics: Entry[] }

async function getTx (api: HttpClient, id: string): Promise<TxView> {
  return (await api.get<TxView>(`/v1/transactions/${id}`)).body
}

function metric (text: string, name: string): number | undefined {
  const line = text.split('\n').find(l => l.startsWith(name + ' '))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

for (const [status, body, cause] of [
  [401, { statusCode: 401, code: 'BAD_SIGNATURE', error: 'Unauthorized', message: 'stale' }, 'unauthorized'],
  [404, { statusCode: 404, error: 'Not Found', message: 'Route POST:/2pc/commit not found' }, 'not-found']
] as const) {
  t.test(`a phase-2 ${status} without a definite code is retried with backoff, flagged ${cause}, and cleared once delivered`, async t => {
    const c = await startCoordinator(t)
    const p = await startParticipant(t, { phase2Failure: { status, times: Infinity, body } })
    const res = await c.api.post<{ id: string, state: string }>('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })
    t.equal(res.body.state, 'committed')
    const id = res.body.id
    const flagged = await waitFor(async () => {
      const tx = await getTx(c.api, id)
      return tx.needsAttention && (tx.participants[0]?.attempts ?? 0) >= 3 ? tx : undefined
    }, 5000, 'retried and flagged')
    t.match(flagged.participants[0], { ack: 'pending', lastError: `commit answered ${status}${status === 401 ? ': BAD_SIGNATURE' : ''}` })
    t.equal(flagged.heuristics.length, 1, 'one entry, not one per retry')
    t.match(flagged.heuristics[0], { participant: 'p', kind: cause, detail: new RegExp(`^${cause}: commit answered ${status}`), resolvedAt: null })
    t.ok(p.callsTo('commit', id).length >= 3, 'retried')
    t.equal(metric((await c.api.get('/metrics')).text, `twopc_attention_entries_total{kind="${cause}"}`), 1)

    p.behaviour.phase2Failure = undefined
    const done = await waitFor(async () => {
      const tx = await getTx(c.api, id)
      return tx.completed ? tx : undefined
    }, 5000, 'delivered')
    t.equal(p.state(id), 'committed')
    t.equal(done.needsAttention, false, 'the flag clears once it got through')
    t.match(done.heuristics[0], { resolvedAt: String, resolution: /delivered/ })
  })
}

t.test('a 404 with TX_UNKNOWN stays definite: a heuristic, not retried', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t, { phase2Failure: { status: 404, times: Infinity, body: { statusCode: 404, code: 'TX_UNKNOWN', error: 'Not Found', message: 'never prepared' } } })
  const id = (await c.api.post<{ id: string }>('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })).body.id
  const tx = await waitFor(async () => {
    const x = await getTx(c.api, id)
    return x.participants[0]?.ack === 'heuristic' ? x : undefined
  }, 5000, 'heuristic')
  t.match(tx.participants[0], { attempts: 1, lastError: 'commit answered 404: TX_UNKNOWN' })
  t.match(tx.heuristics, [{ kind: 'heuristic', detail: 'commit answered 404: TX_UNKNOWN' }])
})

const MARKER = 'MARKER-51e0d2'

/** A loopback TCP service that is not HTTP: it greets with a banner naming the marker. */
async function banner (t: Test): Promise<string> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer(socket => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.end(`SSH-2.0-${MARKER}\r\n`)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/2pc`
}

/** An HTTP service that answers every request 500 with an HTML page naming the marker. */
async function htmlError (t: Test): Promise<string> {
  const server = http.createServer((req, res) => {
    req.resume()
    res.writeHead(500, { 'content-type': 'text/html' }).end(`<html><body><h1>${MARKER}</h1><pre>secret stack</pre></body></html>`)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/2pc`
}

t.test('the record never holds the text of what answered: local port scans read nothing through the API', async t => {
  const c = await startCoordinator(t)
  const records: string[] = []

  // Prepare at a non-HTTP service and at an HTML error page: aborted, lastError a class / a status.
  for (const url of [await banner(t), await htmlError(t)]) {
    const res = await c.api.post<{ id: string, state: string }>('/v1/transactions', { participants: [{ name: 'p', url }], commit: true })
    t.equal(res.body.state, 'aborted')
    const tx = await getTx(c.api, res.body.id)
    t.match(tx.participants[0]?.lastError, /^prepare (failed: [A-Za-z_]+|answered 500)$/)
    records.push(JSON.stringify(tx))
  }

  // Phase 2 answered 500 with an HTML page, then a definite refusal whose message carries the marker.
  const p = await startParticipant(t, { phase2Failure: { status: 500, times: 2, body: `<html>${MARKER}</html>` } })
  const id = (await c.api.post<{ id: string }>('/v1/transactions', { participants: [{ name: 'p', url: p.url }], commit: true })).body.id
  await waitFor(async () => (await getTx(c.api, id)).participants[0]?.attempts === 2, 5000, 'two failed deliveries')
  p.behaviour.phase2Failure = { status: 409, times: Infinity, body: { statusCode: 409, code: 'TX_ALREADY_ABORTED', error: 'Conflict', message: MARKER } }
  const refused = await waitFor(async () => {
    const tx = await getTx(c.api, id)
    return tx.participants[0]?.ack === 'heuristic' ? tx : undefined
  }, 5000, 'heuristic')
  t.match(refused.participants[0], { lastError: 'commit answered 409: TX_ALREADY_ABORTED' })
  t.match(refused.heuristics, [{ kind: 'heuristic', detail: 'commit answered 409: TX_ALREADY_ABORTED' }])
  records.push(JSON.stringify(refused))

  for (const r of records) t.notMatch(r, MARKER, 'no byte of the answer in the record')
  t.notMatch(JSON.stringify(c.app.coordinator.log.operator.timeline(id)), MARKER, 'nor in its timeline (the console\'s)')
})
