import { randomChars } from './random.js'
import { TX_ID_PATTERN } from '@fastify-2pc/protocol'

// Crockford base32, lower case: no i, l, o, u — safe in URLs, queue names and logs.
const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz'

function timePart (now: number): string {
  let out = ''
  let t = now
  for (let i = 0; i < 10; i++) {
    out = (ALPHABET[t % 32] as string) + out
    t = Math.floor(t / 32)
  }
  return out
}

const SEQUENCE_CHARS = 3
const SEQUENCE_LIMIT = 32 ** SEQUENCE_CHARS
let lastTime = -1
let sequence = 0

/**
 * `<coordinatorId>.<10 chars of time><3 chars of sequence><13 random chars>`: sortable by
 * creation — ids made in the same millisecond carry a rising sequence number (32,768 per ms
 * before it wraps), so the list's "newest first" holds within a millisecond too — and
 * unguessable (65 random bits).
 */
export function newTransactionId (coordinatorId: string, now: number = Date.now()): string {
  if (now === lastTime) {
    sequence = (sequence + 1) % SEQUENCE_LIMIT
  } else {
    lastTime = now
    sequence = 0
  }
  let seq = ''
  for (let i = 0, n = sequence; i < SEQUENCE_CHARS; i++, n = Math.floor(n / 32)) seq = (ALPHABET[n % 32] as string) + seq
  return `${coordinatorId}.${timePart(now)}${seq}${randomChars(ALPHABET, 13)}`
}

export function newCoordinatorId (): string {
  return `c-${randomChars(ALPHABET, 8)}`
}

export const txIdRegExp = new RegExp(TX_ID_PATTERN)
