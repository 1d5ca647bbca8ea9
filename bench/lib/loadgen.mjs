// The load generator: its own process, an undici Pool with one connection per virtual client,
// closed loop (each client sends its next request when the previous answer is in).
//
// Driven over IPC by run.mjs:
//   {type:'run', mode, concurrency, warmupMs, durationMs, reps, ...}  -> 'mark' at each window
//     start, 'rep' with the figures of each window, then 'done';
//   {type:'count', total, progressEvery, ...}                          -> 'progress' every
//     `progressEvery` committed transactions, then 'done' (the RSS run).
// A request counts in the window it completes in; windows follow each other without a pause.
import './watchdog.mjs'
import { createHistogram, performance } from 'node:perf_hooks'
import { undici } from './deps.mjs'

const JSON_HEADERS = { 'content-type': 'application/json' }

/**
 * @param {import('undici').Pool} pool
 * @param {string} path
 * @param {unknown} body
 * @param {number} expected
 */
async function post (pool, path, body, expected) {
  const res = await pool.request({ path, method: 'POST', headers: JSON_HEADERS, body: JSON.stringify(body) })
  const text = await res.body.text()
  if (res.statusCode !== expected) throw new Error(`POST ${path} -> ${res.statusCode} ${text.slice(0, 200)}`)
  return JSON.parse(text)
}

/**
 * One transaction of the given mode; resolves with its outcome state.
 * @param {string} mode
 * @param {import('undici').Pool} pool
 * @param {{ name: string, url: string }[]} participants
 * @returns {Promise<string>}
 */
async function oneTransaction (mode, pool, participants) {
  const payload = { sku: 'apple', qty: 1 }
  switch (mode) {
    case 'oneshot': {
      const out = await post(pool, '/v1/transactions', {
        participants: participants.map(p => ({ name: p.name, url: p.url, payload })),
        commit: true
      }, 200)
      return out.state
    }
    case 'interactive': {
      // As the SDK client does after start(): begin, each enlistment, then commit.
      const begun = await post(pool, '/v1/transactions', {}, 201)
      const base = `/v1/transactions/${encodeURIComponent(begun.id)}`
      for (const p of participants) await post(pool, `${base}/participants`, { name: p.name, url: p.url, payload }, 201)
      const out = await post(pool, `${base}/commit`, {}, 200)
      return out.state
    }
    case 'baseline': {
      const out = await post(pool, '/order', payload, 200)
      return out.state
    }
    default: throw new Error(`unknown mode ${mode}`)
  }
}

function newWindow () {
  return { committed: 0, aborted: 0, errors: 0, firstError: /** @type {string | undefined} */ (undefined), hist: createHistogram(), start: performance.now(), cpu: process.cpuUsage() }
}

/** @param {ReturnType<typeof newWindow>} w */
function summarize (w) {
  const seconds = (performance.now() - w.start) / 1000
  const cpu = process.cpuUsage(w.cpu)
  const ms = (/** @type {number} */ p) => w.hist.count === 0 ? null : w.hist.percentile(p) / 1e6
  return {
    seconds,
    committed: w.committed,
    aborted: w.aborted,
    errors: w.errors,
    firstError: w.firstError,
    txPerSec: w.committed / seconds,
    latencyMs: { p50: ms(50), p99: ms(99), p999: ms(99.9), mean: w.hist.count === 0 ? null : w.hist.mean / 1e6, max: w.hist.count === 0 ? null : w.hist.max / 1e6 },
    loadgenCpuMs: (cpu.user + cpu.system) / 1000
  }
}

/**
 * @param {any} msg
 * @param {(w: ReturnType<typeof newWindow> | undefined, state: string | undefined, ns: number, err?: Error) => void} onDone
 * @param {() => boolean} stopped
 */
async function drive (msg, onDone, stopped) {
  const pool = new undici.Pool(msg.origin, { connections: msg.concurrency, pipelining: 1 })
  const client = async () => {
    while (!stopped()) {
      const t0 = performance.now()
      try {
        const state = await oneTransaction(msg.mode, pool, msg.participants)
        onDone(undefined, state, (performance.now() - t0) * 1e6)
      } catch (err) {
        onDone(undefined, undefined, 0, /** @type {Error} */ (err))
        await new Promise(resolve => setTimeout(resolve, 5)) // no hot loop on a refused connection
      }
    }
  }
  await Promise.all(Array.from({ length: msg.concurrency }, client))
  await pool.close()
}

/** @param {any} msg */
async function runTimed (msg) {
  /** @type {ReturnType<typeof newWindow> | undefined} */
  let window
  let stop = false
  const sleep = (/** @type {number} */ ms) => new Promise(resolve => setTimeout(resolve, ms))
  const loop = drive(msg, (_w, state, ns, err) => {
    if (window === undefined) return // warm-up
    if (err !== undefined) { window.errors++; window.firstError ??= err.message; return }
    if (state === 'committed') { window.committed++; window.hist.record(Math.max(1, Math.round(ns))) } else window.aborted++
  }, () => stop)
  await sleep(msg.warmupMs)
  for (let rep = 0; rep < msg.reps; rep++) {
    process.send?.({ type: 'mark', rep })
    window = newWindow()
    await sleep(msg.durationMs)
    const figures = summarize(window)
    window = newWindow() // requests completing before the next mark still land somewhere harmless
    process.send?.({ type: 'rep', rep, figures })
  }
  window = undefined
  stop = true
  await loop
  process.send?.({ type: 'done' })
}

/** @param {any} msg */
async function runCount (msg) {
  let committed = 0
  let errors = 0
  /** @type {string | undefined} */
  let firstError
  const t0 = performance.now()
  await drive(msg, (_w, state, _ns, err) => {
    if (err !== undefined) { errors++; firstError ??= err.message; return }
    if (state === 'committed') {
      committed++
      if (committed % msg.progressEvery === 0) process.send?.({ type: 'progress', committed, seconds: (performance.now() - t0) / 1000 })
    }
  }, () => committed >= msg.total || errors > 1000)
  process.send?.({ type: 'done', committed, errors, firstError, seconds: (performance.now() - t0) / 1000 })
}

process.on('message', (/** @type {any} */ msg) => {
  const job = msg.type === 'run' ? runTimed(msg) : msg.type === 'count' ? runCount(msg) : Promise.reject(new Error(`unknown message ${msg.type}`))
  job.catch(err => { process.send?.({ type: 'error', message: String(err?.stack ?? err) }) })
})
process.on('disconnect', () => process.exit(0))
