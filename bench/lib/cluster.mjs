// Starts and stops the bench's processes, and reads what the kernel knows about them:
// CPU time (/proc/<pid>/stat utime+stime, all threads), RSS (/proc/<pid>/status VmRSS) and
// fsync/fdatasync calls (counted by strace with a seccomp-bpf filter: the traced process only
// stops on those two syscalls, every other syscall runs untraced).
import { spawn, execFileSync } from 'node:child_process'
import { readFileSync, openSync, readSync, closeSync, existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

const LIB = fileURLToPath(new URL('.', import.meta.url))
const sleep = (/** @type {number} */ ms) => new Promise(resolve => setTimeout(resolve, ms))

let clkTck = 100
try { clkTck = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100 } catch {}

/** @returns {boolean} strace with --seccomp-bpf works here */
export function straceAvailable () {
  try {
    execFileSync('strace', ['-f', '--seccomp-bpf', '-qq', '-e', 'trace=fsync', '-o', '/dev/null', 'true'], { stdio: 'ignore' })
    return true
  } catch { return false }
}

export async function freePort () {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = /** @type {import('node:net').AddressInfo} */ (srv.address()).port
      srv.close(() => resolve(port))
    })
  })
}

/** CPU seconds (user + system, all threads) of a live process. */
export function cpuSeconds (/** @type {number} */ pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / clkTck
}

/**
 * What a live process wrote, from /proc/<pid>/io: bytes passed to write-like syscalls (sockets and
 * files alike), the number of those syscalls, and the bytes it caused to be sent to storage. Counts
 * that do not depend on how fast the host is, unlike CPU time.
 */
export function ioCounts (/** @type {number} */ pid) {
  /** @type {Record<string, number>} */ const f = {}
  for (const line of readFileSync(`/proc/${pid}/io`, 'utf8').split('\n')) {
    const [k, v] = line.split(': ')
    if (k !== undefined && v !== undefined) f[k] = Number(v)
  }
  return { written: f.wchar ?? NaN, writeCalls: f.syscw ?? NaN, toDisk: f.write_bytes ?? NaN }
}

/** Resident set size in MB. */
export function rssMb (/** @type {number} */ pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? NaN : Number(m[1]) / 1024
}

/** Counts fsync/fdatasync lines strace appended to its output file since the last read. */
class FsyncCounter {
  constructor (/** @type {string} */ file) {
    this.file = file
    this.offset = 0
    this.count = 0
    this.seconds = 0
    this.rest = ''
  }

  read () {
    if (!existsSync(this.file)) return { count: this.count, seconds: this.seconds }
    const fd = openSync(this.file, 'r')
    try {
      const buf = Buffer.alloc(1 << 20)
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, this.offset)
        if (n === 0) break
        this.offset += n
        const text = this.rest + buf.toString('latin1', 0, n)
        const lines = text.split('\n')
        this.rest = lines.pop() ?? ''
        for (const line of lines) {
          if (/\b(fsync|fdatasync)\(/.test(line)) this.count++
          // -T: time spent in the call, at the end of the line that completes it (also "resumed" lines)
          const t = /<(\d+\.\d+)>$/.exec(line)
          if (t !== null && /fsync|fdatasync/.test(line)) this.seconds += Number(t[1])
        }
      }
    } finally { closeSync(fd) }
    return { count: this.count, seconds: this.seconds }
  }
}

/**
 * A server process (optionally under strace), its node pid, its stderr tail.
 */
export class ServerProcess {
  /**
   * @param {{ name: string, script: string, env: Record<string, string | undefined>, nodeArgs?: string[], strace?: string, cwd?: string }} o
   */
  constructor (o) {
    this.name = o.name
    this.script = join(LIB, o.script)
    const node = [process.execPath, ...(o.nodeArgs ?? []), join(LIB, o.script)]
    const argv = o.strace !== undefined
      ? ['strace', '-f', '-T', '--seccomp-bpf', '-qq', '-e', 'trace=fsync,fdatasync', '-o', o.strace, ...node]
      : node
    this.child = spawn(/** @type {string} */ (argv[0]), argv.slice(1), {
      env: { ...process.env, ...o.env, BENCH_PARENT_PID: String(process.pid) },
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: o.cwd
    })
    this.traced = o.strace !== undefined
    this.fsync = o.strace !== undefined ? new FsyncCounter(o.strace) : undefined
    /** @type {number | undefined} */
    this.pid = o.strace === undefined ? this.child.pid : undefined
    this.output = ''
    const keep = (/** @type {Buffer} */ chunk) => { this.output = (this.output + chunk.toString()).slice(-8000) }
    /** @type {Array<(figures: any) => void>} */
    this.loopWaiters = []
    let partial = ''
    this.child.stdout?.on('data', (/** @type {Buffer} */ chunk) => {
      // BENCH-LOOP lines (loop-delay.mjs) answer loopDelay(), in the order asked; the rest is output.
      const lines = (partial + chunk.toString()).split('\n')
      partial = /** @type {string} */ (lines.pop())
      const rest = []
      for (const line of lines) {
        if (line.startsWith('BENCH-LOOP ')) this.loopWaiters.shift()?.(JSON.parse(line.slice(11)))
        else rest.push(line)
      }
      if (rest.length > 0) keep(Buffer.from(rest.join('\n') + '\n'))
    })
    this.child.stderr?.on('data', keep)
    this.exited = false
    /** @type {Promise<void>} */
    this.exit = new Promise(resolve => this.child.once('exit', () => { this.exited = true; resolve() }))
  }

