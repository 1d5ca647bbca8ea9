/**
 * A real coordinator process for crash tests: the built bin (`npm test` runs `tsc -b` first), so
 * a child starts in ~1 s instead of several with a TypeScript loader, and its coverage maps back
 * to src/ through the source maps.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { http, waitFor, type HttpAnswer } from './participant.js'

export const COORDINATOR_BIN = fileURLToPath(new URL('../../dist/bin.js', import.meta.url))

/** A port that was free a moment ago on 127.0.0.1 (a restarted child takes the same one). */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as { port: number }).port
  server.close()
  await once(server, 'close')
  return port
}

export interface CoordinatorChild {
  proc: ChildProcess
  url: string
  stderr: () => string
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

export interface CoordinatorChildOptions {
  dbPath: string
  port: number
  /** Added to (and overriding) the defaults: fast retries, LOG_LEVEL=warn. */
  env?: Record<string, string>
  /** When the child counts as started (default: `/readyz` answers 200). */
  ready?: (readyz: HttpAnswer) => boolean
  readyWhat?: string
}

/** Starts `twopc-coordinator` as a child process and waits until it is ready. */
export async function startCoordinatorProcess (o: CoordinatorChildOptions): Promise<CoordinatorChild> {
  const proc = spawn(process.execPath, ['--enable-source-maps', COORDINATOR_BIN], {
    env: {
      ...process.env,
      PORT: String(o.port),
      HOST: '127.0.0.1',
      TWOPC_DB: o.dbPath,
      TWOPC_RETRY_BASE_MS: '20',
      TWOPC_RETRY_MAX_MS: '200',
      LOG_LEVEL: 'warn',
      ...o.env
    },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  let stderr = ''
  proc.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => {
    proc.on('exit', (code, signal) => resolve({ code, signal }))
  })
  const url = `http://127.0.0.1:${o.port}`
  const ready = o.ready ?? ((r: HttpAnswer) => r.status === 200)
  await waitFor(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`coordinator exited early: ${stderr}`)
    return ready(await http(url).get('/readyz'))
  }, 30_000, o.readyWhat ?? 'coordinator process ready')
  return { proc, url, stderr: () => stderr, exited }
}
