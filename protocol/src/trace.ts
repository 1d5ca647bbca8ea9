/**
 * W3C Trace Context (`traceparent: 00-<trace-id>-<parent-id>-<flags>`): the initiator's trace
 * flows through the coordinator into every participant callback. Read the same way on both
 * sides: a header that is not a valid version-00 traceparent is ignored, per the spec.
 */
export const TRACEPARENT_PATTERN = '^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$'
const TRACEPARENT = new RegExp(TRACEPARENT_PATTERN)
const ZERO_TRACE = '0'.repeat(32)
const ZERO_SPAN = '0'.repeat(16)

/** The header's value (trimmed, lower-cased) when it is a valid version-00 traceparent; otherwise undefined. */
export function parseTraceparent (header: unknown): string | undefined {
  if (typeof header !== 'string') return undefined
  const value = header.trim().toLowerCase()
  const m = TRACEPARENT.exec(value)
  if (m === null || m[1] === ZERO_TRACE || m[2] === ZERO_SPAN) return undefined
  return value
}

/** The parts of a traceparent in its canonical form (as parseTraceparent returns it), else undefined. */
export function traceparentParts (traceparent: string | null | undefined): { traceId: string, spanId: string, flags: string } | undefined {
  const m = typeof traceparent === 'string' ? TRACEPARENT.exec(traceparent) : null
  if (m === null) return undefined
  return { traceId: m[1] as string, spanId: m[2] as string, flags: m[3] as string }
}
