// Aggregation over repetitions (median, min, max) and the RESULTS.md renderer.

const PROCS = ['coordinator', 'inventory', 'payment', 'fanout', 'loadgen']

/** @param {number[]} xs */
function stats (xs) {
  const v = xs.filter(x => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = Math.floor(v.length / 2)
  const median = v.length % 2 === 1 ? /** @type {number} */ (v[mid]) : (/** @type {number} */ (v[mid - 1]) + /** @type {number} */ (v[mid])) / 2
  return { median, min: /** @type {number} */ (v[0]), max: /** @type {number} */ (v[v.length - 1]), n: v.length }
}

/**
 * @param {any[]} rows the measured windows (no strace)
 * @param {{ modes: string[], concurrency: number[] }} cfg
 * @param {any[]} [fsyncRows] the windows run under strace, for the fsync figures only
 */
export function aggregate (rows, cfg, fsyncRows = []) {
  const groups = []
  for (const concurrency of cfg.concurrency) {
    for (const mode of cfg.modes) {
      const rs = rows.filter(r => r.mode === mode && r.concurrency === concurrency)
      if (rs.length === 0) continue
      /** @type {Record<string, any>} */ const cpuPct = {}
      /** @type {Record<string, any>} */ const cpuUsPerTx = {}
      /** @type {Record<string, any>} */ const fsyncPerTx = {}
      for (const p of PROCS) {
        cpuPct[p] = stats(rs.map(r => r.cpuPct[p]))
        cpuUsPerTx[p] = stats(rs.map(r => r.cpuUsPerTx[p]))
      }
      /** @type {Record<string, any>} */ const ioPerTx = {}
      for (const p of ['coordinator', 'inventory', 'payment', 'fanout']) {
        // Older results.json files have no I/O counts.
        if (rs.every(r => r.ioPerTx?.[p] == null)) continue
        ioPerTx[p] = {}
        for (const k of ['writtenKb', 'writeCalls', 'toDiskKb']) ioPerTx[p][k] = stats(rs.map(r => r.ioPerTx?.[p]?.[k]))
      }
      /** @type {Record<string, any>} */ const fsyncBusyPct = {}
      // Older results.json files counted fsyncs in the measured windows themselves.
      const fs = fsyncRows.length > 0 ? fsyncRows.filter(r => r.mode === mode && r.concurrency === concurrency) : rs
      for (const p of ['coordinator', 'inventory', 'payment', 'total']) fsyncPerTx[p] = stats(fs.map(r => r.fsyncPerTx[p]))
      for (const p of ['coordinator', 'inventory', 'payment']) fsyncBusyPct[p] = stats(fs.map(r => r.fsyncBusyPct?.[p]))
      /** @type {Record<string, Record<string, any>>} */ const internals = {}
      for (const proc of ['coordinator', 'inventory', 'payment']) {
        const keys = new Set(rs.flatMap(r => Object.keys(r.internals?.[proc] ?? {})))
        if (keys.size === 0) continue
        internals[proc] = {}
        for (const k of keys) internals[proc][k] = stats(rs.map(r => r.internals?.[proc]?.[k]))
      }
      /** @type {Record<string, any>} */ const loopDelay = {}
      for (const p of ['coordinator', 'inventory', 'payment', 'fanout']) {
        // Older results.json files have no event-loop delays.
        if (rs.every(r => r.loopDelay?.[p] == null)) continue
        loopDelay[p] = { p99Ms: stats(rs.map(r => r.loopDelay?.[p]?.p99Ms)), maxMs: stats(rs.map(r => r.loopDelay?.[p]?.maxMs)) }
      }
      groups.push({
        mode,
        concurrency,
        internals,
        loopDelay,
        reps: rs.length,
        txPerSec: stats(rs.map(r => r.txPerSec)),
        latencyMs: { p50: stats(rs.map(r => r.latencyMs.p50)), p99: stats(rs.map(r => r.latencyMs.p99)), p999: stats(rs.map(r => r.latencyMs.p999)) },
        cpuPct,
        cpuUsPerTx,
        ioPerTx,
        fsyncPerTx,
        fsyncBusyPct,
        committed: rs.reduce((s, r) => s + r.committed, 0),
        aborted: rs.reduce((s, r) => s + r.aborted, 0),
        errors: rs.reduce((s, r) => s + r.errors, 0),
        firstError: rs.find(r => r.firstError !== undefined)?.firstError
      })
    }
  }
  return groups
}

const n0 = (/** @type {number} */ v) => v.toFixed(0)
const lat = (/** @type {number} */ v) => v < 10 ? v.toFixed(2) : v.toFixed(1)
const f2 = (/** @type {number} */ v) => v.toFixed(2)
const f1 = (/** @type {number} */ v) => v.toFixed(1)
/** median (min–max) */
function mm (/** @type {any} */ s, f = n0, spread = true) {
  if (s === null || s === undefined) return '–'
  if (!spread || s.n < 2) return f(s.median)
  return `${f(s.median)} <sub>${f(s.min)}–${f(s.max)}</sub>`
}
const MODE_NAMES = /** @type {Record<string, string>} */ ({ oneshot: '2PC one-shot', interactive: '2PC interactive', baseline: 'baseline fan-out' })

/**
 * One row of a per-server table: path, clients, then coordinator, inventory, payment, fan-out
 * (the coordinator's cell only on the 2PC paths, the fan-out's only on the baseline).
 * @param {any} x a group @param {(proc: string) => string} cellOf
 */
function serverRow (x, cellOf) {
  const base = x.mode === 'baseline'
  return `| ${MODE_NAMES[x.mode]} | ${x.concurrency} | ${base ? '–' : cellOf('coordinator')} | ${cellOf('inventory')} | ${cellOf('payment')} | ${base ? cellOf('fanout') : '–'} |`
}

/** @param {any} r results.json */
export function renderMarkdown (r) {
  const L = []
  const m = r.machine
  const c = r.config
  const groups = /** @type {any[]} */ (r.groups)
  const g = (/** @type {string} */ mode, /** @type {number} */ conc) => groups.find(x => x.mode === mode && x.concurrency === conc)
  L.push('# fastify-2pc benchmark results', '')
  L.push(`Run ${r.date} (until ${r.finishedAt}) with \`npm run bench\` — see [README.md](README.md) for the method.`, '')
  L.push('| machine | |', '| --- | --- |')
  L.push(`| CPU | ${m.cores} cores, ${m.cpuModel} |`)
  L.push(`| memory | ${m.memoryGb} GB |`)
  L.push(`| Node.js | ${m.node} |`)
  if (m.git) L.push(`| code | ${m.git.commit.slice(0, 12)}${m.git.dirty ? ' + uncommitted changes in coordinator/participant-sdk/protocol' : ''} |`)
  L.push(`| kernel | ${m.kernel} |`)
  L.push(`| SQLite files on | ${m.dataDirFs} |`)
  L.push(`| load average before / after (1, 5, 15 min) | ${m.loadBefore.map(f2).join(' ')} / ${(m.loadAfter ?? []).map(f2).join(' ')} |`)
  L.push('')
  L.push(`Settings: ${c.reps} windows × ${c.durationS} s per mode and concurrency, ${c.interleaved === true ? `the modes in turns (one window each per round; a ${c.warmupS} s warm-up before the first round's windows, at most 2 s before later ones)` : `after a ${c.warmupS} s warm-up`}; ` +
    `signatures ${c.secret ? 'on (TWOPC_SECRET: every callback HMAC-signed and checked)' : 'off'}; LOG_LEVEL=${c.logLevel}; ` +
    `fsyncs ${c.strace ? 'counted in a separate window per mode and concurrency with every server under strace (seccomp-bpf filter: one ptrace stop per fsync), so the strace overhead is in no other figure' : 'not counted'}. ` +
    `Coordinator started as shipped: \`node ${(c.coordinatorNodeArgs ?? []).join(' ')} coordinator/dist/bin.js\`` +
    `${c.batchMaxCalls === undefined ? ', batched callbacks at its default (TWOPC_BATCH_MAX_CALLS 64)' : c.batchMaxCalls === 1 ? ', batched callbacks OFF (TWOPC_BATCH_MAX_CALLS=1)' : `, TWOPC_BATCH_MAX_CALLS=${c.batchMaxCalls}`}` +
    `${c.inlineSyncMaxMs === undefined ? '; the logs sync inline while fdatasync is quick (default 1 ms)' : c.inlineSyncMaxMs === 0 ? '; every log fdatasync on the thread pool (inline sync off)' : `; inline-sync threshold ${c.inlineSyncMaxMs} ms`}. ` +
    'Figures are the median over the windows, with min–max in small print.', '')

  L.push('## Throughput and latency', '')
  L.push('| path | clients | committed tx/s | p50 ms | p99 ms | p99.9 ms | aborted | errors |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const x of groups) {
    L.push(`| ${MODE_NAMES[x.mode]} | ${x.concurrency} | ${mm(x.txPerSec)} | ${mm(x.latencyMs.p50, lat)} | ${mm(x.latencyMs.p99, lat)} | ${mm(x.latencyMs.p999, lat)} | ${x.aborted} | ${x.errors}${x.firstError ? ` (${String(x.firstError).slice(0, 80).replace(/\|/g, '/')})` : ''} |`)
  }
  L.push('')

  L.push('## 2PC against the baseline', '')
  L.push('Ratio of the median throughputs measured in this run.', '')
  L.push('| clients | one-shot tx/s | interactive tx/s | baseline req/s | one-shot / baseline | interactive / baseline | interactive / one-shot |', '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const conc of c.concurrency) {
    const o = g('oneshot', conc)?.txPerSec?.median
    const i = g('interactive', conc)?.txPerSec?.median
    const b = g('baseline', conc)?.txPerSec?.median
    const ratio = (/** @type {number | undefined} */ a, /** @type {number | undefined} */ d) => a !== undefined && d !== undefined && d > 0 ? f2(a / d) : '–'
    L.push(`| ${conc} | ${o === undefined ? '–' : n0(o)} | ${i === undefined ? '–' : n0(i)} | ${b === undefined ? '–' : n0(b)} | ${ratio(o, b)} | ${ratio(i, b)} | ${ratio(i, o)} |`)
  }
  L.push('')

  L.push('## CPU per process', '')
  L.push('Percent of one core over the window (utime+stime from /proc, all threads), and CPU µs per committed transaction.', '')
  L.push('| path | clients | coordinator % | inventory % | payment % | fan-out % | load gen % | CPU µs/tx coordinator | participants (sum) | all processes |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const x of groups) {
    const us = (/** @type {string} */ p) => x.cpuUsPerTx[p]?.median ?? 0
    const parts = us('inventory') + us('payment')
    const all = PROCS.reduce((s, p) => s + us(p), 0)
    L.push(`| ${MODE_NAMES[x.mode]} | ${x.concurrency} | ${mm(x.cpuPct.coordinator)} | ${mm(x.cpuPct.inventory)} | ${mm(x.cpuPct.payment)} | ${mm(x.cpuPct.fanout)} | ${mm(x.cpuPct.loadgen)} | ${x.mode === 'baseline' ? '–' : n0(us('coordinator'))} | ${n0(parts)} | ${n0(all)} |`)
  }
  L.push('')

  const withLoop = groups.filter(x => Object.keys(x.loopDelay ?? {}).length > 0)
  if (withLoop.length > 0) {
    L.push('## Event-loop delay', '')
    L.push('How late each server\'s event loop ran a 10 ms timer over the window (`monitorEventLoopDelay`, bench/lib/loop-delay.mjs): ' +
      'p99 and the longest, in ms (median over the windows, min–max in small print). A process whose loop stalls holds every ' +
      'transaction in flight there; the clients see it only as a tail, this names the process. Stalls shorter than ~10 ms may be missed.', '')
    L.push('| path | clients | coordinator p99 / max | inventory p99 / max | payment p99 / max | fan-out p99 / max |', '| --- | ---: | ---: | ---: | ---: | ---: |')
    const cell = (/** @type {any} */ d) => d === undefined ? '–' : `${mm(d.p99Ms, f1, false)} / ${mm(d.maxMs, f1)}`
    for (const x of withLoop) L.push(serverRow(x, p => cell(x.loopDelay[p])))
    L.push('')
  }

  const withIo = groups.filter(x => Object.keys(x.ioPerTx ?? {}).length > 0)
  if (withIo.length > 0) {
    L.push('## Writes per committed transaction', '')
    L.push('From `/proc/<pid>/io` over the window: KB passed to write syscalls (sockets and files: `wchar`), the number of ' +
      'those syscalls (`syscw`), and KB sent to storage (`write_bytes`: WAL frames, checkpoints). They count work rather than ' +
      'time, so unlike the CPU figures they hardly move with the machine\'s speed: compare these across machines and runs.', '')
    L.push('| path | clients | coordinator KB / calls / to disk KB | inventory KB / calls / to disk KB | payment KB / calls / to disk KB | fan-out KB / calls |',
      '| --- | ---: | ---: | ---: | ---: | ---: |')
    const k1 = (/** @type {number | undefined} */ v) => v === undefined ? '–' : v.toFixed(1)
    const cell = (/** @type {any} */ io, disk = true) => io === undefined
      ? '–'
      : `${k1(io.writtenKb?.median)} / ${k1(io.writeCalls?.median)}${disk ? ` / ${k1(io.toDiskKb?.median)}` : ''}`
    for (const x of withIo) L.push(serverRow(x, p => cell(x.ioPerTx[p], p !== 'fanout')))
    L.push('')
  }

  const inside = groups.filter(x => x.internals?.coordinator !== undefined)
  if (inside.length > 0) {
    L.push('## Inside the processes', '')
    L.push('Means over each window of the histograms the processes export on `/metrics` (median over the windows): how long the ' +
      'coordinator held the request, phase 1 (prepare sent to decision logged), and the logs\' writes (one SQLite transaction, ' +
      'on the event loop) and syncs (one fdatasync of the WAL, inline while quick, else on the thread pool), with the steps or callbacks each carried; ' +
      'and the coordinator\'s batched callbacks (calls per batch request, batch requests per second to both participants; a lone call goes out singly and is not counted).', '')
    L.push('| path | clients | request ms | phase 1 ms | coordinator: write batch / ms | sync batch / ms | syncs/s | callbacks per batch | batches/s | inventory: write batch / ms | sync batch / ms | syncs/s |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    const v = (/** @type {any} */ s, /** @type {(n: number) => string} */ f) => s === null || s === undefined ? '–' : f(s.median)
    const f1 = (/** @type {number} */ n) => n.toFixed(1)
    const f3 = (/** @type {number} */ n) => n < 1 ? n.toFixed(3) : n.toFixed(2)
    for (const x of inside) {
      const co = x.internals.coordinator
      const inv = x.internals.inventory ?? {}
      L.push(`| ${MODE_NAMES[x.mode]} | ${x.concurrency} | ${v(co.requestMs, lat)} | ${v(co.phase1Ms, lat)} | ${v(co.flushBatch, f1)} / ${v(co.flushMs, f3)} | ${v(co.syncBatch, f1)} / ${v(co.syncMs, f3)} | ${v(co.syncsPerSec, n0)} | ${v(co.callbackBatch, f1)} | ${v(co.batchesPerSec, n0)} | ` +
        `${v(inv.flushBatch, f1)} / ${v(inv.flushMs, f3)} | ${v(inv.syncBatch, f1)} / ${v(inv.syncMs, f3)} | ${v(inv.syncsPerSec, n0)} |`)
    }
    L.push('')
  }

  if (c.strace) {
    L.push('## Log flushes (fsync + fdatasync) per committed transaction', '')
    const timed = groups.some(x => x.fsyncBusyPct?.coordinator != null)
    if (timed) L.push('Counted in a separate window under strace (one per row). With the share of the window each process spent inside fsync/fdatasync (strace -T; inline on the event loop while syncs average ≤ 1 ms and none runs, on libuv\'s thread pool otherwise).', '')
    L.push(`| path | clients | coordinator | inventory | payment | total |${timed ? ' in fsync: coordinator % | inventory % | payment % |' : ''}`, `| --- | ---: | ---: | ---: | ---: | ---: |${timed ? ' ---: | ---: | ---: |' : ''}`)
    for (const x of groups) {
      const busy = timed ? ` ${mm(x.fsyncBusyPct.coordinator, n0)} | ${mm(x.fsyncBusyPct.inventory, n0)} | ${mm(x.fsyncBusyPct.payment, n0)} |` : ''
      L.push(`| ${MODE_NAMES[x.mode]} | ${x.concurrency} | ${mm(x.fsyncPerTx.coordinator, f2)} | ${mm(x.fsyncPerTx.inventory, f2)} | ${mm(x.fsyncPerTx.payment, f2)} | ${mm(x.fsyncPerTx.total, f2)} |${busy}`)
    }
    L.push('')
  }

  L.push('## Targets (measured, not asserted)', '')
  L.push('| target | measured | met |', '| --- | --- | :---: |')
  const maxC = Math.max(...c.concurrency)
  const o64 = g('oneshot', 64)
  const b64 = g('baseline', 64)
  const o1 = g('oneshot', 1)
  const yes = (/** @type {boolean} */ ok) => ok ? 'yes' : '**no**'
  if (o64) {
    L.push(`| one-shot, 64 clients: ≥ 3,000 committed tx/s | ${n0(o64.txPerSec.median)} tx/s | ${yes(o64.txPerSec.median >= 3000)} |`)
    if (b64) L.push(`| one-shot, 64 clients: ≥ 0.35 of the baseline | ${f2(o64.txPerSec.median / b64.txPerSec.median)} | ${yes(o64.txPerSec.median / b64.txPerSec.median >= 0.35)} |`)
    L.push(`| one-shot, 64 clients: p99 ≤ 50 ms | ${lat(o64.latencyMs.p99.median)} ms | ${yes(o64.latencyMs.p99.median <= 50)} |`)
  }
  if (o1) L.push(`| one-shot, 1 client: p50 ≤ 2 ms | ${lat(o1.latencyMs.p50.median)} ms | ${yes(o1.latencyMs.p50.median <= 2)} |`)
  if (r.rss) L.push(`| coordinator RSS ≤ 150 MB after 100,000 transactions | ${n0(r.rss.maxMb)} MB max over ${r.rss.transactions} tx | ${r.rss.transactions >= 100000 ? yes(r.rss.maxMb <= 150) : 'n/a (fewer tx)'} |`)
  else L.push('| coordinator RSS ≤ 150 MB after 100,000 transactions | not run (`--rss 100000`) | – |')
  if (maxC !== 64) L.push('', `(the run's highest concurrency was ${maxC})`)
  L.push('')

  if (r.rss) {
    L.push('## Coordinator RSS', '')
    L.push(`${r.rss.transactions} one-shot transactions at ${r.rss.concurrency} clients (${r.rss.run.seconds.toFixed(0)} s, ${r.rss.run.errors} errors); fresh coordinator and log. The coordinator keeps no completed transaction in memory (only unfinished ones: at most 20,000 of those and about 32 MiB of them, estimated); completed ones stay in the SQLite log until retention (TWOPC_RETENTION, default 7 d) prunes them — none is that old in this run.`, '')
    L.push('| transactions | RSS MB | at s |', '| ---: | ---: | ---: |')
    for (const s of r.rss.samples) L.push(`| ${s.transactions} | ${s.rssMb.toFixed(1)} | ${s.seconds.toFixed(0)} |`)
    L.push(`| after phase 2 drained (+2 s) | ${r.rss.afterDrainMb.toFixed(1)} | |`, '')
    if (r.rss.mappings) {
      L.push(`After the drain, by mapping (/proc/<pid>/smaps, MB): ${Object.entries(r.rss.mappings).map(([k, v]) => `${k} ${Number(v).toFixed(1)}`).join(', ')}. ` +
        `V8 heap spaces, committed / used MB: ${(r.rss.heap ?? []).map((/** @type {any} */ h) => `${h.space} ${h.sizeMb.toFixed(1)} / ${h.usedMb.toFixed(1)}`).join(', ')}. ` +
        `Node flags: \`${(r.rss.nodeArgs ?? []).join(' ') || '(none)'}\`.`, '')
    }
  }

  if (r.profile) {
    const p = r.profile
    L.push('## Where the coordinator\'s time goes (`node --cpu-prof`)', '')
    L.push(`One-shot path, ${p.concurrency} clients, ${p.seconds} s (${p.txPerSec === undefined ? '?' : n0(p.txPerSec)} tx/s under the profiler; signatures ${c.secret ? 'on' : 'off'}). ` +
      `Profile: \`${p.file}\` (not committed). Measured window only (${p.wallMs} ms; start-up, warm-up and shutdown left out): ${p.sampledMs} ms sampled, idle ${p.idleMs} ms, busy ${p.busyMs} ms; percentages are of busy time. ` +
      'The profiler samples wall-clock time of the main thread: native time inside a binding (better-sqlite3 statements, ' +
      'including the fsync a commit waits for) is charged to the JS function that called it, and on a loaded machine the time the ' +
      'thread waited for a core is charged to whatever it was running.', '')
    L.push('Self time by module:', '')
    L.push('| module | ms | % busy |', '| --- | ---: | ---: |')
    for (const x of p.topModules) L.push(`| ${x.name} | ${x.ms} | ${x.pctOfBusy} |`)
    L.push('', 'Top functions by self time:', '')
    L.push('| function | ms | % busy |', '| --- | ---: | ---: |')
    for (const x of p.topFunctions) L.push(`| \`${x.name}\` | ${x.ms} | ${x.pctOfBusy} |`)
    if (p.topOwnInclusive !== undefined) {
      L.push('', 'The coordinator\'s own functions by total time (self + callees; nested ones overlap):', '')
      L.push('| function | ms | % busy |', '| --- | ---: | ---: |')
      for (const x of p.topOwnInclusive) L.push(`| \`${x.name}\` | ${x.ms} | ${x.pctOfBusy} |`)
    }
    L.push('')
    L.push('<!-- analysis -->', '')
  }
  return L.join('\n')
}
