/**
 * Seeded randomized schedules over the pure state machine: votes, timeouts, coordinator
 * crash/restart (between persisting and acting, too), lost, duplicated, late and reordered
 * messages. The shell is modelled as the engine does it: persist the step's result, then act.
 * Invariants checked on every step and at quiescence:
 *  - a logged decision never changes;
 *  - commit only if every participant voted yes/read-only;
 *  - nobody is told commit unless the commit decision is already on disk;
 *  - every participant that may have prepared is eventually told the decision, and applies it.
 * Replay one schedule with TWOPC_SEED=<seed>.
 */
import t from 'tap'
import { step, newTransaction, decisionOf, type Transaction, type Event, type Policy } from '../src/core/machine.js'
import { seededRandom } from '../../test/kit/random.js'

const SCHEDULES = Number(process.env.TWOPC_SCHEDULES ?? 4000)
const policy: Policy = { maxParticipants: 8, maxMessages: 8, retryBaseMs: 10, retryMaxMs: 80, retryBudget: 4 }

type PState = 'none' | 'prepared' | 'committed' | 'aborted' | 'read-only' | 'tombstone'
interface Sim {
  name: string
  plan: 'yes' | 'no' | 'read-only'
  state: PState
}

type ToParticipant = { kind: 'prepare' | 'commit' | 'abort', to: string }
type ToCoordinator = { event: Event }

function runSchedule (seed: number): { ok: true, steps: number, decision: string, crashes: number } | { ok: false, why: string, trace: string[] } {
  const rnd = seededRandom(seed)
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)] as T
  const trace: string[] = []
  let now = 0
  const n = 1 + Math.floor(rnd() * 4)
  const sims: Sim[] = Array.from({ length: n }, (_, i) => ({
    name: `p${i}`,
    plan: rnd() < 0.75 ? 'yes' : rnd() < 0.5 ? 'no' : 'read-only',
    state: 'none'
  }))
  let disk: Transaction = newTransaction(`c.s${seed}`, 0, 200 + Math.floor(rnd() * 300))
  for (const s of sims) {
    const r = step(disk, { type: 'enlist', participant: { name: s.name, url: 'http://x' }, now }, policy)
    if (!r.ok) return { ok: false, why: 'enlist rejected', trace }
    disk = r.tx
  }
  const toParticipants: ToParticipant[] = []
  let toCoordinator: ToCoordinator[] = []
  let timers: Array<{ at: number, participant: string }> = []
  let commitRequested = false
  let crashed = false
  let firstDecision: string | null = null
  let chaos = true

  const fail = (why: string): { ok: false, why: string, trace: string[] } => ({ ok: false, why, trace })

  function apply (event: Event, crashBeforeActing: boolean): string | undefined {
    const r = step(disk, event, policy)
    if (!r.ok) return undefined
    for (const e of r.effects) {
      if (e.type === 'send-decision' && e.decision !== decisionOf(r.tx)) return `send-decision ${e.decision} while the record says ${r.tx.state}`
    }
    const before = decisionOf(disk)
    disk = r.tx // persisted (forced) before any effect
    const after = decisionOf(disk)
    if (before !== null && after !== before) return `decision changed ${before} -> ${after}`
    if (after !== null) {
      if (firstDecision === null) firstDecision = after
      if (firstDecision !== after) return `decision changed ${firstDecision} -> ${after}`
    }
    if (after === 'commit' && !disk.participants.every(p => p.vote === 'yes' || p.vote === 'read-only')) return 'committed without unanimous yes/read-only'
    trace.push(`${event.type}${'participant' in event ? ' ' + event.participant : ''}${'vote' in event ? ' ' + event.vote : ''} -> ${disk.state}`)
    if (crashBeforeActing) { crash(); return undefined }
    for (const e of r.effects) {
      if (e.type === 'send-prepare') toParticipants.push({ kind: 'prepare', to: e.participant })
      if (e.type === 'send-decision') toParticipants.push({ kind: e.decision, to: e.participant })
      if (e.type === 'schedule-phase2') timers.push({ at: e.at, participant: e.participant })
    }
    return undefined
  }

  function crash (): void {
    trace.push('CRASH')
    crashed = true
    // Volatile state is gone: timers and answers on their way back; requests already sent may still arrive.
    timers = []
    toCoordinator = []
  }

  function participantReceives (m: ToParticipant): string | undefined {
    const s = sims.find(x => x.name === m.to) as Sim
    if (m.kind === 'prepare') {
      let vote: 'yes' | 'no' | 'read-only'
      if (s.state === 'none') {
        s.state = s.plan === 'yes' ? 'prepared' : s.plan === 'no' ? 'aborted' : 'read-only'
        vote = s.plan
      } else if (s.state === 'prepared' || s.state === 'committed') vote = 'yes'
      else if (s.state === 'read-only') vote = 'read-only'
      else vote = 'no' // aborted or tombstone: a late prepare votes no
      toCoordinator.push({ event: { type: 'vote', participant: s.name, vote, now } })
      return undefined
    }
    if (m.kind === 'commit') {
      // The commit decision must already be durable when anyone hears it.
      if (disk.state !== 'committed') return `${s.name} told commit while the log says ${disk.state}`
      if (s.state === 'prepared' || s.state === 'committed') {
        s.state = 'committed'
        toCoordinator.push({ event: { type: 'phase2-acked', participant: s.name, now } })
        return undefined
      }
      return `${s.name} told commit in state ${s.state}`
    }
    if (s.state === 'committed') return `${s.name} told abort after it committed`
    if (s.state === 'none') s.state = 'tombstone'
    else if (s.state === 'prepared') s.state = 'aborted'
    toCoordinator.push({ event: { type: 'phase2-acked', participant: s.name, now } })
    return undefined
  }

  let steps = 0
  for (; steps < 2000; steps++) {
    if (steps === 250) chaos = false
    if (crashed) {
      crashed = false
      const err = apply({ type: 'recovered', now }, false)
      if (err !== undefined) return fail(err)
      continue
    }
    const actions: Array<() => string | undefined> = []
    if (!commitRequested) actions.push(() => { commitRequested = true; return apply({ type: 'commit-requested', now }, chaos && rnd() < 0.05) })
    if (toParticipants.length > 0) {
      actions.push(() => {
        const i = Math.floor(rnd() * toParticipants.length) // reordering
        const m = toParticipants[i] as ToParticipant
        if (chaos && rnd() < 0.15) { toParticipants.splice(i, 1); trace.push(`lost ${m.kind} to ${m.to}`); failBack(m); return undefined }
        if (!(chaos && rnd() < 0.15)) toParticipants.splice(i, 1) // else: delivered and kept: a duplicate
        return participantReceives(m)
      })
    }
    if (toCoordinator.length > 0) {
      actions.push(() => {
        const i = Math.floor(rnd() * toCoordinator.length)
        const m = toCoordinator[i] as ToCoordinator
        if (chaos && rnd() < 0.1) { toCoordinator.splice(i, 1); trace.push('lost an answer'); return undefined }
        if (!(chaos && rnd() < 0.1)) toCoordinator.splice(i, 1)
        return apply({ ...m.event, now } as Event, chaos && rnd() < 0.05)
      })
    }
    if (timers.length > 0) {
      actions.push(() => {
        const tm = pick(timers)
        timers = timers.filter(x => x !== tm)
        now = Math.max(now, tm.at)
        return apply({ type: 'phase2-due', participant: tm.participant, now }, false)
      })
    }
    if (disk.state === 'active' || disk.state === 'preparing') {
      actions.push(() => { now += Math.floor(rnd() * 25); return apply({ type: 'expired', now }, chaos && rnd() < 0.1) })
    }
    if (chaos) actions.push(() => { if (rnd() < 0.04) crash(); return undefined })
    if (actions.length === 0 || (!chaos && quiescent())) break
    const err = pick(actions)()
    if (err !== undefined) return fail(err)
    now += 1
  }

  // A lost message is noticed by its sender as a failed call (a timeout): phase 2 retries.
  function failBack (m: ToParticipant): void {
    if (m.kind === 'prepare') toCoordinator.push({ event: { type: 'prepare-failed', participant: m.to, error: 'lost', now } })
    else toCoordinator.push({ event: { type: 'phase2-failed', participant: m.to, error: 'lost', refused: false, jitter: rnd(), now } })
  }

  function quiescent (): boolean {
    return toParticipants.length === 0 && toCoordinator.length === 0 && timers.length === 0 && commitRequested &&
      disk.state !== 'active' && disk.state !== 'preparing'
  }

  if (!quiescent()) return fail(`did not settle: state ${disk.state}, ${toParticipants.length}/${toCoordinator.length}/${timers.length} in flight`)
  const decision = decisionOf(disk)
  for (const s of sims) {
    if (s.state === 'prepared') return fail(`${s.name} left prepared after the ${decision} decision`)
    if (decision === 'abort' && s.state === 'committed') return fail(`${s.name} committed, decision abort`)
    if (decision === 'commit' && s.plan === 'yes' && s.state !== 'committed') return fail(`${s.name} is ${s.state}, decision commit`)
  }
  if (disk.completedAt === null) return fail('settled but not completed')
  return { ok: true, steps, decision: decision ?? 'none', crashes: trace.filter(x => x === 'CRASH').length }
}

