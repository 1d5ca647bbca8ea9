/**
 * `twopc-conformance` (conformance/dist/cli.js) run as a real child process
 * against real participants over HTTP on 127.0.0.1:
 * (a) an SDK participant in this process (Fastify + twoPhaseParticipant on a temp SQLite file),
 *     unsigned and signed: every MUST check passes, exit 0, and the database shows the kit left
 *     nothing reserved;
 * (b) the demo's inventory and payment services, started from demo-services/dist as the demo
 *     starts them: they pass;
 * (c) a participant written without the SDK (test/fixtures/conformance-participant.ts): it
 *     passes when correct, and each deliberate flaw makes the kit exit 1 with the right checks
 *     failed.
 * It runs from dist (`npm test` builds first).
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import Database from 'better-sqlite3'
import Fastify, { type FastifyInstance } from 'fastify'
import { request } from 'undici'
import { twoPhaseParticipant } from '@fastify-2pc/participant-sdk'
import { startConformanceParticipant, type Flaw } from './fixtures/conformance-participant.js'
import { freePort } from '../coordinator/test/support/process.js'
import { waitFor } from './kit/wait.js'
import { runNode } from './kit/child.js'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const CLI = join(ROOT, 'conformance', 'dist', 'cli.js')
const DEMO_BIN = (name: 'inventory' | 'payment'): string => join(ROOT, 'demo-services', 'dist', `${name}-bin.js`)
const SECRET = 'conformance-test-secret-0123456789'

interface CheckRow { id: string, level: 'MUST' | 'SHOULD', result: 'pass' | 'fail' | 'warn' | 'skip', detail: string }
interface Report { ok: boolean, vote?: string, checks: CheckRow[], summary: { passed: number, failed: number, warnings: number, skipped: number }, cleanup: { aborted: number, failed: string[] } }
interface Run { code: number | null, stdout: string, stderr: string }

// The subtests are independent (own participants, own ports, own files): run them side by side.
t.jobs = 4

const dir = mkdtempSync(join(tmpdir(), 'twopc-conformance-'))
t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })

async function runCli (args: string[], timeoutMs = 90_000): Promise<Run> {
  // A generous per-request bound: in-process participants answer slowly under coverage on a loaded machine.
  const all = args.length > 0 && !args.includes('--timeout-ms') ? [...args, '--timeout-ms', '30000'] : args
  // No TWOPC_SECRET inherited: the kit would take it as --secret.
  return await runNode(CLI, { nodeArgs: [], args: all, cwd: ROOT, env: { TWOPC_SECRET: undefined }, timeoutMs })
}

async function runJson (args: string[]): Promise<{ run: Run, report: Report }> {
  const run = await runCli([...args, '--json'])
  let report: Report
  try {
    report = JSON.parse(run.stdout) as Report
  } catch {
    throw new Error(`--json did not print JSON (exit ${String(run.code)}):\n${run.stdout}\n${run.stderr}`)
  }
  return { run, report }
}

const failedIds = (r: Report): string[] => r.checks.filter(c => c.result === 'fail').map(c => c.id).sort()
const explain = (r: Report): string => r.checks.filter(c => c.result !== 'pass').map(c => `${c.result} ${c.id}: ${c.detail}`).join('\n')

async function getJson (url: string): Promise<{ status: number, body: unknown }> {
  const res = await request(url, { headersTimeout: 2000, bodyTimeout: 2000 })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? undefined : JSON.parse(text) }
}

async function postJson (url: string, body: unknown): Promise<number> {
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  await res.body.text()
  return res.statusCode
}

// --- (a) an SDK participant in this process --------------------------------------------------

const INITIAL = 1000

async function sdkParticipant (file: string, secret?: string): Promise<{ app: FastifyInstance, db: Database.Database, url: string }> {
  const db = new Database(join(dir, file))
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  db.exec(`CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER NOT NULL CHECK (available >= 0), sold INTEGER NOT NULL DEFAULT 0);
           CREATE TABLE holds (txid TEXT PRIMARY KEY, item TEXT NOT NULL, qty INTEGER NOT NULL);
           INSERT INTO stock (item, available) VALUES ('apple', ${INITIAL});`)
  const app = Fastify()
  // Nothing listens there: in-doubt recovery's questions fail, which never counts as a decision.
  const coordinatorUrl = `http://127.0.0.1:${await freePort()}`
  await app.register(twoPhaseParticipant, {
    name: 'stock',
    db,
    coordinatorUrl,
    ...(secret !== undefined ? { secret } : {}),
    prepare (tx, payload, db) {
      const { item, qty } = (payload ?? {}) as { item?: unknown, qty?: unknown }
      if (typeof item !== 'string' || typeof qty !== 'number') return 'no'
      const r = db.prepare('UPDATE stock SET available = available - ? WHERE item = ? AND available >= ?').run(qty, item, qty)
      if (r.changes === 0) return 'no'
      db.prepare('INSERT INTO holds (txid, item, qty) VALUES (?, ?, ?)').run(tx.id, item, qty)
      return 'yes'
    },
    commit (tx, db) {
      const h = db.prepare('SELECT item, qty FROM holds WHERE txid = ?').get(tx.id) as { item: string, qty: number }
      db.prepare('UPDATE stock SET sold = sold + ? WHERE item = ?').run(h.qty, h.item)
      db.prepare('DELETE FROM holds WHERE txid = ?').run(tx.id)
    },
    abort (tx, db) {
      const h = db.prepare('SELECT item, qty FROM holds WHERE txid = ?').get(tx.id) as { item: string, qty: number }
      db.prepare('UPDATE stock SET available = available + ? WHERE item = ?').run(h.qty, h.item)
      db.prepare('DELETE FROM holds WHERE txid = ?').run(tx.id)
    }
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  return { app, db, url: `http://127.0.0.1:${port}/2pc` }
}

t.before(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npx tsc -b\` first (npm test does)`)
})

t.test('(a) SDK participant: every MUST check passes, unsigned and signed; nothing left reserved', async t => {
  const plain = await sdkParticipant('sdk-plain.db')
  const signed = await sdkParticipant('sdk-signed.db', SECRET)
  t.teardown(async () => {
    await plain.app.close(); plain.db.close()
    await signed.app.close(); signed.db.close()
  })
  const payload = '{"item":"apple","qty":1}'
  const [p, s, table] = await Promise.all([
    runJson([plain.url, '--name', 'stock', '--payload', payload]),
    runJson([signed.url, '--name', 'stock', '--payload', payload, '--secret', SECRET]),
    // The default payload ({}): this participant votes no to it.
    runCli([signed.url, '--name', 'stock', '--secret', SECRET])
  ])
  for (const [label, { run, report }, participant] of [['unsigned', p, plain], ['signed', s, signed]] as const) {
    t.equal(run.code, 0, `${label}: exit 0\n${explain(report)}`)
    t.equal(report.ok, true, `${label}: ok`)
    t.equal(report.vote, 'yes', `${label}: voted yes to --payload`)
    t.same(failedIds(report), [], `${label}: no MUST check failed`)
    // Known: the SDK's routes use the host app's Ajv, and Fastify's default (removeAdditional:
    // true) strips unknown fields instead of refusing them: a SHOULD warning. An app built with
    // removeAdditional: false (as the demo services are) refuses them, see (b).
    const warned = report.checks.filter(c => c.result === 'warn').map(c => c.id)
    t.ok(warned.every(id => id === 'unknown-fields-refused'), `${label}: no other SHOULD check failed\n${explain(report)}`)
    t.equal(report.checks.length, report.summary.passed + report.summary.failed + report.summary.warnings + report.summary.skipped, `${label}: the summary counts every check`)
    const skipped = report.checks.filter(c => c.result === 'skip')
    if (label === 'signed') t.equal(skipped.length, 0, 'signed: nothing skipped')
    else t.ok(skipped.length === 9 && skipped.every(c => c.id.startsWith('signature-') && /no --secret/.test(c.detail)), 'unsigned: only the 9 signature checks are skipped, saying why')
    t.same(report.cleanup.failed, [], `${label}: clean-up aborted everything it left prepared`)
    // The kit left the participant as it found it, apart from the transactions it committed.
    const stock = participant.db.prepare('SELECT available, sold FROM stock').get() as { available: number, sold: number }
    const holds = participant.db.prepare('SELECT count(*) AS n FROM holds').get() as { n: number }
    t.equal(holds.n, 0, `${label}: no reservation left held`)
    t.equal(stock.available + stock.sold, INITIAL, `${label}: stock conserved`)
    t.ok(stock.sold > 0, `${label}: some transactions were committed (${stock.sold})`)
    t.same(participant.app.twoPhase.inDoubt(), [], `${label}: nothing in doubt`)
  }
  t.match(s.report.checks.find(c => c.id === 'signature-replayed-rejected')?.detail, /nothing changed/, 'signature checks verified the state with signed follow-ups')
  t.match(s.report.checks.find(c => c.id === 'signature-route-bound')?.detail, /^12 replays of abort, commit, prepare, batch onto the other routes: 401 each; nothing changed/,
    'every signed callback, the batch included, was replayed onto every other route')

  // The table, for the default payload the participant votes no to.
  t.equal(table.code, 0, `default payload: still exit 0\n${table.stdout}`)
  t.match(table.stdout, /payload \{\} -> vote "no"/, 'header: the vote')
  t.match(table.stdout, /^check\s+level\s+result\s+detail$/m, 'table header')
  t.match(table.stdout, /^prepare-repeated-same-vote\s+MUST\s+pass\s+"no" three times$/m, 'a MUST row')
  t.match(table.stdout, /^commit-unknown-404\s+SHOULD\s+pass\s+404 TX_UNKNOWN$/m, 'a SHOULD row, with the code it got')
  for (const id of ['commit-after-yes', 'commit-idempotent', 'abort-after-yes', 'abort-idempotent', 'abort-before-prepare-tombstone', 'commit-after-abort-refused', 'abort-after-commit-refused']) {
    t.match(table.stdout, new RegExp(`^${id}\\s+MUST\\s+skip\\s+skipped: the participant voted no to --payload`, 'm'), `${id} skipped, saying why`)
  }
  for (const id of ['abort-unknown-ok', 'commit-unknown-refused', 'malformed-json-refused', 'signature-missing-rejected', 'signature-replayed-rejected']) {
    t.match(table.stdout, new RegExp(`^${id}\\s+MUST\\s+pass\\s`, 'm'), `${id} still runs and passes`)
  }
  t.match(table.stdout, /CONFORMS: every MUST check passed/, 'verdict')
})

t.test('(a) the participant wants signatures, none given: prepare fails with a hint, the rest is skipped, exit 1', async t => {
  const sdk = await sdkParticipant('sdk-nosecret.db', SECRET)
  t.teardown(async () => { await sdk.app.close(); sdk.db.close() })
  const { run, report } = await runJson([sdk.url, '--name', 'stock'])
  t.equal(run.code, 1)
  t.same(failedIds(report), ['prepare-answers-vote'])
  t.match(report.checks[0]?.detail, /401 .*pass --secret/)
  t.ok(report.checks.slice(1).every(c => c.result === 'skip'), 'everything after it skipped')
})

t.test('usage errors exit 2; an unreachable participant exits 1', async t => {
  // Port 1 (tcpmux): nothing listens there, and unlike a port freePort() found free a moment
  // ago, no concurrently running test can be given it (ephemeral ports start far above 1024).
  const [missing, badPayload, unreachable] = await Promise.all([
    runCli([]),
    runCli(['http://127.0.0.1:1/2pc', '--payload', '{nope']),
    runJson(['http://127.0.0.1:1/2pc', '--timeout-ms', '2000'])
  ])
  t.equal(missing.code, 2, 'no url: exit 2')
  t.match(missing.stderr, /the participant base url is missing[\s\S]*usage: twopc-conformance/)
  t.equal(badPayload.code, 2, 'bad --payload: exit 2')
  t.match(badPayload.stderr, /--payload is not JSON/)
  t.equal(unreachable.run.code, 1, 'unreachable: exit 1')
  t.same(failedIds(unreachable.report), ['prepare-answers-vote'])
  t.match(unreachable.report.checks[0]?.detail, /ECONNREFUSED/)
  t.match(unreachable.report.checks[1]?.detail, /did not answer/)
})

// --- (b) the demo participants ---------------------------------------------------------------

async function startDemo (t: Test, name: 'inventory' | 'payment', secret: string | undefined): Promise<{ origin: string, log: () => string }> {
  const bin = DEMO_BIN(name)
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`npx tsc -b\` first`)
  const port = await freePort()
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    HOST: '127.0.0.1',
    DB_PATH: join(dir, `demo-${name}.db`),
    TWOPC_COORDINATOR_URL: `http://127.0.0.1:${await freePort()}`,
    LOG_LEVEL: 'warn',
    TWOPC_CRASH_AT: ''
  }
  delete env.AMQP_URL
  delete env.TWOPC_SECRET
  delete env.TWOPC_API_TOKEN
  if (secret !== undefined) env.TWOPC_SECRET = secret
  const child: ChildProcess = spawn(process.execPath, [bin], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stdout?.on('data', chunk => { stderr += String(chunk) })
  child.stderr?.on('data', chunk => { stderr += String(chunk) })
  let exited: string | undefined
  child.once('exit', (code, signal) => { exited = `exited (${signal ?? code})` })
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const gone = once(child, 'exit')
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
    await gone
    clearTimeout(timer)
  })
  const origin = `http://127.0.0.1:${port}`
  await waitFor(`${name} ready`, async () => {
    if (exited !== undefined) throw new Error(`${name} ${exited}: ${stderr}`)
    return (await getJson(`${origin}/healthz`)).status === 200 ? true : undefined
  }, 60_000, { everyMs: 50 }).catch((err: Error) => { throw exited !== undefined ? new Error(`${name} ${exited}: ${stderr}`) : err })
  return { origin, log: () => `${name} output:\n${stderr.split('\n').slice(-20).join('\n')}` }
}

t.test('(b) demo inventory (signed) and payment (unsigned), as the demo runs them, pass', async t => {
  const [inv0, pay0] = await Promise.all([startDemo(t, 'inventory', SECRET), startDemo(t, 'payment', undefined)])
  const inventory = inv0.origin
  const payment = pay0.origin
  t.equal(await postJson(`${inventory}/stock`, { sku: 'apple', available: 500 }), 201, 'seeded stock')
  t.equal(await postJson(`${payment}/balances`, { account: 'alice', balance: 50_000 }), 201, 'seeded balance')
  const [inv, pay] = await Promise.all([
    runJson([`${inventory}/2pc`, '--name', 'inventory', '--secret', SECRET, '--payload', '{"sku":"apple","qty":2}']),
    runJson([`${payment}/2pc`, '--name', 'payment', '--payload', '{"account":"alice","amount":30}'])
  ])
  t.equal(inv.run.code, 0, `inventory: exit 0\n${explain(inv.report)}\n${inv0.log()}`)
  t.equal(inv.report.vote, 'yes')
  t.equal(inv.report.summary.skipped, 0, 'inventory: nothing skipped')
  t.equal(inv.report.summary.warnings, 0, `inventory: no SHOULD check failed either\n${explain(inv.report)}`)
  t.equal(pay.report.summary.warnings, 0, `payment: no SHOULD check failed either\n${explain(pay.report)}`)
  t.equal(pay.run.code, 0, `payment: exit 0\n${explain(pay.report)}\n${pay0.log()}`)
  t.equal(pay.report.vote, 'yes')
  t.ok(pay.report.checks.filter(c => c.result === 'skip').every(c => c.id.startsWith('signature-')), 'payment: only signature checks skipped')

  // Nothing left reserved or held, money and stock conserved.
  const stock = (await getJson(`${inventory}/stock`)).body as { items: Array<{ available: number, reserved: number, sold: number }> }
  t.equal(stock.items[0]?.reserved, 0, 'no stock reserved')
  t.equal((stock.items[0]?.available ?? 0) + (stock.items[0]?.sold ?? 0), 500, 'stock conserved')
  const balances = (await getJson(`${payment}/balances`)).body as { items: Array<{ balance: number, held: number, spent: number }> }
  t.equal(balances.items[0]?.held, 0, 'no money held')
  t.equal((balances.items[0]?.balance ?? 0) + (balances.items[0]?.spent ?? 0), 50_000, 'money conserved')
  for (const origin of [inventory, payment]) {
    t.same(((await getJson(`${origin}/in-doubt`)).body as { inDoubt: unknown[] }).inDoubt, [], `${origin}: nothing in doubt`)
  }
})

// --- (c) a participant without the SDK: correct, then broken on purpose ----------------------

const SIGNATURE_MUSTS = ['signature-malformed-rejected', 'signature-missing-rejected', 'signature-replayed-rejected', 'signature-route-bound', 'signature-stale-rejected', 'signature-wrong-rejected']

// `failed`: exactly the MUST checks that must fail; `check` and `detail`: what one of them says.
const FLAWS: Array<{ flaw: Flaw, signed: boolean, failed: string[], check: string, detail: RegExp }> = [
  { flaw: 'flip-vote', signed: false, failed: ['prepare-repeated-same-vote'], check: 'prepare-repeated-same-vote', detail: /prepare #1 voted "yes", prepare #2 of the same txid voted "no"/ },
  { flaw: 'no-tombstone', signed: false, failed: ['abort-before-prepare-tombstone'], check: 'abort-before-prepare-tombstone', detail: /no tombstone: the late prepare voted "yes"/ },
  // The refused re-commit also shows in the follow-up of abort-after-commit-refused.
  { flaw: 'commit-not-idempotent', signed: false, failed: ['abort-after-commit-refused', 'commit-idempotent'], check: 'commit-idempotent', detail: /commit #2 answered 409/ },
  { flaw: 'commit-unknown-ok', signed: false, failed: ['commit-unknown-refused'], check: 'commit-unknown-refused', detail: /was accepted: 200/ },
  { flaw: 'abort-after-commit-ok', signed: false, failed: ['abort-after-commit-refused'], check: 'abort-after-commit-refused', detail: /abort after commit was accepted/ },
  { flaw: 'ignore-signature', signed: true, failed: SIGNATURE_MUSTS, check: 'signature-missing-rejected', detail: /prepare with this signature answered 200/ },
  { flaw: 'verify-after-apply', signed: true, failed: SIGNATURE_MUSTS, check: 'signature-stale-rejected', detail: /the refused prepare was applied anyway/ },
  { flaw: 'unbound-signature', signed: true, failed: ['signature-route-bound'], check: 'signature-route-bound', detail: /^an abort signed for \/abort, sent to \/commit, answered 200 \{"ok":true\}, expected 401: the signature must bind its route/ }
]

t.test('(c) a participant without the SDK: the correct one passes, each flaw is caught', async t => {
  const started = await Promise.all([
    startConformanceParticipant({ name: 'plain', flaw: 'none', secret: SECRET }),
    ...FLAWS.map(async f => await startConformanceParticipant({ name: 'plain', flaw: f.flaw, ...(f.signed ? { secret: SECRET } : {}) }))
  ])
  t.teardown(async () => { await Promise.all(started.map(async s => { await s.app.close() })) })
  const args = (url: string, signed: boolean): string[] => [url, '--name', 'plain', '--payload', '{"ok":true}', ...(signed ? ['--secret', SECRET] : [])]
  const runs = await Promise.all(started.map(async (s, i) => await runJson(args(s.url, i === 0 || FLAWS[i - 1]?.signed === true))))

  const correct = runs[0] as { run: Run, report: Report }
  t.equal(correct.run.code, 0, `correct: exit 0\n${explain(correct.report)}`)
  t.same(failedIds(correct.report), [], 'correct: no MUST failed')
  t.equal(correct.report.summary.warnings, 0, `correct: no warnings\n${explain(correct.report)}`)
  t.equal(correct.report.summary.skipped, 0, 'correct: nothing skipped')
  t.equal([...(started[0]?.states.values() ?? [])].filter(s => s === 'prepared').length, 0, 'correct: nothing left prepared')
  FLAWS.forEach((f, k) => {
    const { run, report } = runs[k + 1] as { run: Run, report: Report }
    t.equal(run.code, 1, `${f.flaw}: exit 1`)
    t.equal(report.ok, false, `${f.flaw}: not ok`)
    t.same(failedIds(report), [...f.failed].sort(), `${f.flaw}: exactly these MUST checks failed\n${explain(report)}`)
    const named = report.checks.find(c => c.id === f.check)
    t.match(named?.detail, f.detail, `${f.flaw}: ${f.check} says what was wrong (${named?.detail ?? ''})`)
  })
})

t.test('(c) a participant that also accepts v1 signatures: a warning (SHOULD), not a failure', async t => {
  const legacy = await startConformanceParticipant({ name: 'plain', flaw: 'accept-v1', secret: SECRET })
  t.teardown(async () => { await legacy.app.close() })
  const { run, report } = await runJson([legacy.url, '--name', 'plain', '--payload', '{"ok":true}', '--secret', SECRET])
  t.equal(run.code, 0, `exit 0: no MUST failed\n${explain(report)}`)
  t.same(failedIds(report), [])
  t.same(report.checks.filter(c => c.result === 'warn').map(c => c.id), ['signature-legacy-rejected'], `exactly the legacy check warns\n${explain(report)}`)
  t.match(report.checks.find(c => c.id === 'signature-legacy-rejected')?.detail, /prepare with this signature answered 200/)
  t.equal(report.checks.find(c => c.id === 'signature-route-bound')?.result, 'pass', 'v2 signatures are still bound to their route')
})
