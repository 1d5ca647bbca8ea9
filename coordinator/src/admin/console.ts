/**
 * The admin console at /admin: server-rendered HTML, no JavaScript, every value escaped.
 *
 * Auth: with `TWOPC_API_TOKEN` set, every /admin page needs the token — as `authorization:
 * Bearer <token>` (curl), as the `twopc_token` cookie (HttpOnly, SameSite=Strict, Path=/admin)
 * set by the form at /admin/login, or once as `?token=<token>` on any /admin GET, which sets the
 * cookie and redirects to the same URL without it. Without a token the console is as open as the
 * API. Forms post only from the console itself: a cross-site POST (Origin or Sec-Fetch-Site)
 * is refused with 403.
 *
 * Actions (retry now, resolve with a reason) call the same engine methods as the API and are
 * audited with the actor `console` (or `console:<operator>` when the form names one).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifyError } from 'fastify'
import { createHash, timingSafeEqual } from 'node:crypto'
import type { Engine } from '../engine.js'
import type { LogStore } from '../log/log-store.js'
import type { TxState } from '../core/machine.js'
import { txIdRegExp } from '../ids.js'
import { runOperatorAction } from './api.js'
import { counters, listTransactions, timeline, type ListFilter, type View } from './queries.js'
import { AGE_OPTIONS, detailPage, errorPage, listPage, loginPage, type PageContext } from './pages.js'

export interface ConsoleDeps {
  engine: Engine
  log: LogStore
  apiToken: string | undefined
  coordinatorId: string
}

const TOKEN_COOKIE = 'twopc_token'

const SECURITY_HEADERS: Record<string, string> = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  // Not no-referrer: with it, browsers send `Origin: null` on the console's own form posts.
  'referrer-policy': 'same-origin',
  'cache-control': 'no-store'
}

const sha256 = (text: string): Buffer => createHash('sha256').update(text).digest()

function cookies (header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=')
    if (i <= 0) continue
    const name = part.slice(0, i).trim()
    try { out[name] = decodeURIComponent(part.slice(i + 1).trim()) } catch { /* a malformed cookie is ignored */ }
  }
  return out
}

/** Only a path inside the console is a valid place to return to after logging in. */
function safeNext (next: unknown): string {
  return typeof next === 'string' && /^\/admin(\/[A-Za-z0-9._~\-/]*)?(\?[^\s]*)?$/.test(next) && !next.startsWith('//') ? next : '/admin'
}

function parseAge (text: string): number | undefined {
  const m = /^(\d{1,6})(s|m|h|d)$/.exec(text)
  if (m === null) return undefined
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd']
}

class BadRequest extends Error {
  statusCode = 400
  code = 'BAD_REQUEST'
}

function one (q: Record<string, unknown>, key: string): string | undefined {
  const v = q[key]
  if (v === undefined || v === '') return undefined
  if (typeof v !== 'string') throw new BadRequest(`${key} given more than once`)
  return v
}

function parseFilter (view: View, q: Record<string, unknown>): { filter: ListFilter, raw: Record<string, string> } {
  const raw: Record<string, string> = {}
  const filter: ListFilter = { view, limit: 100 }
  const state = one(q, 'state')
  if (state !== undefined) {
    if (!['active', 'preparing', 'committed', 'aborted'].includes(state)) throw new BadRequest(`unknown state "${state}"`)
    filter.state = state as TxState
    raw.state = state
  }
  const participant = one(q, 'participant')
  if (participant !== undefined) {
    if (participant.length > 128) throw new BadRequest('participant name too long')
    filter.participant = participant
    raw.participant = participant
  }
  const age = one(q, 'age')
  if (age !== undefined) {
    const ms = parseAge(age)
    if (ms === undefined) throw new BadRequest(`age must look like ${AGE_OPTIONS.filter(a => a !== '').join(', ')}`)
    filter.olderThanMs = ms
    raw.age = age
  }
  const limit = one(q, 'limit')
  if (limit !== undefined) {
    const n = Number(limit)
    if (!/^\d{1,4}$/.test(limit) || n < 1 || n > 500) throw new BadRequest('limit must be 1 to 500')
    filter.limit = n
    raw.limit = limit
  }
  const before = one(q, 'before')
  if (before !== undefined) {
    const m = /^(\d{1,16})\.(.+)$/.exec(before)
    if (m === null || !txIdRegExp.test(m[2] as string)) throw new BadRequest('bad paging position')
    filter.before = { createdAt: Number(m[1]), id: m[2] as string }
  }
  return { filter, raw }
}

