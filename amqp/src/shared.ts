/** Helpers shared by the link's parts, and its options with their defaults applied. */

import type { ChannelModel } from 'amqplib'
import { amqpNames, type AmqpNames } from '@fastify-2pc/protocol'
import { DEFAULT_DELIVERY_LIMIT } from './topology.js'
import type { AmqpLinkOptions, AmqpLogger } from './types.js'

export const noopLogger: AmqpLogger = { debug () {}, info () {}, warn () {}, error () {} }

export function errMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

export async function withTimeout<T> (p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      p,
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
      })
    ])
  } finally {
    clearTimeout(timer)
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Destroys the socket under a ChannelModel: a close that cannot hang on a dead peer. It must be
 * destroyed *with an error*: amqplib watches the socket's 'error' and 'end' events only, so a
 * plain destroy() leaves the connection "open" with its heartbeat timers running.
 */
export function destroyModel (model: ChannelModel, reason = 'connection abandoned'): void {
  const stream = (model as unknown as { connection?: { stream?: { destroy?: (err?: Error) => void } } }).connection?.stream
  try {
    stream?.destroy?.(new Error(reason))
  } catch {}
}

export function is404 (err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === 404
}

/** {@link AmqpLinkOptions} with every default applied (the URL validated, its heartbeat set). */
export interface LinkSettings {
  url: string
  names: AmqpNames
  log: AmqpLogger
  connectTimeoutMs: number
  heartbeat: number
  prefetch: number
  publishTimeoutMs: number
  setupTimeoutMs: number
  reconnectInitialDelayMs: number
  reconnectMaxDelayMs: number
  declareTopology: boolean
  deliveryLimit: number
  retryDelayMs: number
  connectionName: string
  /** The exchanges the link declares itself (none with `declareTopology: false`). */
  topologyExchanges: readonly string[]
}

export function linkSettings (options: AmqpLinkOptions): LinkSettings {
  let parsed: URL
  try {
    parsed = new URL(options.url)
  } catch {
    throw new TypeError('AmqpLink: url is not a valid URL')
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    throw new TypeError(`AmqpLink: url must be amqp:// or amqps://, got ${parsed.protocol}`)
  }
  const heartbeat = options.heartbeat ?? 10
  if (!parsed.searchParams.has('heartbeat')) parsed.searchParams.set('heartbeat', String(heartbeat))
  const names = amqpNames(options.prefix)
  const declareTopology = options.declareTopology ?? true
  return {
    url: parsed.toString(),
    names,
    log: options.logger ?? noopLogger,
    connectTimeoutMs: options.connectTimeoutMs ?? 5000,
    heartbeat,
    prefetch: options.prefetch ?? 16,
    publishTimeoutMs: options.publishTimeoutMs ?? 10_000,
    setupTimeoutMs: options.setupTimeoutMs ?? 10_000,
    reconnectInitialDelayMs: options.reconnectInitialDelayMs ?? 200,
    reconnectMaxDelayMs: options.reconnectMaxDelayMs ?? 10_000,
    declareTopology,
    deliveryLimit: options.deliveryLimit ?? DEFAULT_DELIVERY_LIMIT,
    retryDelayMs: options.retryDelayMs ?? 1000,
    connectionName: options.connectionName ?? `fastify-2pc ${names.prefix}`,
    topologyExchanges: declareTopology
      ? [names.decisionsExchange, names.acksExchange, names.eventsExchange, names.deadLetterExchange]
      : []
  }
}
