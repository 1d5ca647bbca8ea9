/**
 * The group-commit pipeline with stores of its own: lines appended to a real file, written
 * synchronously (like SQLite through better-sqlite3) or through a promise (like a network
 * database), synced with a real fdatasync. The coordinator's log tests cover the SQLite store.
 */
import t from 'tap'
import { appendFileSync, closeSync, fdatasyncSync, openSync, readFileSync } from 'node:fs'
import { appendFile } from 'node:fs/promises'
import { join } from 'node:path'
import { GroupCommit, SyncPlacement, diskFailure, type BatchStore, type PipelineStep } from '@fastify-2pc/storage'
import { SyncPlacement as FromProtocol, crashPoint as protocolCrashPoint } from '@fastify-2pc/protocol'
import { crashPoint } from '@fastify-2pc/storage'

interface Line extends PipelineStep { text: string }

class FileStore implements BatchStore<Line> {
  readonly fd: number
  readonly batches: string[][] = []
  readonly synced: string[] = []
  readonly dropped: string[] = []
  /** The next write fails with this error (once). */
  failNext: Error | undefined
  idle = false
  readonly placement = new SyncPlacement()

  constructor (readonly path: string, private readonly async: boolean) {
    this.fd = openSync(path, 'a')
  }

  write (batch: Line[]): void | Promise<void> {
    const fail = this.failNext
    this.failNext = undefined
    const text = batch.map(l => l.text + '\n').join('')
    if (!this.async) {
      if (fail !== undefined) throw fail
      appendFileSync(this.fd, text)
      this.batches.push(batch.map(l => l.text))
      return
    }
    return new Promise<void>(resolve => { setTimeout(resolve, 5) }).then(async () => {
      if (fail !== undefined) throw fail
      await appendFile(this.path, text)
      this.batches.push(batch.map(l => l.text))
    })
  }

  needsSync (): boolean { return true }
  sync (running: number, done: (err: Error | null, ms: number, inline: boolean) => void): void { this.placement.sync(this.fd, running, done) }
  syncNow (): void { fdatasyncSync(this.fd) }
  stepWritten (): void {}
  stepsSynced (steps: Line[]): void { this.synced.push(...steps.map(s => s.text)) }
  batchDropped (batch: Line[]): void { this.dropped.push(...batch.map(s => s.text)) }
  closedIdle (): void { this.idle = true; closeSync(this.fd) }
}

function add (pipeline: GroupCommit<Line>, text: string, forced: boolean): Promise<Error | undefined> {
  return new Promise(resolve => { pipeline.add({ text, forced, done: resolve }) })
}

const failure = (kind: string, during: string, err: Error): Error => new Error(`log unavailable (${kind}, ${during}): ${err.message}`)

for (const async of [false, true]) {
  t.test(`${async ? 'an asynchronous' : 'a synchronous'} store: one batch a turn, forced steps reported once synced`, async t => {
    const store = new FileStore(join(t.testdir(), 'log'), async)
    const pipeline = new GroupCommit(store, { failure })
    pipeline.lazySyncMs = 5
    const results = [add(pipeline, 'a', false), add(pipeline, 'b', true), add(pipeline, 'c', false)]
    t.equal(pipeline.pendingSteps, 3)
    t.same(await Promise.all(results), [undefined, undefined, undefined])
    t.same(store.batches, [['a', 'b', 'c']], 'one batch')
    t.same(store.synced, ['a', 'b', 'c'], 'the forced step brought the sync for all')
    t.equal(readFileSync(store.path, 'utf8'), 'a\nb\nc\n')
    t.equal(pipeline.stats.flushes, 1)
    t.equal(pipeline.stats.syncs, 1)

    // Steps added while a write runs join the next batch.
    const first = add(pipeline, 'd', true)
    await new Promise(resolve => setImmediate(resolve))
    const second = [add(pipeline, 'e', true), add(pipeline, 'f', false)]
    t.same(await Promise.all([first, ...second]), [undefined, undefined, undefined])
    t.same(store.batches.slice(1), [['d'], ['e', 'f']])
    t.equal(readFileSync(store.path, 'utf8'), 'a\nb\nc\nd\ne\nf\n')

    // A refused batch (not the disk) fails its steps only; the next is written.
    store.failNext = Object.assign(new Error('constraint'), { code: 'SQLITE_CONSTRAINT_PRIMARYKEY' })
    t.match(await add(pipeline, 'g', true), { message: 'constraint' })
    t.same(store.dropped, ['g'])
    t.equal(pipeline.failure, undefined)
    t.equal(await add(pipeline, 'h', true), undefined)

    // The disk refused a write: latched, every later step fails with the same error.
    store.failNext = Object.assign(new Error('no space'), { code: 'ENOSPC' })
    t.match(await add(pipeline, 'i', false), { message: 'log unavailable (full, write): no space' })
    t.equal(pipeline.failureKind, 'full')
    t.match(await add(pipeline, 'j', true), { message: /log unavailable \(full/ })
    t.same(store.dropped, ['g', 'i', 'j'])
    t.equal(readFileSync(store.path, 'utf8'), 'a\nb\nc\nd\ne\nf\nh\n')
    pipeline.close()
    t.equal(store.idle, true, 'closed with no sync running: the store may close its file')
  })
}

t.test('writeDue hands the write to its owner; a full batch is written at once', async t => {
  const store = new FileStore(join(t.testdir(), 'log'), false)
  const pipeline = new GroupCommit(store, { failure })
  pipeline.maxBatch = 2
  const due: boolean[] = []
  pipeline.writeDue = full => { due.push(full); if (full) pipeline.flush() }
  const a = add(pipeline, 'a', false)
  t.same(due, [false], 'a batch started: written at the end of the turn, by the owner')
  const b = add(pipeline, 'b', false)
  t.same(due, [false, true], 'full: now')
  t.same(await Promise.all([a, b]), [undefined, undefined])
  t.same(store.batches, [['a', 'b']])
  pipeline.flushAndSync()
  t.same(store.synced, ['a', 'b'], 'flushAndSync syncs what is written')
  pipeline.close()
})

t.test('diskFailure: full, failed, or the batch only', async t => {
  t.equal(diskFailure({ code: 'SQLITE_FULL' }), 'full')
  t.equal(diskFailure({ code: 'EDQUOT' }), 'full')
  t.equal(diskFailure({ code: 'SQLITE_IOERR_WRITE' }), 'failed')
  t.equal(diskFailure({ code: 'EROFS' }), 'failed')
  t.equal(diskFailure({ code: 'SQLITE_BUSY' }), undefined)
  t.equal(diskFailure(new Error('x')), undefined)
})

t.test('the protocol package re-exports what moved here', async t => {
  t.equal(FromProtocol, SyncPlacement)
  t.equal(protocolCrashPoint, crashPoint)
})
