/**
 * End-to-end: an on-path attacker between a coordinator with a secret (TWOPC_SECRET) and an SDK
 * participant holds back the coordinator's real, signed abort and sends it, bytes and signature
 * unchanged, to the participant's /commit. The signature binds its route (scheme v2), so the
 * participant answers 401 and stays prepared; the coordinator's abort then gets through and the
 * transaction ends aborted everywhere. Real coordinator, real SDK participant on a real SQLite
 * file, real HTTP on 127.0.0.1 through a small forwarding proxy (the "path" the attacker is on).
 */
import t from 'tap'
import { createServer, type IncomingMessage } from 'node:http'
import { once } from 'node:events'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import Fastify from 'fastify'
import { request } from 'undici'
import { SIGNATURE_HEADER } from '@fastify-2pc/protocol'
import { twoPhaseParticipant } from '@fastify-2pc/participant-sdk'
import { startCoordinator, startParticipant, waitFor } from './support/participant.js'
import { listenLocal } from '../../test/kit/port.js'

const SECRET = 'replay-test-secret-0123456789'

interface Captured { path: string, headers: Record<string, string>, body: string }

async function readBody (req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > 1024 * 1024) throw new Error('body too large for the test proxy')
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/**
 * Forwards `POST /2pc/*` to `target`, keeping a copy of each request. While `holdAborts` is set,
 * an abort is kept and answered 503 instead of being forwarded (the coordinator retries it).
 */
