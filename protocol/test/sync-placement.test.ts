import t from 'tap'
import { SyncPlacement, DEFAULT_INLINE_SYNC_MAX_MS, MAX_INLINE_SYNC_MS } from '@fastify-2pc/protocol'

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