  /** Waits until `url` answers 200 and the node pid is known. */
  async ready (/** @type {string} */ url, timeoutMs = 30_000) {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (this.exited) throw new Error(`${this.name} exited during start-up:\n${this.output}`)
      if (this.pid === undefined && this.child.pid !== undefined) {
        // Under strace, the node process is strace's child.
        // (strace --seccomp-bpf first forks a short-lived probe child: take the one running our script.)
        try {
          const kids = readFileSync(`/proc/${this.child.pid}/task/${this.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)
          for (const kid of kids) {
            const cmdline = readFileSync(`/proc/${kid}/cmdline`, 'utf8')
            // The probe is a fork of strace: its command line is strace's, script included.
            const argv0 = cmdline.split('\0')[0] ?? ''
            if (cmdline.includes(this.script) && !/(^|\/)strace$/.test(argv0)) this.pid = Number(kid)
          }
        } catch {}
      }
      try {
        const res = await fetch(url)
        await res.arrayBuffer()
        if (res.status === 200 && this.pid !== undefined) return
      } catch {}
      await sleep(50)
    }
    throw new Error(`${this.name} not ready at ${url} after ${timeoutMs} ms:\n${this.output}`)
  }

  /** @returns {{ cpu: number, fsync: { count: number, seconds: number } | null }} */
  sample () {
    if (this.exited) throw new Error(`${this.name} exited (code ${this.child.exitCode}, signal ${this.child.signalCode}):\n${this.output}`)
    return {
      cpu: this.pid === undefined ? NaN : cpuSeconds(this.pid),
      io: this.pid === undefined ? null : ioCounts(this.pid),
      fsync: this.fsync === undefined ? null : this.fsync.read()
    }
  }

  /**
   * The process's event-loop delay since it was last asked (loop-delay.mjs, on SIGWINCH):
   * `{ count, maxMs, p99Ms }`, or null if it does not answer within `timeoutMs`.
   * @returns {Promise<{ count: number, maxMs: number | null, p99Ms: number | null } | null>}
   */
  loopDelay (timeoutMs = 2000) {
    if (this.exited || this.pid === undefined) return Promise.resolve(null)
    const pid = this.pid
    return new Promise(resolve => {
      const answer = (/** @type {any} */ figures) => { clearTimeout(timer); resolve(figures) }
      const timer = setTimeout(() => {
        const i = this.loopWaiters.indexOf(answer)
        if (i >= 0) this.loopWaiters.splice(i, 1)
        resolve(null)
      }, timeoutMs)
      this.loopWaiters.push(answer)
      try {
        process.kill(pid, 'SIGWINCH')
      } catch {
        this.loopWaiters.splice(this.loopWaiters.indexOf(answer), 1)
        answer(null)
      }
    })
  }

  /** SIGTERM (graceful: the coordinator drains, a --cpu-prof profile is written), then SIGKILL. */
  async stop (graceMs = 15_000) {
    if (this.exited) return
    const target = this.pid ?? this.child.pid
    try { if (target !== undefined) process.kill(target, 'SIGTERM') } catch {}
    const timer = setTimeout(() => {
      for (const pid of [this.pid, this.child.pid]) { try { if (pid !== undefined) process.kill(pid, 'SIGKILL') } catch {} }
    }, graceMs)
    await this.exit
    clearTimeout(timer)
  }

  kill () {
    for (const pid of [this.pid, this.child.pid]) { try { if (pid !== undefined) process.kill(pid, 'SIGKILL') } catch {} }
  }
}

/** Every process started, so that an exit of the bench (error, SIGINT) kills them all. */
export const started = /** @type {Set<{ kill (): void }>} */ (new Set())
