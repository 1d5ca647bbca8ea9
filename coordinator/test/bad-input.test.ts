/**
 * Bad input: every rejected request gets the documented status and stable code in the one error
 * shape `{statusCode, code, error, message}`, AND leaves the log exactly as it was (every row of
 * every table of the SQLite file, read through a separate read-only connection, before and after).
 * Also the environment schema: a bad value stops start-up with a message naming the variable.
 */
import t, { type Test } from 'tap'
import Database from 'better-sqlite3'
import { connect } from 'node:net'
import { fileURLToPath } from 'node:url'
import { resolve } from 'node:path'
import { configFromEnv, resolveOptions } from '../src/config.js'
import { startCoordinator, startParticipant, waitFor, type HttpAnswer, type TestCoordinator } from './support/participant.js'
import { spawnNode } from '../../test/kit/child.js'
import { nestedJson as nested } from '../../test/kit/json.js'

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')

/** Every row of every table, in a stable order. */
function dump (dbPath: string): Record<string, unknown[]> {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true })
  try {
    const tables = db.prepare<[], { name: string, sql: string }>("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name").all()
    const out: Record<string, unknown[]> = {}
    // A WITHOUT ROWID table (participants, decisions) has no rowid: its key orders it.
    for (const { name, sql } of tables) out[name] = db.prepare(`SELECT * FROM "${name}" ${/WITHOUT ROWID/i.test(sql) ? '' : 'ORDER BY rowid'}`).all()
    return out
  } finally {
    db.close()
  }
}

/**
 * Sends a request that must be rejected with `status` / `code`, and checks the log did not
 * change. Returns the answer for further checks.
 */
async function rejected (
  t: Test, c: TestCoordinator, send: () => Promise<HttpAnswer>, status: number, code: string, what: string
): Promise<HttpAnswer> {
  const before = dump(c.dbPath)
  t.ok((before.transactions?.length ?? 0) >= 0 && before.schema_migrations !== undefined, 'the dump sees the log')
  const res = await send()
  t.equal(res.status, status, `${what}: status ${status}`)
  t.match(res.body, { statusCode: status, code, error: String, message: String }, `${what}: ${code}`)
  t.same(Object.keys(res.body as object).sort(), ['code', 'error', 'message', 'statusCode'], `${what}: the one error shape`)
  t.same(dump(c.dbPath), before, `${what}: log unchanged`)
  return res
}

const ZERO_ID = (prefix: string): string => `${prefix}.${'0'.repeat(26)}`

async function begin (c: TestCoordinator, body: Record<string, unknown> = {}): Promise<string> {
  const res = await c.api.post<{ id: string }>('/v1/transactions', body)
  if (res.status !== 201) throw new Error(`begin: ${res.status} ${res.text}`)
  return res.body.id
}

t.test('malformed JSON and an empty JSON body: 400 INVALID_JSON', async t => {
  const c = await startCoordinator(t)
  const id = await begin(c)
  const json = { 'content-type': 'application/json' }
  await rejected(t, c, async () => await c.api.post('/v1/transactions', '{"timeoutMs": 1000', json), 400, 'INVALID_JSON', 'begin, truncated')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, '{name: a}', json), 400, 'INVALID_JSON', 'enlist, not JSON')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', '', json), 400, 'INVALID_JSON', 'begin, empty body')
})

t.test('unknown fields and wrong types: 400 VALIDATION_FAILED (nothing dropped or coerced)', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t)
  const id = await begin(c)
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { timeoutMs: 1000, colour: 'red' }), 400, 'VALIDATION_FAILED', 'begin, unknown field')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { timeoutMs: '1000' }), 400, 'VALIDATION_FAILED', 'begin, string timeout')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { metadata: 'not an object' }), 400, 'VALIDATION_FAILED', 'begin, metadata not an object')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { participants: [{ name: 'a', url: p.url, role: 'x' }], commit: true }),
    400, 'VALIDATION_FAILED', 'one-shot, unknown participant field')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url, extra: 1 }),
    400, 'VALIDATION_FAILED', 'enlist, unknown field')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { url: p.url }), 400, 'VALIDATION_FAILED', 'enlist, no name')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'bad name!', url: p.url }),
    400, 'VALIDATION_FAILED', 'enlist, bad name')
  t.equal(p.calls.length, 0)
})

