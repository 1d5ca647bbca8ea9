/**
 * Random bytes for ids and span ids from a pooled CSPRNG buffer: one `randomFillSync` per 4 KiB
 * instead of one per id (per-call overhead was ~10% of the coordinator's CPU under load).
 */
import { randomFillSync } from 'node:crypto'

const pool = Buffer.allocUnsafe(4096)
let offset = pool.length

/** The offset of `n` fresh random bytes in `randomPool` (valid until the next call). */
function take (n: number): number {
  if (offset + n > pool.length) {
    randomFillSync(pool)
    offset = 0
  }
  const at = offset
  offset += n
  return at
}

/** `n` random bytes as lower-case hex. */
export function randomHex (n: number): string {
  const at = take(n)
  return pool.toString('hex', at, at + n)
}

/** `n` random characters of `alphabet` (32 symbols: each byte's low 5 bits). */
export function randomChars (alphabet: string, n: number): string {
  const at = take(n)
  let out = ''
  for (let i = 0; i < n; i++) out += alphabet[(pool[at + i] as number) & 31]
  return out
}
