import t from 'tap'
import { signBody, verifySignature, coordinatorIdOf, SIGNATURE_MAX_AGE_MS } from '@fastify-2pc/protocol'

t.test('a signature made with the secret verifies', async t => {
  const header = signBody('s3cret', '{"txid":"a"}', 1000)
  t.match(header, /^t=1000,v1=[0-9a-f]{64}$/)
  t.same(verifySignature('s3cret', header, '{"txid":"a"}', 2000), { ok: true })
})

t.test('missing, malformed, stale, wrong and replayed signatures are refused', async t => {
  const body = '{"txid":"a"}'
  const now = 10_000_000
  const good = signBody('s3cret', body, now)
  t.same(verifySignature('s3cret', undefined, body, now), { ok: false, reason: 'missing' })
  t.same(verifySignature('s3cret', '', body, now), { ok: false, reason: 'missing' })
  t.same(verifySignature('s3cret', [good, good], body, now), { ok: false, reason: 'malformed' })
  t.same(verifySignature('s3cret', 'v1=abc', body, now), { ok: false, reason: 'malformed' })
  t.same(verifySignature('s3cret', good, body, now + SIGNATURE_MAX_AGE_MS + 1), { ok: false, reason: 'stale' })
  t.same(verifySignature('other', good, body, now), { ok: false, reason: 'mismatch' })
  t.same(verifySignature('s3cret', good, '{"txid":"b"}', now), { ok: false, reason: 'mismatch' })
})

t.test('coordinatorIdOf reads the prefix of a transaction id', async t => {
  t.equal(coordinatorIdOf('c1.0123456789abcdefghjkmnpqrs'), 'c1')
  t.equal(coordinatorIdOf('nodot'), '')
})