t.test('oversized body: 413 BODY_TOO_LARGE', async t => {
  const c = await startCoordinator(t, { bodyLimitBytes: 32 * 1024, maxPayloadBytes: 16 * 1024 })
  const p = await startParticipant(t)
  const id = await begin(c)
  const big = 'x'.repeat(40 * 1024)
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { metadata: { big } }), 413, 'BODY_TOO_LARGE', 'begin')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url, payload: big }),
    413, 'BODY_TOO_LARGE', 'enlist')
})

t.test('oversized payload or metadata: 413 PAYLOAD_TOO_LARGE', async t => {
  const c = await startCoordinator(t, { maxPayloadBytes: 1024 })
  const p = await startParticipant(t)
  const id = await begin(c)
  const big = 'x'.repeat(2000)
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url, payload: { big } }),
    413, 'PAYLOAD_TOO_LARGE', 'enlist')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { participants: [{ name: 'a', url: p.url, payload: big }], commit: true }),
    413, 'PAYLOAD_TOO_LARGE', 'one-shot')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { metadata: { big } }), 413, 'PAYLOAD_TOO_LARGE', 'begin, metadata')
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url, payload: { small: 'x'.repeat(900) } })).status, 201,
    'a payload under the limit is accepted')
  t.equal(p.calls.length, 0)
})

t.test('too many participants: 400 TOO_MANY_PARTICIPANTS, one by one and one-shot', async t => {
  const c = await startCoordinator(t, { maxParticipants: 3 })
  const p = await startParticipant(t)
  const id = await begin(c)
  for (const name of ['a', 'b', 'c']) {
    t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name, url: p.url })).status, 201)
  }
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'd', url: p.url }),
    400, 'TOO_MANY_PARTICIPANTS', 'enlist the fourth')
  const four = ['a', 'b', 'c', 'd'].map(name => ({ name, url: p.url }))
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { participants: four, commit: true }), 400, 'TOO_MANY_PARTICIPANTS', 'one-shot')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { participants: four }), 400, 'TOO_MANY_PARTICIPANTS', 'begin with four')
  t.equal(p.calls.length, 0)
})

t.test('participant URLs: outside the allowlist 403, malformed 400', async t => {
  const c = await startCoordinator(t)
  const id = await begin(c)
  const enlist = (url: string) => async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url })
  for (const url of ['http://example.com/2pc', 'http://10.0.0.1:8080/2pc', 'http://169.254.169.254/latest']) {
    await rejected(t, c, enlist(url), 403, 'PARTICIPANT_URL_NOT_ALLOWED', `loopback only: ${url}`)
  }
  for (const url of ['not a url', '/relative/2pc', 'ftp://127.0.0.1/2pc', 'http://user:pw@127.0.0.1/2pc', 'http://127.0.0.1/2pc?x=1', 'http://127.0.0.1/2pc#f']) {
    await rejected(t, c, enlist(url), 400, 'BAD_PARTICIPANT_URL', `malformed: ${url}`)
  }
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { participants: [{ name: 'a', url: 'http://example.com/2pc' }], commit: true }),
    403, 'PARTICIPANT_URL_NOT_ALLOWED', 'one-shot')

  const listed = await startCoordinator(t, { participantAllowlist: 'https://inventory.internal:8443, *.svc.local' })
  const id2 = await begin(listed)
  const enlist2 = (name: string, url: string) => async () => await listed.api.post(`/v1/transactions/${id2}/participants`, { name, url })
  await rejected(t, listed, enlist2('a', 'http://127.0.0.1:9/2pc'), 403, 'PARTICIPANT_URL_NOT_ALLOWED', 'an allowlist replaces loopback')
  await rejected(t, listed, enlist2('a', 'http://inventory.internal:8443/2pc'), 403, 'PARTICIPANT_URL_NOT_ALLOWED', 'origin matches scheme and port')
  await rejected(t, listed, enlist2('a', 'https://svc.local/2pc'), 403, 'PARTICIPANT_URL_NOT_ALLOWED', '*.svc.local needs a subdomain')
  t.equal((await listed.api.post(`/v1/transactions/${id2}/participants`, { name: 'a', url: 'https://inventory.internal:8443/2pc' })).status, 201)
  t.equal((await listed.api.post(`/v1/transactions/${id2}/participants`, { name: 'b', url: 'http://pay.svc.local/2pc' })).status, 201)
})

