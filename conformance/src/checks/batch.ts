/**
 * The checks of the optional batch route. A participant that advertises nothing passes them: the
 * coordinator then never batches to it.
 */
import { MAX_BATCH_CALLS, type BatchCapability } from '@fastify-2pc/protocol'
import { show, type Answer } from '../http.js'
import { codeOf, expect401, expect4xx, expectOk, expectVote, fail, is2xx, isObject, Skip, type BatchCall, type CheckDef, type Context } from './context.js'

export const NOT_ADVERTISED = 'not advertised: prepare answers carry no "batch" (the batch route is optional), nothing to check'

/** The advertised batch capability if it is well formed (batch-advertised-valid says why not). */
export function wellFormedBatch (advertised: unknown): BatchCapability | undefined {
  if (!isObject(advertised)) return undefined
  const { maxCalls, maxBytes } = advertised as { maxCalls?: unknown, maxBytes?: unknown }
  const valid = typeof maxCalls === 'number' && Number.isInteger(maxCalls) && maxCalls >= 1 && maxCalls <= MAX_BATCH_CALLS &&
    typeof maxBytes === 'number' && Number.isSafeInteger(maxBytes) && maxBytes >= 1
  return valid ? { maxCalls, maxBytes } : undefined
}

/** The advertised capability, or undefined when there is none to check (throws Skip when it was malformed). */
function batchOf (c: Context): BatchCapability | undefined {
  if (c.advertised === undefined) return undefined
  if (c.batch === undefined) throw new Skip('skipped: batch-advertised-valid failed')
  return c.batch
}

/** A 200 `{results:[{status, body}, …]}` with one result per call; each as an Answer of its op. */
function expectResults (a: Answer, calls: BatchCall[], what: string): Answer[] {
  if (a.status !== 200) fail(`${what} answered ${show(a)}, expected 200 {"results":[…]}`)
  const results = isObject(a.json) ? a.json.results : undefined
  if (!Array.isArray(results)) fail(`${what} answered without a "results" array: ${show(a)}`)
  const list = results as unknown[]
  if (list.length !== calls.length) fail(`${what} sent ${calls.length} calls and got ${list.length} results: ${show(a)}`)
  return list.map((r, i) => {
    const status = (r as { status?: unknown } | null)?.status
    if (!isObject(r) || typeof status !== 'number' || !Number.isInteger(status)) fail(`${what}: result #${i + 1} is not {status, body}: ${JSON.stringify(r)?.slice(0, 120)}`)
    const body = (r as { body?: unknown }).body
    const text = JSON.stringify(body) ?? ''
    return { route: (calls[i] as BatchCall).op, status: status as number, contentType: a.contentType, text, json: body, isJson: body !== undefined }
  })
}

