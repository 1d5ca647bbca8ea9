/**
 * Server-side HTML for the admin console: a tagged template that escapes every interpolated
 * value unless it is already `Html` (built by this same template). Nothing from the log or the
 * request reaches a page unescaped.
 */
export class Html {
  constructor (readonly value: string) {}
  toString (): string { return this.value }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' }

function escapeHtml (text: string): string {
  return text.replace(/[&<>"'`]/g, c => ESCAPES[c] as string)
}

type Value = Html | string | number | boolean | null | undefined | Value[]

function render (v: Value): string {
  if (v === null || v === undefined || v === false) return ''
  if (v instanceof Html) return v.value
  if (Array.isArray(v)) return v.map(render).join('')
  return escapeHtml(String(v))
}

/** `html\`<p>${text}</p>\``: every `${}` is escaped unless it is Html (or an array of Html). */
export function html (strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0] as string
  values.forEach((v, i) => { out += render(v) + (strings[i + 1] as string) })
  return new Html(out)
}

/** A query string from defined values (for links). */
export function qs (params: Record<string, string | number | undefined | null>): string {
  const sp = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') sp.set(k, String(v))
  const s = sp.toString()
  return s === '' ? '' : `?${s}`
}

export const iso = (ms: number | null | undefined): string => (ms === null || ms === undefined ? '' : new Date(ms).toISOString())

/** `3 s`, `5 min`, `2 h`, `4 d`. */
export function ago (ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000))
  if (s < 60) return `${s} s`
  if (s < 3600) return `${Math.floor(s / 60)} min`
  if (s < 86400) return `${Math.floor(s / 3600)} h`
  return `${Math.floor(s / 86400)} d`
}

const STYLE = `
:root { --fg: #1b1f24; --muted: #5b6470; --line: #d8dde3; --bg: #f6f8fa; --ok: #1a7f37; --bad: #b42318; --warn: #9a6700; --info: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: #fff; }
header { display: flex; align-items: center; gap: 24px; padding: 10px 24px; background: #1b1f24; color: #fff; }
header a { color: #d0d7de; text-decoration: none; }
header a.here, header a:hover { color: #fff; }
header .brand { font-weight: 700; color: #fff; }
header nav { display: flex; gap: 16px; flex: 1; }
header form { margin: 0; }
main { padding: 16px 24px 40px; max-width: 1400px; }
h1 { font-size: 20px; margin: 8px 0 12px; }
h1 .mono { font-size: 17px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; white-space: nowrap; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
td.wrap { word-break: break-word; max-width: 520px; }
a { color: var(--info); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: #eaeef2; color: var(--fg); white-space: nowrap; }
.s-committed, .a-acked { background: #dafbe1; color: var(--ok); }
.s-aborted { background: #ffebe9; color: var(--bad); }
.s-preparing, .a-pending { background: #fff8c5; color: var(--warn); }
.s-active { background: #ddf4ff; color: var(--info); }
.a-heuristic, .attention { background: #ffebe9; color: var(--bad); }
.a-resolved { background: #eaeef2; color: var(--muted); }
.counters { display: flex; flex-wrap: wrap; gap: 10px; margin: 4px 0 16px; }
.counter { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; text-decoration: none; color: var(--fg); }
.counter b { display: block; font-size: 20px; }
.counter span { color: var(--muted); font-size: 12px; }
.counter.alert b { color: var(--bad); }
form.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: end; margin-bottom: 12px; padding: 10px; background: var(--bg); border-radius: 6px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
input, select, textarea, button { font: inherit; }
input, select, textarea { padding: 4px 6px; border: 1px solid var(--line); border-radius: 4px; }
button { padding: 5px 12px; border-radius: 6px; border: 1px solid #1f883d; background: #1f883d; color: #fff; cursor: pointer; font-weight: 600; }
button.secondary { background: #fff; color: var(--fg); border-color: var(--line); }
button.danger { background: #cf222e; border-color: #cf222e; }
.muted { color: var(--muted); }
.banner { padding: 8px 12px; border-radius: 6px; margin: 8px 0 12px; }
.banner.ok { background: #dafbe1; }
.banner.err { background: #ffebe9; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.actions { display: flex; flex-wrap: wrap; gap: 16px; align-items: start; padding: 12px; border: 1px solid var(--line); border-radius: 6px; }
.actions form { display: flex; gap: 8px; align-items: end; flex-wrap: wrap; }
.actions label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); gap: 2px; }
.timeline td:first-child { white-space: nowrap; }
pre { background: var(--bg); padding: 8px; border-radius: 6px; overflow: auto; margin: 0; }
.pager { margin-top: 10px; }
`

export interface LayoutOptions {
  title: string
  /** Which nav entry is current. */
  here?: string
  /** Show the log-out button (the console uses a token). */
  loggedIn?: boolean
  coordinatorId?: string
}

export function layout (opts: LayoutOptions, body: Html): string {
  const nav: Array<[string, string, string]> = [
    ['all', '/admin', 'Transactions'],
    ['in-doubt', '/admin/in-doubt', 'In doubt'],
    ['needs-attention', '/admin/needs-attention', 'Needs attention'],
    ['heuristic', '/admin/heuristics', 'Heuristics'],
    ['unfinished', '/admin/unfinished', 'Phase 2 unfinished']
  ]
  return '<!doctype html>\n' + html`<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${opts.title} · twopc admin</title>
<style>${new Html(STYLE)}</style></head>
<body><header><a class="brand" href="/admin">twopc admin</a>
<nav>${nav.map(([key, href, label]) => html`<a href="${href}" class="${opts.here === key ? 'here' : ''}">${label}</a>`)}</nav>
${opts.coordinatorId !== undefined ? html`<span class="muted mono">coordinator ${opts.coordinatorId}</span>` : ''}
${opts.loggedIn === true ? html`<form method="post" action="/admin/logout"><button class="secondary" type="submit">Log out</button></form>` : ''}
</header><main>${body}</main></body></html>`.value
}