async function startProxy (target: string): Promise<{ url: string, captured: Captured[], holdAborts: { on: boolean }, close: () => Promise<void> }> {
  const captured: Captured[] = []
  const holdAborts = { on: true }
  const server = createServer((req, res) => {
    void (async () => {
      const body = await readBody(req)
      const path = req.url ?? ''
      const headers: Record<string, string> = {}
      for (const name of ['content-type', SIGNATURE_HEADER, 'traceparent']) {
        const value = req.headers[name]
        if (typeof value === 'string') headers[name] = value
      }
      captured.push({ path, headers, body })
      if (holdAborts.on && path.endsWith('/abort')) {
        res.writeHead(503, { 'content-type': 'application/json' }).end('{"statusCode":503,"code":"HELD","error":"Service Unavailable","message":"held by the test proxy"}')
        return
      }
      const answer = await request(target + path, { method: 'POST', headers, body })
      const text = await answer.body.text()
      res.writeHead(answer.statusCode, { 'content-type': 'application/json' }).end(text)
    })().catch(err => { res.writeHead(502).end(String(err)) })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}`,
    captured,
    holdAborts,
    close: async () => { server.closeAllConnections(); server.close(); await once(server, 'close') }
  }
}

t.test('a signed abort replayed onto /commit by an on-path attacker gets 401; the participant stays prepared, then aborts', async t => {
  const c = await startCoordinator(t, { secret: SECRET })

  // The SDK participant: reserves on prepare, spends on commit, releases on abort.
  const db = new Database(join(t.testdir(), 'inventory.db'))
  db.pragma('journal_mode = WAL')
  db.exec(`CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL, reserved INTEGER NOT NULL, sold INTEGER NOT NULL DEFAULT 0);
           CREATE TABLE holds (txid TEXT PRIMARY KEY, qty INTEGER NOT NULL);
           INSERT INTO stock (sku, available, reserved) VALUES ('apple', 10, 0);`)
  const handled = { commit: 0, abort: 0 }
  const app = Fastify()
  await app.register(twoPhaseParticipant, {
    name: 'inventory',
    db,
    coordinatorUrl: c.url,
    secret: SECRET,
    // One callback per request: the abort travels alone to /abort (not inside a /batch).
    batchMaxCalls: 0,
    // In-doubt recovery stays out of the way: the abort must come through the proxy.
    inDoubtAfterMs: 600_000,
    prepare (tx, payload, d) {
      const { qty } = payload as { qty: number }
      d.prepare("UPDATE stock SET available = available - ?, reserved = reserved + ? WHERE sku = 'apple'").run(qty, qty)
      d.prepare('INSERT INTO holds (txid, qty) VALUES (?, ?)').run(tx.id, qty)
      return 'yes'
    },
    commit (tx, d) {
      handled.commit++
      const { qty } = d.prepare('SELECT qty FROM holds WHERE txid = ?').get(tx.id) as { qty: number }
      d.prepare("UPDATE stock SET reserved = reserved - ?, sold = sold + ? WHERE sku = 'apple'").run(qty, qty)
      d.prepare('DELETE FROM holds WHERE txid = ?').run(tx.id)
    },
    abort (tx, d) {
      handled.abort++
      const { qty } = d.prepare('SELECT qty FROM holds WHERE txid = ?').get(tx.id) as { qty: number }
      d.prepare("UPDATE stock SET available = available + ?, reserved = reserved - ? WHERE sku = 'apple'").run(qty, qty)
      d.prepare('DELETE FROM holds WHERE txid = ?').run(tx.id)
    }
  })
  const direct = await listenLocal(app)
  const proxy = await startProxy(direct)
  t.teardown(async () => { await proxy.close(); await app.close(); db.close() })
  const stock = (): unknown => db.prepare("SELECT available, reserved, sold FROM stock WHERE sku = 'apple'").get()

  // A second participant votes no: the coordinator decides abort.
  const no = await startParticipant(t, { vote: 'no', secret: SECRET })
  const begun = await c.api.post<{ id: string }>('/v1/transactions', { timeoutMs: 10_000 })
  const id = begun.body.id
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'inventory', url: `${proxy.url}/2pc`, payload: { qty: 3 } })).status, 201)
  t.equal((await c.api.post(`/v1/transactions/${id}/participants`, { name: 'other', url: no.url })).status, 201)
  t.match((await c.api.post(`/v1/transactions/${id}/commit`)).body, { id, state: 'aborted' }, 'the coordinator decided abort')
  // The decision may come at the first no vote, before inventory's prepare is answered.
  await waitFor(() => app.twoPhase.stateOf(id) === 'prepared', 5000, 'inventory voted yes and holds the reservation')

  // The attacker has the coordinator's real abort: its bytes and its signature.
  const abort = await waitFor(() => proxy.captured.find(r => r.path === '/2pc/abort'), 5000, 'the coordinator\'s abort reached the proxy')
  t.match(abort.headers[SIGNATURE_HEADER], /^t=\d+,v2=[0-9a-f]{64}$/, 'signed')
  t.same(JSON.parse(abort.body), { txid: id, participant: 'inventory' }, 'the same body a commit would have')

  // ... and sends it, unchanged, to /commit.
  const replay = await request(`${direct}/2pc/commit`, { method: 'POST', headers: abort.headers, body: abort.body })
  const answer = await replay.body.json() as { code?: string, message?: string }
  t.equal(replay.statusCode, 401, 'the replay onto /commit is refused')
  t.match(answer, { code: 'BAD_SIGNATURE', message: /mismatch/ })
  t.equal(app.twoPhase.stateOf(id), 'prepared', 'not committed')
  t.equal(handled.commit, 0, 'the commit handler never ran')
  t.same(stock(), { available: 7, reserved: 3, sold: 0 }, 'still reserved, nothing sold')

  // The coordinator's own abort, let through, does what was decided.
  proxy.holdAborts.on = false
  await waitFor(async () => (await c.api.get<{ completed: boolean }>(`/v1/transactions/${id}`)).body.completed, 5000, 'abort acknowledged')
  const tx = (await c.api.get<{ state: string, heuristics: unknown[] }>(`/v1/transactions/${id}`)).body
  t.equal(tx.state, 'aborted')
  t.same(tx.heuristics, [], 'no heuristic outcome: the participant did what the coordinator decided')
  t.equal(app.twoPhase.stateOf(id), 'aborted')
  t.same(handled, { commit: 0, abort: 1 })
  t.same(stock(), { available: 10, reserved: 0, sold: 0 }, 'released')
})
