#!/usr/bin/env node
// `npm run bench [-- flags]`: the fastify-2pc benchmark. See bench/README.md.
import { fork, execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readdirSync, readFileSync } from 'node:fs'
import { cpus, tmpdir, release, loadavg, totalmem } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { ServerProcess, freePort, rssMb, started, straceAvailable } from './lib/cluster.mjs'
import { summarizeProfile } from './lib/profile.mjs'
import { renderMarkdown, aggregate } from './lib/report.mjs'

const HERE = fileURLToPath(new URL('.', import.meta.url))
const ROOT = join(HERE, '..')

const { values: flags } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    reps: { type: 'string' },
    concurrency: { type: 'string' },
    modes: { type: 'string' },
    rss: { type: 'string' },
    'rss-concurrency': { type: 'string', default: '64' },
    profile: { type: 'string' },
    'coordinator-node-args': { type: 'string' },
    'batch-max-calls': { type: 'string' },
    'inline-sync-max-ms': { type: 'string' },
    'profile-participant': { type: 'boolean', default: false },
    'profile-concurrency': { type: 'string' },
    strace: { type: 'boolean', default: true },
    'no-strace': { type: 'boolean', default: false },
    secret: { type: 'boolean', default: true },
    'no-secret': { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'warn' },
    'data-dir': { type: 'string' },
    out: { type: 'string' },
    render: { type: 'string' },
    help: { type: 'boolean', default: false }
  }
})

if (flags.render !== undefined) {
  // Re-renders RESULTS.md next to a results.json (after a change to the report's layout).
  const results = JSON.parse(readFileSync(flags.render, 'utf8'))
  writeFileSync(join(flags.render, '..', 'RESULTS.md'), renderMarkdown(results))
  process.exit(0)
}

if (flags.help) {
  process.stdout.write(`npm run bench -- [flags]
  --quick                smoke run: 2 s windows, 0.5 s warm-up, 1 rep, 3 s profile; writes to bench/.out/
  --duration <s>         length of one measured window (10)
  --warmup <s>           warm-up before the windows of each mode × concurrency (5)
  --reps <n>             measured windows per mode × concurrency (3)
  --concurrency <list>   closed-loop clients (1,16,64)
  --modes <list>         oneshot,interactive,baseline
  --profile <s>          coordinator --cpu-prof run, one-shot at the highest concurrency (10; 0 = skip)
  --profile-concurrency <c>  clients of the profile run (default: the highest of --concurrency)
  --profile-participant  in the profile run, also the inventory participant under --cpu-prof
                         (left in <out>/profile/inventory/, not summarized)
  --rss <n>              also: one-shot run of n transactions, coordinator RSS every 10% (0 = skip)
  --rss-concurrency <c>  concurrency of the RSS run (64)
  --coordinator-node-args=<flags>  node/V8 flags of the coordinator process (default: the shipped ones,
                         "--heap-growing-percent=50 --v8-pool-size=1"; "--coordinator-node-args=" for none)
  --batch-max-calls <n>  the coordinator's TWOPC_BATCH_MAX_CALLS (default: unset, the coordinator's default 64;
                         1 = never batch callbacks, every call its own request)
  --inline-sync-max-ms <n>  the logs' inline-sync threshold: the coordinator's TWOPC_LOG_INLINE_SYNC_MAX_MS
                         and the participants' inlineSyncMaxMs (default: unset, their default 1;
                         0 = every fdatasync on the thread pool)
  --no-strace            do not count fsyncs (strace adds a ptrace stop per fsync)
  --no-secret            unsigned callbacks (default: TWOPC_SECRET set, every callback HMAC-signed)
  --log-level <lvl>      coordinator and participants LOG_LEVEL (warn: no per-request logs)
  --data-dir <dir>       where the SQLite files go (default: a new dir under the OS temp dir)
  --out <dir>            where RESULTS.md and results.json go (bench/, or bench/.out/ with --quick)
  --render <json>        only re-render RESULTS.md from a results.json
`)
  process.exit(0)
}

/**
 * The V8 flags the coordinator ships with (Dockerfile CMD, docker-compose.yml; README "Memory"):
 * the bench measures the coordinator as it is run. test/shipped-node-flags.test.ts checks the
 * three places agree.
 */
