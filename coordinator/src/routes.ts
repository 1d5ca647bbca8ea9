/** The coordinator HTTP API (docs/protocol.md, "Coordinator HTTP API"), a thin adapter over the engine. */
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Static } from '@sinclair/typebox'
import { coordinatorIdOf } from '@fastify-2pc/protocol'
import type { Transaction } from './core/machine.js'
import { decisionOf } from './core/machine.js'
import { Engine, Rejected } from './engine.js'
import type { LogStore, AttentionEntry, AuditEntry, OutboxRow } from './log/log-store.js'
import type { Allowlist } from './allowlist.js'
import type { ResolvedOptions } from './config.js'
import { Errors } from './errors.js'
import { apiErrorOf } from './reject-errors.js'
import { txIdRegExp } from './ids.js'
import { newTraceparent, parseTraceparent } from './trace.js'
import {
  BeginBody, BeginReply, DecisionReply, ErrorReply, JSON_LIMITS, jsonLimitExceeded, ListQuery, ListReply, MessageInput, MessageReply, OutcomeReply,
  ParticipantInput, TransactionView, TxParams
} from './schemas.js'

export interface RouteDeps {
  engine: Engine
  log: LogStore
  allowlist: Allowlist
  options: ResolvedOptions
  coordinatorId: string
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString())

/**
 * Whether stored metadata must be left out of an answer: nested deeper than JSON_LIMITS allow
 * (written before the limits existed), serializing it could overflow the stack and fail the
 * whole answer — a page of the list, the console, the CLI — not just this record.
 */
export function metadataOmitted (metadata: unknown): boolean {
  return jsonLimitExceeded(metadata, JSON_LIMITS.maxDepth, Number.POSITIVE_INFINITY) !== undefined
}

export function view (tx: Transaction, attention: AttentionEntry[] = [], outbox: OutboxRow[] = [], audit?: AuditEntry[]): Static<typeof TransactionView> {
  return {
    ...(audit !== undefined ? { audit: audit.map(a => ({ action: a.action, reason: a.reason, actor: a.actor, at: iso(a.at) as string })) } : {}),
    id: tx.id,
    state: tx.state,
    decision: decisionOf(tx),
    reason: tx.reason,
    createdAt: iso(tx.createdAt) as string,
    updatedAt: iso(tx.updatedAt) as string,
    expiresAt: iso(tx.expiresAt) as string,
    decidedAt: iso(tx.decidedAt),
    completedAt: iso(tx.completedAt),
    completed: tx.completedAt !== null,
    needsAttention: tx.needsAttention,
    onePhase: tx.onePhase,
    ...(metadataOmitted(tx.metadata) ? { metadata: null, metadataOmitted: true } : { metadata: tx.metadata }),
    traceparent: tx.traceparent,
    participants: tx.participants.map(p => ({
      name: p.name,
      url: p.url,
      onePhase: p.onePhase,
      vote: p.vote,
      voteReason: p.voteReason,
      ack: p.ack,
      attempts: p.attempts,
      lastError: p.lastError,
      nextAttemptAt: iso(p.nextAttemptAt)
    })),
    messageCount: tx.messageCount,
    outbox: outbox.map(o => ({
      kind: o.kind,
      messageId: o.messageId,
      exchange: o.exchange,
      routingKey: o.routingKey,
      publishedAt: iso(o.publishedAt),
      attempts: o.attempts,
      lastError: o.lastError,
      deadAt: iso(o.deadAt)
    })),
    heuristics: attention.map(a => ({
      participant: a.participant,
      kind: a.kind,
      detail: a.detail,
      createdAt: iso(a.createdAt) as string,
      resolvedAt: iso(a.resolvedAt),
      resolution: a.resolution
    }))
  }
}

const errorReplies = { 400: ErrorReply, 401: ErrorReply, 403: ErrorReply, 404: ErrorReply, 409: ErrorReply, 413: ErrorReply, 503: ErrorReply }

