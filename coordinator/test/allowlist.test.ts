import t from 'tap'
import { parseAllowlist } from '../src/allowlist.js'

t.test('unset: loopback only', async t => {
  const a = parseAllowlist(undefined)
  t.equal(a.describe, 'loopback only')
  t.ok(a.check('http://127.0.0.1:3000/2pc').ok)
  t.ok(a.check('http://127.8.9.10/2pc').ok)
  t.ok(a.check('http://localhost:3000/2pc').ok)
  t.ok(a.check('http://[::1]:3000/2pc').ok)
  t.match(a.check('http://10.0.0.1/2pc'), { ok: false, code: 'PARTICIPANT_URL_NOT_ALLOWED' })
  t.match(a.check('http://127.0.0.1.evil.example/2pc'), { ok: false, code: 'PARTICIPANT_URL_NOT_ALLOWED' })
})

t.test('origins, host:port, host names and wildcards', async t => {
  const a = parseAllowlist('https://pay.internal:8443, inventory:8080, orders, *.svc.local')
  t.ok(a.check('https://pay.internal:8443/2pc').ok)
  t.notOk(a.check('http://pay.internal:8443/2pc').ok, 'an origin matches scheme, host and port')
  t.ok(a.check('http://inventory:8080/2pc').ok)
  t.notOk(a.check('http://inventory:8081/2pc').ok, 'host:port matches that port only')
  t.ok(a.check('http://orders:1234/2pc').ok)
  t.ok(a.check('http://a.svc.local/2pc').ok)
  t.notOk(a.check('http://svc.local/2pc').ok, 'the wildcard needs a label in front')
  t.notOk(a.check('http://127.0.0.1/2pc').ok, 'with a list, loopback is not implied')
})

t.test('malformed urls are refused before the list is consulted', async t => {
  const a = parseAllowlist('')
  t.match(a.check('not a url'), { ok: false, code: 'BAD_PARTICIPANT_URL' })
  t.match(a.check('ftp://127.0.0.1/x'), { ok: false, code: 'BAD_PARTICIPANT_URL' })
  t.match(a.check('http://u:p@127.0.0.1/x'), { ok: false, code: 'BAD_PARTICIPANT_URL' })
  t.match(a.check('http://127.0.0.1/x?y=1'), { ok: false, code: 'BAD_PARTICIPANT_URL' })
  t.match(a.check('http://127.0.0.1/' + 'x'.repeat(3000)), { ok: false, code: 'BAD_PARTICIPANT_URL' })
})

t.test('a bad entry stops start-up', async t => {
  t.throws(() => parseAllowlist('http://'), /not a valid origin/)
  t.throws(() => parseAllowlist('in valid'), /neither an origin nor a host pattern/)
})
