/**
 * Node child processes for tests: a coordinator, a participant fixture, a chaos cluster member.
 * Output is kept (the tail, bounded), the exit is a promise, and children still running when the
 * test process ends are SIGKILLed (no orphans after a timeout or ^C).
 */
import { spawn, type ChildProcess } from 'node:child_process'

export interface Exit { code: number | null, signal: NodeJS.Signals | null }

export interface NodeChild {
  readonly name: string
  readonly child: ChildProcess
  readonly exited: Promise<Exit>
  stderr: () => string
  stdout: () => string
  alive: () => boolean
  /** SIGKILL and wait for the exit. */
  kill: () => Promise<Exit>
}

export interface SpawnOptions {
  name?: string
  /** Node's own arguments before the file (default `--enable-source-maps`). */
  nodeArgs?: string[]
  /** The script's own arguments, after the file. */
  args?: string[]
  /** Added to (and overriding) this process's environment; an undefined value removes the variable. */
  env?: Record<string, string | undefined>
  cwd?: string
  /** Characters of stdout and of stderr kept, the tail (default 1,000,000). */
  keep?: number
}

const live = new Set<ChildProcess>()
let reaperInstalled = false
function installReaper (): void {
  if (reaperInstalled) return
  reaperInstalled = true
  process.once('exit', () => { for (const child of live) child.kill('SIGKILL') })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      for (const child of live) child.kill('SIGKILL')
      process.exit(128 + (signal === 'SIGINT' ? 2 : 15))
    })
  }
}

/** Starts `node [nodeArgs] file` with piped stdout and stderr. */
export function spawnNode (file: string, options: SpawnOptions = {}): NodeChild {
  installReaper()
  const keep = options.keep ?? 1_000_000
  const env: NodeJS.ProcessEnv = { ...process.env, ...options.env }
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k]
  const child = spawn(process.execPath, [...(options.nodeArgs ?? ['--enable-source-maps']), file, ...(options.args ?? [])], {
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    env,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  let stdout = ''
  child.stderr?.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-keep) })
  child.stdout?.on('data', (d: Buffer) => { stdout = (stdout + d.toString()).slice(-keep) })
  live.add(child)
  // 'close', not 'exit': the output is read to its end by then.
  const exited = new Promise<Exit>(resolve => { child.once('close', (code, signal) => { live.delete(child); resolve({ code, signal }) }) })
  const alive = (): boolean => child.exitCode === null && child.signalCode === null
  return {
    name: options.name ?? file,
    child,
    exited,
    stderr: () => stderr,
    stdout: () => stdout,
    alive,
    kill: async () => {
      if (alive()) child.kill('SIGKILL')
      return await exited
    }
  }
}

/**
 * Runs `node file args…` to its end: its exit and whole output. After `timeoutMs` it is sent
 * `killSignal` (default SIGKILL) and its exit is still awaited.
 */
export async function runNode (file: string, options: SpawnOptions & { timeoutMs: number, killSignal?: NodeJS.Signals }): Promise<Exit & { stdout: string, stderr: string }> {
  const proc = spawnNode(file, { keep: Number.MAX_SAFE_INTEGER, ...options })
  const timer = setTimeout(() => { proc.child.kill(options.killSignal ?? 'SIGKILL') }, options.timeoutMs)
  const exit = await proc.exited
  clearTimeout(timer)
  return { ...exit, stdout: proc.stdout(), stderr: proc.stderr() }
}

/**
 * The port a child prints as `LISTENING <port>` on stdout; rejects when the child exits first or
 * after `timeoutMs`.
 */
export async function listeningPort (proc: NodeChild, timeoutMs: number): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const check = (): boolean => {
      const match = /LISTENING (\d+)/.exec(proc.stdout())
      if (match === null) return false
      done()
      resolve(Number(match[1]))
      return true
    }
    const onData = (): void => { check() }
    const timer = setTimeout(() => { done(); reject(new Error(`${proc.name} did not start: ${proc.stderr()}`)) }, timeoutMs)
    const done = (): void => { clearTimeout(timer); proc.child.stdout?.off('data', onData) }
    proc.child.stdout?.on('data', onData)
    void proc.exited.then(() => { if (!check()) { done(); reject(new Error(`${proc.name} exited before listening: ${proc.stderr()}`)) } })
    check()
  })
}

/** The loader arguments that make a child load TypeScript the way this process does (tap's loader and coverage, else tsx). */
export function typeScriptLoader (): string[] {
  return process.execArgv.length > 0 ? process.execArgv : ['--import=tsx', '--conditions=fastify-2pc-source']
}
