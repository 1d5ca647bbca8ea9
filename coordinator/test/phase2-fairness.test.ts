/**
 * Phase 2 is scheduled fairly per participant: hundreds of commit calls hanging at one
 * participant (no answer, well within phase2TimeoutMs) do not delay another participant's
 * phase 2. Real coordinator, real participants on 127.0.0.1.
 */
import t from 'tap'
import Fastify from 'fastify'
import { startCoordinator, startParticipant, tempDbPath, waitFor, type HttpClient, type TestParticipant } from './support/participant.js'
import { CoordinatorLog } from '../src/log/store.js'
import { ParticipantDriver } from '../src/driver.js'
import { Engine } from '../src/engine.js'

const HUNG_TRANSACTIONS = 600

/** One-shot transactions (begin + enlist + commit in one request), `concurrency` at a time. */
async function commitMany (api: HttpClient, p: TestParticipant, count: number, concurrency: number): Promise<string[]> {
  const ids: string[] = []
  let next = 0
  async function worker (): Promise<void> {
    while (next < count) {
      next++
      const res = await api.post<{ id: string, state: string }>('/v1/transactions', { participants: [{ name: 'slow', url: p.url }], commit: true })
      if (res.status !== 200 || res.body.state !== 'committed') throw new Error(`one-shot: ${res.status} ${res.text}`)
      ids.push(res.body.id)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, async () => await worker()))
  return ids
}

t.test('a participant whose commits hang delays only itself: another participant\'s phase 2 arrives within a second', async t => {
  const phase2TimeoutMs = 10_000
  t.setTimeout(phase2TimeoutMs * 6)
  // Enough connections that the hung participant's own prepares never wait behind its hung
  // commits in the connection pool: what is measured is the coordinator's phase-2 scheduling.
  const c = await startCoordinator(t, { phase2TimeoutMs, connectionsPerOrigin: 1024 })
  const hung = await startParticipant(t, { phase2Hang: true })
  const healthy = await startParticipant(t)
  // Released before the coordinator closes: its calls in flight would otherwise hold the close.
  t.teardown(async () => { await hung.down() })

  await commitMany(c.api, hung, HUNG_TRANSACTIONS, 16)
  // Every hung call the coordinator will make at once has reached the participant (and is held there).
  await waitFor(() => hung.held >= 32, 5000, 'hung commits in flight')

  const delays: number[] = []
  for (let i = 0; i < 3; i++) {
    const res = await c.api.post<{ id: string, state: string }>('/v1/transactions', { participants: [{ name: 'fine', url: healthy.url }], commit: true })
    t.equal(res.body.state, 'committed')
    const decided = Date.now()
    const id = res.body.id
    // Waits well past the bound, to report how late it was when it is late.
    const call = await waitFor(() => healthy.callsTo('commit', id)[0], phase2TimeoutMs * 2, `commit of ${id} at the healthy participant`)
    delays.push(call.at - decided)
  }
  t.comment(`healthy participant's commit arrived ${delays.join(', ')} ms after the decision; ${hung.held} commits held at the hung one`)
  for (const d of delays) t.ok(d < 1000, `phase 2 of the healthy participant within 1 s (${d} ms)`)
})

t.test('with the default connections per origin, a participant whose commits hang still gets its prepares (its phase-2 calls hold only part of the pool)', async t => {
  const c = await startCoordinator(t, { phase2TimeoutMs: 30_000 })
  const hung = await startParticipant(t, { phase2Hang: true })
  t.teardown(async () => { await hung.down() })
  // commitMany throws on any transaction that does not commit (a prepare stuck behind hung commits aborts it).
  const ids = await commitMany(c.api, hung, 200, 16)
  t.equal(ids.length, 200)
  await waitFor(() => hung.held >= 32, 5000, 'its share of commits in flight')
  t.equal(hung.held, 32, 'no more of its commits in flight than its share')
})

t.test('beyond a participant\'s queue bound a delivery is left to the retry timer: recorded as such, retried, delivered', async t => {
  const hung = await startParticipant(t, { phase2Hang: true })
  const log = new CoordinatorLog(tempDbPath(t))
  const driver = new ParticipantDriver({ maxResponseBytes: 65536, connectionsPerOrigin: 64 })
  const engine = new Engine(log, driver, {
    coordinatorId: 'c',
    policy: { maxParticipants: 8, maxMessages: 8, retryBaseMs: 20, retryMaxMs: 100, retryBudget: 1000 },
    prepareTimeoutMs: 2000,
    phase2TimeoutMs: 30_000,
    sweepIntervalMs: 1000,
    maxConcurrentPhase2: 256,
    maxConcurrentPhase2PerParticipant: 1,
    maxQueuedPhase2PerParticipant: 2,
    logger: Fastify({ logger: false }).log
  })
  t.teardown(async () => {
    await hung.down()
    await engine.stop()
    await driver.close()
    log.close()
  })
  const ids: string[] = []
  for (let i = 0; i < 5; i++) {
    const outcome = await engine.beginAndCommit(10_000, null, [{ name: 'h', url: hung.url }])
    t.equal(outcome.state, 'committed')
    ids.push(outcome.id)
  }
  await waitFor(() => hung.held === 1, 5000, 'one call in flight')
  const left = await waitFor(() => {
    const txs = ids.map(id => log.loadLatest(id)?.participants[0])
    const full = txs.filter(p => p?.lastError === 'not sent: the phase-2 queue of this participant is full')
    return full.length >= 2 ? full : undefined
  }, 5000, 'the deliveries beyond the bound left to the retry timer')
  for (const p of left) t.match(p, { ack: 'pending', attempts: Number, nextAttemptAt: Number })
  t.equal(hung.held, 1, 'the limit of one call in flight to it holds')

  // The participant answers again: every delivery gets through, the ones that overflowed included.
  hung.behaviour.phase2Hang = false
  await hung.down()
  await hung.up()
  await waitFor(() => ids.every(id => log.loadLatest(id)?.participants[0]?.ack === 'acked'), 10_000, 'every transaction acked')
  t.equal(hung.callsTo('commit').filter(c => c.status === 200).length, 5)
})