t.test('timeout out of range: 400 BAD_TIMEOUT', async t => {
  const c = await startCoordinator(t, { minTimeoutMs: 100, maxTimeoutMs: 60_000 })
  for (const timeoutMs of [0, 99, 60_001, -5]) {
    await rejected(t, c, async () => await c.api.post('/v1/transactions', { timeoutMs }), 400, 'BAD_TIMEOUT', `timeoutMs ${timeoutMs}`)
  }
  t.equal((await c.api.post('/v1/transactions', { timeoutMs: 100 })).status, 201)
  t.equal((await c.api.post('/v1/transactions', { timeoutMs: 60_000 })).status, 201)
})

t.test('bad id format: 400 INVALID_ID; unknown id: 404 TX_NOT_FOUND', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t)
  for (const bad of ['nope', 'NOT.AN-ID', `${c.id}.short`, `${c.id}.${'i'.repeat(26)}`]) {
    await rejected(t, c, async () => await c.api.get(`/v1/transactions/${bad}`), 400, 'INVALID_ID', `GET ${bad}`)
    await rejected(t, c, async () => await c.api.post(`/v1/transactions/${bad}/commit`), 400, 'INVALID_ID', `commit ${bad}`)
    await rejected(t, c, async () => await c.api.post(`/v1/transactions/${bad}/abort`), 400, 'INVALID_ID', `abort ${bad}`)
    await rejected(t, c, async () => await c.api.post(`/v1/transactions/${bad}/participants`, { name: 'a', url: p.url }), 400, 'INVALID_ID', `enlist ${bad}`)
    await rejected(t, c, async () => await c.api.get(`/v1/transactions/${bad}/decision`), 400, 'INVALID_ID', `decision ${bad}`)
  }
  const unknown = ZERO_ID(c.id)
  await rejected(t, c, async () => await c.api.get(`/v1/transactions/${unknown}`), 404, 'TX_NOT_FOUND', 'GET unknown')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${unknown}/commit`), 404, 'TX_NOT_FOUND', 'commit unknown')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${unknown}/abort`), 404, 'TX_NOT_FOUND', 'abort unknown')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${unknown}/participants`, { name: 'a', url: p.url }), 404, 'TX_NOT_FOUND', 'enlist unknown')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${ZERO_ID('someone-else')}/commit`), 404, 'TX_NOT_FOUND', 'commit, foreign id')
  t.equal(p.calls.length, 0)
})

