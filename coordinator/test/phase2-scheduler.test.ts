/**
 * The phase-2 scheduler on its own: per-key and global in-flight limits, turns taken round
 * robin, bounded queues, stop. Jobs are promises the test settles by hand.
 */
import t from 'tap'
import { FairScheduler, type FairSchedulerOptions } from '../src/phase2-scheduler.js'

interface Job { key: string, n: number }

function harness (options: FairSchedulerOptions): {
  s: FairScheduler<Job>
  started: Job[]
  /** Settles the oldest running job of `key` (or any key); returns it. */
  finish: (key?: string) => Promise<Job>
} {
  const started: Job[] = []
  const running: Array<{ job: Job, done: () => void }> = []
  const s = new FairScheduler<Job>(options, async job => {
    started.push(job)
    await new Promise<void>(resolve => { running.push({ job, done: resolve }) })
  })
  const finish = async (key?: string): Promise<Job> => {
    const i = running.findIndex(r => key === undefined || r.job.key === key)
    if (i === -1) throw new Error(`nothing running for ${key ?? 'any key'}`)
    const [r] = running.splice(i, 1)
    r?.done()
    // The slot is freed in the promise's settlement: let it run.
    await new Promise(resolve => setImmediate(resolve))
    return (r as { job: Job }).job
  }
  return { s, started, finish }
}

t.test('a key with a backlog holds its own limit only; another key starts at once', async t => {
  const { s, started } = harness({ maxInFlight: 256, maxInFlightPerKey: 32, maxQueuedPerKey: 10_000 })
  for (let n = 0; n < 800; n++) s.submit('hung', { key: 'hung', n })
  t.equal(s.inFlight, 32, 'only its own share of slots')
  t.equal(s.queued, 768)
  t.same(s.stats('hung'), { queued: 768, inFlight: 32 })
  t.ok(s.submit('healthy', { key: 'healthy', n: 0 }))
  t.same(started.at(-1), { key: 'healthy', n: 0 }, 'started in the same call, not behind the backlog')
  t.equal(s.inFlight, 33)
})

t.test('under the global limit the keys with work take turns', async t => {
  const { s, started, finish } = harness({ maxInFlight: 4, maxInFlightPerKey: 3, maxQueuedPerKey: 100 })
  for (let n = 0; n < 10; n++) s.submit('a', { key: 'a', n })
  t.same(started.map(j => j.key), ['a', 'a', 'a'], 'a at its own limit')
  for (let n = 0; n < 10; n++) s.submit('b', { key: 'b', n })
  for (let n = 0; n < 10; n++) s.submit('c', { key: 'c', n })
  t.same(started.map(j => j.key), ['a', 'a', 'a', 'b'], 'global limit reached')
  // Each freed slot goes to the next key in turn, whoever freed it.
  await finish('a')
  await finish('a')
  await finish('b')
  await finish('c')
  await finish('a')
  t.same(started.slice(4).map(j => j.key), ['b', 'c', 'a', 'b', 'c'])
  t.equal(s.inFlight, 4)
  // Order within a key is kept.
  t.same(started.filter(j => j.key === 'a').map(j => j.n), [0, 1, 2, 3])
})

t.test('a full queue refuses the job (the caller retries it later); other keys are unaffected', async t => {
  const { s, finish } = harness({ maxInFlight: 10, maxInFlightPerKey: 2, maxQueuedPerKey: 3 })
  const accepted = Array.from({ length: 8 }, (_, n) => s.submit('a', { key: 'a', n }))
  t.same(accepted, [true, true, true, true, true, false, false, false], '2 in flight + 3 queued')
  t.same(s.stats('a'), { queued: 3, inFlight: 2 })
  t.ok(s.submit('b', { key: 'b', n: 0 }))
  await finish('a')
  t.ok(s.submit('a', { key: 'a', n: 99 }), 'room again once one went out')
  t.equal(s.submit('a', { key: 'a', n: 100 }), false)
})

t.test('a job that throws at once frees its slot', async t => {
  let calls = 0
  const s = new FairScheduler<number>({ maxInFlight: 1, maxInFlightPerKey: 1, maxQueuedPerKey: 10 }, (n) => {
    calls++
    if (n === 0) throw new Error('sync failure')
    return Promise.reject(new Error('async failure'))
  })
  s.submit('k', 0)
  s.submit('k', 1)
  s.submit('k', 2)
  t.equal(calls, 2, 'the second started once the first threw')
  await new Promise(resolve => setImmediate(resolve))
  t.equal(calls, 3, 'a rejected job frees its slot too')
  t.equal(s.inFlight, 0)
  t.same(s.stats('k'), { queued: 0, inFlight: 0 }, 'an idle key is forgotten')
})

t.test('stop drops what is queued and starts nothing more', async t => {
  const { s, started, finish } = harness({ maxInFlight: 2, maxInFlightPerKey: 2, maxQueuedPerKey: 100 })
  for (let n = 0; n < 5; n++) s.submit('a', { key: 'a', n })
  s.stop()
  t.equal(s.queued, 0)
  await finish()
  t.equal(started.length, 2)
  t.equal(s.submit('a', { key: 'a', n: 9 }), false)
})
