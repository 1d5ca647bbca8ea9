/**
 * Nothing the API or the console says may depend on a commit decision that is written but not
 * yet synced: a power cut would take it back (the transaction is then aborted by recovery), and
 * whoever was told "committed" — directly, or through a refusal such as "already committed" —
 * would have been lied to.
 *
 * The log's fdatasync is held here (its `syncPlacement`, replaceable by tests, queues the sync
 * until the test releases it) right after a commit decision is written. Every route that touches
 * the transaction is asked meanwhile: each one must either wait (answer only after the sync) or
 * answer from the durable state (the record as it was before the decision).
 */
import t, { type Test } from 'tap'
import { SyncPlacement } from '@fastify-2pc/protocol'
import { startCoordinator, waitFor, type HttpAnswer, type TestCoordinator } from './support/participant.js'

/** Holds every fdatasync of the log until `release` (or fails them all with `fail`). */
class HeldSync extends SyncPlacement {
  private held = true
  private readonly queue: Array<(err?: NodeJS.ErrnoException) => void> = []

  get queued (): number { return this.queue.length }
  get holding (): boolean { return this.held }

  override sync (fd: number, running: number, done: (err: NodeJS.ErrnoException | null, ms: number, inline: boolean) => void): void {
    if (!this.held) { super.sync(fd, running, done); return }
    this.queue.push((err) => { if (err !== undefined) setImmediate(done, err, 0, false); else super.sync(fd, running, done) })
  }

  release (): void {
    this.held = false
    for (const go of this.queue.splice(0)) go()
  }

  fail (): void {
    this.held = false
    const eio = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' })
    for (const go of this.queue.splice(0)) go(eio)
  }
}

/** A broker that is down: transactional messages are accepted (and stay queued in the outbox). */
const DOWN_BROKER = 'amqp://guest:guest@127.0.0.1:1'
const form = { 'content-type': 'application/x-www-form-urlencoded' }

/** A transaction with one transactional message, begun and synced; then the sync is held and its (empty) commit decided. */
async function commitWithSyncHeld (t: Test, c: TestCoordinator): Promise<{ id: string, held: HeldSync, firstCommit: Promise<HttpAnswer> }> {
  const begun = await c.api.post<{ id: string }>('/v1/transactions', { timeoutMs: 60_000 })
  t.equal(begun.status, 201)
  const id = begun.body.id
  t.equal((await c.api.post(`/v1/transactions/${id}/messages`, { exchange: 'orders', routingKey: 'placed', body: { n: 1 } })).status, 201)
  const { log } = c.app.coordinator
  const held = new HeldSync()
  const before = log.syncPlacement
  log.syncPlacement = held
  t.teardown(() => { held.release(); log.syncPlacement = before })
  const firstCommit = c.api.post(`/v1/transactions/${id}/commit`)
  // Written to SQLite (a SIGKILL would keep it), its fdatasync held.
  await waitFor(() => log.loadLatest(id)?.state === 'committed' && held.queued > 0, 5000, 'the commit decision written, its sync held')
  return { id, held, firstCommit }
}

type Probe = [name: string, send: () => Promise<HttpAnswer>]

function probes (c: TestCoordinator, id: string): Probe[] {
  return [
    ['POST abort', async () => await c.api.post(`/v1/transactions/${id}/abort`)],
    ['POST commit (again)', async () => await c.api.post(`/v1/transactions/${id}/commit`)],
    ['POST participants', async () => await c.api.post(`/v1/transactions/${id}/participants`, { name: 'late', url: 'http://127.0.0.1:9/late' })],
    ['POST messages', async () => await c.api.post(`/v1/transactions/${id}/messages`, { exchange: 'orders', routingKey: 'placed', body: { n: 2 } })],
    ['GET record', async () => await c.api.get(`/v1/transactions/${id}`)],
    ['GET decision', async () => await c.api.get(`/v1/transactions/${id}/decision`)],
    ['GET list', async () => await c.api.get('/v1/transactions')],
    ['GET list ?state=committed', async () => await c.api.get('/v1/transactions?state=committed')],
    ['POST retry', async () => await c.api.post(`/v1/transactions/${id}/retry`)],
    ['POST resolve', async () => await c.api.post(`/v1/transactions/${id}/resolve`, { reason: 'checked by hand' })],
    ['console /admin', async () => await c.api.get('/admin')],
    ['console /admin?state=committed', async () => await c.api.get('/admin?state=committed')],
    // Not listed there: answered at once, its counters from the durable state.
    ['console /admin?state=aborted', async () => await c.api.get('/admin?state=aborted')],
    ['console /admin/tx/:id', async () => await c.api.get(`/admin/tx/${id}`)],
    ['console retry', async () => await c.api.post(`/admin/tx/${id}/retry`, '', form)],
    ['console resolve', async () => await c.api.post(`/admin/tx/${id}/resolve`, 'reason=checked', form)]
  ]
}

