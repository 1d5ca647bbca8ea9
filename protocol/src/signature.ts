import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto'

/** Header that carries the HMAC of a coordinator -> participant callback (and of a broker message). */
export const SIGNATURE_HEADER = 'x-2pc-signature'

/** A signature older (or further in the future) than this is stale and rejected. */
export const SIGNATURE_MAX_AGE_MS = 5 * 60 * 1000

/**
 * What a signature is for. The operation is part of the signed bytes (scheme `v2`), so a signed
 * `abort` cannot be replayed onto `/commit`, nor a broker ack republished as a decision notice.
 * - `prepare`, `commit`, `abort`, `batch`: the HTTP callbacks (`POST {url}/<operation>`);
 * - `amqp.decision`: a decision notice to a participant's queue;
 * - `amqp.ack`: a participant's ack to the coordinator;
 * - `amqp.event`: a coordinator event (`coordinator.started`).
 */
export type SignedOperation = 'prepare' | 'commit' | 'abort' | 'batch' | 'amqp.decision' | 'amqp.ack' | 'amqp.event'

export const SIGNED_OPERATIONS: readonly SignedOperation[] = ['prepare', 'commit', 'abort', 'batch', 'amqp.decision', 'amqp.ack', 'amqp.event']

// The key imported once per secret (importing a string key per call was ~3% of the coordinator).
const keys = new Map<string, KeyObject>()
function keyFor (secret: string): KeyObject {
  let key = keys.get(secret)
  if (key === undefined) {
    if (keys.size >= 16) keys.clear()
    key = createSecretKey(Buffer.from(secret, 'utf8'))
    keys.set(secret, key)
  }
  return key
}

/** v2: HMAC-SHA256(secret, "v2." + operation + "." + t + "." + rawBody), hex. */
function hmacV2 (secret: string, operation: SignedOperation, timestamp: number, rawBody: string | Buffer): string {
  return createHmac('sha256', keyFor(secret))
    .update(`v2.${operation}.${timestamp}.`)
    .update(rawBody)
    .digest('hex')
}

/** v1 (legacy, no operation bound): HMAC-SHA256(secret, t + "." + rawBody), hex. */
function hmacV1 (secret: string, timestamp: number, rawBody: string | Buffer): string {
  return createHmac('sha256', keyFor(secret))
    .update(`${timestamp}.`)
    .update(rawBody)
    .digest('hex')
}

/**
 * `t=<unix-ms>,v2=<hex HMAC-SHA256(secret, "v2." + operation + "." + t + "." + rawBody)>`
 * (docs/protocol.md, "Signatures").
 */
export function signBody (secret: string, operation: SignedOperation, rawBody: string | Buffer, now: number = Date.now()): string {
  return `t=${now},v2=${hmacV2(secret, operation, now, rawBody)}`
}

/**
 * The legacy scheme `t=<unix-ms>,v1=<hex HMAC-SHA256(secret, t + "." + rawBody)>`: it does not
 * bind the operation (a signed abort verifies as a commit). Only for tests and for a participant
 * that must talk to an old coordinator during an upgrade.
 */
export function signBodyV1 (secret: string, rawBody: string | Buffer, now: number = Date.now()): string {
  return `t=${now},v1=${hmacV1(secret, now, rawBody)}`
}

export type SignatureCheck =
  | { ok: true, scheme: 'v1' | 'v2' }
  | { ok: false, reason: 'missing' | 'malformed' | 'stale' | 'mismatch' | 'legacy-scheme' }

export interface VerifyOptions {
  now?: number
  maxAgeMs?: number
  /** Accept the legacy `v1` scheme (no operation bound). Default false: `v1` fails with `legacy-scheme`. */
  acceptV1?: boolean
}

const SIGNATURE_FORMAT = /^t=(\d{1,16}),(v1|v2)=([0-9a-f]{64})$/

/** Checks a signature header for `operation` against the raw body; constant-time on the MAC. */
export function verifySignature (
  secret: string,
  operation: SignedOperation,
  header: string | string[] | undefined,
  rawBody: string | Buffer,
  options: VerifyOptions = {}
): SignatureCheck {
  const now = options.now ?? Date.now()
  const maxAgeMs = options.maxAgeMs ?? SIGNATURE_MAX_AGE_MS
  if (header === undefined || header === '') return { ok: false, reason: 'missing' }
  if (Array.isArray(header)) return { ok: false, reason: 'malformed' }
  const match = SIGNATURE_FORMAT.exec(header)
  if (match === null) return { ok: false, reason: 'malformed' }
  const scheme = match[2] as 'v1' | 'v2'
  if (scheme === 'v1' && options.acceptV1 !== true) return { ok: false, reason: 'legacy-scheme' }
  const timestamp = Number(match[1])
  if (Math.abs(now - timestamp) > maxAgeMs) return { ok: false, reason: 'stale' }
  const expected = Buffer.from(scheme === 'v2' ? hmacV2(secret, operation, timestamp, rawBody) : hmacV1(secret, timestamp, rawBody), 'hex')
  const given = Buffer.from(match[3] as string, 'hex')
  if (!timingSafeEqual(expected, given)) return { ok: false, reason: 'mismatch' }
  return { ok: true, scheme }
}
