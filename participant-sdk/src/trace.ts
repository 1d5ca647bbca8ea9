/**
 * W3C Trace Context (`traceparent: 00-<trace-id>-<parent-id>-<flags>`), as the coordinator sends
 * it on every callback (a child span of the initiator's trace). The SDK only reads and passes it
 * on: it is logged with the txid on every callback log line and handed to the user's handlers
 * (`tx.traceparent`); the initiator client sends the one given to `begin({ traceparent })`.
 * Parsing is the protocol's (protocol/src/trace.ts), the same as the coordinator's.
 */
import { parseTraceparent, traceparentParts } from '@fastify-2pc/protocol'

export { parseTraceparent }

/** Trace id and span (parent) id of a valid traceparent, for log lines. */
export function traceFields (traceparent: string | undefined): { traceId?: string, spanId?: string } {
  const parts = traceparentParts(traceparent)
  if (parts === undefined) return {}
  return { traceId: parts.traceId, spanId: parts.spanId }
}
