import { randomChars } from './random.js'
import { TX_ID_PATTERN, COORDINATOR_ID_PATTERN } from '@fastify-2pc/protocol'

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

/** `<coordinatorId>.<10 chars of time><16 random chars>`: sortable by creation, unguessable. */
export function newTransactionId (coordinatorId: string, now: number = Date.now()): string {
  return `${coordinatorId}.${timePart(now)}${randomChars(ALPHABET, 16)}`
}

export function newCoordinatorId (): string {
  return `c-${randomChars(ALPHABET, 8)}`
}

export const txIdRegExp = new RegExp(TX_ID_PATTERN)
export const coordinatorIdRegExp = new RegExp(COORDINATOR_ID_PATTERN)
