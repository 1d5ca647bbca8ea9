/** The console's pages: pure functions from data to HTML (every value escaped by `html`). */
import type { Transaction } from '../core/machine.js'
import { decisionOf, isDecided } from '../core/machine.js'
import type { AttentionEntry, AuditEntry, OutboxRow } from '../log/log-store.js'
import { html, layout, qs, iso, ago, type Html } from './html.js'
import type { Counters, ListFilter, TimelineEntry, View } from './queries.js'
import { JSON_LIMITS } from '../schemas.js'
import { metadataOmitted } from '../routes.js'

const VIEW_TITLES: Record<View, string> = {
  all: 'Transactions',
  'in-doubt': 'In doubt (preparing: votes asked, no decision yet)',
  'needs-attention': 'Needs attention',
  heuristic: 'Heuristic outcomes',
  unfinished: 'Phase 2 unfinished (decided, not every participant acked)'
}

const VIEW_PATHS: Record<View, string> = {
  all: '/admin',
  'in-doubt': '/admin/in-doubt',
  'needs-attention': '/admin/needs-attention',
  heuristic: '/admin/heuristics',
  unfinished: '/admin/unfinished'
}

export const AGE_OPTIONS = ['', '10s', '1m', '5m', '1h', '1d', '7d']

export interface PageContext {
  loggedIn: boolean
  coordinatorId: string
  now: number
}

const stateBadge = (state: string): Html => html`<span class="badge s-${state}">${state}</span>`
const ackBadge = (ack: string): Html => html`<span class="badge a-${ack}">${ack}</span>`

function canRetry (tx: Transaction): boolean {
  return isDecided(tx) && tx.participants.some(p => p.ack === 'pending' || p.ack === 'heuristic')
}

function canResolve (tx: Transaction): boolean {
  return isDecided(tx) && (tx.needsAttention || tx.participants.some(p => p.ack === 'pending' || p.ack === 'heuristic'))
}

function txLink (id: string): Html {
  return html`<a class="mono" href="/admin/tx/${encodeURIComponent(id)}">${id}</a>`
}

function counterBox (label: string, n: number, href: string, alert = false, sub?: string, atLeast = false): Html {
  return html`<a class="counter${alert && n > 0 ? ' alert' : ''}" href="${href}" data-counter="${label}"><b>${n}${atLeast ? '+' : ''}</b><span>${label}${sub !== undefined ? html`<br>${sub}` : ''}</span></a>`
}

export function listPage (ctx: PageContext, filter: ListFilter, raw: Record<string, string>, c: Counters, items: Transaction[]): string {
  const path = VIEW_PATHS[filter.view]
  const last = items[items.length - 1]
  const nextLink = items.length === filter.limit && last !== undefined
    ? path + qs({ ...raw, before: `${last.createdAt}.${last.id}` })
    : undefined
  const body = html`
<div class="counters">
  ${counterBox('total', c.total, '/admin', false, undefined, c.capped.committed === true || c.capped.aborted === true)}
  ${counterBox('active', c.byState.active, '/admin' + qs({ state: 'active' }))}
  ${counterBox('in doubt', c.inDoubt, '/admin/in-doubt', true, c.oldestInDoubtAt === null ? undefined : `oldest ${ago(ctx.now - c.oldestInDoubtAt)}`)}
  ${counterBox('committed', c.byState.committed, '/admin' + qs({ state: 'committed' }), false, undefined, c.capped.committed)}
  ${counterBox('aborted', c.byState.aborted, '/admin' + qs({ state: 'aborted' }), false, undefined, c.capped.aborted)}
  ${counterBox('phase 2 unfinished', c.unfinished, '/admin/unfinished')}
  ${counterBox('needs attention', c.needsAttention, '/admin/needs-attention', true)}
  ${counterBox('heuristics', c.heuristics, '/admin/heuristics', true)}
</div>
<h1>${VIEW_TITLES[filter.view]}</h1>
<form class="filters" method="get" action="${path}">
  <label>State<select name="state">
    ${['', 'active', 'preparing', 'committed', 'aborted'].map(s => html`<option value="${s}"${filter.state === s ? html` selected` : ''}>${s === '' ? 'any' : s}</option>`)}
  </select></label>
  <label>Participant<input name="participant" value="${filter.participant ?? ''}" placeholder="name" size="14"></label>
  <label>Older than<select name="age">
    ${AGE_OPTIONS.map(a => html`<option value="${a}"${(raw.age ?? '') === a ? html` selected` : ''}>${a === '' ? 'any age' : a}</option>`)}
  </select></label>
  <label>Limit<input name="limit" value="${filter.limit}" size="4"></label>
  <button type="submit" class="secondary">Filter</button>
  <a href="${path}">reset</a>
</form>
${items.length === 0
    ? html`<p class="muted" id="empty">No transactions match.</p>`
    : html`<table id="transactions"><thead><tr><th>id</th><th>state</th><th>reason</th><th>age</th><th>participants</th><th>phase 2</th><th>attention</th></tr></thead><tbody>
${items.map(tx => html`<tr data-id="${tx.id}" data-state="${tx.state}">
  <td>${txLink(tx.id)}</td>
  <td>${stateBadge(tx.state)}</td>
  <td>${tx.reason ?? ''}</td>
  <td title="${iso(tx.createdAt)}">${ago(ctx.now - tx.createdAt)}</td>
  <td>${tx.participants.map((p, i) => html`${i > 0 ? ', ' : ''}${p.name}${p.vote !== null ? html` <span class="muted">(${p.vote})</span>` : ''}`)}</td>
  <td>${tx.completedAt !== null ? html`<span class="muted">completed</span>` : tx.participants.filter(p => p.ack !== 'none' && p.ack !== 'not-needed').map(p => html`${ackBadge(p.ack)} `)}</td>
  <td>${tx.needsAttention ? html`<span class="badge attention">needs attention</span>` : ''}</td>
</tr>`)}
</tbody></table>`}
${nextLink !== undefined ? html`<p class="pager"><a href="${nextLink}">older →</a></p>` : ''}`
  return layout({ title: VIEW_TITLES[filter.view], here: filter.view, loggedIn: ctx.loggedIn, coordinatorId: ctx.coordinatorId }, body)
}