t.test('decided transactions: commit twice, abort after commit, enlist after commit: 409 TX_ALREADY_DECIDED', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t)
  const id = await begin(c)
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url })).status, 201)
  t.same((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'committed' })
  await waitFor(async () => (await c.api.get<{ completed: boolean }>(`/v1/transactions/${id}`)).body.completed, 5000, 'phase 2 done')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/commit`), 409, 'TX_ALREADY_DECIDED', 'commit twice')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/abort`), 409, 'TX_ALREADY_DECIDED', 'abort after commit')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'b', url: p.url }), 409, 'TX_ALREADY_DECIDED', 'enlist after commit')
  t.equal(p.callsTo('commit', id).length, 1, 'the participant heard commit once')

  const aborted = await begin(c)
  t.equal((await c.api.post(`/v1/transactions/${aborted}/abort`)).status, 200)
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${aborted}/commit`), 409, 'TX_ALREADY_DECIDED', 'commit after abort')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${aborted}/participants`, { name: 'b', url: p.url }), 409, 'TX_ALREADY_DECIDED', 'enlist after abort')
  const again = await c.api.post(`/v1/transactions/${aborted}/abort`)
  t.same({ status: again.status, body: again.body }, { status: 200, body: { id: aborted, state: 'aborted', reason: 'requested' } }, 'abort is idempotent')
})