export const BATCH_CHECKS: CheckDef[] = [
  // --- the batch route (optional) -------------------------------------------------------------
  // A participant that advertises nothing passes these: the coordinator then never batches to it.
  {
    id: 'batch-advertised-valid',
    level: 'MUST',
    description: `if prepare answers advertise "batch", it is {maxCalls: integer 1..${MAX_BATCH_CALLS}, maxBytes: positive integer}`,
    async run (c) {
      if (c.advertised === undefined) return NOT_ADVERTISED
      const capability = wellFormedBatch(c.advertised)
      if (capability === undefined) return fail(`prepare advertised "batch": ${JSON.stringify(c.advertised)?.slice(0, 120)}`)
      c.batch = capability
      return `maxCalls ${capability.maxCalls}, maxBytes ${capability.maxBytes}`
    }
  },
  {
    id: 'batch-results-in-order',
    level: 'MUST',
    needs: 'yes',
    description: 'a batch [prepare, commit of another prepared tx, abort of a third, an invalid call] answers 200 {results} in the calls\' order (vote yes, ok, ok, 4xx), each applied as its single call would be; with --secret, the same batch unsigned gets 401 and changes nothing',
    async run (c) {
      const capability = batchOf(c)
      if (capability === undefined) return NOT_ADVERTISED
      if (capability.maxCalls < 4) throw new Skip(`skipped: maxCalls ${capability.maxCalls} is under the 4 calls this check sends`)
      const committed = (await c.prepareYes()).txid
      const aborted = (await c.prepareYes()).txid
      const fresh = c.newTx()
      const calls: BatchCall[] = [
        { op: 'prepare', body: c.prepareBody(fresh) },
        { op: 'commit', body: { txid: committed, participant: c.options.name } },
        { op: 'abort', body: { txid: aborted, participant: c.options.name } },
        { op: 'prepare', body: c.prepareBody('not a transaction id') }
      ]
      let forged = ''
      if (c.signed) {
        const unsigned = await c.postBatch(calls, { kind: 'none' })
        expect401(unsigned, 'the batch without x-2pc-signature')
        const still = await c.prepare(aborted)
        const vote = expectVote(still, 'a prepare after the refused batch')
        if (vote !== 'yes') fail(`the refused batch was applied anyway: its abort went through (a prepare afterwards voted "${vote}")`)
        forged = 'unsigned: 401, nothing applied; '
      }
      const a = await c.postBatch(calls)
      const [p, cm, ab, bad] = expectResults(a, calls, 'the batch') as [Answer, Answer, Answer, Answer]
      const vote = expectVote(p, 'result #1 (prepare of a fresh tx)')
      if (vote !== 'yes') fail(`result #1 (prepare of a fresh tx) voted "${vote}" (the same payload voted yes singly): ${show(a)}`)
      expectOk(cm, 'result #2 (commit)')
      expectOk(ab, 'result #3 (abort)')
      expect4xx(bad, 'result #4 (a prepare with txid "not a transaction id")')
      // Each result was applied: a conflicting single call is refused now, and the prepare holds.
      const afterCommit = await c.decide('abort', committed)
      if (is2xx(afterCommit)) fail(`the batched commit was not applied: an abort afterwards answered ${show(afterCommit)}`)
      const afterAbort = await c.decide('commit', aborted)
      if (is2xx(afterAbort)) fail(`the batched abort was not applied: a commit afterwards answered ${show(afterAbort)}`)
      const again = expectVote(await c.prepare(fresh), 'a prepare of the batched one')
      if (again !== 'yes') fail(`the batched prepare voted yes but a repeat voted "${again}"`)
      expectOk(await c.decide('abort', fresh), 'abort (clean-up)')
      return `${forged}signed: 200, results ${[p, cm, ab, bad].map(r => r.status).join(', ')}; applied`
    }
  },
  {
    id: 'batch-too-many-calls-refused',
    level: 'MUST',
    description: 'a batch of maxCalls + 1 calls is refused whole with 4xx (the SDK: 400) and changes nothing',
    async run (c) {
      const capability = batchOf(c)
      if (capability === undefined) return NOT_ADVERTISED
      const ids = Array.from({ length: capability.maxCalls + 1 }, () => c.newTx())
      const calls: BatchCall[] = ids.map(txid => ({ op: 'abort', body: { txid, participant: c.options.name } }))
      const a = await c.postBatch(calls)
      expect4xx(a, `a batch of ${calls.length} calls (maxCalls ${capability.maxCalls})`)
      if (c.vote !== 'yes') return `${a.status} ${codeOf(a) ?? '(no code)'} (state follow-ups need a yes vote for --payload)`
      // Its aborts left no tombstone: a prepare of the first and the last still votes yes.
      for (const txid of [ids[0] as string, ids[ids.length - 1] as string]) {
        const vote = expectVote(await c.prepare(txid), 'a prepare after the refused batch')
        if (vote !== 'yes') fail(`the refused batch was applied anyway: a prepare of one of its aborted txids voted "${vote}"`)
        expectOk(await c.decide('abort', txid), 'abort (clean-up)')
      }
      return `${a.status} ${codeOf(a) ?? '(no code)'}; nothing changed`
    }
  }
]