const COORDINATOR_NODE_FLAGS = ['--heap-growing-percent=50', '--v8-pool-size=1']

const quick = flags.quick
const num = (/** @type {string | undefined} */ v, /** @type {number} */ d) => v === undefined ? d : Number(v)
const cfg = {
  quick,
  durationS: num(flags.duration, quick ? 2 : 10),
  warmupS: num(flags.warmup, quick ? 0.5 : 5),
  reps: num(flags.reps, quick ? 1 : 3),
  concurrency: (flags.concurrency ?? '1,16,64').split(',').map(Number),
  modes: (flags.modes ?? 'oneshot,interactive,baseline').split(','),
  profileS: num(flags.profile, quick ? 3 : 10),
  profileConcurrency: flags['profile-concurrency'] === undefined ? undefined : Number(flags['profile-concurrency']),
  rss: num(flags.rss, 0),
  rssConcurrency: Number(flags['rss-concurrency']),
  strace: flags.strace && !flags['no-strace'],
  secret: flags.secret && !flags['no-secret'],
  logLevel: flags['log-level'] ?? 'warn',
  batchMaxCalls: flags['batch-max-calls'] === undefined ? undefined : Number(flags['batch-max-calls']),
  inlineSyncMaxMs: flags['inline-sync-max-ms'] === undefined ? undefined : Number(flags['inline-sync-max-ms']),
  /** Windows of the modes in turns (round robin), not mode after mode (results.json: since this was added). */
  interleaved: true,
  coordinatorNodeArgs: (flags['coordinator-node-args'] ?? COORDINATOR_NODE_FLAGS.join(' ')).split(' ').filter(Boolean)
}
for (const [k, v] of Object.entries(cfg)) {
  if (typeof v === 'number' && !(v >= 0)) throw new Error(`bad --${k}: ${v}`)
}
if (cfg.batchMaxCalls !== undefined && !(Number.isInteger(cfg.batchMaxCalls) && cfg.batchMaxCalls >= 1)) throw new Error('bad --batch-max-calls')
if (cfg.concurrency.some(c => !Number.isInteger(c) || c < 1)) throw new Error('bad --concurrency')
if (cfg.profileConcurrency !== undefined && !(Number.isInteger(cfg.profileConcurrency) && cfg.profileConcurrency >= 1)) throw new Error('bad --profile-concurrency')
for (const m of cfg.modes) if (!['oneshot', 'interactive', 'baseline'].includes(m)) throw new Error(`bad mode ${m}`)
if (cfg.strace && !straceAvailable()) {
  process.stderr.write('bench: strace (with --seccomp-bpf) is not available: fsyncs are not counted (apt-get install strace)\n')
  cfg.strace = false
}

