/**
 * Limits of the JSON values a transaction carries (metadata, participants' payloads, message
 * bodies): nesting depth (`{}` is 1 deep) and object keys plus array items over the whole value.
 * JSON.parse reads any depth, but what serializes a value later recurses: a value thousands of
 * levels deep would break every answer that holds it. The coordinator refuses more at begin and
 * enlist, a participant at prepare: 400 `JSON_TOO_DEEP` / `JSON_TOO_MANY_KEYS`.
 */
export const JSON_LIMITS = { maxDepth: 32, maxKeys: 10_000 } as const

/** The schema keyword that applies the limits (its value: the limits; in the OpenAPI too). */
export const JSON_LIMITS_KEYWORD = 'x-json-limits'

/** The stable error codes of a value over the limits. */
export const JSON_LIMIT_CODES = { depth: 'JSON_TOO_DEEP', keys: 'JSON_TOO_MANY_KEYS' } as const

/**
 * Which limit a JSON value exceeds, if any: 'depth' or 'keys'. Iterative (an explicit stack, no
 * recursion) and bounded: it stops as soon as either limit is passed.
 */
export function jsonLimitExceeded (value: unknown, maxDepth: number, maxKeys: number): 'depth' | 'keys' | undefined {
  if (value === null || typeof value !== 'object') return undefined
  const values: object[] = [value]
  const depths: number[] = [1]
  let keys = 0
  while (values.length > 0) {
    const node = values.pop() as object
    const depth = depths.pop() as number
    if (depth > maxDepth) return 'depth'
    const children: unknown[] = Array.isArray(node) ? node : Object.values(node)
    keys += children.length
    if (keys > maxKeys) return 'keys'
    for (const child of children) {
      if (child !== null && typeof child === 'object') {
        values.push(child)
        depths.push(depth + 1)
      }
    }
  }
  return undefined
}

/** The messages of the two refusals (after `body/<path> `, as Ajv's errors read). */
export function jsonLimitMessage (limit: 'depth' | 'keys', limits: { maxDepth: number, maxKeys: number } = JSON_LIMITS): string {
  return limit === 'depth' ? `nests deeper than ${limits.maxDepth} levels` : `has more than ${limits.maxKeys} keys and array items`
}