t.test('while preparing: enlist and a second commit get 409 TX_NOT_ACTIVE; the first commit still answers', async t => {
  const c = await startCoordinator(t, { prepareTimeoutMs: 5000 })
  const slow = await startParticipant(t, { prepareDelayMs: 600 })
  const id = await begin(c)
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'slow', url: slow.url })).status, 201)
  const first = c.api.post(`/v1/transactions/${id}/commit`)
  await waitFor(async () => (await c.api.get<{ state: string }>(`/v1/transactions/${id}`)).body.state === 'preparing', 2000, 'preparing')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'late', url: slow.url }), 409, 'TX_NOT_ACTIVE', 'enlist while preparing')
  await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/commit`), 409, 'TX_NOT_ACTIVE', 'commit while preparing')
  let timer: NodeJS.Timeout | undefined
  const answer = await Promise.race([
    first,
    new Promise<undefined>(resolve => { timer = setTimeout(() => { resolve(undefined) }, 5000) })
  ])
  clearTimeout(timer)
  t.ok(answer !== undefined, 'the first commit request is answered')
  t.same(answer?.body, { id, state: 'committed' })
  await waitFor(() => slow.state(id) === 'committed', 5000, 'slow committed')
})

t.test('duplicate participant name: 409 PARTICIPANT_EXISTS', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t)
  const id = await begin(c)
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url })).status, 201)
  const res = await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'a', url: p.url }), 409, 'PARTICIPANT_EXISTS', 'enlist twice')
  t.match((res.body as { message: string }).message, /named a/)
  await rejected(t, c, async () => await c.api.post('/v1/transactions', { participants: [{ name: 'x', url: p.url }, { name: 'x', url: p.url }], commit: true }),
    409, 'PARTICIPANT_EXISTS', 'one-shot with a duplicate')
  t.equal(p.calls.length, 0)
})

t.test('wrong content type: 415 UNSUPPORTED_MEDIA_TYPE', async t => {
  const c = await startCoordinator(t)
  await rejected(t, c, async () => await c.api.post('/v1/transactions', 'timeoutMs=1000', { 'content-type': 'application/x-www-form-urlencoded' }),
    415, 'UNSUPPORTED_MEDIA_TYPE', 'form body')
  await rejected(t, c, async () => await c.api.post('/v1/transactions', '{}', { 'content-type': 'text/plain' }), 415, 'UNSUPPORTED_MEDIA_TYPE', 'text/plain')
})

/** An object of `n` keys, as text. */
const wide = (n: number): string => '{' + Array.from({ length: n }, (_, i) => `"k${i}":0`).join(',') + '}'

t.test('deep or wide JSON in metadata, payloads and message bodies: 400 JSON_TOO_DEEP / JSON_TOO_MANY_KEYS', async t => {
  const c = await startCoordinator(t, { maxPayloadBytes: 256 * 1024 })
  const p = await startParticipant(t)
  const id = await begin(c)
  const json = { 'content-type': 'application/json' }
  const post = (path: string, raw: string) => async () => await c.api.post(path, raw, json)
  const participant = (payload: string): string => `{"name":"a","url":"${p.url}","payload":${payload}}`
  const message = (body: string): string => `{"exchange":"orders","routingKey":"x","body":${body}}`
  for (const levels of [32, 100, 5_000, 100_000]) {
    // The value itself is one level: metadata's own object plus 32 more is 33.
    await rejected(t, c, post('/v1/transactions', `{"metadata":{"x":${nested(levels)}}}`), 400, 'JSON_TOO_DEEP', `begin, metadata ${levels + 1} deep`)
    await rejected(t, c, post('/v1/transactions', `{"participants":[${participant(nested(levels + 1))}],"commit":true}`), 400, 'JSON_TOO_DEEP', `one-shot, payload ${levels + 1} deep`)
    await rejected(t, c, post(`/v1/transactions/${id}/participants`, participant(nested(levels + 1))), 400, 'JSON_TOO_DEEP', `enlist, payload ${levels + 1} deep`)
    await rejected(t, c, post(`/v1/transactions/${id}/messages`, message(nested(levels + 1))), 400, 'JSON_TOO_DEEP', `message body ${levels + 1} deep`)
    await rejected(t, c, post('/v1/transactions', `{"messages":[${message(nested(levels + 1))}]}`), 400, 'JSON_TOO_DEEP', `begin, message body ${levels + 1} deep`)
  }
  const deep = await rejected(t, c, post('/v1/transactions', `{"metadata":{"x":${nested(40)}}}`), 400, 'JSON_TOO_DEEP', 'the message says where')
  t.match((deep.body as { message: string }).message, /^body\/metadata nests deeper than 32 levels$/)
  await rejected(t, c, post('/v1/transactions', `{"metadata":${wide(10_001)}}`), 400, 'JSON_TOO_MANY_KEYS', 'begin, metadata of 10,001 keys')
  await rejected(t, c, post('/v1/transactions', `{"metadata":{"x":[${Array(10_000).fill('0').join(',')}]}}`), 400, 'JSON_TOO_MANY_KEYS', 'begin, metadata of 1 key and 10,000 items')
  await rejected(t, c, post(`/v1/transactions/${id}/participants`, participant(`[${Array(10_001).fill('0').join(',')}]`)), 400, 'JSON_TOO_MANY_KEYS', 'enlist, payload of 10,001 items')
  await rejected(t, c, post(`/v1/transactions/${id}/messages`, message(wide(10_001))), 400, 'JSON_TOO_MANY_KEYS', 'message body of 10,001 keys')
  t.equal(p.calls.length, 0)

  // At the limits: accepted, and read back. Keys and items: x, w, 31 in x, 9,967 in w.
  const atLimit = await c.api.post<{ id: string }>('/v1/transactions', `{"metadata":{"x":${nested(31)},"w":${wide(9_967)}}}`, json)
  t.equal(atLimit.status, 201, 'metadata 32 deep and 10,000 keys')
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, participant(nested(32)), json)).status, 201, 'a payload 32 deep')
  t.equal((await c.api.get(`/v1/transactions/${atLimit.body.id}`)).status, 200)
  t.equal((await c.api.get('/v1/transactions')).status, 200)
})

t.test('a charset other than UTF-8: 415 UNSUPPORTED_MEDIA_TYPE (JSON is UTF-8)', async t => {
  const c = await startCoordinator(t)
  const id = await begin(c)
  const body = '{"timeoutMs": 1000}'
  for (const charset of ['utf-16', 'UTF-16LE', 'latin1', 'iso-8859-1', '"utf-16"', 'klingon', '']) {
    const headers = { 'content-type': `application/json; charset=${charset}` }
    await rejected(t, c, async () => await c.api.post('/v1/transactions', body, headers), 415, 'UNSUPPORTED_MEDIA_TYPE', `begin, charset=${charset}`)
    await rejected(t, c, async () => await c.api.post(`/v1/transactions/${id}/participants`, '{"name":"a","url":"http://127.0.0.1:9/2pc"}', headers),
      415, 'UNSUPPORTED_MEDIA_TYPE', `enlist, charset=${charset}`)
  }
  const utf16 = await rejected(t, c, async () => await c.api.post('/v1/transactions', Buffer.from(body, 'utf16le').toString('latin1'), { 'content-type': 'application/json; charset=utf-16le' }),
    415, 'UNSUPPORTED_MEDIA_TYPE', 'a real UTF-16 body')
  t.match((utf16.body as { message: string }).message, /charset utf-16le/)
  for (const charset of ['utf-8', 'UTF-8', '"utf-8"', 'utf8']) {
    t.equal((await c.api.post('/v1/transactions', body, { 'content-type': `application/json; charset=${charset}` })).status, 201, `charset=${charset} is accepted`)
  }
})

/**
 * One request over a raw socket, exactly as written (clients fix content-length themselves);
 * the socket's write side is closed after it. The first answer on the connection.
 */
async function rawRequest (c: TestCoordinator, head: string, body: string): Promise<HttpAnswer> {
  const { port } = new URL(c.url)
  const text = await new Promise<string>((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1')
    let out = ''
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no answer within 10 s; got ${JSON.stringify(out)}`)) }, 10_000)
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => { out += d })
    socket.on('error', () => { /* the server may reset after answering: what arrived is the answer */ })
    socket.on('close', () => { clearTimeout(timer); resolve(out) })
    socket.end(`${head}\r\n\r\n${body}`, 'latin1')
  })
  const match = /^HTTP\/1\.1 (\d{3}) [^\r]*\r\n([\s\S]*?)\r\n\r\n([\s\S]*)$/.exec(text)
  if (match === null) throw new Error(`not an HTTP answer: ${JSON.stringify(text)}`)
  const headers: Record<string, string> = {}
  for (const line of (match[2] as string).split('\r\n')) {
    const colon = line.indexOf(':')
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
  }
  const length = Number(headers['content-length'])
  const raw = Number.isInteger(length) ? (match[3] as string).slice(0, length) : match[3] as string
  let parsed: unknown = raw
  try { parsed = JSON.parse(raw) } catch { /* not JSON: the assertions say so */ }
  return { status: Number(match[1]), headers, body: parsed, text: raw }
}