export async function adminConsole (app: FastifyInstance, deps: ConsoleDeps): Promise<void> {
  const { engine, log, apiToken, coordinatorId } = deps
  const expected = apiToken === undefined ? undefined : sha256(apiToken)
  const tokenOk = (given: string | undefined): boolean =>
    expected !== undefined && given !== undefined && given !== '' && timingSafeEqual(sha256(given), expected)

  // Forms post application/x-www-form-urlencoded (only in this scope: the API stays JSON only).
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 16 * 1024 }, (_req, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)))
  })

  const ctx = (): PageContext => ({ loggedIn: apiToken !== undefined, coordinatorId, now: Date.now() })

  function send (reply: FastifyReply, status: number, page: string): FastifyReply {
    return reply.code(status).headers(SECURITY_HEADERS).send(page)
  }

  function cookieHeader (req: FastifyRequest, value: string, maxAge: number): string {
    const secure = req.protocol === 'https' ? '; Secure' : ''
    return `${TOKEN_COOKIE}=${encodeURIComponent(value)}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=${maxAge}${secure}`
  }

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const status = err.statusCode ?? 500
    if (status >= 500) req.log.error({ err }, 'admin console request failed')
    const code = err.validation !== undefined ? 'VALIDATION_FAILED' : (err.code ?? 'ERROR')
    const message = status >= 500 ? 'internal error (see the coordinator log)' : err.message
    void send(reply, status, errorPage(status, code, message, apiToken !== undefined))
  })

  app.addHook('onRequest', async (req, reply) => {
    const path = req.url.split('?')[0] as string
    // Cross-site form posts are refused (the console has no reason to accept them): a browser
    // says where a request comes from in Sec-Fetch-Site, or else in Origin; curl sends neither.
    if (req.method === 'POST') {
      const site = req.headers['sec-fetch-site']
      const origin = req.headers.origin
      let crossSite: boolean
      if (typeof site === 'string') crossSite = site !== 'same-origin' && site !== 'none'
      else if (typeof origin === 'string') {
        try { crossSite = new URL(origin).host !== req.headers.host } catch { crossSite = true } // 'null' included
      } else crossSite = false
      if (crossSite) return await send(reply, 403, errorPage(403, 'CROSS_SITE', 'cross-site form posts are refused', false))
    }
    if (expected === undefined || path === '/admin/login') return
    const query = req.query as Record<string, unknown>
    if (req.method === 'GET' && typeof query.token === 'string') {
      if (tokenOk(query.token)) {
        // Once: keep it in the cookie, drop it from the address bar and the history.
        const url = new URL(req.url, 'http://x')
        url.searchParams.delete('token')
        return await reply.code(303).header('set-cookie', cookieHeader(req, query.token, 8 * 3600)).header('location', url.pathname + url.search).send()
      }
      return await send(reply, 401, loginPage(safeNext(path), 'wrong token'))
    }
    const header = req.headers.authorization
    if (typeof header === 'string' && /^bearer /i.test(header) && tokenOk(header.slice(7).trim())) return
    if (tokenOk(cookies(req.headers.cookie)[TOKEN_COOKIE])) return
    if (req.method === 'GET') return await reply.code(303).header('location', `/admin/login?next=${encodeURIComponent(req.url)}`).send()
    return await send(reply, 401, errorPage(401, 'UNAUTHORIZED', 'log in first', false))
  })

  // ---- login --------------------------------------------------------------------------------

  app.get('/admin/login', async (req, reply) => {
    if (expected === undefined) return await reply.code(303).header('location', '/admin').send()
    return send(reply, 200, loginPage(safeNext((req.query as Record<string, unknown>).next)))
  })

  app.post('/admin/login', async (req, reply) => {
    const body = (req.body ?? {}) as Record<string, unknown>
    const next = safeNext(body.next)
    if (expected === undefined) return await reply.code(303).header('location', next).send()
    if (typeof body.token !== 'string' || !tokenOk(body.token)) return send(reply, 401, loginPage(next, 'wrong token'))
    return await reply.code(303).header('set-cookie', cookieHeader(req, body.token, 8 * 3600)).header('location', next).send()
  })

  app.post('/admin/logout', async (req, reply) => {
    return await reply.code(303).header('set-cookie', cookieHeader(req, '', 0)).header('location', '/admin/login').send()
  })

  // ---- lists --------------------------------------------------------------------------------

  const views: Array<[string, View]> = [
    ['/admin', 'all'],
    ['/admin/in-doubt', 'in-doubt'],
    ['/admin/needs-attention', 'needs-attention'],
    ['/admin/heuristics', 'heuristic'],
    ['/admin/unfinished', 'unfinished']
  ]
  for (const [path, view] of views) {
    app.get(path, async (req, reply) => {
      const { filter, raw } = parseFilter(view, req.query as Record<string, unknown>)
      const c = ctx()
      let items = listTransactions(log, filter, c.now)
      // A listed transaction whose commit decision is not yet synced: shown once it is (the
      // filter matched its written row); the counters count such decisions as not taken.
      const unsynced = engine.decisionsSynced(items.map(tx => tx.id))
      if (unsynced !== undefined) {
        await unsynced
        items = items.map(tx => log.view(tx.id) ?? tx)
      }
      return send(reply, 200, listPage(c, filter, raw, counters(log), items))
    })
  }

  // ---- one transaction ----------------------------------------------------------------------

  function renderDetail (reply: FastifyReply, id: string, status: number, notice?: { ok: boolean, text: string }): FastifyReply {
    if (!txIdRegExp.test(id)) return send(reply, 400, errorPage(400, 'INVALID_ID', `"${id.slice(0, 128)}" is not a transaction id`, apiToken !== undefined))
    const tx = log.view(id)
    if (tx === undefined) return send(reply, 404, errorPage(404, 'TX_NOT_FOUND', `transaction ${id} not found`, apiToken !== undefined))
    return send(reply, status, detailPage(ctx(), {
      tx,
      timeline: timeline(log, tx),
      attention: log.attention(id),
      outbox: log.outboxFor(id),
      audit: log.operator.audit(id),
      ...(notice !== undefined ? { notice } : {})
    }))
  }

  const NOTICES: Record<string, string> = {
    retry: 'Retry sent: the decision is on its way to every pending or heuristic participant.',
    resolve: 'Marked resolved.'
  }

  app.get<{ Params: { id: string }, Querystring: { done?: string } }>('/admin/tx/:id', async (req, reply) => {
    // Its timeline and outbox rows are written with a commit decision: shown once it is synced.
    const unsynced = engine.decisionSynced(req.params.id)
    if (unsynced !== undefined) await unsynced
    const done = req.query.done
    return renderDetail(reply, req.params.id, 200, done !== undefined && NOTICES[done] !== undefined ? { ok: true, text: NOTICES[done] } : undefined)
  })

  function actorOf (body: Record<string, unknown>): string {
    const name = typeof body.operator === 'string' ? body.operator.trim().replace(/[^\x20-\x7e]/g, '').slice(0, 64) : ''
    return name === '' ? 'console' : `console:${name}`
  }

  for (const action of ['retry', 'resolve'] as const) {
    app.post<{ Params: { id: string } }>(`/admin/tx/:id/${action}`, async (req, reply) => {
      const id = req.params.id
      const body = (req.body ?? {}) as Record<string, unknown>
      // Every answer below renders the detail page: after a commit decision's sync (see GET).
      const unsynced = engine.decisionSynced(id)
      if (unsynced !== undefined) await unsynced
      let reason = ''
      if (action === 'resolve') {
        reason = typeof body.reason === 'string' ? body.reason.trim() : ''
        if (reason === '' || reason.length > 2000) return renderDetail(reply, id, 400, { ok: false, text: 'A reason (1 to 2000 characters) is required to resolve.' })
      }
      try {
        await runOperatorAction(engine, id, action === 'retry' ? { type: 'retry' } : { type: 'resolve', reason }, actorOf(body))
      } catch (err) {
        const e = err as FastifyError
        if (e.statusCode !== undefined && e.statusCode < 500) {
          return renderDetail(reply, id, e.statusCode, { ok: false, text: `${e.code}: ${e.message}` })
        }
        throw err
      }
      // Post/redirect/get: a reload does not repeat the action.
      return await reply.code(303).header('location', `/admin/tx/${encodeURIComponent(id)}?done=${action}`).send()
    })
  }

  // A favicon request is not worth a 404 in the log.
  app.get('/admin/favicon.ico', async (_req, reply) => await reply.code(204).send())
}
