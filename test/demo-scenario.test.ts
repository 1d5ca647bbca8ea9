/**
 * The demo's scripted scenario as a test: `node demo-services/dist/run-demo.js` (what `npm start`
 * runs) starts the real coordinator and the three services as child processes, places orders,
 * SIGKILLs payment while transactions are in flight, restarts it, and checks that stock, money,
 * orders, the coordinator's log and the order.placed messages agree — after step 1 and again
 * after the kill and restart. It runs from dist (`npm test` builds first).
 *
 * Without RabbitMQ the demo runs on HTTP only (and says so); in CI RabbitMQ must be on.
 */
import t from 'tap'
import { runNode } from './kit/child.js'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { DemoReport } from '@fastify-2pc/demo-services/run-demo'
import { isCI, rabbitAvailable } from './support/rabbit.js'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const RUN_DEMO = join(ROOT, 'demo-services', 'dist', 'run-demo.js')

interface Run { code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string }

async function runDemo (args: string[], timeoutMs: number): Promise<Run> {
  // SIGINT is the demo's own stop path (it stops its children); bounded, never a fixed sleep for an outcome.
  return await runNode(RUN_DEMO, { nodeArgs: [], args, cwd: ROOT, env: { TWOPC_CRASH_AT: '' }, timeoutMs, killSignal: 'SIGINT' })
}

t.test('npm start: the scenario ends consistent, before and after payment is SIGKILLed and restarted', async t => {
  if (!existsSync(RUN_DEMO)) {
    t.fail(`${RUN_DEMO} is missing: run \`npx tsc -b\` first (npm test does)`)
    return
  }
  const rabbit = await rabbitAvailable()
  if (!rabbit.ok) {
    const msg = `RabbitMQ not answering at ${rabbit.url} (${rabbit.error ?? ''}): the demo runs WITHOUT it, order.placed is not checked`
    if (isCI()) t.fail(`FAILED (CI): ${msg}`)
    else process.stderr.write(`\n!!! demo-scenario: ${msg}\n\n`)
  }
  const dir = mkdtempSync(join(tmpdir(), 'twopc-demo-test-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const reportFile = join(dir, 'report.json')

  const run = await runDemo(['--data-dir', join(dir, 'data'), '--report', reportFile], 110_000)
  t.comment(run.stdout.trimEnd().split('\n').slice(-12).join('\n'))
  t.equal(run.code, 0, `run-demo exits 0 (it exits 1 when inconsistent)\n${run.stdout}\n${run.stderr}`)
  t.match(run.stdout, /== CONSISTENT: /, 'prints the final verdict')
  t.ok(existsSync(reportFile), 'wrote the report')
  if (!existsSync(reportFile)) return
  const report = JSON.parse(readFileSync(reportFile, 'utf8')) as DemoReport

  t.equal(report.amqp, rabbit.ok, 'RabbitMQ used exactly when one answers')
  t.equal(report.verdicts.length, 2, 'two verdicts: after step 1, after the kill and restart')
  for (const v of report.verdicts) {
    t.ok(v.consistent, `consistent ${v.phase}: ${v.checks.map(c => `${c.ok ? 'ok' : 'NOT OK'} ${c.name} (${c.detail})`).join('; ')}`)
    const names = v.checks.map(c => c.name)
    t.ok(names.some(n => n.startsWith('stock taken')), 'checks stock')
    t.ok(names.some(n => n.startsWith('money moved')), 'checks money')
    t.ok(names.some(n => n.startsWith('no transaction left prepared')), 'checks in-doubt transactions')
    t.equal(names.some(n => n.startsWith('order.placed messages')), report.amqp, 'checks the order.placed messages when RabbitMQ is on')
  }

  // The scenario covered what it promises.
  const step1 = report.results.slice(0, 7)
  t.same(step1.map(r => r.state), ['committed', 'committed', 'committed', 'aborted', 'aborted', 'aborted', 'aborted'], 'step 1 outcomes')
  t.same(step1.slice(3).map(r => r.rejected), ['out of stock', 'insufficient funds', 'out of stock', 'insufficient funds'], 'rejected for stock and for funds, with the reason')
  t.equal(report.results.filter(r => r.state === 'error').length, 0, 'no order answered with an error')
  t.equal(report.kill?.service, 'payment', 'payment was killed')
  t.ok(report.kill?.restartedPid !== undefined, 'and restarted')
  t.ok(report.results.slice(-2).every(r => r.state === 'committed'), 'orders placed after the restart succeed')
  t.ok(report.results.slice(-4, -2).every(r => r.state === 'aborted' && /payment unreachable|prepare-failed/.test(r.rejected ?? '')), 'orders while payment is down are rejected, saying why')
})
