import t from 'tap'
import { SyncPlacement, DEFAULT_INLINE_SYNC_MAX_MS, MAX_INLINE_SYNC_MS } from '@fastify-2pc/storage'

t.test('quick syncs run inline while no other sync runs', async t => {
  const p = new SyncPlacement()
  t.equal(p.maxInlineMs, DEFAULT_INLINE_SYNC_MAX_MS)
  t.equal(p.inline(0), true, 'nothing measured yet: inline')
  for (let i = 0; i < 20; i++) p.record(0.1)
  t.equal(p.inline(0), true)
  t.equal(p.inline(1), false, 'one running on the pool: the next one goes there too (settled in order)')
})

t.test('a slow disk moves syncs to the pool; quick ones bring them back', async t => {
  const p = new SyncPlacement(1)
  p.record(0.1)
  p.record(20) // one stall
  t.equal(p.inline(0), false, 'after a 20 ms sync: on the pool')
  t.ok(p.recentMs > 1)
  let n = 0
  while (!p.inline(0) && n < 100) { p.record(0.3); n++ }
  t.ok(n > 1 && n < 20, `back inline after ${n} quick pool syncs`)
  t.ok(p.recentMs <= 1)
})

t.test('0 turns inline syncs off; out-of-range thresholds are refused', async t => {
  const off = new SyncPlacement(0)
  t.equal(off.inline(0), false)
  off.record(0)
  t.equal(off.inline(0), false, 'never, however quick')
  t.throws(() => new SyncPlacement(-1), RangeError)
  t.throws(() => new SyncPlacement(Number.NaN), RangeError)
  t.throws(() => new SyncPlacement(MAX_INLINE_SYNC_MS + 1), /from 0 to 100/)
  t.doesNotThrow(() => new SyncPlacement(MAX_INLINE_SYNC_MS))
})

t.test('sync(): runs the fdatasync inline or on the pool, reports on a later tick, records its time', async t => {
  const { mkdtempSync, openSync, writeSync, closeSync, rmSync } = await import('node:fs')
  const { join } = await import('node:path')
  const { tmpdir } = await import('node:os')
  const dir = mkdtempSync(join(tmpdir(), 'sync-placement-'))
  const fd = openSync(join(dir, 'f'), 'w')
  t.teardown(() => { closeSync(fd); rmSync(dir, { recursive: true, force: true }) })
  writeSync(fd, 'x')
  for (const [placement, running, expectInline] of [[new SyncPlacement(), 0, true], [new SyncPlacement(), 1, false], [new SyncPlacement(0), 0, false]] as const) {
    let called = false
    const result = await new Promise<{ err: unknown, ms: number, inline: boolean }>(resolve => {
      placement.sync(fd, running, (err, ms, inline) => { called = true; resolve({ err, ms, inline }) })
      t.equal(called, false, 'never reported synchronously')
    })
    t.equal(result.err, null)
    t.equal(result.inline, expectInline, `running ${running}, threshold ${placement.maxInlineMs}: ${expectInline ? 'inline' : 'pool'}`)
    t.ok(result.ms >= 0)
    t.equal(placement.recentMs > 0, true, 'its duration was recorded')
  }
  const bad = new SyncPlacement()
  const failed = await new Promise<unknown>(resolve => { bad.sync(987654, 0, err => { resolve(err) }) })
  t.match(failed, { code: 'EBADF' }, 'a failing sync reports its error')
  t.equal(bad.recentMs, 0, 'and records no duration')
})
