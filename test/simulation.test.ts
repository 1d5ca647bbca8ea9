/**
 * Deterministic simulation (see test/support/simulation.ts): the real pure coordinator machine
 * and the real pure participant machine, driven by a seeded scheduler injecting crashes and
 * restarts of both, message loss, duplication, reordering, timeouts and expiry.
 *
 * - TWOPC_SIM_SCHEDULES (default 10000) schedules with seeds TWOPC_SIM_FIRST.. (default 1).
 * - TWOPC_SEED=<n> replays exactly one schedule and prints its trace.
 *
 * The second test runs the same simulator over deliberately broken machines (mutants): it must
 * catch every one, or the simulation could not fail.
 */
import t from 'tap'
import { runSchedules, simulate, REAL_MACHINES } from './support/simulation.js'
import type { Machines } from './support/simulation.js'
import type { Transaction } from '../coordinator/src/core/machine.js'

const replay = process.env.TWOPC_SEED

if (replay !== undefined && replay !== '') {
  t.test(`replay schedule ${replay}`, async t => {
    const r = simulate(Number(replay), { trace: true })
    process.stderr.write(r.trace.join('\n') + '\n')
    if (!r.ok) t.fail(`seed ${r.seed}: ${r.why}`)
    else t.pass(`seed ${r.seed}: ${r.steps} steps, ${r.faults} faults, ${r.decisions.join(',')}`)
  })
} else {
  t.test('10,000 seeded schedules over both real machines keep every invariant', async t => {
    const count = Number(process.env.TWOPC_SIM_SCHEDULES ?? 10_000)
    const first = Number(process.env.TWOPC_SIM_FIRST ?? 1)
    const started = performance.now()
    const { stats, failure } = runSchedules(first, count)
    const seconds = (performance.now() - started) / 1000
    if (failure !== undefined) {
      // Print the trace of the failing schedule: the same seed replays it exactly.
      process.stderr.write(simulate(failure.seed, { trace: true }).trace.join('\n') + '\n')
      t.fail(`seed ${failure.seed}: ${failure.why} — replay with TWOPC_SEED=${failure.seed}`)
      return
    }
    t.equal(stats.schedules, count)
    t.comment(`${stats.schedules} schedules, ${stats.steps} steps, ${stats.faults} faults, ${stats.commits} commits, ${stats.aborts} aborts in ${seconds.toFixed(1)} s (${Math.round(stats.schedules / seconds)} schedules/s)`)
    // The schedules really exercise both outcomes and faults (a simulator that only aborts proves little).
    t.ok(stats.commits > count / 4, `commits: ${stats.commits}`)
    t.ok(stats.aborts > count / 4, `aborts: ${stats.aborts}`)
    t.ok(stats.faults > count, `faults: ${stats.faults}`)
  })

  t.test('a seed replays exactly', async t => {
    const a = simulate(4242, { trace: true })
    const b = simulate(4242, { trace: true })
    t.same(a, b)
    t.ok(a.trace.length > 0, 'a trace was recorded')
  })

  t.test('the simulation catches broken machines', async t => {
    const mutants: Record<string, Machines> = {
      'coordinator counts a no vote as yes': {
        ...REAL_MACHINES,
        step: (tx, event, policy) => REAL_MACHINES.step(tx, event.type === 'vote' && event.vote === 'no' ? { ...event, vote: 'yes' } : event, policy)
      },
      'coordinator presumes commit after a restart': {
        ...REAL_MACHINES,
        step: (tx, event, policy) => {
          const r = REAL_MACHINES.step(tx, event, policy)
          if (event.type !== 'recovered' || !r.ok || tx.state === 'committed' || tx.state === 'aborted') return r
          const committed: Transaction = { ...r.tx, state: 'committed', reason: null }
          return { ...r, tx: committed, effects: r.effects.map(e => e.type === 'send-decision' ? { ...e, decision: 'commit' } : e) }
        }
      },
      'coordinator commits without waiting for the last vote': {
        ...REAL_MACHINES,
        step: (tx, event, policy) => {
          const r = REAL_MACHINES.step(tx, event, policy)
          if (event.type !== 'vote' || event.vote !== 'yes' || !r.ok || r.tx.state !== 'preparing') return r
          const rest = r.tx.participants.filter(p => p.vote === null)
          if (rest.length !== 1) return r
          // Pretend the missing vote was yes.
          return REAL_MACHINES.step(r.tx, { type: 'vote', participant: (rest[0] as { name: string }).name, vote: 'yes', now: event.now }, policy)
        }
      },
      'participant takes "pending" for commit': {
        ...REAL_MACHINES,
        transition: (state, event) => REAL_MACHINES.transition(state, event.type === 'decision-answer' && event.decision === 'pending' ? { ...event, decision: 'commit' } : event)
      },
      'participant votes yes without recording prepared': {
        ...REAL_MACHINES,
        transition: (state, event) => {
          const s = REAL_MACHINES.transition(state, event)
          return s.next === 'prepared' ? { ...s, next: undefined } : s
        }
      },
      'participant leaves no tombstone on abort-before-prepare': {
        ...REAL_MACHINES,
        transition: (state, event) => {
          const s = REAL_MACHINES.transition(state, event)
          return s.next === 'tombstone' ? { ...s, next: undefined } : s
        }
      }
    }
    for (const [name, machines] of Object.entries(mutants)) {
      const { stats, failure } = runSchedules(1, 10_000, machines)
      t.ok(failure !== undefined, `caught: ${name}${failure === undefined ? '' : ` (seed ${failure.seed} after ${stats.schedules} schedules: ${failure.why})`}`)
    }
  })
}
