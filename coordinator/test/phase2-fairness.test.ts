/**
 * Phase 2 is scheduled fairly per participant: hundreds of commit calls hanging at one
 * participant (no answer, well within phase2TimeoutMs) do not delay another participant's
 * phase 2. Real coordinator, real participants on 127.0.0.1.
 */
import t from 'tap'
import { startCoordinator, startParticipant, waitFor, type HttpClient, type TestParticipant } from './support/participant.js'

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