const outDir = resolve(flags.out ?? (quick ? join(HERE, '.out') : HERE)) // absolute: the coordinator's cwd is its data dir
mkdirSync(outDir, { recursive: true })
const dataDir = flags['data-dir'] ?? mkdtempSync(join(tmpdir(), 'fastify-2pc-bench-'))
mkdirSync(dataDir, { recursive: true })
const ownDataDir = flags['data-dir'] === undefined
const log = (/** @type {string} */ s) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${s}\n`)

// ---- cleanup: whatever happens, no process outlives the bench -------------------------------
function killAll () { for (const p of started) p.kill() }
process.on('exit', () => {
  killAll()
  if (ownDataDir) { try { rmSync(dataDir, { recursive: true, force: true }) } catch {} }
})
for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM', 'SIGHUP'])) {
  process.once(signal, () => { log(`${signal}: stopping`); killAll(); process.exit(130) })
}

// ---- the processes ---------------------------------------------------------------------------
const SECRET = 'bench-secret-0123456789abcdef'
let clusterNo = 0

/**
 * @param {{ strace: boolean, coordinatorNodeArgs?: string[], inventoryNodeArgs?: string[] }} o
 */
async function startCluster (o) {
  const n = ++clusterNo
  const dir = join(dataDir, `run${n}`)
  mkdirSync(dir, { recursive: true })
  const [cPort, iPort, pPort, fPort] = [await freePort(), await freePort(), await freePort(), await freePort()]
  const coordinatorUrl = `http://127.0.0.1:${cPort}`
  const secretEnv = cfg.secret ? { TWOPC_SECRET: SECRET } : {}
  const coordinator = new ServerProcess({
    name: 'coordinator',
    script: 'coordinator-entry.mjs',
    nodeArgs: [...cfg.coordinatorNodeArgs, ...(o.coordinatorNodeArgs ?? [])],
    ...(o.strace ? { strace: join(dir, 'coordinator.strace') } : {}),
    cwd: dir,
    env: {
      PORT: String(cPort),
      HOST: '127.0.0.1',
      TWOPC_DB: join(dir, 'coordinator.db'),
      LOG_LEVEL: cfg.logLevel,
      TWOPC_COORDINATOR_ID: 'bench',
      ...secretEnv,
      ...(cfg.batchMaxCalls !== undefined ? { TWOPC_BATCH_MAX_CALLS: String(cfg.batchMaxCalls) } : {}),
      ...(cfg.inlineSyncMaxMs !== undefined ? { TWOPC_LOG_INLINE_SYNC_MAX_MS: String(cfg.inlineSyncMaxMs) } : {})
    }
  })
  started.add(coordinator)
  const participant = (/** @type {string} */ name, /** @type {number} */ port) => {
    const p = new ServerProcess({
      name,
      script: 'participant.mjs',
      ...(name === 'inventory' && o.inventoryNodeArgs !== undefined ? { nodeArgs: o.inventoryNodeArgs } : {}),
      ...(o.strace ? { strace: join(dir, `${name}.strace`) } : {}),
      env: {
        NAME: name,
        PORT: String(port),
        DB_PATH: join(dir, `${name}.db`),
        COORDINATOR_URL: coordinatorUrl,
        LOG_LEVEL: cfg.logLevel,
        ...secretEnv,
        ...(cfg.inlineSyncMaxMs !== undefined ? { INLINE_SYNC_MAX_MS: String(cfg.inlineSyncMaxMs) } : {})
      }
    })
    started.add(p)
    return p
  }
  const inventory = participant('inventory', iPort)
  const payment = participant('payment', pPort)
  const fanout = new ServerProcess({
    name: 'fanout',
    script: 'fanout.mjs',
    env: { PORT: String(fPort), TARGETS: JSON.stringify([`http://127.0.0.1:${iPort}`, `http://127.0.0.1:${pPort}`]), CONNECTIONS: '64' }
  })
  started.add(fanout)
  await Promise.all([
    coordinator.ready(`${coordinatorUrl}/readyz`),
    inventory.ready(`http://127.0.0.1:${iPort}/healthz`),
    payment.ready(`http://127.0.0.1:${pPort}/healthz`),
    fanout.ready(`http://127.0.0.1:${fPort}/healthz`)
  ])
  const loadgen = fork(join(HERE, 'lib', 'loadgen.mjs'), [], { env: { ...process.env, BENCH_PARENT_PID: String(process.pid) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const loadgenHandle = { kill () { try { loadgen.kill('SIGKILL') } catch {} } }
  started.add(loadgenHandle)
  const servers = { coordinator, inventory, payment, fanout }
  return {
    dir,
    strace: o.strace,
    servers,
    loadgen,
    coordinatorUrl,
    fanoutUrl: `http://127.0.0.1:${fPort}`,
    participants: [{ name: 'inventory', url: `http://127.0.0.1:${iPort}/2pc` }, { name: 'payment', url: `http://127.0.0.1:${pPort}/2pc` }],
    async stop () {
      loadgen.disconnect()
      await Promise.all(Object.values(servers).map(s => s.stop()))
      started.delete(loadgenHandle)
      for (const s of Object.values(servers)) started.delete(s)
    }
  }
}

/** @typedef {Awaited<ReturnType<typeof startCluster>>} Cluster */

/**
 * Where a process's RSS is, from /proc/<pid>/smaps: the node binary's pages (shared, file-backed),
 * malloc's main heap ([heap]: SQLite, OpenSSL, libuv/Node buffers), anonymous mappings (the V8
 * heap, thread stacks and malloc arenas) and the rest (libraries, the native addon).
 */
function rssByMapping (/** @type {number} */ pid) {
  const out = { 'node binary': 0, 'malloc heap': 0, anonymous: 0, other: 0 }
  let kind = /** @type {keyof typeof out} */ ('other')
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line)
    if (head !== null) {
      const name = head[1] ?? ''
      kind = name === '' ? 'anonymous' : name === '[heap]' ? 'malloc heap' : name === process.execPath || name.endsWith('/bin/node') ? 'node binary' : 'other'
      continue
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line)
    if (rss !== null) out[kind] += Number(rss[1]) / 1024
  }
  return out
}

