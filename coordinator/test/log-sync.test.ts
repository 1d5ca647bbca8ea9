/**
 * The log's write/sync split: a batch is committed to SQLite at once (a killed process keeps
 * it), and made durable by an fdatasync (inline or on the thread pool: either way its steps are
 * settled on a later tick). These tests look at the window in
 * between — deterministic, because the fdatasync callback cannot run before the test yields.
 */
import t, { type Test } from 'tap'
import { join } from 'node:path'
import fs from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import Database from 'better-sqlite3'
import { CoordinatorLog, type StepWrites } from '../src/log/store.js'
import { TurnEnd } from '../src/turn-end.js'
import { newTransaction, step, type Policy, type Transaction } from '../src/core/machine.js'
import { SyncPlacement } from '@fastify-2pc/protocol'

const policy: Policy = { maxParticipants: 8, maxMessages: 8, retryBaseMs: 100, retryMaxMs: 1000, retryBudget: 5 }
const noWrites = (): StepWrites => ({ attention: [], messages: [], notices: [] })

function open (t: Test): { log: CoordinatorLog, path: string } {
  const path = join(t.testdir(), 'coordinator.db')
  const log = new CoordinatorLog(path, { exchange: 'twopc.decisions', routingKey: p => `p.${p}` })
  t.teardown(() => log.close())
  return { log, path }
}

function committedTx (id: string): { begun: Transaction, committed: Transaction } {
  const now = Date.now()
  const begun = newTransaction(id, now, now + 60_000)
  const r = step(begun, { type: 'add-message', message: { exchange: 'orders', routingKey: 'placed', body: { n: 1 } }, now }, policy)
  if (!r.ok) throw new Error(r.code)
  const c = step(r.tx, { type: 'commit-requested', now }, policy)
  if (!c.ok || c.tx.state !== 'committed') throw new Error('expected an immediate commit (no participants)')
  return { begun: r.tx, committed: c.tx }
}

function save (log: CoordinatorLog, prev: Transaction | null, next: Transaction, forced: boolean): { done: Promise<Error | undefined>, called: () => boolean } {
  let called = false
  const writes = noWrites()
  if (next.messageCount > (prev?.messageCount ?? 0)) writes.messages.push({ position: 0, message: { exchange: 'orders', routingKey: 'placed', body: { n: 1 } } })
  const done = new Promise<Error | undefined>(resolve => log.save(prev, next, writes, next.updatedAt, forced, (err) => { called = true; resolve(err) }))
  return { done, called: () => called }
}

t.test('a forced step: committed at once, reported only after the fdatasync; until then readers see the synced image', async t => {
  const { log, path } = open(t)
  const { begun, committed } = committedTx('c-test.0000000001aaaaaaaaaaaaaaaa')
  const first = save(log, null, begun, true)
  log.flush()
  await first.done
  t.equal(log.hasUnsynced(begun.id), false)

  const syncsBefore = log.flushStats.syncs
  const second = save(log, begun, committed, true)
  log.flush() // written (another connection can read it), fdatasync done or started
  const reader = new Database(path, { readonly: true })
  t.teardown(() => reader.close())
  t.equal(reader.prepare<[string], { state: string }>('SELECT state FROM transactions WHERE id = ?').get(committed.id)?.state, 'committed', 'the batch is in the file: a SIGKILL now would keep it')
  t.equal(second.called(), false, 'nobody hears of a forced step before its sync')
  t.equal(log.hasUnsynced(committed.id), true)
  t.equal(log.load(committed.id)?.state, 'active', 'the durable view is the synced image')
  t.equal(log.view(committed.id)?.state, 'active', 'the API does not show a commit a power cut could take back')
  t.equal(log.loadLatest(committed.id)?.state, 'committed', 'the next step starts from the newest record')
  t.same(log.outboxBatch(0, 10), [], 'the released message is not published before its decision is synced')
  t.equal(reader.prepare<[], { n: number }>('SELECT count(*) AS n FROM outbox').get()?.n, 1, 'although its row is written')

  t.equal(await second.done, undefined)
  t.equal(log.flushStats.syncs, syncsBefore + 1)
  t.equal(log.hasUnsynced(committed.id), false)
  t.equal(log.load(committed.id)?.state, 'committed')
  t.equal(log.view(committed.id)?.state, 'committed')
  t.equal(log.outboxBatch(0, 10).length, 1, 'synced: now the publisher may send it')
})

