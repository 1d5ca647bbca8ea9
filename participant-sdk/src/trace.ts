/**
 * W3C Trace Context (`traceparent: 00-<trace-id>-<parent-id>-<flags>`), as the coordinator sends
 * it on every callback (a child span of the initiator's trace). The SDK only reads and passes it
 * on: it is logged with the txid on every callback log line and handed to the user's handlers
 * (`tx.traceparent`); the initiator client sends the one given to `begin({ traceparent })`.
 */
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/
const ZERO_TRACE = '0'.repeat(32)
const ZERO_SPAN = '0'.repeat(16)

/** The header's value when it is a valid version-00 traceparent; otherwise undefined (ignored, per the spec). */
export function parseTraceparent (header: unknown): string | undefined {
  if (typeof header !== 'string') return undefined
  const value = header.trim().toLowerCase()
  const m = TRACEPARENT.exec(value)
  if (m === null || m[1] === ZERO_TRACE || m[2] === ZERO_SPAN) return undefined
  return value
}

/** Trace id and span (parent) id of a valid traceparent, for log lines. */
export function traceFields (traceparent: string | undefined): { traceId?: string, spanId?: string } {
  const m = traceparent === undefined ? null : TRACEPARENT.exec(traceparent)
  if (m === null) return {}
  return { traceId: m[1] as string, spanId: m[2] as string }
}
