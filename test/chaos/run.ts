/**
 * `npm run chaos -- [--duration 10m] [--seed N] [--workers 4]`: a long chaos run of the bank
 * (bank-chaos.ts) against the real RabbitMQ (AMQP_URL). Prints the seed first, a line per chaos
 * action, then a summary; exit 1 on any violation.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runChaos } from './bank-chaos.js'
import { amqpUrl, rabbitAvailable, redactUrl, testPrefix } from '../support/rabbit.js'

function parseDuration (text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text)
  if (m === null) throw new Error(`bad duration "${text}" (e.g. 30s, 10m)`)
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h']
  return Math.round(Number(m[1]) * unit)
}

const args = process.argv.slice(2)
const opt = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`)
  if (i >= 0) return args[i + 1]
  const eq = args.find(a => a.startsWith(`--${name}=`))
  return eq?.slice(name.length + 3)
}
const durationMs = parseDuration(opt('duration') ?? '1m')
const seed = Number(opt('seed') ?? process.env.TWOPC_SEED ?? Math.floor(Math.random() * 2 ** 31))
const workers = Number(opt('workers') ?? 4)
const keep = args.includes('--keep')

const rabbit = await rabbitAvailable()
if (!rabbit.ok) {
  process.stderr.write(`chaos needs RabbitMQ at ${redactUrl(rabbit.url)}: ${rabbit.error ?? 'unavailable'}\n`)
  process.exit(2)
}
const dir = mkdtempSync(join(tmpdir(), 'twopc-chaos-'))
process.stdout.write(`chaos: seed ${seed} (replay the same choices with --seed ${seed}), duration ${durationMs} ms, ${workers} workers, files in ${dir}\n`)
const t0 = Date.now()
const report = await runChaos({
  seed,
  durationMs,
  workers,
  dir,
  amqpUrl: amqpUrl(),
  prefix: testPrefix('chaos'),
  settleTimeoutMs: 300_000,
  log: line => { process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}\n`) }
})
const sum = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0)
process.stdout.write(`
chaos summary (seed ${report.seed}, ${Math.round(report.durationMs / 1000)} s of chaos, settled in ${(report.settleMs / 1000).toFixed(1)} s)
  transfers attempted      ${report.transfers}
  answered committed       ${report.answeredCommitted}
  answered aborted         ${report.answeredAborted}
  no answer (conn. lost)   ${report.unanswered}
  coordinator log          ${report.committed} committed, ${report.aborted} aborted
  SIGKILLs                 ${sum(report.kills)} (${Object.entries(report.kills).map(([k, v]) => `${k} ${v}`).join(', ')})
  crash-point deaths       ${sum(report.crashPointDeaths)} of ${report.crashPointsArmed} armed (${Object.entries(report.crashPointDeaths).map(([k, v]) => `${k} ${v}`).join(', ')})
  RabbitMQ cuts            ${report.rabbitCuts}
  HTTP delays / drops      ${report.httpDelays} / ${report.httpDrops}
  violations               ${report.violations.length}
${report.violations.map(v => `    - ${v}`).join('\n')}
`)
if (!keep) rmSync(dir, { recursive: true, force: true })
process.exit(report.violations.length === 0 ? 0 : 1)
