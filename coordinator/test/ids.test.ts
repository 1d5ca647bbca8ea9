import t from 'tap'
import { newTransactionId, txIdRegExp } from '../src/ids.js'

t.test('transaction ids sort by creation, within one millisecond too, and stay unguessable', async t => {
  const now = Date.UTC(2026, 10, 24, 12, 0, 0)
  const sameMs = Array.from({ length: 2000 }, () => newTransactionId('c-test', now))
  const later = newTransactionId('c-test', now + 1)
  t.same([...sameMs, later].filter(id => !txIdRegExp.test(id)), [], 'every id is well-formed')
  t.same([...sameMs].sort(), sameMs, 'ids of one millisecond sort in the order they were made')
  t.ok(later > (sameMs[sameMs.length - 1] as string), 'the next millisecond sorts after')
  t.equal(new Set(sameMs).size, sameMs.length, 'all distinct')
  const randomParts = new Set(sameMs.map(id => id.slice(-13)))
  t.ok(randomParts.size > 1990, 'the random part does not follow the sequence')
})
