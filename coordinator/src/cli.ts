#!/usr/bin/env node
/**
 * `twopc`: the operator CLI over the coordinator's HTTP API.
 *
 *   twopc status <id>
 *   twopc list [--state <state>] [--needs-attention] [--limit <n>]
 *   twopc retry <id>
 *   twopc resolve <id> --reason <text>
 *   twopc forget <id> --reason <text>
 *
 * Options: --url (env TWOPC_URL, default http://127.0.0.1:7070), --token (env TWOPC_API_TOKEN),
 * --json (the API's JSON, for scripts), --actor (audited; default cli:<user>).
 * Exit codes: 0 ok, 1 the API refused (the message carries its code) or could not be reached,
 * 2 usage error.
 */
import { parseArgs } from 'node:util'
import { userInfo } from 'node:os'
import { request } from 'undici'

const USAGE = `usage: twopc <command> [options]

commands:
  status <id>                     the whole record of a transaction
  list [--state S] [--needs-attention] [--limit N]
                                  transactions, newest first (S: active, preparing, committed, aborted)
  retry <id>                      send the decision now to pending or heuristic participants
  resolve <id> --reason TEXT      mark a needs-attention or heuristic transaction handled
  forget <id> --reason TEXT       drop the decision record kept for a pruned commit (it then
                                  answers a presumed abort): only once no participant can ask

options:
  --url URL        coordinator (env TWOPC_URL, default http://127.0.0.1:7070)
  --token TOKEN    API token (env TWOPC_API_TOKEN)
  --json           print the API's JSON instead of tables
  --actor NAME     who acts, written to the audit table (default cli:<user>)
  -h, --help       this text
`

class UsageError extends Error {}

export class ApiError extends Error {
  constructor (readonly status: number, readonly code: string, message: string) { super(message) }
}

interface Out { write: (s: string) => void }

interface ParticipantView {
  name: string
  url: string
  vote: string | null
  voteReason: string | null
  ack: string
  attempts: number
  lastError: string | null
  nextAttemptAt: string | null
}

interface TxView {
  id: string
  state: string
  decision: string | null
  reason: string | null
  createdAt: string
  decidedAt: string | null
  completedAt: string | null
  completed: boolean
  needsAttention: boolean
  participants: ParticipantView[]
  heuristics?: Array<{ participant: string | null, kind: string, detail: string, createdAt: string, resolvedAt: string | null, resolution: string | null }>
  outbox?: Array<{ kind: string, exchange: string, routingKey: string, publishedAt: string | null, attempts: number, lastError: string | null }>
  audit?: Array<{ action: string, reason: string | null, actor: string, at: string }>
}