export interface DetailData {
  tx: Transaction
  timeline: TimelineEntry[]
  attention: AttentionEntry[]
  outbox: OutboxRow[]
  audit: AuditEntry[]
  /** Banner after an action: ok or error text. */
  notice?: { ok: boolean, text: string }
}

function json (value: unknown): string {
  if (value === null || value === undefined) return ''
  // Too deep to stringify safely (stored before the JSON limits existed): the page still renders.
  if (metadataOmitted(value)) return `(omitted: nests deeper than ${JSON_LIMITS.maxDepth} levels)`
  return JSON.stringify(value, null, 2)
}

export function detailPage (ctx: PageContext, d: DetailData): string {
  const { tx } = d
  const decision = decisionOf(tx)
  const retry = canRetry(tx)
  const resolve = canResolve(tx)
  const begin = tx.createdAt
  const body = html`
<p class="muted"><a href="/admin">← transactions</a></p>
<h1><span class="mono" id="tx-id">${tx.id}</span> ${stateBadge(tx.state)} ${tx.needsAttention ? html`<span class="badge attention" id="needs-attention">needs attention</span>` : ''}</h1>
${d.notice !== undefined ? html`<div class="banner ${d.notice.ok ? 'ok' : 'err'}" id="notice" role="status">${d.notice.text}</div>` : ''}
<dl class="facts">
  <dt>decision</dt><dd id="decision">${decision ?? 'none yet'}${tx.reason !== null ? html` <span class="muted">(${tx.reason})</span>` : ''}</dd>
  <dt>begun</dt><dd>${iso(tx.createdAt)} <span class="muted">(${ago(ctx.now - tx.createdAt)} ago)</span></dd>
  <dt>expires</dt><dd>${iso(tx.expiresAt)}</dd>
  <dt>decided</dt><dd>${iso(tx.decidedAt) || '—'}</dd>
  <dt>completed</dt><dd id="completed">${iso(tx.completedAt) || '—'}</dd>
  <dt>one-phase</dt><dd>${tx.onePhase ? 'yes' : 'no'}</dd>
  <dt>messages</dt><dd>${tx.messageCount}</dd>
  ${tx.metadata !== null && tx.metadata !== undefined ? html`<dt>metadata</dt><dd><pre class="mono">${json(tx.metadata)}</pre></dd>` : ''}
</dl>

<h2>Actions</h2>
<div class="actions" id="actions">
  ${retry
    ? html`<form method="post" action="/admin/tx/${encodeURIComponent(tx.id)}/retry" id="retry-form">
      <label>Operator (optional)<input name="operator" size="12" maxlength="64"></label>
      <button type="submit" id="retry">Retry now</button>
      <span class="muted">sends the ${decision} decision now to every pending or heuristic participant</span></form>`
    : ''}
  ${resolve
    ? html`<form method="post" action="/admin/tx/${encodeURIComponent(tx.id)}/resolve" id="resolve-form">
      <label>Reason (required, audited)<input name="reason" required maxlength="2000" size="40" placeholder="e.g. refunded by hand, ticket 42"></label>
      <label>Operator (optional)<input name="operator" size="12" maxlength="64"></label>
      <button type="submit" class="danger" id="resolve">Mark resolved</button></form>`
    : ''}
  ${!retry && !resolve ? html`<span class="muted">No action applies: ${isDecided(tx) ? 'every participant has its decision and nothing needs attention.' : 'no decision yet (an undecided transaction aborts on its own at expiry).'}</span>` : ''}
</div>

<h2>Participants</h2>
<table id="participants"><thead><tr><th>name</th><th>url</th><th>vote</th><th>phase 2</th><th>attempts</th><th>last error</th><th>next attempt</th></tr></thead><tbody>
${tx.participants.map(p => html`<tr data-participant="${p.name}" data-ack="${p.ack}">
  <td>${p.name}${p.onePhase ? html` <span class="muted">(one-phase)</span>` : ''}</td>
  <td class="mono wrap">${p.url}</td>
  <td>${p.vote ?? '—'}${p.voteReason !== null ? html` <span class="muted">${p.voteReason}</span>` : ''}</td>
  <td>${ackBadge(p.ack)}</td>
  <td>${p.attempts}</td>
  <td class="wrap">${p.lastError ?? ''}</td>
  <td>${iso(p.nextAttemptAt)}</td>
</tr>`)}
</tbody></table>

<h2>Timeline</h2>
<table class="timeline" id="timeline"><thead><tr><th>time</th><th>+ms</th><th>event</th><th>participant</th><th>detail</th></tr></thead><tbody>
${d.timeline.map(e => html`<tr data-kind="${e.kind}">
  <td class="mono">${iso(e.at)}</td>
  <td class="mono">${e.at - begin}</td>
  <td><span class="badge">${e.kind}</span></td>
  <td>${e.participant ?? ''}</td>
  <td class="wrap">${e.detail}</td>
</tr>`)}
</tbody></table>

${d.attention.length > 0
    ? html`<h2>Attention</h2><table id="attention"><thead><tr><th>at</th><th>participant</th><th>kind</th><th>detail</th><th>resolved</th><th>resolution</th></tr></thead><tbody>
${d.attention.map(a => html`<tr><td class="mono">${iso(a.createdAt)}</td><td>${a.participant ?? ''}</td><td>${a.kind}</td><td class="wrap">${a.detail}</td><td class="mono">${iso(a.resolvedAt)}</td><td class="wrap">${a.resolution ?? ''}</td></tr>`)}
</tbody></table>`
    : ''}

${d.outbox.length > 0
    ? html`<h2>Messages and notices (outbox)</h2><table id="outbox"><thead><tr><th>kind</th><th>exchange / routing key</th><th>queued</th><th>published</th><th>attempts</th><th>last error</th><th>parked</th></tr></thead><tbody>
${d.outbox.map(o => html`<tr><td>${o.kind}</td><td class="mono">${o.exchange} / ${o.routingKey}</td><td class="mono">${iso(o.createdAt)}</td><td class="mono">${iso(o.publishedAt)}</td><td>${o.attempts}</td><td class="wrap">${o.lastError ?? ''}</td><td class="mono">${iso(o.deadAt)}</td></tr>`)}
</tbody></table>`
    : ''}

${d.audit.length > 0
    ? html`<h2>Audit</h2><table id="audit"><thead><tr><th>at</th><th>action</th><th>actor</th><th>reason</th></tr></thead><tbody>
${d.audit.map(a => html`<tr><td class="mono">${iso(a.at)}</td><td>${a.action}</td><td>${a.actor}</td><td class="wrap">${a.reason ?? ''}</td></tr>`)}
</tbody></table>`
    : ''}`
  return layout({ title: tx.id, loggedIn: ctx.loggedIn, coordinatorId: ctx.coordinatorId }, body)
}

export function loginPage (next: string, error?: string): string {
  const body = html`<h1>Log in</h1>
${error !== undefined ? html`<div class="banner err" id="notice">${error}</div>` : ''}
<form method="post" action="/admin/login" class="filters">
  <input type="hidden" name="next" value="${next}">
  <label>API token (TWOPC_API_TOKEN)<input type="password" name="token" required autocomplete="current-password" size="40" autofocus></label>
  <button type="submit">Log in</button>
</form>
<p class="muted">The token is kept in an HttpOnly, SameSite=Strict cookie (<code>twopc_token</code>) scoped to /admin.</p>`
  return layout({ title: 'Log in' }, body)
}

export function errorPage (status: number, code: string, message: string, loggedIn: boolean): string {
  return layout({ title: `${status} ${code}`, loggedIn }, html`<h1>${status} ${code}</h1><div class="banner err" id="notice">${message}</div><p><a href="/admin">← transactions</a></p>`)
}