/** The coordinator's V8 heap spaces (prom-client's default metrics): committed and used MB. */
async function heapSpaces (/** @type {string} */ url) {
  const res = await fetch(url)
  const text = await res.text()
  /** @type {Map<string, { space: string, sizeMb: number, usedMb: number }>} */
  const spaces = new Map()
  for (const m of text.matchAll(/^twopc_nodejs_heap_space_size_(total|used)_bytes\{space="([^"]+)"\} (\S+)$/gm)) {
    const [, kind, space, value] = /** @type {[string, string, string, string]} */ (/** @type {unknown} */ (m))
    const entry = spaces.get(space) ?? { space, sizeMb: 0, usedMb: 0 }
    if (kind === 'total') entry.sizeMb = Number(value) / 2 ** 20
    else entry.usedMb = Number(value) / 2 ** 20
    spaces.set(space, entry)
  }
  return [...spaces.values()].filter(h => h.sizeMb >= 0.5)
}

// ---- inside the processes: histograms from their /metrics, as means over a window ------------
const COORDINATOR_SERIES = {
  requestMs: ['twopc_http_request_duration_seconds', 'route="/v1/transactions"', 1000],
  phase1Ms: ['twopc_phase1_duration_seconds', '', 1000],
  flushBatch: ['twopc_log_flush_batch_size', '', 1],
  flushMs: ['twopc_log_flush_duration_seconds', '', 1000],
  syncBatch: ['twopc_log_sync_batch_size', '', 1],
  syncMs: ['twopc_log_sync_duration_seconds', '', 1000],
  callbackBatch: ['twopc_callback_batch_size', '', 1]
}
const PARTICIPANT_SERIES = {
  flushBatch: ['twopc_participant_log_flush_batch_size', '', 1],
  flushMs: ['twopc_participant_log_flush_duration_seconds', '', 1000],
  syncBatch: ['twopc_participant_log_sync_batch_size', '', 1],
  syncMs: ['twopc_participant_log_sync_duration_seconds', '', 1000]
}

/** `{ series: { sum, count } }` of the histograms named in `wanted`, summed over matching label sets. */
async function scrapeHistograms (/** @type {string} */ url, /** @type {Record<string, any[]>} */ wanted) {
  /** @type {Record<string, { sum: number, count: number }>} */
  const out = {}
  let text = ''
  try { text = await (await fetch(url)).text() } catch { return out }
  for (const [key, [name, filter]] of Object.entries(wanted)) {
    const acc = { sum: 0, count: 0 }
    for (const line of text.split('\n')) {
      for (const part of /** @type {const} */ (['sum', 'count'])) {
        if (line.startsWith(`${name}_${part}`) && line.includes(filter)) acc[part] += Number(line.slice(line.lastIndexOf(' ') + 1))
      }
    }
    out[key] = acc
  }
  return out
}

async function scrapeInternals (/** @type {Cluster} */ cluster) {
  const [coordinator, inventory, payment] = await Promise.all([
    scrapeHistograms(`${cluster.coordinatorUrl}/metrics`, COORDINATOR_SERIES),
    ...cluster.participants.map(p => scrapeHistograms(p.url.replace(/\/2pc$/, '/metrics'), PARTICIPANT_SERIES))
  ])
  return { at: performance.now(), procs: { coordinator, inventory, payment } }
}