t.test('unforced steps are reported once written and share one lazy sync', async t => {
  const { log } = open(t)
  log.lazySyncMs = 30
  const now = Date.now()
  const txs = Array.from({ length: 20 }, (_, i) => newTransaction(`c-test.0000000001${String(i).padStart(16, 'b')}`, now, now + 60_000))
  const syncsBefore = log.flushStats.syncs
  const saves = txs.map(tx => save(log, null, tx, false))
  log.flush()
  t.ok(saves.every(s => s.called()), 'every unforced step was reported when its batch was written')
  t.ok(txs.every(tx => log.hasUnsynced(tx.id)))
  t.ok(txs.every(tx => log.load(tx.id) === undefined), 'not durable yet')
  t.ok(txs.every(tx => log.view(tx.id)?.state === 'active'), 'but the API shows them: losing an undecided transaction to a power cut only aborts it')
  t.equal(log.flushStats.syncs, syncsBefore, 'no sync was started for unforced steps')
  const started = Date.now()
  while (txs.some(tx => log.hasUnsynced(tx.id))) {
    if (Date.now() - started > 5000) t.fail('the lazy sync never came')
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  t.equal(log.flushStats.syncs, syncsBefore + 1, 'one fdatasync made all 20 durable')
  t.ok(txs.every(tx => log.load(tx.id)?.state === 'active'))
})

t.test('a forced step brings the unforced ones written before it along in its sync', async t => {
  const { log } = open(t)
  log.lazySyncMs = 60_000 // only a forced step can sync
  const now = Date.now()
  const loose = newTransaction('c-test.0000000001cccccccccccccccc', now, now + 60_000)
  save(log, null, loose, false)
  log.flush()
  t.equal(log.hasUnsynced(loose.id), true)
  const forced = save(log, null, newTransaction('c-test.0000000001dddddddddddddddd', now, now + 60_000), true)
  log.flush()
  await forced.done
  t.equal(log.hasUnsynced(loose.id), false, 'the sync covered every batch committed before it')
})

t.test('a batch SQLite refuses is rolled back: its steps fail and each transaction continues from what is written', async t => {
  const { log } = open(t)
  log.lazySyncMs = 60_000
  const now = Date.now()
  const a = newTransaction('c-test.0000000001eeeeeeeeeeeeeeee', now, now + 60_000)
  const b = newTransaction('c-test.0000000001ffffffffffffffff', now, now + 60_000)
  save(log, null, a, false)
  save(log, null, b, false)
  log.flush() // written, not synced
  const expired = step(a, { type: 'abort-requested', now: now + 1 }, policy)
  if (!expired.ok) throw new Error(expired.code)
  const good = save(log, a, expired.tx, false)
  const duplicate = save(log, null, b, false) // a second insert of b: the primary key refuses it
  t.equal(log.loadLatest(a.id)?.state, 'aborted')
  t.equal(log.view(a.id)?.state, 'active', 'the API shows written records only: the abort is not written yet')
  log.flush()
  t.match(await duplicate.done, /UNIQUE/)
  t.match(await good.done, /UNIQUE/, 'the whole batch failed with it')
  t.equal(log.loadLatest(a.id)?.state, 'active', 'a is back at its last written record')
  t.equal(log.view(a.id)?.state, 'active')
  t.equal(log.hasUnsynced(a.id), true, 'which is still waiting for a sync')
  log.flushAndSync()
  t.equal(log.hasUnsynced(a.id), false)
  t.equal(log.load(a.id)?.state, 'active')
  t.equal(log.load(b.id)?.state, 'active')
})

t.test('close syncs what was written, and a reopened log sees it', async t => {
  const path = join(t.testdir(), 'coordinator.db')
  const log = new CoordinatorLog(path)
  log.lazySyncMs = 60_000
  const now = Date.now()
  const tx = newTransaction('c-test.0000000001gggggggggggggggg', now, now + 60_000)
  const saved = save(log, null, tx, true)
  log.close()
  t.equal(await saved.done, undefined, 'the forced step was reported by the closing sync')
  const again = new CoordinatorLog(path)
  t.teardown(() => again.close())
  t.equal(again.load(tx.id)?.state, 'active')
})

t.test('steps of one transaction in one batch are written as one, with the same rows as one by one', async t => {
  const now = Date.now()
  const id = 'c-test.0000000001hhhhhhhhhhhhhhhh'
  // begin with two participants and a message, commit-requested, two votes, then the acks.
  const chain: Transaction[] = []
  let tx = newTransaction(id, now, now + 60_000)
  const events = [
    { type: 'enlist', participant: { name: 'a', url: 'http://127.0.0.1:1/a', payload: { n: 1 } }, now },
    { type: 'enlist', participant: { name: 'b', url: 'http://127.0.0.1:1/b', payload: null }, now },
    { type: 'add-message', message: { exchange: 'orders', routingKey: 'placed', body: { n: 1 } }, now },
    { type: 'commit-requested', now: now + 1 },
    { type: 'vote', participant: 'a', vote: 'yes', now: now + 2 },
    { type: 'vote', participant: 'b', vote: 'yes', now: now + 3 },
    { type: 'phase2-acked', participant: 'a', now: now + 4 },
    { type: 'phase2-acked', participant: 'b', now: now + 5 }
  ] as const
  for (const event of events) {
    const r = step(tx, event as never, policy)
    if (!r.ok) throw new Error(r.code)
    tx = r.tx
    chain.push(tx)
  }
  t.equal(tx.state, 'committed')
  t.not(tx.completedAt, null)

  const dump = (path: string): unknown => {
    const db = new Database(path, { readonly: true })
    try {
      return {
        tx: db.prepare('SELECT state, decided_at, completed_at, message_count, needs_attention, prepared_at IS NOT NULL AS prepared FROM transactions').all(),
        // The timeline's times (migration 5): set once, by the step that brought them.
        participants: db.prepare(`SELECT name, url, payload, vote, ack, attempts, enlisted_at IS NOT NULL AS enlisted,
          voted_at IS NOT NULL AS voted, acked_at IS NOT NULL AS acked FROM participants ORDER BY position`).all(),
        decisions: db.prepare('SELECT decision FROM decisions').all(),
        outbox: db.prepare('SELECT kind, message_id, body FROM outbox').all(),
        timeline: timelineOfFile(path)
      }
    } finally { db.close() }
  }
  // Derived events and tx_events rows, as the console reads them (times differ: a merged write
  // carries its last step's time, as the timeline rows always did).
  function timelineOfFile (path: string): string[] {
    const log = new CoordinatorLog(path)
    try {
      return log.operator.timeline(id).events.map(e => `${e.kind}:${e.participant ?? ''}`).sort()
    } finally { log.close() }
  }
  const writes = (i: number): StepWrites => ({ attention: [], messages: i === 2 ? [{ position: 0, message: { exchange: 'orders', routingKey: 'placed', body: { n: 1 } } }] : [], notices: [] })

  // One by one: a flush after every step.
  const dir = t.testdir()
  const onePath = join(dir, 'one.db')
  const one = new CoordinatorLog(onePath)
  chain.forEach((next, i) => { one.save(i === 0 ? null : chain[i - 1] as Transaction, next, writes(i), next.updatedAt, false, () => {}); one.flush() })
  one.close()

  // Batched: the votes share a batch, so do the acks (the begin steps too).
  const batchedPath = join(dir, 'batched.db')
  const batched = new CoordinatorLog(batchedPath)
  const flushAfter = new Set([3, 5, 7])
  chain.forEach((next, i) => {
    batched.save(i === 0 ? null : chain[i - 1] as Transaction, next, writes(i), next.updatedAt, false, () => {})
    if (flushAfter.has(i)) batched.flush()
  })
  t.equal(batched.flushStats.merged, 5, '8 steps written as 3')
  batched.close()

  const expected = dump(onePath) as { tx: unknown[], timeline: unknown[], outbox: unknown[] }
  t.same(expected.timeline, ['acked:a', 'acked:b', 'begin:', 'completed:', 'decision:', 'enlist:a', 'enlist:b', 'message:', 'prepare:', 'vote:a', 'vote:b'],
    'the reference has a full timeline')
  t.equal(expected.outbox.length, 1, 'and the released message')
  t.match(expected.tx, [{ state: 'committed', completed_at: now + 5, prepared: 1 }], 'the completion (written with the times-only upsert) is in the row')
  t.same(dump(batchedPath), expected, 'the same rows')
})

t.test('the API view: an abort shows once written (before its sync), a commit only once synced', async t => {
  const { log } = open(t)
  log.lazySyncMs = 60_000
  const now = Date.now()
  const tx = newTransaction('c-test.0000000001jjjjjjjjjjjjjjjj', now, now + 60_000)
  const begun = save(log, null, tx, true)
  log.flush()
  await begun.done
  const aborted = step(tx, { type: 'abort-requested', now: now + 1 }, policy)
  if (!aborted.ok) throw new Error(aborted.code)
  save(log, tx, aborted.tx, false)
  t.equal(log.view(tx.id)?.state, 'active', 'saved, not written: not shown')
  log.flush()
  t.equal(log.hasUnsynced(tx.id), true)
  t.equal(log.view(tx.id)?.state, 'aborted', 'written, not synced: shown (a power cut would make it an abort again)')
  t.equal(log.load(tx.id)?.state, 'active', 'the synced record is still the old one')
})

t.test('the cache of synced unfinished records keeps to its byte budget; what it drops is read back from SQLite', async t => {
  const { log } = open(t)
  // Five participants with a 60 KiB payload each: ~300 KiB a record, so 150 of them (~44 MiB)
  // are more than the 32 MiB budget.
  const big = 'x'.repeat(60 * 1024)
  const ids: string[] = []
  for (let i = 0; i < 150; i++) {
    const now = Date.now()
    const id = `c-test.${String(i).padStart(10, '0')}bbbbbbbbbbbbbbbb`
    let tx = newTransaction(id, now, now + 60_000)
    for (let p = 0; p < 5; p++) {
      const r = step(tx, { type: 'enlist', participant: { name: `p${p}`, url: `http://127.0.0.1:1/p${p}`, payload: { big, p } }, now }, policy)
      if (!r.ok) throw new Error(r.code)
      tx = r.tx
    }
    ids.push(id)
    const s = save(log, null, tx, true)
    log.flush()
    await s.done
  }
  const stats = log.recentStats()
  t.ok(stats.bytes <= 32 * 1024 * 1024, `at most 32 MiB estimated (${(stats.bytes / 2 ** 20).toFixed(1)} MiB in ${stats.records} records)`)
  t.ok(stats.records < 150 && stats.records > 80, `older records were dropped, the newest kept (${stats.records})`)
  t.ok(stats.bytes >= stats.records * 5 * 60 * 1024, 'the estimate counts the payloads')
  const oldest = log.load(ids[0] as string)
  t.equal(oldest?.participants.length, 5, 'a dropped record is read back from the log')
  t.equal((oldest?.participants[4]?.payload as { big: string }).big.length, 60 * 1024)
})

t.test('where the fdatasync runs: inline while quick (still reported on a later tick), on the pool with the threshold 0', async t => {
  for (const maxInlineMs of [1, 0]) {
    const { log } = open(t)
    log.syncPlacement = new SyncPlacement(maxInlineMs)
    const now = Date.now()
    const saves = Array.from({ length: 5 }, (_, i) => {
      const tx = newTransaction(`c-test.000000000${maxInlineMs}${String(i).padStart(16, 'e')}`, now, now + 60_000)
      const s = save(log, null, tx, true)
      log.flush() // one batch and one forced sync each
      t.equal(s.called(), false, 'never reported inside flush(), even when synced inline')
      return s
    })
    t.same(await Promise.all(saves.map(s => s.done)), [undefined, undefined, undefined, undefined, undefined])
    const { syncs, inlineSyncs } = log.flushStats
    t.ok(syncs >= 1, `${syncs} syncs`)
    if (maxInlineMs === 0) t.equal(inlineSyncs, 0, 'threshold 0: every sync on the thread pool')
    else t.ok(inlineSyncs >= 1, `${inlineSyncs} of ${syncs} inline`)
  }
})

t.test('a failed fdatasync, inline or on the pool: the step waiting for it fails, and so does everything after (restart)', async t => {
  // The real failure path: node:fs itself is made to fail (syncBuiltinESMExports updates the
  // named imports every module holds), as a disk returning EIO would.
  const real = { fdatasync: fs.fdatasync, fdatasyncSync: fs.fdatasyncSync }
  const eio = (): NodeJS.ErrnoException => Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' })
  t.teardown(() => { Object.assign(fs, real); syncBuiltinESMExports() })
  for (const maxInlineMs of [1, 0]) {
    const { log } = open(t)
    log.syncPlacement = new SyncPlacement(maxInlineMs)
    const now = Date.now()
    const ok = save(log, null, newTransaction(`c-test.000000000${maxInlineMs}${'g'.repeat(16)}`, now, now + 60_000), true)
    log.flush()
    t.equal(await ok.done, undefined, 'a sync that works')
    fs.fdatasyncSync = () => { throw eio() }
    fs.fdatasync = ((_fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => { setImmediate(cb, eio()) }) as typeof fs.fdatasync
    syncBuiltinESMExports()
    const inlineBefore = log.flushStats.inlineSyncs
    const failing = save(log, null, newTransaction(`c-test.000000000${maxInlineMs}${'h'.repeat(16)}`, now, now + 60_000), true)
    log.flush()
    t.match(await failing.done, { message: /could not be synced to disk: EIO/ }, `threshold ${maxInlineMs}: the forced step hears of the failure`)
    t.equal(log.flushStats.inlineSyncs - inlineBefore, maxInlineMs === 0 ? 0 : 1, maxInlineMs === 0 ? 'the failed sync ran on the pool' : 'the failed sync ran inline')
    Object.assign(fs, real)
    syncBuiltinESMExports()
    t.ok(log.failure, 'the log is failed')
    const after = save(log, null, newTransaction(`c-test.000000000${maxInlineMs}${'j'.repeat(16)}`, now, now + 60_000), true)
    log.flush()
    t.match(await after.done, { message: /could not be synced to disk/ }, 'a later step fails too, although the disk works again: only a restart may trust it')
  }
})

t.test('statement journals stay in memory: no temp file is created and unlinked under load', async t => {
  const { log } = open(t)
  // 2 = MEMORY. With the default, a multi-row upsert past 64 KiB of journal spilled to a new
  // file under /var/tmp (seen ~10 times a second at 64 clients; strace: openat + unlink).
  t.equal(log.setting('temp_store'), 2)
})

t.test('a batch holding a step whose callbacks went out first waits one turn for them, once; other batches are written at the end of their turn', async t => {
  const { log, path } = open(t)
  const reader = new Database(path, { readonly: true })
  t.teardown(() => reader.close())
  let sent = true
  // The engine's end of the turn, with the driver's side: "requests went out since you last asked".
  const end = new TurnEnd({ flush: () => {}, takeSent: () => sent, onQueued: undefined }, log)
  const turn = async (): Promise<void> => { await new Promise(resolve => setImmediate(resolve)) }
  const writes = (): number => log.flushStats.flushes

  // An interactive begin: its callbacks go out after it, so it is not held back.
  const plain = newTransaction('c-test.0000000003aaaaaaaaaaaaaaaa', Date.now(), Date.now() + 60_000)
  const before = writes()
  log.save(null, plain, noWrites(), plain.updatedAt, false, () => {})
  await turn()
  t.equal(writes(), before + 1, 'written at the end of its turn')

  // A one-shot's begin, its prepares handed to undici: the write waits one turn, then goes.
  const early = newTransaction('c-test.0000000004aaaaaaaaaaaaaaaa', Date.now(), Date.now() + 60_000)
  end.noteSendsFirst()
  log.save(null, early, noWrites(), early.updatedAt, false, () => {})
  await turn()
  t.equal(writes(), before + 1, 'put off by one turn')
  await turn()
  t.equal(writes(), before + 2, 'written the turn after, although requests keep going out')
  t.ok(reader.prepare('SELECT 1 FROM transactions WHERE id = ?').get(early.id), 'in the file')

  // Nothing went out: no reason to wait.
  sent = false
  const quiet = newTransaction('c-test.0000000005aaaaaaaaaaaaaaaa', Date.now(), Date.now() + 60_000)
  end.noteSendsFirst()
  log.save(null, quiet, noWrites(), quiet.updatedAt, false, () => {})
  await turn()
  t.equal(writes(), before + 3)
})
