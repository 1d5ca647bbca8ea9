/**
 * The conformance kit's batch checks (conformance/src/checks.ts), run in process against SDK
 * participants over real HTTP on 127.0.0.1: they pass against the SDK's batch route, pass as
 * "not advertised" without one, and fail against participants whose batch route breaks the
 * contract (answers rewritten on the way out by an onSend hook of the host app).
 */
import t, { type Test } from 'tap'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { runConformance } from '@fastify-2pc/conformance'
import type { ConformanceReport } from '@fastify-2pc/conformance'
import { buildInventory, SECRET } from './helpers.js'
import type { Inventory } from './helpers.js'

const BATCH_CHECKS = ['batch-advertised-valid', 'batch-results-in-order', 'batch-too-many-calls-refused']

type Rewrite = (url: string, body: Record<string, unknown>) => Record<string, unknown>

/** A fresh directory under the test's own. */
function subdir (t: Test, name: string): string {
  const dir = join(t.testdir(), name)
  mkdirSync(dir, { recursive: true })
  return dir
}

async function participant (dir: string, options: { secret?: string, batchMaxCalls?: number }, rewrite?: Rewrite): Promise<{ inv: Inventory, url: string }> {
  const inv = await buildInventory(dir, options, rewrite === undefined
    ? undefined
    : (app: FastifyInstance) => {
        app.addHook('onSend', async (request, reply, payload) => {
          if (typeof payload !== 'string' || reply.statusCode !== 200) return payload
          return JSON.stringify(rewrite(request.url, JSON.parse(payload) as Record<string, unknown>))
        })
      })
  inv.db.prepare("UPDATE stock SET available = 1000 WHERE sku = 'apple'").run()
  await inv.app.listen({ port: 0, host: '127.0.0.1' })
  return { inv, url: `http://127.0.0.1:${(inv.app.server.address() as { port: number }).port}/2pc` }
}

async function run (url: string, secret?: string): Promise<ConformanceReport> {
  return await runConformance({ url, name: 'inventory', payload: { sku: 'apple', qty: 1 }, coordinatorId: 'conformance', secret, timeoutMs: 10_000 })
}

const check = (report: ConformanceReport, id: string): ConformanceReport['checks'][number] | undefined => report.checks.find(c => c.id === id)
const failed = (report: ConformanceReport): string[] => report.checks.filter(c => c.result === 'fail').map(c => c.id).sort()

t.test('the SDK\'s batch route passes every batch check, signed and unsigned; nothing is left reserved', async t => {
  for (const secret of [SECRET, undefined]) {
    const { inv, url } = await participant(subdir(t, secret === undefined ? 'plain' : 'signed'), secret === undefined ? {} : { secret })
    t.teardown(() => inv.app.close())
    const report = await run(url, secret)
    const label = secret === undefined ? 'unsigned' : 'signed'
    t.same(failed(report), [], `${label}: no MUST failed`)
    for (const id of BATCH_CHECKS) t.equal(check(report, id)?.result, 'pass', `${label}: ${id} passes (${check(report, id)?.detail ?? ''})`)
    t.equal(check(report, 'batch-advertised-valid')?.detail, 'maxCalls 128, maxBytes 1048576')
    t.match(check(report, 'batch-results-in-order')?.detail, secret === undefined ? /^signed: 200, results 200, 200, 200, 400; applied$/ : /^unsigned: 401, nothing applied; signed: 200/)
    t.equal(check(report, 'batch-too-many-calls-refused')?.detail, '400 FST_ERR_VALIDATION; nothing changed')
    t.equal(check(report, 'success-answers-documented-fields')?.result, 'pass', 'the advertised batch field is a documented one')
    t.same(report.cleanup.failed, [])
    t.same(inv.reservations(), [], `${label}: nothing left reserved`)
    t.same(inv.app.twoPhase.inDoubt(), [])
  }
})

t.test('without a batch route (batchMaxCalls: 0) the batch checks pass as not advertised', async t => {
  const { inv, url } = await participant(t.testdir(), { secret: SECRET, batchMaxCalls: 0 })
  t.teardown(() => inv.app.close())
  const report = await run(url, SECRET)
  t.same(failed(report), [])
  for (const id of BATCH_CHECKS) {
    t.equal(check(report, id)?.result, 'pass', id)
    t.match(check(report, id)?.detail, /^not advertised/, id)
  }
  t.notOk(report.checks.some(c => c.result === 'skip'), 'nothing skipped')
})

t.test('a batch route that breaks the contract is caught', async t => {
  // Results answered in reverse order.
  const reversed = await participant(subdir(t, 'reversed'), { secret: SECRET }, (url, body) =>
    url.endsWith('/batch') && Array.isArray(body.results) ? { results: [...body.results].reverse() } : body)
  // Advertises fewer calls than it takes: a batch of maxCalls + 1 is accepted.
  const lenient = await participant(subdir(t, 'lenient'), { secret: SECRET, batchMaxCalls: 16 }, (url, body) =>
    url.endsWith('/prepare') ? { ...body, batch: { maxCalls: 4, maxBytes: 1024 * 1024 } } : body)
  // Advertises a capability that is not one.
  const malformed = await participant(subdir(t, 'malformed'), {}, (url, body) =>
    url.endsWith('/prepare') ? { ...body, batch: { maxCalls: 0, maxBytes: 'lots' } } : body)
  // Answers a batch without its results.
  const empty = await participant(subdir(t, 'empty'), {}, (url, body) => url.endsWith('/batch') ? { results: [] } : body)
  t.teardown(async () => { for (const p of [reversed, lenient, malformed, empty]) await p.inv.app.close() })

  const r = await run(reversed.url, SECRET)
  t.same(failed(r), ['batch-results-in-order'])
  t.match(check(r, 'batch-results-in-order')?.detail, /result #1 \(prepare of a fresh tx\) answered 400/)

  const l = await run(lenient.url, SECRET)
  t.same(failed(l), ['batch-too-many-calls-refused'])
  t.match(check(l, 'batch-too-many-calls-refused')?.detail, /a batch of 5 calls \(maxCalls 4\) was accepted: 200/)

  const m = await run(malformed.url)
  t.same(failed(m), ['batch-advertised-valid'])
  t.match(check(m, 'batch-advertised-valid')?.detail, /"maxCalls":0/)
  t.match(check(m, 'batch-results-in-order')?.detail, /skipped: batch-advertised-valid failed/)

  const e = await run(empty.url)
  t.same(failed(e), ['batch-results-in-order'])
  t.match(check(e, 'batch-results-in-order')?.detail, /sent 4 calls and got 0 results/)

  // Whatever failed, the kit aborted what it left prepared.
  for (const p of [reversed, lenient, malformed, empty]) t.same(p.inv.reservations(), [], 'nothing left reserved')
})