/** Means over the window (Δsum / Δcount, scaled) and events per second of each histogram. */
function internalsDelta (/** @type {any} */ before, /** @type {any} */ after) {
  const seconds = (after.at - before.at) / 1000
  /** @type {Record<string, Record<string, number | null>>} */
  const out = {}
  for (const [proc, series] of Object.entries(after.procs)) {
    const wanted = proc === 'coordinator' ? COORDINATOR_SERIES : PARTICIPANT_SERIES
    /** @type {Record<string, number | null>} */
    const row = {}
    for (const [key, [, , scale]] of Object.entries(wanted)) {
      const a = /** @type {any} */ (series)[key]
      const b = before.procs[proc]?.[key]
      if (a === undefined || b === undefined) { row[key] = null; continue }
      const dc = a.count - b.count
      row[key] = dc > 0 ? scale * (a.sum - b.sum) / dc : null
      if (key === 'syncMs') row.syncsPerSec = dc / seconds
      if (key === 'flushMs') row.flushesPerSec = dc / seconds
      if (key === 'callbackBatch') row.batchesPerSec = dc / seconds
    }
    out[proc] = row
  }
  return out
}

/** Each server's event-loop delay since it was last asked (bench/lib/loop-delay.mjs), by name. */
async function loopDelays (/** @type {Cluster} */ cluster) {
  const entries = await Promise.all(Object.entries(cluster.servers).map(async ([name, s]) => [name, await s.loopDelay()]))
  return Object.fromEntries(entries)
}

function snapshot (/** @type {Cluster} */ cluster) {
  const at = performance.now()
  /** @type {Record<string, ReturnType<ServerProcess['sample']>>} */
  const procs = {}
  for (const [name, s] of Object.entries(cluster.servers)) procs[name] = s.sample()
  return { at, procs }
}

/**
 * Runs one mode at one concurrency: warm-up, then `reps` windows; per window the load
 * generator's figures plus CPU and fsyncs of every server process over the same window.
 * @param {Cluster} cluster @param {string} mode @param {number} concurrency
 * @param {{ warmupMs: number, durationMs: number, reps: number }} t
 */