t.test('a bad content-length: 400 in the one error shape (raw socket), nothing written', async t => {
  const c = await startCoordinator(t)
  const body = '{"timeoutMs":1000}'
  const head = (...lines: string[]): string => ['POST /v1/transactions HTTP/1.1', 'host: 127.0.0.1', 'content-type: application/json', ...lines].join('\r\n')
  const cases: Array<[string, string, string]> = [
    ['too long (the body ends first)', head(`content-length: ${body.length + 10}`), 'BAD_REQUEST'],
    ['too long by one', head(`content-length: ${body.length + 1}`), 'BAD_REQUEST'],
    ['too short (the rest is not HTTP)', head(`content-length: ${body.length - 3}`), 'BAD_REQUEST'],
    ['too short, connection: close', head(`content-length: ${body.length - 3}`, 'connection: close'), 'BAD_REQUEST'],
    ['non-numeric', head('content-length: abc'), 'BAD_CONTENT_LENGTH'],
    ['negative', head('content-length: -5'), 'BAD_CONTENT_LENGTH'],
    ['fractional', head(`content-length: ${body.length}.0`), 'BAD_CONTENT_LENGTH'],
    ['given twice, differing', head(`content-length: ${body.length}`, `content-length: ${body.length + 1}`), 'BAD_CONTENT_LENGTH'],
    ['with transfer-encoding too', head(`content-length: ${body.length}`, 'transfer-encoding: chunked'), 'BAD_REQUEST']
  ]
  for (const [what, h, code] of cases) {
    const res = await rejected(t, c, async () => await rawRequest(c, h, body), 400, code, what)
    t.equal(res.headers['content-type'], 'application/json; charset=utf-8', `${what}: JSON`)
  }
  await rejected(t, c, async () => await rawRequest(c, head(`content-length: ${body.length}`, `x-big: ${'a'.repeat(20 * 1024)}`), body),
    431, 'HEADERS_TOO_LARGE', 'headers over Node\'s limit')
  const ok = await rawRequest(c, head(`content-length: ${body.length}`), body)
  t.equal(ok.status, 201, 'the right length is accepted')
})

