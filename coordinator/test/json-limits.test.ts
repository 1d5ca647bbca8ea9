/**
 * What one record or one request must never break:
 * - a record whose metadata nests too deep to serialize (written into the log before the JSON
 *   limits existed) is answered with `metadata: null, metadataOmitted: true` by GET of the record,
 *   every page of GET /v1/transactions that holds it, `twopc list`/`status` and the console —
 *   the rest of the page is intact;
 * - no log line carries the API token: not `/admin?token=…` (the request URL is logged with its
 *   query redacted), not the bearer header, not the login form.
 * Real parts: a real SQLite file edited with better-sqlite3 while no coordinator has it open,
 * real HTTP, the built CLI in a child process, pino writing to a stream this test reads.
 */
import t from 'tap'
import Database from 'better-sqlite3'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import type { CoordinatorOptions } from '../src/config.js'
import { startCoordinator, tempDbPath } from './support/participant.js'

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const TOKEN = 'json-limits-token-0123456789-SECRET'

/** Metadata JSON nested `levels` deep: far beyond what JSON.stringify can recurse into. */
const tooDeep = (levels: number): string => '{"x":' + '['.repeat(levels) + ']'.repeat(levels) + '}'

async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, text: string }> {
  const res = await request(url, { headers })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

async function twopc (args: string[], env: Record<string, string>): Promise<{ code: number, stdout: string, stderr: string }> {
  return await new Promise(resolve => {
    execFile(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 30_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

t.test('a stored record with metadata too deep to serialize: record, list, CLI and console answer 2xx', async t => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npx tsc -b\` first`)
  const dbPath = tempDbPath(t)
  const first = await startCoordinator(t, { dbPath })
  const ids: string[] = []
  for (const n of [1, 2, 3]) {
    const res = await first.api.post<{ id: string }>('/v1/transactions', { metadata: { order: n } })
    t.equal(res.status, 201)
    t.equal((await first.api.post(`/v1/transactions/${res.body.id}/abort`)).status, 200)
    ids.push(res.body.id)
  }
  await first.close()
  const deepId = ids[1] as string
  // As a coordinator without the limits wrote it: 100,000 levels (JSON.parse reads it back fine).
  const db = new Database(dbPath)
  t.equal(db.prepare('UPDATE transactions SET metadata = ? WHERE id = ?').run(tooDeep(100_000), deepId).changes, 1)
  db.close()

  const lines: string[] = []
  const stream = new Writable({ write (chunk: Buffer, _enc, done) { lines.push(chunk.toString()); done() } })
  const c = await startCoordinator(t, { dbPath, logger: { level: 'warn', stream } as CoordinatorOptions['logger'] })

  const list = await c.api.get<{ items: Array<{ id: string, metadata: unknown, metadataOmitted?: boolean }> }>('/v1/transactions')
  t.equal(list.status, 200, list.status === 200 ? 'list' : `list: ${list.text.slice(0, 200)}`)
  t.same((list.body.items ?? []).map(i => i.id), [...ids].reverse(), 'the whole page, newest first')
  const deep = (list.body.items ?? []).find(i => i.id === deepId)
  t.same({ metadata: deep?.metadata, metadataOmitted: deep?.metadataOmitted }, { metadata: null, metadataOmitted: true }, 'the deep metadata is omitted, with a flag')
  for (const item of (list.body.items ?? []).filter(i => i.id !== deepId)) {
    t.equal(item.metadataOmitted, undefined, 'the others carry no flag')
    t.match(item.metadata, { order: Number }, 'and their metadata')
  }
  const one = await c.api.get<{ metadata: unknown, metadataOmitted?: boolean }>(`/v1/transactions/${deepId}`)
  t.equal(one.status, 200, one.status === 200 ? 'record' : `record: ${one.text.slice(0, 200)}`)
  t.same({ metadata: one.body.metadata, metadataOmitted: one.body.metadataOmitted }, { metadata: null, metadataOmitted: true })
  t.equal((await c.api.get('/v1/transactions?limit=1&state=aborted')).status, 200)
  const again = await c.api.get('/v1/transactions')
  t.equal(again.status, 200)
  const warned = lines.filter(l => l.includes(deepId))
  t.equal(warned.length, 1, 'logged once, not per request')
  t.match(warned[0], /metadata/)

  const env = { TWOPC_URL: c.url }
  const [cliList, cliJson, cliStatus] = await Promise.all([twopc(['list'], env), twopc(['list', '--json'], env), twopc(['status', deepId], env)])
  t.equal(cliList.code, 0, `twopc list: ${cliList.stderr}`)
  t.match(cliList.stdout, deepId)
  t.equal(cliJson.code, 0, `twopc list --json: ${cliJson.stderr}`)
  t.equal(JSON.parse(cliJson.stdout).items.length, 3)
  t.equal(cliStatus.code, 0, `twopc status: ${cliStatus.stderr}`)

  const page = await get(`${c.url}/admin`)
  t.equal(page.status, 200, 'console list')
  t.match(page.text, deepId)
  const detail = await get(`${c.url}/admin/tx/${deepId}`)
  t.equal(detail.status, 200, 'console detail')
  t.match(detail.text, /omitted/)
  t.notMatch(detail.text, /\[\[\[\[/, 'not rendered')
})

t.test('no log line carries the API token: ?token= redacted, bearer and login form not logged', async t => {
  const lines: string[] = []
  const stream = new Writable({ write (chunk: Buffer, _enc, done) { lines.push(chunk.toString()); done() } })
  const c = await startCoordinator(t, { apiToken: TOKEN, logger: { level: 'trace', stream } as CoordinatorOptions['logger'] })
  const urls = [
    `/admin?token=${TOKEN}`,
    `/admin/in-doubt?state=preparing&token=${TOKEN}`,
    `/admin?TOKEN=${TOKEN}&x=1`,
    `/admin?token=${encodeURIComponent(TOKEN)}x`, // a wrong one that contains it
    `/v1/transactions?access_token=${TOKEN}`,
    `/v1/transactions?api_key=${TOKEN}&secret=${TOKEN}&password=${TOKEN}`,
    `/nowhere?token=${TOKEN}`
  ]
  for (const url of urls) t.ok((await get(c.url + url)).status < 500, url)
  t.equal((await get(`${c.url}/v1/transactions`, { authorization: `Bearer ${TOKEN}` })).status, 200)
  t.equal((await get(`${c.url}/v1/transactions`, { authorization: `Bearer ${TOKEN}x` })).status, 401)
  const login = await request(`${c.url}/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: TOKEN, next: '/admin' }).toString()
  })
  await login.body.text()
  t.equal(login.statusCode, 303)
  await c.close()

  const requests = lines.filter(l => l.includes('"incoming request"'))
  t.ok(requests.length >= urls.length + 3, 'requests are logged')
  t.same(lines.filter(l => l.includes(TOKEN) || l.includes(encodeURIComponent(TOKEN))), [], 'no line carries the token')
  t.ok(requests.some(l => l.includes('"url":"/admin/in-doubt?state=preparing&token=[REDACTED]"')), 'the rest of the URL is kept')
  t.ok(requests.some(l => l.includes('"url":"/admin?TOKEN=[REDACTED]&x=1"')), 'names are matched in any case')
})

t.test('the OpenAPI document states the JSON limits', async t => {
  const c = await startCoordinator(t)
  const doc = await c.api.get('/docs/json')
  t.equal(doc.status, 200)
  t.match(doc.text, '"x-json-limits":{"maxDepth":32,"maxKeys":10000}')
})