async function runLoad (cluster, mode, concurrency, t, /** @type {{ rep: number, of: number } | undefined} */ round = undefined) {
  const origin = mode === 'baseline' ? cluster.fanoutUrl : cluster.coordinatorUrl
  /** @type {any[]} */
  const reps = []
  /** @type {ReturnType<typeof snapshot> | undefined} */
  let before
  /** @type {Promise<any> | undefined} */
  let internalsBefore
  /** @type {Promise<void>[]} */
  const internals = []
  await new Promise((resolve, reject) => {
    const onMessage = (/** @type {any} */ msg) => {
      if (msg.type === 'mark') {
        before = snapshot(cluster)
        internalsBefore = scrapeInternals(cluster)
        loopDelays(cluster) // starts each process's event-loop delay window over
      } else if (msg.type === 'rep') {
        const after = snapshot(cluster)
        const internalsAfter = scrapeInternals(cluster)
        const loopAfter = loopDelays(cluster)
        const from = internalsBefore
        const b = /** @type {ReturnType<typeof snapshot>} */ (before)
        const seconds = (after.at - b.at) / 1000
        const f = msg.figures
        /** @type {Record<string, number>} */ const cpuPct = {}
        /** @type {Record<string, number>} */ const cpuUsPerTx = {}
        /** @type {Record<string, number | null>} */ const fsyncPerTx = {}
        /** @type {Record<string, number | null>} */ const fsyncMsPerTx = {}
        /** @type {Record<string, number | null>} */ const fsyncBusyPct = {}
        /** @type {Record<string, { writtenKb: number, writeCalls: number, toDiskKb: number } | null>} */ const ioPerTx = {}
        let fsyncTotal = 0
        for (const name of Object.keys(after.procs)) {
          const a = /** @type {ReturnType<ServerProcess['sample']>} */ (after.procs[name])
          const bb = /** @type {ReturnType<ServerProcess['sample']>} */ (b.procs[name])
          const cpu = a.cpu - bb.cpu
          const txs = f.txPerSec * seconds // committed transactions over the orchestrator's window
          cpuPct[name] = 100 * cpu / seconds
          cpuUsPerTx[name] = f.committed > 0 ? 1e6 * cpu / txs : NaN
          ioPerTx[name] = a.io === null || bb.io === null || f.committed === 0
            ? null
            : { writtenKb: (a.io.written - bb.io.written) / 1024 / txs, writeCalls: (a.io.writeCalls - bb.io.writeCalls) / txs, toDiskKb: (a.io.toDisk - bb.io.toDisk) / 1024 / txs }
          if (a.fsync !== null && bb.fsync !== null) {
            const d = a.fsync.count - bb.fsync.count
            const ds = a.fsync.seconds - bb.fsync.seconds
            fsyncTotal += d
            fsyncPerTx[name] = f.committed > 0 ? d / txs : null
            fsyncMsPerTx[name] = f.committed > 0 ? 1000 * ds / txs : null
            fsyncBusyPct[name] = 100 * ds / seconds
          } else { fsyncPerTx[name] = null; fsyncMsPerTx[name] = null; fsyncBusyPct[name] = null }
        }
        cpuPct.loadgen = 100 * (f.loadgenCpuMs / 1000) / f.seconds
        cpuUsPerTx.loadgen = f.committed > 0 ? 1000 * f.loadgenCpuMs / f.committed : NaN
        fsyncPerTx.total = cluster.strace && f.committed > 0 ? fsyncTotal / (f.txPerSec * seconds) : null
        /** @type {any} */
        const row = { mode, concurrency, rep: msg.rep, ...f, cpuPct, cpuUsPerTx, ioPerTx, fsyncPerTx, fsyncBusyPct, fsyncMsPerTx, internals: null, loopDelay: null }
        reps.push(row)
        internals.push(loopAfter.then(d => { row.loopDelay = d }))
        if (from !== undefined && mode !== 'baseline') internals.push(Promise.all([from, internalsAfter]).then(([b, a]) => { row.internals = internalsDelta(b, a) }))
        log(`${mode.padEnd(11)} c=${String(concurrency).padEnd(3)} rep ${(round?.rep ?? msg.rep) + 1}/${round?.of ?? t.reps}: ${f.txPerSec.toFixed(0)} tx/s, p50 ${fmt(f.latencyMs.p50)} p99 ${fmt(f.latencyMs.p99)} ms, ` +
          `cpu% c/i/p/f/l ${['coordinator', 'inventory', 'payment', 'fanout', 'loadgen'].map(n => (cpuPct[n] ?? 0).toFixed(0)).join('/')}, ` +
          `fsync/tx ${fsyncPerTx.total?.toFixed(2) ?? '-'}${f.errors > 0 ? `, ${f.errors} errors (${f.firstError})` : ''}${f.aborted > 0 ? `, ${f.aborted} aborted` : ''}`)
      } else if (msg.type === 'done') { cluster.loadgen.off('message', onMessage); resolve(undefined) } else if (msg.type === 'error') { cluster.loadgen.off('message', onMessage); reject(new Error(msg.message)) }
    }
    cluster.loadgen.on('message', onMessage)
    cluster.loadgen.send({ type: 'run', mode, concurrency, origin, participants: cluster.participants, ...t })
  })
  await Promise.all(internals)
  return reps
}

const fmt = (/** @type {number | null} */ v) => v === null ? '-' : v < 10 ? v.toFixed(2) : v.toFixed(1)
const sleep = (/** @type {number} */ ms) => new Promise(resolve => setTimeout(resolve, ms))

/** Waits until phase 2 of everything committed so far is applied (no reservation left 'reserved'). */
async function drainPhase2 (/** @type {Cluster} */ cluster, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    let pending = 0
    for (const p of cluster.participants) {
      const res = await fetch(p.url.replace(/\/2pc$/, '/bench/counts'))
      pending += /** @type {{ reserved: number }} */ (await res.json()).reserved
    }
    if (pending === 0) return
    await sleep(100)
  }
  log('phase 2 not drained after 30 s')
}

