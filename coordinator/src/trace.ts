/**
 * W3C Trace Context (`traceparent: 00-<trace-id>-<parent-id>-<flags>`): the initiator's trace
 * flows through the coordinator into every participant callback. Each callback is a new span
 * (a fresh parent-id) of the transaction's trace; a request without a valid traceparent starts
 * a new trace, so the participants' logs can still be joined with the coordinator's. Parsing is
 * the protocol's (protocol/src/trace.ts), the same as the participants'.
 */
import { parseTraceparent as parse, traceparentParts } from '@fastify-2pc/protocol'
import { randomHex } from './random.js'

/** The header's value when it is a valid version-00 traceparent; otherwise null (ignored, per the spec). */
export function parseTraceparent (header: string | string[] | undefined): string | null {
  return parse(header) ?? null
}

export function newTraceparent (): string {
  return `00-${randomHex(16)}-${randomHex(8)}-01`
}

/** A child span of `traceparent` for one outgoing call. */
export function childTraceparent (traceparent: string | null): string {
  const parts = traceparentParts(traceparent)
  if (parts === undefined) return newTraceparent()
  return `00-${parts.traceId}-${randomHex(8)}-${parts.flags}`
}

export function traceIdOf (traceparent: string | null): string | undefined {
  return traceparentParts(traceparent)?.traceId
}