/** A plain text table: a header row, a rule, the rows; cells cut at 60 characters. */
export function table (headers: string[], rows: string[][]): string {
  const cut = (s: string): string => (s.length > 60 ? s.slice(0, 59) + '…' : s).replace(/[\r\n\t]+/g, ' ')
  const cells = [headers, ...rows.map(r => r.map(cut))]
  const widths = headers.map((_, i) => Math.max(...cells.map(r => (r[i] ?? '').length)))
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i] as number)).join('  ').trimEnd()
  return [line(headers), widths.map(w => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n') + '\n'
}

function age (isoTime: string, now: number): string {
  const s = Math.max(0, Math.round((now - Date.parse(isoTime)) / 1000))
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m`
  if (s < 86400) return `${Math.floor(s / 3600)}h`
  return `${Math.floor(s / 86400)}d`
}

function describe (tx: TxView, now: number): string {
  const facts: Array<[string, string]> = [
    ['id', tx.id],
    ['state', tx.state + (tx.reason !== null ? ` (${tx.reason})` : '')],
    ['decision', tx.decision ?? 'none yet'],
    ['begun', `${tx.createdAt} (${age(tx.createdAt, now)} ago)`],
    ['decided', tx.decidedAt ?? '-'],
    ['completed', tx.completedAt ?? 'no'],
    ['needs attention', tx.needsAttention ? 'YES' : 'no']
  ]
  let out = facts.map(([k, v]) => `${(k + ':').padEnd(17)}${v}`).join('\n') + '\n'
  if (tx.participants.length > 0) {
    out += '\nparticipants\n' + table(['name', 'vote', 'ack', 'attempts', 'last error', 'next attempt', 'url'],
      tx.participants.map(p => [p.name, p.vote ?? '-', p.ack, String(p.attempts), p.lastError ?? '', p.nextAttemptAt ?? '', p.url]))
  }
  if (tx.heuristics !== undefined && tx.heuristics.length > 0) {
    out += '\nattention\n' + table(['at', 'participant', 'kind', 'detail', 'resolved', 'resolution'],
      tx.heuristics.map(h => [h.createdAt, h.participant ?? '', h.kind, h.detail, h.resolvedAt ?? '', h.resolution ?? '']))
  }
  if (tx.outbox !== undefined && tx.outbox.length > 0) {
    out += '\noutbox\n' + table(['kind', 'exchange', 'routing key', 'published', 'attempts', 'last error'],
      tx.outbox.map(o => [o.kind, o.exchange, o.routingKey, o.publishedAt ?? 'no', String(o.attempts), o.lastError ?? '']))
  }
  if (tx.audit !== undefined && tx.audit.length > 0) {
    out += '\naudit\n' + table(['at', 'action', 'actor', 'reason'], tx.audit.map(a => [a.at, a.action, a.actor, a.reason ?? '']))
  }
  return out
}

async function call (base: string, token: string | undefined, method: 'GET' | 'POST', path: string, body?: unknown, extra: Record<string, string> = {}): Promise<unknown> {
  const headers: Record<string, string> = { accept: 'application/json', ...extra }
  if (token !== undefined && token !== '') headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  let url: URL
  try {
    url = new URL(path, base)
  } catch {
    throw new UsageError(`--url ${base} is not a URL`)
  }
  const res = await request(url, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}), headersTimeout: 30_000, bodyTimeout: 30_000 })
  const text = await res.body.text() // always consumed
  let parsed: any
  try { parsed = JSON.parse(text) } catch { parsed = undefined }
  if (res.statusCode >= 400) {
    const code = typeof parsed?.code === 'string' ? parsed.code : `HTTP_${res.statusCode}`
    const message = typeof parsed?.message === 'string' ? parsed.message : text.slice(0, 200)
    throw new ApiError(res.statusCode, code, message)
  }
  if (parsed === undefined) throw new ApiError(res.statusCode, 'BAD_RESPONSE', `not JSON: ${text.slice(0, 200)}`)
  return parsed
}

/** Runs the CLI; returns the exit code. */
export async function main (argv: string[], env: NodeJS.ProcessEnv, stdout: Out, stderr: Out): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        url: { type: 'string' },
        token: { type: 'string' },
        json: { type: 'boolean', default: false },
        state: { type: 'string' },
        limit: { type: 'string' },
        'needs-attention': { type: 'boolean', default: false },
        reason: { type: 'string' },
        actor: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false }
      }
    })
  } catch (err) {
    stderr.write(`twopc: ${(err as Error).message}\n\n${USAGE}`)
    return 2
  }
  const { values, positionals } = parsed
  if (values.help === true) {
    stdout.write(USAGE)
    return 0
  }
  const base = values.url ?? env.TWOPC_URL ?? 'http://127.0.0.1:7070'
  const token = values.token ?? env.TWOPC_API_TOKEN
  const [command, ...rest] = positionals
  const now = Date.now()
  const print = (value: unknown, human: () => string): void => {
    stdout.write(values.json === true ? JSON.stringify(value, null, 2) + '\n' : human())
  }
  const needId = (): string => {
    if (rest.length !== 1) throw new UsageError(`${command ?? ''} takes exactly one transaction id`)
    return encodeURIComponent(rest[0] as string)
  }
  let actor = values.actor
  if (actor === undefined) {
    try { actor = `cli:${userInfo().username}` } catch { actor = 'cli' }
  }
  try {
    switch (command) {
      case 'status': {
        const tx = await call(base, token, 'GET', `/v1/transactions/${needId()}`) as TxView
        print(tx, () => describe(tx, now))
        return 0
      }
      case 'list': {
        if (rest.length > 0) throw new UsageError('list takes no positional arguments')
        const q = new URLSearchParams()
        if (values.state !== undefined) q.set('state', values.state)
        if (values.limit !== undefined) q.set('limit', values.limit)
        if (values['needs-attention'] === true) q.set('needsAttention', 'true')
        const page = await call(base, token, 'GET', `/v1/transactions${q.size > 0 ? '?' + q.toString() : ''}`) as { items: TxView[], nextCursor: string | null }
        print(page, () => page.items.length === 0
          ? 'no transactions\n'
          : table(['id', 'state', 'reason', 'age', 'participants', 'acks', 'attention'], page.items.map(tx => [
            tx.id, tx.state, tx.reason ?? '', age(tx.createdAt, now), tx.participants.map(p => p.name).join(','),
            tx.completed ? 'completed' : tx.participants.map(p => `${p.name}:${p.ack}`).join(','), tx.needsAttention ? 'NEEDS ATTENTION' : ''
          ])) + (page.nextCursor !== null ? '(more: use --limit or the API\'s cursor)\n' : ''))
        return 0
      }
      case 'retry': {
        const tx = await call(base, token, 'POST', `/v1/transactions/${needId()}/retry`, undefined, { 'x-twopc-actor': actor }) as TxView
        print(tx, () => `retry sent for ${tx.id} (${tx.decision ?? '?'}): ` +
          tx.participants.filter(p => p.ack === 'pending').map(p => p.name).join(', ') + '\n\n' + describe(tx, now))
        return 0
      }
      case 'resolve': {
        const id = needId()
        if (values.reason === undefined || values.reason.trim() === '') throw new UsageError('resolve needs --reason "<why it is handled>"')
        const tx = await call(base, token, 'POST', `/v1/transactions/${id}/resolve`, { reason: values.reason }, { 'x-twopc-actor': actor }) as TxView
        print(tx, () => `resolved ${tx.id}\n\n` + describe(tx, now))
        return 0
      }
      case 'forget': {
        const id = needId()
        if (values.reason === undefined || values.reason.trim() === '') throw new UsageError('forget needs --reason "<why no participant can still ask>"')
        const kept = await call(base, token, 'POST', `/v1/transactions/${id}/forget`, { reason: values.reason }, { 'x-twopc-actor': actor }) as
          { id: string, decision: string, decidedAt: string, prunedAt: string, forgottenAt: string }
        print(kept, () => `forgot the decision record of ${kept.id} (${kept.decision}, decided ${kept.decidedAt}, pruned ${kept.prunedAt}): ` +
          'its decision endpoint now answers a presumed abort\n')
        return 0
      }
      case undefined:
        throw new UsageError('no command')
      default:
        throw new UsageError(`unknown command "${command}"`)
    }
  } catch (err) {
    if (err instanceof UsageError) {
      stderr.write(`twopc: ${err.message}\n\n${USAGE}`)
      return 2
    }
    if (err instanceof ApiError) {
      if (values.json === true) stdout.write(JSON.stringify({ error: { status: err.status, code: err.code, message: err.message } }) + '\n')
      stderr.write(`twopc: ${err.code}: ${err.message} (HTTP ${err.status})\n`)
      return 1
    }
    const e = err as NodeJS.ErrnoException
    const code = e.code ?? 'ERROR'
    stderr.write(`twopc: ${code}: cannot reach the coordinator at ${base}: ${e.message}\n`)
    return 1
  }
}

process.exitCode = await main(process.argv.slice(2), process.env, process.stdout, process.stderr)
