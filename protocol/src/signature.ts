import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto'

/** Header that carries the HMAC of a coordinator -> participant callback. */
export const SIGNATURE_HEADER = 'x-2pc-signature'

/** A signature older (or further in the future) than this is stale and rejected. */
export const SIGNATURE_MAX_AGE_MS = 5 * 60 * 1000

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

function hmacHex (secret: string, timestamp: number, rawBody: string | Buffer): string {
  return createHmac('sha256', keyFor(secret))
    .update(`${timestamp}.`)
    .update(rawBody)
    .digest('hex')
}

/** `t=<unix-ms>,v1=<hex HMAC-SHA256(secret, t + "." + rawBody)>` */
export function signBody (secret: string, rawBody: string | Buffer, now: number = Date.now()): string {
  return `t=${now},v1=${hmacHex(secret, now, rawBody)}`
}

export type SignatureCheck =
  | { ok: true }
  | { ok: false, reason: 'missing' | 'malformed' | 'stale' | 'mismatch' }

const SIGNATURE_FORMAT = /^t=(\d{1,16}),v1=([0-9a-f]{64})$/

/** Checks a signature header against the raw body; constant-time on the MAC. */
export function verifySignature (
  secret: string,
  header: string | string[] | undefined,
  rawBody: string | Buffer,
  now: number = Date.now(),
  maxAgeMs: number = SIGNATURE_MAX_AGE_MS
): SignatureCheck {
  if (header === undefined || header === '') return { ok: false, reason: 'missing' }
  if (Array.isArray(header)) return { ok: false, reason: 'malformed' }
  const match = SIGNATURE_FORMAT.exec(header)
  if (match === null) return { ok: false, reason: 'malformed' }
  const timestamp = Number(match[1])
  if (Math.abs(now - timestamp) > maxAgeMs) return { ok: false, reason: 'stale' }
  const expected = Buffer.from(hmacHex(secret, timestamp, rawBody), 'hex')
  const given = Buffer.from(match[2] as string, 'hex')
  if (!timingSafeEqual(expected, given)) return { ok: false, reason: 'mismatch' }
  return { ok: true }
}