/** What an answer reveals of the commit decision (undefined: nothing). */
function reveals (name: string, id: string, a: HttpAnswer): string | undefined {
  const text = a.text
  const code = typeof a.body === 'object' && a.body !== null ? (a.body as { code?: string }).code : undefined
  if (code === 'TX_ALREADY_DECIDED' || code === 'NOTHING_TO_RETRY' || code === 'NOTHING_TO_RESOLVE') return `${a.status} ${code}`
  if (/NOTHING_TO_RETRY|NOTHING_TO_RESOLVE|TX_ALREADY_DECIDED/.test(text)) return 'a refusal that needs a decision'
  if (name.startsWith('console')) {
    const committed = /data-counter="committed"><b>(\d+)/.exec(text)
    if (committed !== null && committed[1] !== '0') return `the committed counter says ${committed[1]}`
    if (name.includes('state=committed') && text.includes(`data-id="${id}"`)) return 'listed among the committed'
    if (text.includes(`data-id="${id}" data-state="committed"`)) return 'a committed row'
    if (text.includes('badge s-committed') || text.includes('data-kind="decision"') || text.includes('data-kind="outbox-queued"')) return 'the detail page shows the decision'
    return undefined
  }
  if (text.includes('committed') || text.includes('"commit"')) return 'says committed'
  if (name === 'GET list ?state=committed' && text.includes(id)) return 'listed among the committed'
  if (name === 'GET record' && a.status === 200 && (a.body as { outbox?: unknown[] }).outbox?.length !== 0) return 'the released message is in the outbox'
  return undefined
}

/** Sends every probe; resolves once each has answered or is waiting in the engine for the sync. */
async function askWhileHeld (c: TestCoordinator, held: HeldSync, list: Probe[]): Promise<{ whileHeld: Map<string, HttpAnswer>, all: Promise<Map<string, HttpAnswer>> }> {
  const { engine } = c.app.coordinator
  const whileHeld = new Map<string, HttpAnswer>()
  const answers = list.map(async ([name, send]) => {
    const a = await send()
    if (held.holding) whileHeld.set(name, a)
    return [name, a] as const
  })
  const waiting = (): number => engine.syncWaits
  await waitFor(() => whileHeld.size + waiting() === list.length, 5000, 'every probe answered or waiting for the sync')
  return { whileHeld, all: Promise.all(answers).then(xs => new Map(xs)) }
}

t.test('while a commit decision is written but not synced, no route and no console page tells of it; after the sync all do', async t => {
  const c = await startCoordinator(t, { amqpUrl: DOWN_BROKER, amqpPrefix: 'unsynced-a' })
  const { id, held, firstCommit } = await commitWithSyncHeld(t, c)
  const list = probes(c, id)
  const { whileHeld, all } = await askWhileHeld(c, held, list)
  for (const [name] of list) {
    const a = whileHeld.get(name)
    if (a === undefined) { t.pass(`${name}: waits for the sync`); continue }
    t.equal(reveals(name, id, a), undefined, `${name}: answered ${a.status} while the sync is held, without telling of the commit`)
  }
  t.equal(whileHeld.has('POST abort'), false, 'abort waits: it could neither abort nor say "already committed"')
  const counted = whileHeld.get('console /admin?state=aborted')?.text ?? ''
  t.match(counted, /data-counter="active"><b>1</, 'the console counts it as what is durable: active')
  t.match(counted, /data-counter="committed"><b>0</)

  held.release()
  const first = await firstCommit
  t.same([first.status, first.body], [200, { id, state: 'committed' }], 'the commit itself is answered once synced')
  const after = await all
  const codeOf = (name: string): [number, string | undefined] => {
    const a = after.get(name) as HttpAnswer
    return [a.status, (a.body as { code?: string }).code]
  }
  if (!whileHeld.has('POST abort')) t.same(codeOf('POST abort'), [409, 'TX_ALREADY_DECIDED'])
  if (!whileHeld.has('POST commit (again)')) t.same(codeOf('POST commit (again)'), [409, 'TX_ALREADY_DECIDED'])
  if (!whileHeld.has('POST participants')) t.same(codeOf('POST participants'), [409, 'TX_ALREADY_DECIDED'])
  if (!whileHeld.has('POST messages')) t.same(codeOf('POST messages'), [409, 'TX_ALREADY_DECIDED'])
  if (!whileHeld.has('POST retry')) t.same(codeOf('POST retry'), [409, 'NOTHING_TO_RETRY'])

  // Once synced every view shows it.
  const record = await c.api.get(`/v1/transactions/${id}`)
  t.match(record.body, { state: 'committed', decision: 'commit', outbox: [{ kind: 'message' }] })
  t.same((await c.api.get(`/v1/transactions/${id}/decision`)).body, { decision: 'commit' })
  t.match((await c.api.get('/v1/transactions?state=committed')).body, { items: [{ id, state: 'committed' }] })
  const page = await c.api.get('/admin')
  t.match(page.text, /data-counter="committed"><b>1</)
  t.ok(page.text.includes(`data-id="${id}" data-state="committed"`))
  t.match((await c.api.get(`/admin/tx/${id}`)).text, /data-kind="decision"/)
})

t.test('a commit decision whose sync fails: whoever waited hears the failure, nobody hears "committed"', async t => {
  const c = await startCoordinator(t, { amqpUrl: DOWN_BROKER, amqpPrefix: 'unsynced-b' })
  const { id, held, firstCommit } = await commitWithSyncHeld(t, c)
  const list = probes(c, id)
  const { whileHeld, all } = await askWhileHeld(c, held, list)
  held.fail()
  const first = await firstCommit
  t.ok(first.status >= 500, `the commit answers ${first.status} ${first.text}`)
  const after = await all
  for (const [name] of list) {
    const a = whileHeld.get(name) ?? after.get(name) as HttpAnswer
    t.equal(reveals(name, id, a), undefined, `${name}: ${a.status}, nothing about a commit`)
  }
  t.same((await c.api.get(`/v1/transactions/${id}/decision`)).body, { decision: 'pending' }, 'the decision endpoint never says commit')
  const abort = await c.api.post(`/v1/transactions/${id}/abort`)
  t.ok(abort.status >= 500, `a later abort hears the log's failure (${abort.status}), not "already committed"`)
  t.equal(reveals('console /admin', id, await c.api.get('/admin')), undefined, 'the console does not count it')
})