t.test(`${SCHEDULES} seeded schedules keep every invariant`, async t => {
  const only = process.env.TWOPC_SEED
  const seeds = only !== undefined ? [Number(only)] : Array.from({ length: SCHEDULES }, (_, i) => i + 1)
  const outcomes: Record<string, number> = { commit: 0, abort: 0, crashes: 0 }
  let failures = 0
  for (const seed of seeds) {
    const r = runSchedule(seed)
    if (!r.ok) {
      failures++
      if (failures <= 3) t.fail(`seed ${seed}: ${r.why} (replay with TWOPC_SEED=${seed})`, { trace: r.trace.slice(-40) })
      continue
    }
    outcomes[r.decision] = (outcomes[r.decision] ?? 0) + 1
    outcomes.crashes = (outcomes.crashes ?? 0) + r.crashes
  }
  t.equal(failures, 0, 'no schedule broke an invariant')
  t.comment(`outcomes: ${JSON.stringify(outcomes)}`)
  if (only === undefined) {
    t.ok((outcomes.commit ?? 0) > SCHEDULES / 10 && (outcomes.abort ?? 0) > SCHEDULES / 10, 'schedules reach both outcomes')
    t.ok((outcomes.crashes ?? 0) > SCHEDULES / 10, 'schedules crash the coordinator')
  }
})

t.test('the same seed replays the same schedule', async t => {
  t.same(runSchedule(42), runSchedule(42))
})
