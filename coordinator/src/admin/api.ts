/**
 * Operator actions over the HTTP API (behind the API token like all of /v1):
 * - `POST /v1/transactions/:id/retry`: deliver the decision now to pending/heuristic participants.
 * - `POST /v1/transactions/:id/resolve {reason}`: mark a needs-attention/heuristic transaction handled.
 * - `POST /v1/transactions/:id/forget {reason}`: drop the compact record of a pruned commit
 *   (migration 8), after which the id answers a presumed abort.
 * retry and resolve answer the whole record, forget the record it dropped; each action is written
 * to the audit table in the same SQLite transaction as the change, with the actor from
 * `x-twopc-actor` (default `api`).
 */
import type { FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Engine } from '../engine.js'
import type { LogStore } from '../log/log-store.js'
import type { Transaction } from '../core/machine.js'
import { Errors } from '../errors.js'
import { apiErrorOf } from '../reject-errors.js'
import { txIdRegExp } from '../ids.js'
import { view } from '../routes.js'
import { ActorHeaders, ErrorReply, ForgetBody, ForgetReply, ResolveBody, TransactionView, TxParams } from '../schemas.js'

export const ACTOR_HEADER = 'x-twopc-actor'

/** The API error for an engine refusal of an operator action (or any other refusal). */
export function operatorError (err: unknown, id: string): Error {
  return apiErrorOf(err, id)
}

export function checkTxId (id: string): void {
  if (!txIdRegExp.test(id)) throw new Errors.INVALID_ID(id.slice(0, 128))
}

/** Runs an operator action on the engine; API errors for refusals. */
export async function runOperatorAction (engine: Engine, id: string, action: { type: 'retry' } | { type: 'resolve', reason: string }, actor: string): Promise<Transaction> {
  checkTxId(id)
  try {
    return action.type === 'retry'
      ? await engine.operatorRetry(id, actor)
      : await engine.operatorResolve(id, action.reason, actor)
  } catch (err) {
    throw operatorError(err, id)
  }
}

const errorReplies = { 400: ErrorReply, 401: ErrorReply, 404: ErrorReply, 409: ErrorReply }

export async function operatorRoutes (fastify: FastifyInstance, deps: { engine: Engine, log: LogStore }): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { engine, log } = deps

  const record = (tx: Transaction): ReturnType<typeof view> =>
    view(tx, log.attention(tx.id), log.outboxFor(tx.id), log.operator.audit(tx.id))

  app.post('/v1/transactions/:id/retry', {
    schema: {
      summary: 'Operator: deliver the decision now to every pending or heuristic participant',
      description: 'Pending participants are sent the decision at once (their backoff timer is cancelled); heuristic ones go back to pending with a fresh attempt count. The decision never changes. Audited.',
      params: TxParams,
      headers: ActorHeaders,
      response: { 200: TransactionView, ...errorReplies }
    }
  }, async (req) => {
    const tx = await runOperatorAction(engine, req.params.id, { type: 'retry' }, req.headers[ACTOR_HEADER] ?? 'api')
    return record(log.view(tx.id) ?? tx)
  })

  app.post('/v1/transactions/:id/resolve', {
    schema: {
      summary: 'Operator: mark a needs-attention or heuristic transaction as handled',
      description: 'Pending and heuristic participants become `resolved`, open attention entries get the reason as their resolution, needsAttention clears and the transaction is completed. The decision never changes. Audited.',
      params: TxParams,
      headers: ActorHeaders,
      body: ResolveBody,
      response: { 200: TransactionView, ...errorReplies }
    }
  }, async (req) => {
    const tx = await runOperatorAction(engine, req.params.id, { type: 'resolve', reason: req.body.reason }, req.headers[ACTOR_HEADER] ?? 'api')
    return record(log.view(tx.id) ?? tx)
  })

  app.post('/v1/transactions/:id/forget', {
    schema: {
      summary: 'Operator: drop the compact decision record of a pruned commit',
      description: 'A committed transaction pruned by retention while a participant had not acked it (an operator resolved it) keeps a compact record, from which the decision endpoint answers `commit`. Forget it once no participant can still ask (every one applied the commit, none will be restored from an older backup): the id then answers a presumed abort. Audited.',
      params: TxParams,
      headers: ActorHeaders,
      body: ForgetBody,
      response: { 200: ForgetReply, ...errorReplies }
    }
  }, async (req) => {
    const { id } = req.params
    checkTxId(id)
    const now = Date.now()
    const kept = log.forgetPrunedCommit(id, { actor: req.headers[ACTOR_HEADER] ?? 'api', reason: req.body.reason }, now)
    if (kept === undefined) {
      if (log.view(id) !== undefined) throw new Errors.TX_NOT_PRUNED(id)
      throw new Errors.NO_DECISION_RECORD(id)
    }
    req.log.warn({ txid: id, actor: req.headers[ACTOR_HEADER] ?? 'api', reason: req.body.reason }, 'operator forgot a pruned commit\'s decision record')
    const iso = (ms: number): string => new Date(ms).toISOString()
    return { id, decision: 'commit' as const, decidedAt: iso(kept.decidedAt), prunedAt: iso(kept.prunedAt), forgottenAt: iso(now) }
  })
}