t.test('list: bad limit, cursor, state or parameter', async t => {
  const c = await startCoordinator(t)
  await begin(c)
  await rejected(t, c, async () => await c.api.get('/v1/transactions?limit=0'), 400, 'BAD_LIMIT', 'limit 0')
  await rejected(t, c, async () => await c.api.get('/v1/transactions?limit=501'), 400, 'BAD_LIMIT', 'limit 501')
  await rejected(t, c, async () => await c.api.get('/v1/transactions?limit=ten'), 400, 'VALIDATION_FAILED', 'limit not a number')
  await rejected(t, c, async () => await c.api.get('/v1/transactions?limit=-1'), 400, 'VALIDATION_FAILED', 'negative limit')
  await rejected(t, c, async () => await c.api.get('/v1/transactions?cursor=garbage'), 400, 'BAD_CURSOR', 'cursor garbage')
  const forged = Buffer.from('123:not-an-id').toString('base64url')
  await rejected(t, c, async () => await c.api.get(`/v1/transactions?cursor=${forged}`), 400, 'BAD_CURSOR', 'cursor with a bad id')
  await rejected(t, c, async () => await c.api.get('/v1/transactions?state=done'), 400, 'VALIDATION_FAILED', 'unknown state')
  await rejected(t, c, async () => await c.api.get('/v1/transactions?sort=asc'), 400, 'VALIDATION_FAILED', 'unknown parameter')
  t.equal((await c.api.get('/v1/transactions?limit=500')).status, 200)
})

t.test('unknown route: 404 ROUTE_NOT_FOUND', async t => {
  const c = await startCoordinator(t)
  await rejected(t, c, async () => await c.api.get('/v2/transactions'), 404, 'ROUTE_NOT_FOUND', 'GET /v2')
  await rejected(t, c, async () => await c.api.post('/v1/transactions/x/y/z', {}), 404, 'ROUTE_NOT_FOUND', 'POST deep')
  const del = await rejected(t, c, async () => await c.api.post('/v1/transaction', {}), 404, 'ROUTE_NOT_FOUND', 'typo')
  t.match((del.body as { message: string }).message, /no route POST \/v1\/transaction$/)
})

