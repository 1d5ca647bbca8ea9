/**
 * The conformance checks: what any participant (whatever its language) must answer on
 * `POST {base}/prepare|commit|abort` (docs/protocol.md, "Participant callbacks"; protocol/src/wire.ts),
 * and on the optional `POST {base}/batch` when its prepare answers advertise `batch`.
 *
 * Every check works on fresh random transaction ids and only over HTTP. Checks are MUST (the
 * coordinator's safety or the contract depends on it: a failure makes the run fail) or SHOULD
 * (the documented answer, where a different answer is still safe: reported as a warning).
 * Checks that need a transaction the participant votes `yes` for are skipped, saying so, when it
 * votes otherwise for `--payload`; signature checks are skipped without `--secret`.
 *
 * The catalogue is in checks/, by group: the callbacks (phase 1 and 2, unknown transactions,
 * malformed requests), signatures, the batch route; the checks over every answer of the run are
 * here, with the runner.
 */
import { ParticipantHttp, TransportError, show, type Answer, type Route } from './http.js'
import { BATCH_CHECKS } from './checks/batch.js'
import { CALLBACK_CHECKS } from './checks/callbacks.js'
import { Context, Fail, Skip, SECRET_SKIP, fail, is2xx, isObject, yesSkip, type CheckDef, type CheckResult, type ConformanceOptions, type ConformanceReport, type Result } from './checks/context.js'
import { SIGNATURE_CHECKS } from './checks/signatures.js'

export { Context } from './checks/context.js'
export type { CheckDef, CheckResult, ConformanceOptions, ConformanceReport, Level, Result } from './checks/context.js'

/** Checks over every answer of the run (they come last). */
const ANSWER_CHECKS: CheckDef[] = [
  // --- every answer of the run -----------------------------------------------------------------
  {
    id: 'answers-json-content-type',
    level: 'SHOULD',
    description: 'every answer of the run is JSON with content-type application/json',
    async run (c) {
      const bad = c.http.answers.filter(a => !a.isJson || !/^application\/json\b/i.test(a.contentType ?? ''))
      if (bad.length > 0) fail(`${bad.length} of ${c.http.answers.length} answers were not: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)} (content-type ${bad[0]?.contentType ?? 'none'})`)
      return `${c.http.answers.length} answers`
    }
  },
  {
    id: 'success-answers-documented-fields',
    level: 'SHOULD',
    description: '2xx answers carry only the documented fields ({vote, reason?, batch?}, {ok:true} or {results})',
    async run (c) {
      const allowed: Record<Route, string[]> = { prepare: ['vote', 'reason', 'batch'], commit: ['ok'], abort: ['ok'], batch: ['results'] }
      const ok = c.http.answers.filter(is2xx)
      const bad = ok.filter(a => !isObject(a.json) || Object.keys(a.json).some(k => !allowed[a.route].includes(k)))
      if (bad.length > 0) fail(`${bad.length} of ${ok.length} had other fields: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)}`)
      return `${ok.length} answers`
    }
  },
  {
    id: 'error-answers-documented-shape',
    level: 'SHOULD',
    description: 'error answers are {statusCode, code, error, message} with statusCode = the HTTP status',
    async run (c) {
      const errors = c.http.answers.filter(a => a.status >= 400)
      const bad = errors.filter(a => {
        if (!isObject(a.json)) return true
        const { statusCode, code, error, message } = a.json
        return statusCode !== a.status || typeof code !== 'string' || typeof error !== 'string' || typeof message !== 'string'
      })
      if (bad.length > 0) fail(`${bad.length} of ${errors.length} were not: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)}`)
      return `${errors.length} error answers`
    }
  },
  {
    id: 'no-server-errors',
    level: 'SHOULD',
    description: 'no answer of the run was a 5xx',
    async run (c) {
      const bad = c.http.answers.filter(a => a.status >= 500)
      if (bad.length > 0) fail(`${bad.length} of ${c.http.answers.length}: first ${bad[0]?.route} ${show(bad[0] as Answer, 80)}`)
      return `${c.http.answers.length} answers`
    }
  }
]

/** The catalogue, in the order the checks run. */
export const CHECKS: CheckDef[] = [...CALLBACK_CHECKS, ...SIGNATURE_CHECKS, ...BATCH_CHECKS, ...ANSWER_CHECKS]

/** Runs every check in order, then aborts whatever the run left prepared. */
export async function runConformance (options: ConformanceOptions): Promise<ConformanceReport> {
  const http = new ParticipantHttp({ baseUrl: options.url.replace(/\/+$/, ''), secret: options.secret, timeoutMs: options.timeoutMs })
  const c = new Context(http, options)
  const checks: CheckResult[] = []
  const cleanup = { aborted: 0, failed: [] as string[] }
  try {
    for (const def of CHECKS) {
      const base = { id: def.id, level: def.level, description: def.description }
      if (c.blocked !== undefined) {
        checks.push({ ...base, result: 'skip', detail: c.blocked })
        continue
      }
      if (def.needs === 'secret' && !c.signed) {
        checks.push({ ...base, result: 'skip', detail: SECRET_SKIP })
        continue
      }
      if (def.needs === 'yes' && c.vote !== 'yes') {
        checks.push({ ...base, result: 'skip', detail: yesSkip(c.vote) })
        continue
      }
      try {
        const detail = await def.run(c)
        checks.push({ ...base, result: 'pass', detail })
      } catch (err) {
        if (err instanceof Skip) {
          checks.push({ ...base, result: 'skip', detail: err.message })
          continue
        }
        const detail = err instanceof Fail || err instanceof TransportError ? err.message : `kit error: ${String((err as Error)?.stack ?? err)}`
        checks.push({ ...base, result: def.level === 'MUST' ? 'fail' : 'warn', detail })
        if (def.gate === true) {
          c.blocked = err instanceof TransportError
            ? 'skipped: the participant did not answer'
            : `skipped: ${def.id} failed`
        }
      }
    }
  } finally {
    // Leave nothing held: whatever voted yes and was not settled is aborted (signed).
    for (const txid of c.held) {
      try {
        const a = await http.post('abort', { txid, participant: options.name })
        if (is2xx(a)) cleanup.aborted++
        else cleanup.failed.push(`${txid}: ${show(a, 80)}`)
      } catch (err) {
        cleanup.failed.push(`${txid}: ${(err as Error).message}`)
      }
    }
    await http.close()
  }
  const count = (r: Result): number => checks.filter(x => x.result === r).length
  const summary = { passed: count('pass'), failed: count('fail'), warnings: count('warn'), skipped: count('skip') }
  return {
    participant: options.url,
    name: options.name,
    payload: options.payload,
    signed: c.signed,
    vote: c.vote,
    checks,
    summary,
    cleanup,
    ok: summary.failed === 0
  }
}
