/**
 * The checks of the three callbacks: prepare (phase 1), commit and abort after a yes vote
 * (phase 2), unknown transactions, prepare edge cases and malformed requests.
 */
import { show } from '../http.js'
import { codeOf, expect4xx, expectOk, expectRefusedSafely, expectVote, fail, is2xx, is4xx, Skip, type CheckDef } from './context.js'

export const CALLBACK_CHECKS: CheckDef[] = [
  // --- prepare -------------------------------------------------------------------------------
  {
    id: 'prepare-answers-vote',
    level: 'MUST',
    gate: true,
    description: 'prepare {txid, participant, payload, deadline} answers 200 {vote:"yes"|"no"|"read-only", reason?}',
    async run (c) {
      const txid = c.newTx()
      c.probeTx = txid
      const a = await c.prepare(txid)
      if (a.status === 401) {
        fail(c.signed
          ? `${show(a)} — the signature made with --secret was refused: is it the participant's secret?`
          : `${show(a)} — the participant wants signed callbacks: pass --secret`)
      }
      if (is4xx(a) && codeOf(a) === 'PARTICIPANT_MISMATCH') fail(`${show(a)} — pass --name <the participant's name>`)
      c.vote = expectVote(a, 'prepare')
      c.advertised = (a.json as { batch?: unknown }).batch
      return show(a)
    }
  },
  {
    id: 'prepare-repeated-same-vote',
    level: 'MUST',
    description: 'a repeated prepare answers the vote already given (twice more)',
    async run (c) {
      const txid = c.probeTx as string
      for (const n of [2, 3]) {
        const a = await c.prepare(txid)
        const vote = expectVote(a, `prepare #${n}`)
        if (vote !== c.vote) fail(`prepare #1 voted "${String(c.vote)}", prepare #${n} of the same txid voted "${vote}": ${show(a)}`)
      }
      return `"${String(c.vote)}" three times`
    }
  },
  // --- commit after yes ------------------------------------------------------------------------
  {
    id: 'commit-after-yes',
    level: 'MUST',
    needs: 'yes',
    description: 'commit after a yes vote answers 200 {ok:true}',
    async run (c) {
      const txid = c.probeTx as string
      const a = await c.decide('commit', txid)
      expectOk(a, 'commit')
      c.committedTx = txid
      return show(a)
    }
  },
  {
    id: 'commit-idempotent',
    level: 'MUST',
    needs: 'yes',
    description: 'commit repeated (twice more) answers 200 {ok:true} again',
    async run (c) {
      if (c.committedTx === undefined) throw new Skip('skipped: commit-after-yes failed')
      for (const n of [2, 3]) expectOk(await c.decide('commit', c.committedTx), `commit #${n}`)
      return 'commit #2 and #3: 200 {"ok":true}'
    }
  },
  {
    id: 'prepare-after-commit-same-vote',
    level: 'SHOULD',
    needs: 'yes',
    description: 'a late, repeated prepare of a committed transaction still answers yes',
    async run (c) {
      if (c.committedTx === undefined) throw new Skip('skipped: commit-after-yes failed')
      const a = await c.prepare(c.committedTx)
      const vote = expectVote(a, 'prepare after commit')
      if (vote !== 'yes') fail(`voted "${vote}" (it voted yes before committing): ${show(a)}`)
      return show(a)
    }
  },
  {
    id: 'abort-after-commit-refused',
    level: 'MUST',
    needs: 'yes',
    description: 'abort of a committed transaction is refused (error status) and changes nothing',
    async run (c) {
      if (c.committedTx === undefined) throw new Skip('skipped: commit-after-yes failed')
      const a = await c.decide('abort', c.committedTx)
      c.saved.set('abort-after-commit', a)
      expectRefusedSafely(a, 'abort after commit')
      const again = await c.decide('commit', c.committedTx)
      if (!is2xx(again)) fail(`refused (${show(a)}) but it changed the state: a commit afterwards answered ${show(again)}`)
      return `${show(a)}; still committed`
    }
  },
  {
    id: 'abort-after-commit-409',
    level: 'SHOULD',
    needs: 'yes',
    description: 'that refusal is 409 TX_ALREADY_COMMITTED (the coordinator records a heuristic)',
    async run (c) {
      const a = c.saved.get('abort-after-commit')
      if (a === undefined) throw new Skip('skipped: abort-after-commit-refused did not run')
      if (a.status !== 409 || codeOf(a) !== 'TX_ALREADY_COMMITTED') fail(`got ${a.status} ${codeOf(a) ?? '(no code)'}: ${show(a)}`)
      return `${a.status} ${String(codeOf(a))}`
    }
  },
  // --- abort after yes -------------------------------------------------------------------------
  {
    id: 'abort-after-yes',
    level: 'MUST',
    needs: 'yes',
    description: 'abort after a yes vote answers 200 {ok:true}',
    async run (c) {
      const { txid } = await c.prepareYes()
      const a = await c.decide('abort', txid)
      expectOk(a, 'abort')
      c.abortedTx = txid
      return show(a)
    }
  },
  {
    id: 'abort-idempotent',
    level: 'MUST',
    needs: 'yes',
    description: 'abort repeated (twice more) answers 200 {ok:true} again',
    async run (c) {
      if (c.abortedTx === undefined) throw new Skip('skipped: abort-after-yes failed')
      for (const n of [2, 3]) expectOk(await c.decide('abort', c.abortedTx), `abort #${n}`)
      return 'abort #2 and #3: 200 {"ok":true}'
    }
  },
  {
    id: 'prepare-after-abort-votes-no',
    level: 'SHOULD',
    needs: 'yes',
    description: 'a late prepare of an aborted transaction votes no (it does not prepare again)',
    async run (c) {
      if (c.abortedTx === undefined) throw new Skip('skipped: abort-after-yes failed')
      const a = await c.prepare(c.abortedTx)
      const vote = expectVote(a, 'prepare after abort')
      if (vote !== 'no') fail(`voted "${vote}" after the abort: ${show(a)}`)
      return show(a)
    }
  },
  {
    id: 'commit-after-abort-refused',
    level: 'MUST',
    needs: 'yes',
    description: 'commit of an aborted transaction is refused (error status) and changes nothing',
    async run (c) {
      if (c.abortedTx === undefined) throw new Skip('skipped: abort-after-yes failed')
      const a = await c.decide('commit', c.abortedTx)
      c.saved.set('commit-after-abort', a)
      expectRefusedSafely(a, 'commit after abort')
      const again = await c.decide('abort', c.abortedTx)
      if (!is2xx(again)) fail(`refused (${show(a)}) but it changed the state: an abort afterwards answered ${show(again)}`)
      return `${show(a)}; still aborted`
    }
  },
  {
    id: 'commit-after-abort-409',
    level: 'SHOULD',
    needs: 'yes',
    description: 'that refusal is 409 TX_ALREADY_ABORTED (the coordinator records a heuristic)',
    async run (c) {
      const a = c.saved.get('commit-after-abort')
      if (a === undefined) throw new Skip('skipped: commit-after-abort-refused did not run')
      if (a.status !== 409 || codeOf(a) !== 'TX_ALREADY_ABORTED') fail(`got ${a.status} ${codeOf(a) ?? '(no code)'}: ${show(a)}`)
      return `${a.status} ${String(codeOf(a))}`
    }
  },
  // --- unknown transactions --------------------------------------------------------------------
  {
    id: 'abort-unknown-ok',
    level: 'MUST',
    description: 'abort of a transaction never prepared answers 200 {ok:true}',
    async run (c) {
      const txid = c.newTx()
      const a = await c.decide('abort', txid)
      expectOk(a, 'abort before prepare')
      c.tombstoneTx = txid
      return show(a)
    }
  },
  {
    id: 'abort-before-prepare-tombstone',
    level: 'MUST',
    needs: 'yes',
    description: 'after an abort-before-prepare, a late prepare (with --payload) votes no and a commit is refused',
    async run (c) {
      if (c.tombstoneTx === undefined) throw new Skip('skipped: abort-unknown-ok failed')
      const a = await c.prepare(c.tombstoneTx)
      const vote = expectVote(a, 'prepare after abort-before-prepare')
      if (vote !== 'no') fail(`no tombstone: the late prepare voted "${vote}": ${show(a)}`)
      const commit = await c.decide('commit', c.tombstoneTx)
      if (is2xx(commit)) fail(`the late prepare voted no but a commit was accepted: ${show(commit)}`)
      return `${show(a)}; commit: ${commit.status} ${codeOf(commit) ?? ''}`.trimEnd()
    }
  },
  {
    id: 'commit-unknown-refused',
    level: 'MUST',
    description: 'commit of a transaction never prepared is refused with 4xx',
    async run (c) {
      const a = await c.decide('commit', c.newTx())
      c.saved.set('commit-unknown', a)
      expect4xx(a, 'commit of an unknown txid')
      return `${a.status} ${codeOf(a) ?? '(no code)'}`
    }
  },
  {
    id: 'commit-unknown-404',
    level: 'SHOULD',
    description: 'that refusal is 404 TX_UNKNOWN (the coordinator records a heuristic)',
    async run (c) {
      const a = c.saved.get('commit-unknown')
      if (a === undefined) throw new Skip('skipped: commit-unknown-refused did not run')
      if (a.status !== 404 || codeOf(a) !== 'TX_UNKNOWN') fail(`got ${a.status} ${codeOf(a) ?? '(no code)'}: ${show(a)}`)
      return `${a.status} ${String(codeOf(a))}`
    }
  },
  // --- prepare edge cases ----------------------------------------------------------------------
  {
    id: 'prepare-past-deadline-votes-no',
    level: 'SHOULD',
    needs: 'yes',
    description: 'a prepare that arrives after its deadline votes no',
    async run (c) {
      const txid = c.newTx()
      const a = await c.prepare(txid, undefined, { deadline: Date.now() - 60_000 })
      const vote = expectVote(a, 'prepare past its deadline')
      if (vote !== 'no') fail(`voted "${vote}" a minute past the deadline: ${show(a)}`)
      return show(a)
    }
  },
  {
    id: 'prepare-other-participant-refused',
    level: 'SHOULD',
    description: 'a prepare naming another participant (a misrouted enlistment) is refused with 4xx',
    async run (c) {
      const txid = c.newTx()
      const a = await c.prepare(txid, undefined, { participant: `${c.options.name.slice(0, 50)}-not-me` })
      expect4xx(a, 'prepare for another participant')
      return `${a.status} ${codeOf(a) ?? '(no code)'}`
    }
  },
  // --- malformed requests ----------------------------------------------------------------------
  {
    id: 'malformed-json-refused',
    level: 'MUST',
    description: 'a body that is not JSON (cut short) is refused with 4xx on prepare, commit and abort',
    async run (c) {
      const seen: string[] = []
      for (const route of ['prepare', 'commit', 'abort'] as const) {
        const txid = c.newTx()
        const a = await c.post(route, txid, `{"txid":"${txid}","participant":`)
        expect4xx(a, `${route} with malformed JSON`)
        seen.push(`${route} ${a.status}`)
      }
      return seen.join(', ')
    }
  },
  {
    id: 'missing-txid-refused',
    level: 'MUST',
    description: 'a body without txid is refused with 4xx on prepare, commit and abort',
    async run (c) {
      const seen: string[] = []
      for (const route of ['prepare', 'commit', 'abort'] as const) {
        const body: Record<string, unknown> = route === 'prepare' ? c.prepareBody('') : { participant: c.options.name }
        delete body.txid
        const a = await c.post(route, undefined, body)
        expect4xx(a, `${route} without txid`)
        seen.push(`${route} ${a.status}`)
      }
      return seen.join(', ')
    }
  },
  {
    id: 'bad-txid-refused',
    level: 'SHOULD',
    description: 'a txid that is not <coordinatorId>.<26 base32 chars> is refused with 4xx (prepare, abort)',
    async run (c) {
      const seen: string[] = []
      for (const route of ['prepare', 'abort'] as const) {
        const txid = 'not a transaction id'
        const body = route === 'prepare' ? c.prepareBody(txid) : { txid, participant: c.options.name }
        const a = await c.post(route, txid, body)
        expect4xx(a, `${route} with txid "${txid}"`)
        seen.push(`${route} ${a.status}`)
      }
      return seen.join(', ')
    }
  },
  {
    id: 'unknown-fields-refused',
    level: 'SHOULD',
    description: 'a body with an undocumented field is refused with 4xx and changes nothing',
    async run (c) {
      const seen: string[] = []
      const extra = { surprise: true }
      const t1 = c.newTx()
      const p = await c.prepare(t1, undefined, extra)
      expect4xx(p, 'prepare with an undocumented field')
      seen.push(`prepare ${p.status}`)
      const t2 = c.newTx()
      const a = await c.post('abort', t2, { txid: t2, participant: c.options.name, ...extra })
      expect4xx(a, 'abort with an undocumented field')
      seen.push(`abort ${a.status}`)
      if (c.vote === 'yes') {
        const again = await c.prepare(t1)
        const vote = expectVote(again, 'a prepare after the refused one')
        if (vote !== 'yes') fail(`the refused prepare left a record: a prepare afterwards voted "${vote}"`)
        const cm = await c.post('commit', t1, { txid: t1, participant: c.options.name, ...extra })
        expect4xx(cm, 'commit with an undocumented field')
        seen.push(`commit ${cm.status}`)
        const abort = await c.decide('abort', t1)
        if (!is2xx(abort)) fail(`the refused commit was applied anyway: an abort afterwards answered ${show(abort)}`)
        const late = await c.prepare(t2)
        const lateVote = expectVote(late, 'a prepare after the refused abort')
        if (lateVote !== 'yes') fail(`the refused abort left a tombstone: a prepare afterwards voted "${lateVote}"`)
        expectOk(await c.decide('abort', t2), 'abort (clean-up)')
        return `${seen.join(', ')}; nothing changed`
      }
      return `${seen.join(', ')} (commit and state follow-ups need a yes vote for --payload)`
    }
  }
]