// ---- the run ---------------------------------------------------------------------------------
const machine = {
  cores: cpus().length,
  cpuModel: cpus()[0]?.model ?? 'unknown',
  memoryGb: Math.round(totalmem() / 2 ** 30),
  node: process.version,
  kernel: release(),
  dataDirFs: fsTypeOf(dataDir),
  git: gitState(),
  loadBefore: loadavg(),
  loadAfter: /** @type {number[]} */ ([])
}
function gitState () {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT }).toString().trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'coordinator/src', 'participant-sdk/src', 'protocol/src'], { cwd: ROOT }).toString().trim() !== ''
    return { commit, dirty }
  } catch { return undefined }
}
function fsTypeOf (/** @type {string} */ path) {
  // The longest mount point that is a prefix of the path.
  let best = { mount: '', type: 'unknown' }
  try {
    for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [, mount, type] = line.split(' ')
      if (mount !== undefined && type !== undefined && (path === mount || path.startsWith(mount.endsWith('/') ? mount : mount + '/')) && mount.length >= best.mount.length) best = { mount, type }
    }
  } catch {}
  return best.type
}

const startedAt = new Date()
log(`data in ${dataDir} (${machine.dataDirFs}); ${machine.cores} cores, ${machine.cpuModel}, node ${machine.node}; load ${machine.loadBefore.map(l => l.toFixed(2)).join(' ')}`)
log(`windows ${cfg.reps} × ${cfg.durationS} s after ${cfg.warmupS} s warm-up; concurrency ${cfg.concurrency.join(',')}; modes ${cfg.modes.join(',')}; fsync counting ${cfg.strace ? 'on (strace)' : 'off'}; signatures ${cfg.secret ? 'on' : 'off'}`)

/** @type {any[]} */
const rows = []
{
  // Throughput, latency and CPU are measured WITHOUT strace: a ptrace stop per fsync costs every
  // process (it halved the coordinator's throughput in an earlier run).
  const cluster = await startCluster({ strace: false })
  try {
    for (const concurrency of cfg.concurrency) {
      // Round robin: one window of each path per round, `reps` rounds. The host's speed drifts
      // by tens of percent within minutes (RESULTS.md); measured in turns, every path sees the
      // same drift, so the ratios compare like with like. The first round warms up for
      // --warmup, later ones for at most 2 s (the processes are warm; the connections are not).
      for (let rep = 0; rep < cfg.reps; rep++) {
        for (const mode of cfg.modes) {
          const warmupMs = (rep === 0 ? cfg.warmupS : Math.min(cfg.warmupS, 2)) * 1000
          const windows = await runLoad(cluster, mode, concurrency, { warmupMs, durationMs: cfg.durationS * 1000, reps: 1 }, { rep, of: cfg.reps })
          for (const w of windows) rows.push({ ...w, rep })
          if (mode !== 'baseline') await drainPhase2(cluster)
        }
      }
    }
  } finally {
    await cluster.stop()
  }
}

/** One window per mode × concurrency under strace, only to count fsyncs per transaction. */
const fsyncRows = []
if (cfg.strace) {
  log('fsync counting: one window per mode and concurrency with every server under strace (its figures are used for fsyncs only)')
  const cluster = await startCluster({ strace: true })
  try {
    for (const concurrency of cfg.concurrency) {
      for (const mode of cfg.modes) {
        fsyncRows.push(...await runLoad(cluster, mode, concurrency, { warmupMs: Math.min(cfg.warmupS, 1) * 1000, durationMs: Math.min(cfg.durationS, 5) * 1000, reps: 1 }))
        if (mode !== 'baseline') await drainPhase2(cluster)
      }
    }
  } finally {
    await cluster.stop()
  }
}