export async function transactionRoutes (fastify: FastifyInstance, deps: RouteDeps): Promise<void> {
  const app = fastify.withTypeProvider<TypeBoxTypeProvider>()
  const { engine, log, allowlist, options, coordinatorId } = deps

  // Each record whose metadata is left out is logged once (a bounded memory of them).
  const omittedLogged = new Set<string>()
  function noteOmitted (logger: FastifyBaseLogger, v: { id: string, metadataOmitted?: boolean }): void {
    if (v.metadataOmitted !== true || omittedLogged.has(v.id)) return
    if (omittedLogged.size >= 1000) omittedLogged.clear()
    omittedLogged.add(v.id)
    logger.warn({ txid: v.id, maxDepth: JSON_LIMITS.maxDepth }, 'stored metadata nests too deep to answer: shown as null with metadataOmitted')
  }

  function checkId (id: string): void {
    if (!txIdRegExp.test(id)) throw new Errors.INVALID_ID(id.slice(0, 128))
  }

  function load (id: string): Transaction {
    checkId(id)
    const tx = log.view(id)
    if (tx === undefined) throw new Errors.TX_NOT_FOUND(id)
    return tx
  }

  /** Validates what the schema cannot know: the configured limits and the allowlist. */
  function checkParticipant (p: ParticipantInput): void {
    const url = allowlist.check(p.url)
    if (!url.ok) {
      throw url.code === 'BAD_PARTICIPANT_URL' ? new Errors.BAD_PARTICIPANT_URL(url.message) : new Errors.PARTICIPANT_URL_NOT_ALLOWED(url.message)
    }
    if (p.payload !== undefined) {
      const bytes = Buffer.byteLength(JSON.stringify(p.payload))
      if (bytes > options.maxPayloadBytes) throw new Errors.PAYLOAD_TOO_LARGE(p.name, bytes, options.maxPayloadBytes)
    }
  }

  function checkMessage (m: MessageInput): void {
    if (options.amqpUrl === undefined) throw new Errors.AMQP_NOT_CONFIGURED()
    const bytes = Buffer.byteLength(JSON.stringify(m.body ?? null))
    if (bytes > options.maxPayloadBytes) throw new Errors.PAYLOAD_TOO_LARGE(`message to ${m.exchange}`, bytes, options.maxPayloadBytes)
  }

  function rethrow (err: unknown, id: string): never {
    throw apiErrorOf(err, id, options)
  }

  app.post('/v1/transactions', {
    schema: {
      summary: 'Begin a transaction (or, with participants and commit:true, run it in one request)',
      body: BeginBody,
      response: { 200: OutcomeReply, 201: BeginReply, ...errorReplies }
    }
  }, async (req, reply) => {
    const body = req.body
    const timeoutMs = body.timeoutMs ?? options.defaultTimeoutMs
    if (timeoutMs < options.minTimeoutMs || timeoutMs > options.maxTimeoutMs) {
      throw new Errors.BAD_TIMEOUT(options.minTimeoutMs, options.maxTimeoutMs)
    }
    const participants = body.participants ?? []
    if (participants.length > options.maxParticipants) throw new Errors.TOO_MANY_PARTICIPANTS(options.maxParticipants)
    const names = new Set<string>()
    for (const p of participants) {
      checkParticipant(p)
      if (names.has(p.name)) throw new Errors.PARTICIPANT_EXISTS('(new)', p.name)
      names.add(p.name)
    }
    if (body.metadata !== undefined && Buffer.byteLength(JSON.stringify(body.metadata)) > options.maxPayloadBytes) {
      throw new Errors.PAYLOAD_TOO_LARGE('metadata', Buffer.byteLength(JSON.stringify(body.metadata)), options.maxPayloadBytes)
    }
    const messages = body.messages ?? []
    if (messages.length > options.maxMessages) throw new Errors.TOO_MANY_MESSAGES(options.maxMessages)
    for (const m of messages) checkMessage(m)
    const traceparent = parseTraceparent(req.headers.traceparent) ?? newTraceparent()
    if (body.commit === true) return await engine.beginAndCommit(timeoutMs, body.metadata, participants, messages, traceparent)
    const tx = await engine.begin(timeoutMs, body.metadata, participants, messages, traceparent)
    reply.code(201)
    return { id: tx.id, state: 'active' as const, expiresAt: new Date(tx.expiresAt).toISOString() }
  })

  app.post('/v1/transactions/:id/participants', {
    schema: {
      summary: 'Enlist a participant (only while the transaction is active)',
      params: TxParams,
      body: ParticipantInput,
      response: { 201: TransactionView, ...errorReplies }
    }
  }, async (req, reply) => {
    const { id } = req.params
    checkId(id)
    checkParticipant(req.body)
    let tx: Transaction
    try {
      tx = await engine.enlist(id, req.body)
    } catch (err) {
      if (err instanceof Rejected && err.code === 'PARTICIPANT_EXISTS') throw new Errors.PARTICIPANT_EXISTS(id, req.body.name)
      rethrow(err, id)
    }
    reply.code(201)
    return view(tx)
  })

  app.post('/v1/transactions/:id/messages', {
    schema: {
      summary: 'Enlist a transactional message: published to RabbitMQ after the commit decision, never on abort',
      params: TxParams,
      body: MessageInput,
      response: { 201: MessageReply, ...errorReplies }
    }
  }, async (req, reply) => {
    const { id } = req.params
    checkId(id)
    checkMessage(req.body)
    let tx: Transaction
    try {
      tx = await engine.addMessage(id, req.body)
    } catch (err) { rethrow(err, id) }
    reply.code(201)
    return { id: tx.id, messageCount: tx.messageCount }
  })

  app.post('/v1/transactions/:id/commit', {
    schema: {
      summary: 'Phase 1 and the decision; answers once the decision is durable',
      params: TxParams,
      response: { 200: OutcomeReply, ...errorReplies }
    }
  }, async (req) => {
    const { id } = req.params
    checkId(id)
    try {
      return await engine.commit(id)
    } catch (err) { rethrow(err, id) }
  })

  app.post('/v1/transactions/:id/abort', {
    schema: {
      summary: 'Abort a transaction that has no commit decision',
      params: TxParams,
      response: { 200: OutcomeReply, ...errorReplies }
    }
  }, async (req) => {
    const { id } = req.params
    checkId(id)
    try {
      const tx = await engine.abort(id)
      return { id: tx.id, state: 'aborted' as const, ...(tx.reason !== null ? { reason: tx.reason } : {}) }
    } catch (err) { rethrow(err, id) }
  })

  app.get('/v1/transactions/:id', {
    schema: {
      summary: 'The whole record of a transaction',
      params: TxParams,
      response: { 200: TransactionView, ...errorReplies }
    }
  }, async (req) => {
    // A commit decision not yet synced: answered once it is (its outbox rows are written with it).
    const unsynced = engine.decisionSynced(req.params.id)
    if (unsynced !== undefined) await unsynced
    const tx = load(req.params.id)
    const v = view(tx, log.attention(tx.id), log.outboxFor(tx.id), log.operator.audit(tx.id))
    noteOmitted(req.log, v)
    return v
  })

  app.get('/v1/transactions/:id/decision', {
    schema: {
      summary: 'For participants: the decision, "pending", or "abort" for an id of ours with no record (presumed abort) — "commit" for a pruned commit whose compact record is kept',
      params: TxParams,
      response: { 200: DecisionReply, ...errorReplies }
    }
  }, async (req) => {
    const { id } = req.params
    checkId(id)
    if (coordinatorIdOf(id) !== coordinatorId) throw new Errors.FOREIGN_ID(id, coordinatorId)
    // From the newest record: an abort need not be on disk (a power cut would make it an abort
    // again, presumed), but a commit is answered only once it is synced.
    const tx = log.loadLatest(id)
    // No record: presumed abort, unless it is a commit pruned before every participant acked.
    if (tx === undefined) return { decision: log.prunedCommit(id) !== undefined ? 'commit' as const : 'abort' as const }
    const decision = decisionOf(tx)
    if (decision === 'commit' && log.hasUnsynced(id)) {
      const synced = log.load(id)
      if (synced === undefined || decisionOf(synced) !== 'commit') return { decision: 'pending' as const }
    }
    return { decision: decision ?? 'pending' as const }
  })

  app.get('/v1/transactions', {
    schema: {
      summary: 'Transactions, newest first, a page at a time',
      querystring: ListQuery,
      response: { 200: ListReply, ...errorReplies }
    }
  }, async (req) => {
    const q = req.query
    const limit = q.limit === undefined ? 50 : Number(q.limit)
    if (limit < 1 || limit > 500) throw new Errors.BAD_LIMIT(limit)
    const after = q.cursor === undefined ? undefined : decodeCursor(q.cursor)
    let items = log.list({
      limit,
      ...(q.state !== undefined ? { state: q.state } : {}),
      ...(q.needsAttention !== undefined ? { needsAttention: q.needsAttention === 'true' } : {}),
      ...(after !== undefined ? { after } : {})
    })
    // The filter matched the written rows: a commit decision among them that is not yet synced
    // is answered once it is, and shown as synced.
    const unsynced = engine.decisionsSynced(items.map(tx => tx.id))
    if (unsynced !== undefined) {
      await unsynced
      items = items.map(tx => log.view(tx.id) ?? tx)
    }
    const last = items[items.length - 1]
    const views = items.map(tx => view(tx))
    for (const v of views) noteOmitted(req.log, v)
    return {
      items: views,
      nextCursor: items.length === limit && last !== undefined ? encodeCursor(last) : null
    }
  })
}

function encodeCursor (tx: Transaction): string {
  return Buffer.from(`${tx.createdAt}:${tx.id}`).toString('base64url')
}

function decodeCursor (cursor: string): { createdAt: number, id: string } {
  const text = Buffer.from(cursor, 'base64url').toString('utf8')
  const match = /^(\d{1,16}):(.+)$/.exec(text)
  if (match === null || !txIdRegExp.test(match[2] as string)) throw new Errors.BAD_CURSOR()
  return { createdAt: Number(match[1]), id: match[2] as string }
}