t.test('configFromEnv: a bad value throws a message naming the variable', async t => {
  const base = { TWOPC_DB: '/tmp/never-opened.db' }
  t.equal(configFromEnv(base).port, 7070, 'defaults')
  t.equal(configFromEnv({ ...base, TWOPC_BATCH_MAX_CALLS: '1' }).options.batchMaxCalls, 1, 'batching can be turned off')
  t.equal(configFromEnv(base).options.logInlineSyncMaxMs, 1, 'inline syncs while they average 1 ms or less')
  t.equal(configFromEnv({ ...base, TWOPC_LOG_INLINE_SYNC_MAX_MS: '0' }).options.logInlineSyncMaxMs, 0, 'inline syncs can be turned off')
  t.equal(configFromEnv({ ...base, TWOPC_LOG_INLINE_SYNC_MAX_MS: '2.5' }).options.logInlineSyncMaxMs, 2.5)
  for (const bad of [-1, 101, Number.NaN, Infinity]) {
    t.throws(() => resolveOptions({ dbPath: '/tmp/never-opened.db', logInlineSyncMaxMs: bad }), /logInlineSyncMaxMs must be a number from 0 to 100/, `logInlineSyncMaxMs: ${bad}`)
  }
  const cases: Array<[Record<string, string>, string]> = [
    [{ PORT: 'abc' }, 'PORT'],
    [{ PORT: '70000' }, 'PORT'],
    [{ TWOPC_SECRET: 'short' }, 'TWOPC_SECRET'],
    [{ TWOPC_API_TOKEN: 'short' }, 'TWOPC_API_TOKEN'],
    [{ AMQP_URL: 'http://broker' }, 'AMQP_URL'],
    [{ TWOPC_DEFAULT_TIMEOUT_MS: 'soon' }, 'TWOPC_DEFAULT_TIMEOUT_MS'],
    [{ TWOPC_DEFAULT_TIMEOUT_MS: '50' }, 'TWOPC_DEFAULT_TIMEOUT_MS'],
    [{ TWOPC_DEFAULT_TIMEOUT_MS: '90000', TWOPC_MAX_TIMEOUT_MS: '60000' }, 'TWOPC_DEFAULT_TIMEOUT_MS'],
    [{ TWOPC_RETRY_BASE_MS: '5000', TWOPC_RETRY_MAX_MS: '100' }, 'TWOPC_RETRY_BASE_MS'],
    [{ TWOPC_MAX_PARTICIPANTS: '0' }, 'TWOPC_MAX_PARTICIPANTS'],
    [{ TWOPC_BATCH_MAX_CALLS: '0' }, 'TWOPC_BATCH_MAX_CALLS'],
    [{ TWOPC_BATCH_MAX_CALLS: '257' }, 'TWOPC_BATCH_MAX_CALLS'],
    [{ TWOPC_LOG_INLINE_SYNC_MAX_MS: '-1' }, 'TWOPC_LOG_INLINE_SYNC_MAX_MS'],
    [{ TWOPC_LOG_INLINE_SYNC_MAX_MS: '101' }, 'TWOPC_LOG_INLINE_SYNC_MAX_MS'],
    [{ TWOPC_LOG_INLINE_SYNC_MAX_MS: 'fast' }, 'TWOPC_LOG_INLINE_SYNC_MAX_MS'],
    [{ TWOPC_COORDINATOR_ID: 'Bad Id' }, 'TWOPC_COORDINATOR_ID'],
    [{ TWOPC_PARTICIPANT_ALLOWLIST: 'not a host!' }, 'TWOPC_PARTICIPANT_ALLOWLIST'],
    [{ TWOPC_RETENTION: '7 weeks' }, 'TWOPC_RETENTION'],
    [{ TWOPC_AMQP_PREFIX: '-bad' }, 'TWOPC_AMQP_PREFIX'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ TWOPC_DB: '' }, 'TWOPC_DB']
  ]
  for (const [env, variable] of cases) {
    let message = '(did not throw)'
    try { configFromEnv({ ...base, ...env }) } catch (err) { message = (err as Error).message }
    t.match(message, new RegExp(`\\b${variable}\\b`), `${JSON.stringify(env)} names ${variable}`)
  }
})

t.test('the bin exits non-zero naming the variable (PORT=abc)', async t => {
  // The built bin (`npm test` builds first): starts in well under a second even on a busy machine.
  const child = spawnNode('coordinator/dist/bin.js', { nodeArgs: [], cwd: root, env: { PORT: 'abc', TWOPC_DB: resolve(t.testdir(), 'never.db'), TWOPC_CRASH_AT: '' } })
  const killer = setTimeout(() => { void child.kill() }, 60_000)
  const { code } = await child.exited
  clearTimeout(killer)
  const stderr = child.stderr()
  t.not(code, 0, 'non-zero exit')
  t.not(code, null, 'exited by itself, not killed')
  t.match(stderr, /invalid configuration/)
  t.match(stderr, /\bPORT\b/)
})
