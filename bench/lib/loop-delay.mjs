// Event-loop delay of this server process, for the bench's report: on SIGWINCH (ignored by
// default, so never fatal; close-with-grace takes SIGUSR2 as a shutdown signal) it prints one
// `BENCH-LOOP {json}` line with the delays measured since the previous SIGWINCH (or start) and
// starts over. The bench asks at the start and at the end of each window.
//
// Why: a stall on any process's event loop (a statement that reads the whole log, a long GC)
// holds every transaction in flight there, and shows in the clients' p99 only as a tail. The
// delay histogram names the process. A 10 ms resolution keeps the probe's own timer cheap; a
// stall shorter than that may be missed, one longer is measured.
import { monitorEventLoopDelay } from 'node:perf_hooks'

const RESOLUTION_MS = 10
const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS })
histogram.enable()
// The histogram records each interval between the probe's timer ticks, resolution included:
// the delay is what exceeds it.
const ms = (/** @type {number} */ ns) => Number.isFinite(ns) ? Math.max(0, Math.round((ns / 1e6 - RESOLUTION_MS) * 100) / 100) : null
process.on('SIGWINCH', () => {
  const figures = histogram.count === 0
    ? { count: 0, maxMs: null, p99Ms: null }
    : { count: histogram.count, maxMs: ms(histogram.max), p99Ms: ms(histogram.percentile(99)) }
  histogram.reset()
  process.stdout.write(`BENCH-LOOP ${JSON.stringify(figures)}\n`)
})
