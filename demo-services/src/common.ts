/**
 * What the three demo services share: opening their SQLite file, the SDK registration built
 * from the validated environment, and the read-only status route.
 */
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import Database from 'better-sqlite3'
import type { Database as Db } from 'better-sqlite3'
import Fastify, { type FastifyInstance } from 'fastify'
import { twoPhaseParticipant, type TwoPhaseParticipantOptions } from '@fastify-2pc/participant-sdk'

/** The settings a service takes (its bin builds them from the environment). */
export interface ServiceOptions {
  dbPath: string
  coordinatorUrl: string
  secret?: string | undefined
  apiToken?: string | undefined
  amqpUrl?: string | undefined
  amqpPrefix?: string | undefined
  inDoubtAfterMs?: number | undefined
  logLevel?: string | undefined
}

export function openDb (path: string): Db {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const db = new Database(path)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = FULL') // a yes vote is a promise: it must survive a power cut
  db.pragma('busy_timeout = 5000')
  return db
}

export function createApp (options: ServiceOptions): FastifyInstance {
  return Fastify({
    logger: options.logLevel === undefined || options.logLevel === 'silent' ? false : { level: options.logLevel },
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } }
  })
}

/** Registers the SDK with the service's handlers; passes RabbitMQ on when `amqpUrl` is set. */
export async function registerParticipant (
  app: FastifyInstance,
  options: ServiceOptions,
  participant: Pick<TwoPhaseParticipantOptions, 'name' | 'db' | 'prepare' | 'commit' | 'abort'>
): Promise<void> {
  // onClose hooks run in reverse order of registration: this one, added first, runs after the
  // SDK's (which stops the RabbitMQ consumer and recovery, both of which use the database).
  app.addHook('onClose', async () => { participant.db.close() })
  await app.register(twoPhaseParticipant, {
    ...participant,
    coordinatorUrl: options.coordinatorUrl,
    ...(options.secret !== undefined ? { secret: options.secret } : {}),
    ...(options.apiToken !== undefined ? { coordinatorToken: options.apiToken } : {}),
    ...(options.amqpUrl !== undefined ? { amqpUrl: options.amqpUrl, amqpPrefix: options.amqpPrefix ?? 'twopc' } : {}),
    ...(options.inDoubtAfterMs !== undefined ? { inDoubtAfterMs: options.inDoubtAfterMs } : {})
  })
  app.get('/healthz', async () => ({ status: 'ok', participant: app.twoPhase.name }))
  // What this participant holds prepared (voted yes, no decision known yet): empty once settled.
  app.get('/in-doubt', async () => {
    const amqp = app.twoPhase.amqpStatus()
    return {
      participant: app.twoPhase.name,
      inDoubt: app.twoPhase.inDoubt().map(t => ({ txid: t.txid, preparedAt: t.preparedAt, attempts: t.attempts })),
      amqp: amqp === undefined ? { configured: false } : { configured: true, connected: amqp.connected, applied: amqp.applied, received: amqp.received }
    }
  })
}

/** A non-negative integer from a JSON body, or undefined. */
export function count (value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined
}
