/**
 * What the driver makes of a participant's answer, against raw servers on 127.0.0.1 (node:net
 * and node:http, so an answer can be anything: truncated, oversized, not HTTP at all):
 * - an answer cut at maxResponseBytes, or shorter than its content-length, is a failed call —
 *   never a prefix that happens to parse;
 * - what it records is the status and the participant's error `code`, or a fixed error class,
 *   never the text of the answer;
 * - which phase-2 answers are definite refusals and which are retried (and flagged).
 */
import t, { type Test } from 'tap'
import net from 'node:net'
import http from 'node:http'
import { ParticipantDriver } from '../src/driver.js'

const MARKER = 'MARKER-7f3a9c'
const TX = 'c1.00000000000000000000000001'
const prepareBody = { txid: TX, participant: 'p', deadline: Date.now() + 60_000 }

/** A TCP server that answers every connection with `answer` (raw bytes), then ends it (or not). */
async function rawServer (t: Test, answer: (path: string) => string, end = true): Promise<string> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer(socket => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let head = ''
    socket.on('data', chunk => {
      head += chunk.toString('latin1')
      const at = head.indexOf('\r\n\r\n')
      if (at === -1) return
      const path = head.slice(head.indexOf(' ') + 1, head.indexOf(' ', head.indexOf(' ') + 1))
      head = ''
      socket.write(answer(path), 'latin1')
      if (end) socket.end()
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/2pc`
}

/** An HTTP server answering every call with `status`, `type` and `body`. */
async function httpServer (t: Test, answer: (path: string) => { status: number, type: string, body: string }): Promise<string> {
  const server = http.createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const a = answer(req.url ?? '')
      res.writeHead(a.status, { 'content-type': a.type })
      res.end(a.body)
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/2pc`
}

function driver (t: Test, maxResponseBytes = 1024): ParticipantDriver {
  const d = new ParticipantDriver({ maxResponseBytes, connectionsPerOrigin: 4, batchMaxCalls: 64 })
  t.teardown(async () => { await d.close() })
  return d
}

const http200 = (body: string, contentLength = Buffer.byteLength(body)): string =>
  `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${contentLength}\r\nconnection: close\r\n\r\n${body}`

t.test('an answer shorter than its content-length is a failed call, not the prefix that arrived', async t => {
  const url = await rawServer(t, () => http200('{"vote":"yes"}', 400))
  const d = driver(t)
  const vote = await d.prepare(url, prepareBody, 2000)
  t.match(vote, { ok: false }, 'no vote from a truncated answer')
  const ack = await d.decide(url, 'commit', TX, 'p', 2000)
  t.match(ack, { ok: false, refused: false }, 'a truncated commit answer is retried, not taken for an ack')
})

t.test('a chunked answer that stops before its last chunk is a failed call', async t => {
  const url = await rawServer(t, () => 'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\ne\r\n{"vote":"yes"}\r\n')
  const d = driver(t)
  t.match(await d.prepare(url, prepareBody, 2000), { ok: false })
})

t.test('an answer cut off at maxResponseBytes is a failed call, even when the part read parses', async t => {
  const padded = '{"vote":"yes"}' + ' '.repeat(4096)
  const url = await rawServer(t, () => http200(padded))
  const d = driver(t, 1024)
  t.match(await d.prepare(url, prepareBody, 2000), { ok: false, error: /^prepare failed: ANSWER_TOO_LARGE$/ })
  t.match(await d.decide(url, 'commit', TX, 'p', 2000), { ok: false, refused: false, error: /^commit failed: ANSWER_TOO_LARGE$/ })
})

t.test('a batch answer cut off at its limit fails every call of the batch', async t => {
  const url = await rawServer(t, path => path.endsWith('/prepare')
    ? http200('{"vote":"yes","batch":{"maxCalls":8,"maxBytes":65536}}')
    : http200('{"results":[{"status":200,"body":{"ok":true}},{"status":200,"body":{"ok":true}}]}' + ' '.repeat(8192)))
  const d = driver(t, 1024)
  t.match(await d.prepare(url, prepareBody, 2000), { ok: true, vote: 'yes' })
  t.equal(d.batches(url), true)
  const outcomes = await Promise.all([d.decide(url, 'commit', TX, 'p', 2000), d.decide(url, 'commit', TX.replace(/1$/, '2'), 'p', 2000)])
  t.match(outcomes, [{ ok: false, refused: false }, { ok: false, refused: false }])
})

t.test('what is recorded of an answer: its status and a well-formed error code, never its text', async t => {
  const d = driver(t)
  const html = await httpServer(t, () => ({ status: 500, type: 'text/html', body: `<html><body>${MARKER} internal error</body></html>` }))
  t.same(await d.prepare(html, prepareBody, 2000), { ok: false, error: 'prepare answered 500' })
  t.same(await d.decide(html, 'commit', TX, 'p', 2000), { ok: false, refused: false, error: 'commit answered 500' })

  const coded = await httpServer(t, () => ({ status: 409, type: 'application/json', body: JSON.stringify({ statusCode: 409, code: 'TX_ALREADY_ABORTED', error: 'Conflict', message: MARKER }) }))
  t.same(await d.decide(coded, 'commit', TX, 'p', 2000), { ok: false, refused: true, error: 'commit answered 409: TX_ALREADY_ABORTED' })
  t.same(await d.prepare(coded, prepareBody, 2000), { ok: false, error: 'prepare answered 409: TX_ALREADY_ABORTED' })

  const badCode = await httpServer(t, () => ({ status: 503, type: 'application/json', body: JSON.stringify({ code: `${MARKER} <b>`, message: MARKER }) }))
  t.same(await d.decide(badCode, 'commit', TX, 'p', 2000), { ok: false, refused: false, error: 'commit answered 503' }, 'a code that is not a code is left out')

  const noVote = await httpServer(t, () => ({ status: 200, type: 'application/json', body: JSON.stringify({ vote: MARKER }) }))
  t.same(await d.prepare(noVote, prepareBody, 2000), { ok: false, error: 'prepare answered 200 without a valid vote' })
})

t.test('a service that does not speak HTTP: a fixed error class, none of its bytes', async t => {
  const d = driver(t)
  const banner = await rawServer(t, () => `SSH-2.0-${MARKER}\r\n`)
  const prepared = await d.prepare(banner, prepareBody, 2000)
  t.match(prepared, { ok: false, error: /^prepare failed: [A-Za-z][A-Za-z0-9_]*$/ })
  t.notMatch(JSON.stringify(prepared), MARKER)
  const decided = await d.decide(banner, 'commit', TX, 'p', 2000)
  t.match(decided, { ok: false, refused: false, error: /^commit failed: [A-Za-z][A-Za-z0-9_]*$/ })
  t.notMatch(JSON.stringify(decided), MARKER)
})

t.test('phase-2 answers: definite refusals and retried ones', async t => {
  const d = driver(t)
  const answers = new Map<string, { status: number, body: unknown }>()
  const url = await httpServer(t, path => {
    const a = answers.get(path.slice(path.lastIndexOf('/') + 1)) as { status: number, body: unknown }
    return { status: a.status, type: 'application/json', body: JSON.stringify(a.body) }
  })
  const outcome = async (status: number, body: unknown): Promise<unknown> => {
    answers.set('commit', { status, body })
    return await d.decide(url, 'commit', TX, 'p', 2000)
  }
  // Definite: the participant says, in the protocol's words, that it cannot apply the decision.
  t.same(await outcome(404, { statusCode: 404, code: 'TX_UNKNOWN', error: 'Not Found', message: 'never prepared' }), { ok: false, refused: true, error: 'commit answered 404: TX_UNKNOWN' })
  t.same(await outcome(409, { code: 'TX_ALREADY_ABORTED' }), { ok: false, refused: true, error: 'commit answered 409: TX_ALREADY_ABORTED' })
  t.same(await outcome(409, { code: 'TX_ALREADY_COMMITTED' }), { ok: false, refused: true, error: 'commit answered 409: TX_ALREADY_COMMITTED' })
  t.same(await outcome(400, { code: 'PARTICIPANT_MISMATCH' }), { ok: false, refused: true, error: 'commit answered 400: PARTICIPANT_MISMATCH' })
  // Retried, and flagged: they do not say anything about the transaction.
  t.same(await outcome(401, { code: 'BAD_SIGNATURE' }), { ok: false, refused: false, attention: 'unauthorized', error: 'commit answered 401: BAD_SIGNATURE' })
  t.same(await outcome(401, {}), { ok: false, refused: false, attention: 'unauthorized', error: 'commit answered 401' })
  t.same(await outcome(404, { statusCode: 404, error: 'Not Found', message: 'Route POST:/2pc/commit not found' }), { ok: false, refused: false, attention: 'not-found', error: 'commit answered 404' })
  t.same(await outcome(404, { code: 'FST_ERR_NOT_FOUND' }), { ok: false, refused: false, attention: 'not-found', error: 'commit answered 404: FST_ERR_NOT_FOUND' })
  // Retried.
  for (const status of [408, 425, 429, 500, 502, 503]) t.same(await outcome(status, {}), { ok: false, refused: false, error: `commit answered ${status}` })
})
