import t from 'tap'
import { signBody, signBodyV1, verifySignature, coordinatorIdOf, SIGNATURE_MAX_AGE_MS, SIGNED_OPERATIONS } from '@fastify-2pc/protocol'

t.test('a signature made with the secret verifies for its operation', async t => {
  const header = signBody('s3cret', 'commit', '{"txid":"a"}', 1000)
  t.match(header, /^t=1000,v2=[0-9a-f]{64}$/)
  t.same(verifySignature('s3cret', 'commit', header, '{"txid":"a"}', { now: 2000 }), { ok: true, scheme: 'v2' })
})

t.test('a signature made for one operation fails for every other one', async t => {
  const body = '{"txid":"a","participant":"p"}'
  for (const signedFor of SIGNED_OPERATIONS) {
    const header = signBody('s3cret', signedFor, body, 5000)
    for (const checkedAs of SIGNED_OPERATIONS) {
      const check = verifySignature('s3cret', checkedAs, header, body, { now: 5000 })
      t.same(check, signedFor === checkedAs ? { ok: true, scheme: 'v2' } : { ok: false, reason: 'mismatch' }, `${signedFor} checked as ${checkedAs}`)
    }
  }
})

t.test('the legacy v1 scheme is refused unless asked for', async t => {
  const body = '{"txid":"a"}'
  const v1 = signBodyV1('s3cret', body, 1000)
  t.match(v1, /^t=1000,v1=[0-9a-f]{64}$/)
  t.same(verifySignature('s3cret', 'commit', v1, body, { now: 2000 }), { ok: false, reason: 'legacy-scheme' })
  t.same(verifySignature('s3cret', 'commit', v1, body, { now: 2000, acceptV1: true }), { ok: true, scheme: 'v1' })
  t.same(verifySignature('other', 'commit', v1, body, { now: 2000, acceptV1: true }), { ok: false, reason: 'mismatch' })
})

t.test('missing, malformed, stale, wrong and replayed signatures are refused', async t => {
  const body = '{"txid":"a"}'
  const now = 10_000_000
  const good = signBody('s3cret', 'prepare', body, now)
  t.same(verifySignature('s3cret', 'prepare', undefined, body, { now }), { ok: false, reason: 'missing' })
  t.same(verifySignature('s3cret', 'prepare', '', body, { now }), { ok: false, reason: 'missing' })
  t.same(verifySignature('s3cret', 'prepare', [good, good], body, { now }), { ok: false, reason: 'malformed' })
  t.same(verifySignature('s3cret', 'prepare', 'v2=abc', body, { now }), { ok: false, reason: 'malformed' })
  t.same(verifySignature('s3cret', 'prepare', good, body, { now: now + SIGNATURE_MAX_AGE_MS + 1 }), { ok: false, reason: 'stale' })
  t.same(verifySignature('other', 'prepare', good, body, { now }), { ok: false, reason: 'mismatch' })
  t.same(verifySignature('s3cret', 'prepare', good, '{"txid":"b"}', { now }), { ok: false, reason: 'mismatch' })
})

t.test('coordinatorIdOf reads the prefix of a transaction id', async t => {
  t.equal(coordinatorIdOf('c1.0123456789abcdefghjkmnpqrs'), 'c1')
  t.equal(coordinatorIdOf('nodot'), '')
})