/** @type {any} */
let profile = null
if (cfg.profileS > 0) {
  const profDir = join(outDir === HERE ? join(HERE, '.out') : outDir, 'profile')
  rmSync(profDir, { recursive: true, force: true })
  mkdirSync(profDir, { recursive: true })
  const concurrency = cfg.profileConcurrency ?? Math.max(...cfg.concurrency)
  log(`profile: coordinator under --cpu-prof, one-shot, c=${concurrency}, ${cfg.profileS} s`)
  const cluster = await startCluster({
    strace: false,
    coordinatorNodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir],
    // The inventory participant too, by hand (not summarized in RESULTS.md; it slows the run).
    ...(flags['profile-participant'] ? { inventoryNodeArgs: ['--cpu-prof', '--cpu-prof-dir', join(profDir, 'inventory')] } : {})
  })
  let figures
  /** @type {{ start: number, end: number }} */
  const window = { start: 0, end: 0 }
  const mark = (/** @type {any} */ msg) => {
    if (msg.type === 'mark') window.start = Date.now()
    else if (msg.type === 'rep') window.end = Date.now()
  }
  cluster.loadgen.on('message', mark)
  let exitedAt = 0
  try {
    figures = await runLoad(cluster, 'oneshot', concurrency, { warmupMs: cfg.quick ? 1000 : 3000, durationMs: cfg.profileS * 1000, reps: 1 })
  } finally {
    cluster.loadgen.off('message', mark)
    void cluster.servers.coordinator.exit.then(() => { exitedAt = Date.now() })
    await cluster.stop()
  }
  const file = readdirSync(profDir).find(f => f.endsWith('.cpuprofile'))
  if (file === undefined) log('profile: no .cpuprofile written')
  else {
    // Only the samples of the measured window: the profile ends when the process exits, so the
    // window is located by its distance from the exit (start-up, warm-up and shutdown left out).
    const windowFromEndUs = { from: (exitedAt - window.start) * 1000, to: (exitedAt - window.end) * 1000 }
    profile = { file: join(profDir, file).replace(ROOT + '/', ''), concurrency, seconds: cfg.profileS, txPerSec: figures[0]?.txPerSec, windowFromEndUs, ...summarizeProfile(join(profDir, file), ROOT, windowFromEndUs) }
  }
}

/** @type {any} */
let rss = null
if (cfg.rss > 0) {
  log(`rss: ${cfg.rss} one-shot transactions at c=${cfg.rssConcurrency}`)
  const cluster = await startCluster({ strace: false })
  try {
    const pid = /** @type {number} */ (cluster.servers.coordinator.pid)
    const samples = [{ transactions: 0, rssMb: rssMb(pid), seconds: 0 }]
    const every = Math.max(1, Math.round(cfg.rss / 10))
    const done = await new Promise((resolve, reject) => {
      cluster.loadgen.on('message', (/** @type {any} */ msg) => {
        if (msg.type === 'progress') {
          samples.push({ transactions: msg.committed, rssMb: rssMb(pid), seconds: msg.seconds })
          log(`rss: ${msg.committed} tx, coordinator RSS ${rssMb(pid).toFixed(1)} MB`)
        } else if (msg.type === 'done') resolve(msg)
        else if (msg.type === 'error') reject(new Error(msg.message))
      })
      cluster.loadgen.send({ type: 'count', mode: 'oneshot', concurrency: cfg.rssConcurrency, origin: cluster.coordinatorUrl, participants: cluster.participants, total: cfg.rss, progressEvery: every })
    })
    await drainPhase2(cluster)
    await sleep(2000)
    const settled = rssMb(pid)
    const heap = await heapSpaces(`${cluster.coordinatorUrl}/metrics`)
    const mappings = rssByMapping(pid)
    rss = { transactions: cfg.rss, concurrency: cfg.rssConcurrency, nodeArgs: cfg.coordinatorNodeArgs, samples, afterDrainMb: settled, maxMb: Math.max(settled, ...samples.map(s => s.rssMb)), heap, mappings, run: done }
    log(`rss: by mapping (MB): ${Object.entries(mappings).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`)
    log(`rss: after drain ${settled.toFixed(1)} MB; V8 heap spaces (MB size/used): ${heap.map(h => `${h.space} ${h.sizeMb.toFixed(1)}/${h.usedMb.toFixed(1)}`).join(', ')}`)
  } finally {
    await cluster.stop()
  }
}

machine.loadAfter = loadavg()
const results = {
  date: startedAt.toISOString(),
  finishedAt: new Date().toISOString(),
  machine,
  config: cfg,
  groups: aggregate(rows, cfg, fsyncRows),
  reps: rows,
  fsyncReps: fsyncRows,
  profile,
  rss
}
writeFileSync(join(outDir, 'results.json'), JSON.stringify(results, null, 2) + '\n')
writeFileSync(join(outDir, 'RESULTS.md'), renderMarkdown(results))
log(`wrote ${join(outDir, 'RESULTS.md')} and results.json`)
process.exit(0)
