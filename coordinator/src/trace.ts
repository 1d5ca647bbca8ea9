/**
 * W3C Trace Context (`traceparent: 00-<trace-id>-<parent-id>-<flags>`): the initiator's trace
 * flows through the coordinator into every participant callback. Each callback is a new span
 * (a fresh parent-id) of the transaction's trace; a request without a valid traceparent starts
 * a new trace, so the participants' logs can still be joined with the coordinator's.
 */
import { randomHex } from './random.js'

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/
const ZERO_TRACE = '0'.repeat(32)
const ZERO_SPAN = '0'.repeat(16)

/** The header's value when it is a valid version-00 traceparent; otherwise null (ignored, per the spec). */
export function parseTraceparent (header: string | string[] | undefined): string | null {
  if (typeof header !== 'string') return null
  const value = header.trim().toLowerCase()
  const m = TRACEPARENT.exec(value)
  if (m === null || m[1] === ZERO_TRACE || m[2] === ZERO_SPAN) return null
  return value
}

export function newTraceparent (): string {
  return `00-${randomHex(16)}-${randomHex(8)}-01`
}

/** A child span of `traceparent` for one outgoing call. */
export function childTraceparent (traceparent: string | null): string {
  const m = traceparent === null ? null : TRACEPARENT.exec(traceparent)
  if (m === null) return newTraceparent()
  return `00-${m[1] as string}-${randomHex(8)}-${m[3] as string}`
}

export function traceIdOf (traceparent: string | null): string | undefined {
  return traceparent === null ? undefined : TRACEPARENT.exec(traceparent)?.[1]
}
