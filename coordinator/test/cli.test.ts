/**
 * The `twopc` CLI as an operator runs it: `node coordinator/dist/cli.js` (build first with
 * `npx tsc -b`) in a child process against a real coordinator and real participants. Tables for
 * people, --json for scripts, exit codes (0 ok, 1 API refusal or unreachable, 2 usage).
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { startCoordinator, startParticipant, waitFor } from './support/participant.js'

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url))
const TOKEN = 'cli-test-token-0123456789'

interface Run { code: number, stdout: string, stderr: string }

/** Runs the CLI asynchronously (the coordinator lives in this process's event loop). */
async function twopc (args: string[], env: Record<string, string> = {}): Promise<Run> {
  return await new Promise(resolve => {
    execFile(process.execPath, [CLI, ...args], {
      env: { PATH: process.env.PATH ?? '', ...env },
      timeout: 30_000
    }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

// Each run is a fresh Node process: give a loaded machine room (the limit still bounds it).
t.setTimeout(360_000)

t.before(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npx tsc -b\` first`)
})

t.test('status, list, retry and resolve against a real coordinator', async t => {
  const c = await startCoordinator(t, { apiToken: TOKEN, retryBaseMs: 600_000, retryMaxMs: 600_000 })
  const env = { TWOPC_URL: c.url, TWOPC_API_TOKEN: TOKEN }
  const good = await startParticipant(t)
  const flaky = await startParticipant(t, { phase2Failure: { status: 503, times: Infinity } })
  const committed = await c.api.post<{ id: string, state: string }>('/v1/transactions', {
    participants: [{ name: 'inventory', url: good.url }, { name: 'payment', url: flaky.url }], commit: true
  })
  t.equal(committed.body.state, 'committed')
  const id = committed.body.id
  const aborted = await c.api.post<{ id: string }>('/v1/transactions', {})
  await c.api.post(`/v1/transactions/${aborted.body.id}/abort`)
  await waitFor(async () => (await c.api.get(`/v1/transactions/${id}`)).body.participants[1].attempts >= 1, 5000, 'payment failed once')

  // Read-only runs in parallel (each is a fresh Node process).
  const [list, json, status] = await Promise.all([
    twopc(['list'], env),
    twopc(['list', '--json', '--state', 'aborted', '--limit', '5'], env),
    twopc(['status', id], env)
  ])
  // list: a table for people
  t.equal(list.code, 0, list.stderr)
  const lines = list.stdout.trimEnd().split('\n')
  t.match(lines[0], /^id\s+state\s+reason\s+age\s+participants\s+acks\s+attention$/)
  t.match(lines[1], /^-+\s+-+/)
  t.ok(lines.some(l => l.startsWith(id) && /committed/.test(l) && /payment:pending/.test(l)), 'the committed one, payment pending')
  t.ok(lines.some(l => l.startsWith(aborted.body.id) && /aborted\s+requested/.test(l)), 'the aborted one with its reason')

  // list --json --state: for scripts
  t.equal(json.code, 0, json.stderr)
  const page = JSON.parse(json.stdout) as { items: Array<{ id: string, state: string }>, nextCursor: string | null }
  t.same(page.items.map(i => i.id), [aborted.body.id])
  t.equal(page.items[0]?.state, 'aborted')

  // status: facts and the participants table
  t.equal(status.code, 0, status.stderr)
  t.match(status.stdout, new RegExp(`^id:\\s+${id.replace('.', '\\.')}$`, 'm'))
  t.match(status.stdout, /^decision:\s+commit$/m)
  t.match(status.stdout, /^payment\s+yes\s+pending\s+1\s+commit answered 503/m)

  // retry: the participant recovers; the retry delivers it (the automatic one is 10 minutes away)
  flaky.behaviour.phase2Failure = undefined
  const retry = await twopc(['retry', id, '--actor', 'carol'], env)
  t.equal(retry.code, 0, retry.stderr)
  t.match(retry.stdout, new RegExp(`^retry sent for ${id.replace('.', '\\.')} \\(commit\\): payment$`, 'm'))
  await waitFor(async () => (await c.api.get(`/v1/transactions/${id}`)).body.completed === true, 5000, 'completed after the CLI retry')
  t.equal(flaky.state(id), 'committed')

  // a second retry: the API's code in the message, exit 1, JSON error for scripts
  const again = await twopc(['retry', id, '--json'], env)
  t.equal(again.code, 1)
  t.match(again.stderr, /^twopc: NOTHING_TO_RETRY: .* \(HTTP 409\)$/m)
  t.same(JSON.parse(again.stdout).error, { status: 409, code: 'NOTHING_TO_RETRY', message: JSON.parse(again.stdout).error.message })

  // status --json shows the audit entry of the retry
  const s2 = await twopc(['status', id, '--json'], env)
  t.equal(s2.code, 0)
  t.match(JSON.parse(s2.stdout), { id, completed: true, audit: [{ action: 'retry', actor: 'carol', reason: null }] })
})

t.test('resolve: needs a reason; resolves a heuristic; refusals exit 1 with the code', async t => {
  const c = await startCoordinator(t)
  const env = { TWOPC_URL: c.url }
  const p = await startParticipant(t, { phase2Failure: { status: 409, times: Infinity, body: { code: 'TX_ALREADY_ABORTED' } } })
  const res = await c.api.post<{ id: string }>('/v1/transactions', { participants: [{ name: 'payment', url: p.url }], commit: true })
  const id = res.body.id
  await waitFor(async () => (await c.api.get(`/v1/transactions/${id}`)).body.participants[0].ack === 'heuristic', 5000, 'heuristic')

  const [attention, noReason, notFound, badState] = await Promise.all([
    twopc(['list', '--needs-attention'], env),
    twopc(['resolve', id], env),
    twopc(['status', `${c.id}.${'0'.repeat(26)}`], env),
    twopc(['list', '--state', 'bogus'], env)
  ])
  t.equal(attention.code, 0)
  t.match(attention.stdout, new RegExp(`^${id.replace('.', '\\.')}\\s+committed.*payment:heuristic\\s+NEEDS ATTENTION$`, 'm'))

  t.equal(noReason.code, 2)
  t.match(noReason.stderr, /resolve needs --reason/)

  const ok = await twopc(['resolve', id, '--reason', 'refunded by hand', '--json'], env)
  t.equal(ok.code, 0, ok.stderr)
  const tx = JSON.parse(ok.stdout)
  t.match(tx, { id, state: 'committed', decision: 'commit', needsAttention: false, completed: true, participants: [{ name: 'payment', ack: 'resolved' }] })
  t.match(tx.audit, [{ action: 'resolve', reason: 'refunded by hand', actor: /^cli/ }])

  const twice = await twopc(['resolve', id, '--reason', 'again'], env)
  t.equal(twice.code, 1)
  t.match(twice.stderr, /NOTHING_TO_RESOLVE/)

  const empty = await twopc(['list', '--needs-attention'], env)
  t.equal(empty.stdout, 'no transactions\n')

  t.equal(notFound.code, 1)
  t.match(notFound.stderr, /^twopc: TX_NOT_FOUND: /)
  t.equal(badState.code, 1)
  t.match(badState.stderr, /VALIDATION_FAILED/)
})

t.test('auth, unreachable coordinator and usage errors', async t => {
  const c = await startCoordinator(t, { apiToken: TOKEN })
  const [noToken, flagToken] = await Promise.all([twopc(['list'], { TWOPC_URL: c.url }), twopc(['list', '--url', c.url, '--token', TOKEN])])
  t.equal(noToken.code, 1)
  t.match(noToken.stderr, /^twopc: UNAUTHORIZED: /)
  t.equal(flagToken.code, 0, flagToken.stderr)
  t.equal(flagToken.stdout, 'no transactions\n')

  // a port nobody listens on: close a coordinator and use its address
  const gone = await startCoordinator(t)
  await gone.close()
  const down = await twopc(['list', '--url', gone.url])
  t.equal(down.code, 1)
  t.match(down.stderr, /^twopc: ECONNREFUSED: cannot reach the coordinator/)

  const usage = await Promise.all([twopc([]), twopc(['frobnicate']), twopc(['status']), twopc(['list', '--bogus'])])
  t.same(usage.map(u => u.code), [2, 2, 2, 2])
  t.match(usage[1]?.stderr, /unknown command "frobnicate"/)
  const help = await twopc(['--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /^usage: twopc <command>/)
})
