/**
 * The admin console's gate over plain HTTP (the browser test covers the pages): token by bearer,
 * cookie or `?token=` once; cross-site posts refused; form actions audited; HTML headers.
 */
import t from 'tap'
import { request } from 'undici'
import { startCoordinator, startParticipant, waitFor } from './support/participant.js'

const TOKEN = 'admin-auth-token-0123456789'

async function get (url: string, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, text: string }> {
  const res = await request(url, { headers })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

async function postForm (url: string, form: Record<string, string>, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, text: string }> {
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body: new URLSearchParams(form).toString() })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

t.test('with a token: login redirect, bearer, ?token= once, cookie, wrong token, logout', async t => {
  const c = await startCoordinator(t, { apiToken: TOKEN })
  const anon = await get(`${c.url}/admin/needs-attention?state=committed`)
  t.equal(anon.status, 303)
  t.equal(anon.headers.location, `/admin/login?next=${encodeURIComponent('/admin/needs-attention?state=committed')}`)

  const bearer = await get(`${c.url}/admin`, { authorization: `Bearer ${TOKEN}` })
  t.equal(bearer.status, 200)
  t.match(bearer.headers['content-type'], /^text\/html/)
  t.match(bearer.headers['content-security-policy'], /default-src 'none'/)
  t.match(bearer.text, /<h1>Transactions<\/h1>/)

  const once = await get(`${c.url}/admin/in-doubt?state=preparing&token=${TOKEN}`)
  t.equal(once.status, 303)
  t.equal(once.headers.location, '/admin/in-doubt?state=preparing', 'the token leaves the address bar')
  t.match(once.headers['set-cookie'], /^twopc_token=[^;]+; Path=\/admin; HttpOnly; SameSite=Strict; Max-Age=\d+$/)
  const cookie = String(once.headers['set-cookie']).split(';')[0] as string
  t.equal((await get(`${c.url}/admin`, { cookie })).status, 200)

  t.equal((await get(`${c.url}/admin?token=wrong`)).status, 401)
  t.equal((await get(`${c.url}/admin`, { cookie: 'twopc_token=wrong' })).status, 303)
  t.equal((await get(`${c.url}/admin`, { authorization: 'Bearer wrong' })).status, 303)

  const badLogin = await postForm(`${c.url}/admin/login`, { token: 'wrong', next: '/admin' })
  t.equal(badLogin.status, 401)
  t.match(badLogin.text, /wrong token/)
  const login = await postForm(`${c.url}/admin/login`, { token: TOKEN, next: 'https://evil.example/' })
  t.equal(login.status, 303)
  t.equal(login.headers.location, '/admin', 'no open redirect')
  t.match(login.headers['set-cookie'], /^twopc_token=/)

  const logout = await postForm(`${c.url}/admin/logout`, {}, { cookie })
  t.equal(logout.status, 303)
  t.match(logout.headers['set-cookie'], /Max-Age=0/)

  // the console's token gate does not open the API to cookies
  const api = await get(`${c.url}/v1/transactions`, { cookie })
  t.equal(api.status, 401)
})

t.test('form actions: audited as console:<operator>; refusals shown; cross-site posts refused', async t => {
  const c = await startCoordinator(t)
  const p = await startParticipant(t, { phase2Failure: { status: 409, times: Infinity } })
  const res = await c.api.post<{ id: string }>('/v1/transactions', { participants: [{ name: 'payment', url: p.url }], commit: true })
  const id = res.body.id
  await waitFor(async () => (await c.api.get(`/v1/transactions/${id}`)).body.needsAttention === true, 5000, 'needs attention')

  const page = await get(`${c.url}/admin/tx/${id}`)
  t.equal(page.status, 200)
  t.match(page.text, /id="resolve-form"/)
  t.match(page.text, /id="retry-form"/)

  const crossSite = await postForm(`${c.url}/admin/tx/${id}/resolve`, { reason: 'x' }, { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' })
  t.equal(crossSite.status, 403)
  const nullOrigin = await postForm(`${c.url}/admin/tx/${id}/resolve`, { reason: 'x' }, { origin: 'null' })
  t.equal(nullOrigin.status, 403)
  t.equal((await c.api.get(`/v1/transactions/${id}`)).body.needsAttention, true, 'nothing changed')

  const noReason = await postForm(`${c.url}/admin/tx/${id}/resolve`, { reason: '  ' })
  t.equal(noReason.status, 400)
  t.match(noReason.text, /A reason .* is required/)

  const ok = await postForm(`${c.url}/admin/tx/${id}/resolve`, { reason: 'refund <b>done</b>', operator: 'erin' }, { origin: c.url, 'sec-fetch-site': 'same-origin' })
  t.equal(ok.status, 303)
  t.equal(ok.headers.location, `/admin/tx/${encodeURIComponent(id)}?done=resolve`)
  const tx = (await c.api.get(`/v1/transactions/${id}`)).body
  t.match(tx, { needsAttention: false, completed: true, decision: 'commit', audit: [{ action: 'resolve', actor: 'console:erin', reason: 'refund <b>done</b>' }] })
  const after = await get(`${c.url}/admin/tx/${id}?done=resolve`)
  t.match(after.text, /Marked resolved/)
  t.match(after.text, /refund &lt;b&gt;done&lt;\/b&gt;/, 'escaped')
  t.notMatch(after.text, /<b>done<\/b>/)

  const again = await postForm(`${c.url}/admin/tx/${id}/retry`, {})
  t.equal(again.status, 409)
  t.match(again.text, /NOTHING_TO_RETRY/)

  t.equal((await get(`${c.url}/admin/tx/nope`)).status, 400)
  t.equal((await get(`${c.url}/admin/tx/${c.id}.${'0'.repeat(26)}`)).status, 404)
  t.equal((await get(`${c.url}/admin?state=bogus`)).status, 400)
  t.equal((await get(`${c.url}/admin?age=forever`)).status, 400)
  // views and filters answer
  for (const path of ['/admin/in-doubt', '/admin/needs-attention', '/admin/heuristics', '/admin/unfinished', '/admin?participant=payment&age=1m&limit=5']) {
    t.equal((await get(c.url + path)).status, 200, path)
  }
  t.match((await get(`${c.url}/admin?participant=payment`)).text, new RegExp(`data-id="${id.replace('.', '\\.')}"`))
  t.notMatch((await get(`${c.url}/admin?participant=other`)).text, /data-id=/)
})
