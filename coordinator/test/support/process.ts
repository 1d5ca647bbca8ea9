/**
 * A real coordinator process for crash tests: the built bin (`npm test` runs `tsc -b` first), so
 * a child starts in ~1 s instead of several with a TypeScript loader, and its coverage maps back
 * to src/ through the source maps.
 */
import type { ChildProcess } from 'node:child_process'
import { spawnNode } from '../../../test/kit/child.js'
import { fileURLToPath } from 'node:url'
import { http, waitFor, type HttpAnswer } from './participant.js'

export const COORDINATOR_BIN = fileURLToPath(new URL('../../dist/bin.js', import.meta.url))

export { freePort } from '../../../test/kit/port.js'

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
  const child = spawnNode(COORDINATOR_BIN, {
    name: 'coordinator',
    env: {
      PORT: String(o.port),
      HOST: '127.0.0.1',
      TWOPC_DB: o.dbPath,
      TWOPC_RETRY_BASE_MS: '20',
      TWOPC_RETRY_MAX_MS: '200',
      LOG_LEVEL: 'warn',
      ...o.env
    }
  })
  const { child: proc, stderr, exited } = child
  const url = `http://127.0.0.1:${o.port}`
  const ready = o.ready ?? ((r: HttpAnswer) => r.status === 200)
  await waitFor(async () => {
    if (!child.alive()) throw new Error(`coordinator exited early: ${stderr()}`)
    return ready(await http(url).get('/readyz'))
  }, 30_000, o.readyWhat ?? 'coordinator process ready')
  return { proc, url, stderr, exited }
}
