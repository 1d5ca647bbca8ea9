import t from 'tap'
import {
  readPrepareAnswer, readErrorCode, readBatchAnswer, readDecisionAnswer,
  parseDecisionNotice, parseAckNotice, parseCoordinatorStarted, parseTraceparent, traceparentParts
} from '@fastify-2pc/protocol'

// The hand-written reading the driver, the SDK's client and the AMQP consumers did before the
// schemas: the readers must classify every value below exactly the same way.
const SAFE_CODE = /^[A-Z][A-Z0-9_]{0,63}$/
function isObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
function oldPrepare (v: unknown): unknown {
  if (!isObject(v)) return undefined
  const vote = v.vote
  if (vote !== 'yes' && vote !== 'no' && vote !== 'read-only') return undefined
  const read: Record<string, unknown> = { vote }
  if (typeof v.reason === 'string') read.reason = v.reason
  const batch = v.batch as { maxCalls?: unknown, maxBytes?: unknown } | undefined
  const { maxCalls, maxBytes } = batch ?? {}
  if (typeof maxCalls === 'number' && Number.isSafeInteger(maxCalls) && maxCalls >= 1 &&
      typeof maxBytes === 'number' && Number.isSafeInteger(maxBytes) && maxBytes >= 1) read.batch = { maxCalls, maxBytes }
  return read
}
function oldCode (v: unknown): unknown {
  const code = isObject(v) ? v.code : undefined
  return typeof code === 'string' && SAFE_CODE.test(code) ? code : undefined
}
function oldBatch (v: unknown, calls: number): unknown {
  const results = isObject(v) ? v.results : undefined
  if (!Array.isArray(results) || results.length !== calls) return undefined
  const answers = []
  for (const r of results as unknown[]) {
    const status = (r as { status?: unknown } | null)?.status
    if (typeof status !== 'number' || !Number.isInteger(status) || status < 100 || status > 599) return undefined
    answers.push({ status, body: (r as { body?: unknown }).body })
  }
  return answers
}
function oldDecision (v: unknown): unknown {
  const decision = (v as { decision?: unknown } | null)?.decision
  return decision === 'commit' || decision === 'abort' || decision === 'pending' ? { decision } : undefined
}
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/
function shortString (v: unknown): boolean { return typeof v === 'string' && v.length > 0 && v.length <= 1024 }
function oldNotice (v: unknown): unknown {
  if (!isObject(v)) return undefined
  const { txid, participant, decision } = v
  if (!shortString(txid) || (decision !== 'commit' && decision !== 'abort')) return undefined
  if (typeof participant !== 'string' || !NAME.test(participant)) return undefined
  return { txid, participant, decision }
}
function oldStarted (v: unknown): unknown {
  if (!isObject(v)) return undefined
  const { type, coordinatorId, at } = v
  if (type !== 'coordinator.started' || !shortString(coordinatorId)) return undefined
  if (typeof at !== 'number' || !Number.isFinite(at) || at < 0) return undefined
  return { type, coordinatorId, at }
}

const odd: unknown[] = [undefined, null, 0, 1.5, -1, 'x', '', true, [], [1], {}, { a: 1 }, NaN, Infinity]
const votes: unknown[] = [
  ...odd,
  { vote: 'yes' }, { vote: 'no', reason: 'out of stock' }, { vote: 'read-only' }, { vote: 'YES' }, { vote: 'maybe' }, { vote: null },
  { vote: 'yes', reason: 5 }, { vote: 'yes', reason: null }, { vote: 'yes', reason: '' }, { vote: 'yes', extra: { deep: [1] } },
  { vote: 'yes', batch: { maxCalls: 128, maxBytes: 1048576 } }, { vote: 'yes', batch: { maxCalls: 1000, maxBytes: 1 } },
  { vote: 'yes', batch: { maxCalls: 0, maxBytes: 2048 } }, { vote: 'yes', batch: { maxCalls: 2.5, maxBytes: 2048 } },
  { vote: 'yes', batch: { maxCalls: 2 ** 53, maxBytes: 2048 } }, { vote: 'yes', batch: { maxCalls: '8', maxBytes: 2048 } },
  { vote: 'yes', batch: { maxCalls: 8 } }, { vote: 'yes', batch: null }, { vote: 'yes', batch: 'yes' }, { vote: 'yes', batch: [8, 2048] },
  { vote: 'yes', batch: { maxCalls: 8, maxBytes: 2048, more: true } }, { vote: 'no', reason: 'x'.repeat(5000) }
]
const codes: unknown[] = [
  ...odd,
  { code: 'TX_UNKNOWN' }, { statusCode: 409, code: 'TX_ALREADY_ABORTED', error: 'Conflict', message: 'm' }, { code: 'tx_unknown' },
  { code: '_X' }, { code: 'A'.repeat(64) }, { code: 'A'.repeat(65) }, { code: 'A B' }, { code: 7 }, { code: null }, { code: 'X\n' },
  { code: 'X-1' }, { code: 'É' }, [{ code: 'TX_UNKNOWN' }]
]
const batches: Array<[unknown, number]> = [
  ...odd.map((v): [unknown, number] => [v, 1]),
  [{ results: [] }, 0], [{ results: [] }, 1], [{ results: [{ status: 200, body: { vote: 'yes' } }] }, 1],
  [{ results: [{ status: 200, body: { vote: 'yes' } }] }, 2], [{ results: [{ status: 200 }] }, 1], [{ results: [{ status: 99 }] }, 1],
  [{ results: [{ status: 600 }] }, 1], [{ results: [{ status: 599, body: null }] }, 1], [{ results: [{ status: 200.5 }] }, 1],
  [{ results: [{ status: '200' }] }, 1], [{ results: [null] }, 1], [{ results: [5] }, 1], [{ results: [[]] }, 1],
  [{ results: [{ status: 200, body: 1, text: 'not read' }], extra: 1 }, 1], [{ results: { 0: { status: 200 } } }, 1],
  [{ results: [{ status: 200, body: {} }, { status: 409, body: { code: 'TX_UNKNOWN' } }] }, 2]
]
const decisions: unknown[] = [...odd, { decision: 'commit' }, { decision: 'abort', at: 1 }, { decision: 'pending' }, { decision: 'COMMIT' }, { decision: 1 }]
const tx = 'c1.0123456789abcdefghjkmnpqrs'
const notices: unknown[] = [
  ...odd,
  { txid: tx, participant: 'inventory', decision: 'commit' }, { txid: tx, participant: 'inventory', decision: 'abort', extra: 1 },
  { txid: '', participant: 'p', decision: 'commit' }, { txid: 'x'.repeat(1024), participant: 'p', decision: 'commit' },
  { txid: 'x'.repeat(1025), participant: 'p', decision: 'commit' }, { txid: 5, participant: 'p', decision: 'commit' },
  { txid: tx, participant: '-p', decision: 'commit' }, { txid: tx, participant: 'p'.repeat(64), decision: 'commit' },
  { txid: tx, participant: 'p'.repeat(65), decision: 'commit' }, { txid: tx, participant: 'p', decision: 'pending' },
  { txid: tx, decision: 'commit' }, JSON.stringify({ txid: tx, participant: 'p', decision: 'commit' }),
  Buffer.from(JSON.stringify({ txid: tx, participant: 'p', decision: 'abort' })), Buffer.from('{not json'), '{"txid":'
]
const events: unknown[] = [
  ...odd,
  { type: 'coordinator.started', coordinatorId: 'c1', at: 1767225600000 }, { type: 'coordinator.started', coordinatorId: 'c1', at: 0, more: [] },
  { type: 'coordinator.started', coordinatorId: 'c1', at: -1 }, { type: 'coordinator.started', coordinatorId: 'c1', at: 1.5 },
  { type: 'coordinator.started', coordinatorId: '', at: 1 }, { type: 'coordinator.started', coordinatorId: 'c'.repeat(1025), at: 1 },
  { type: 'coordinator.stopped', coordinatorId: 'c1', at: 1 }, { type: 'coordinator.started', coordinatorId: 'c1', at: '1' },
  JSON.stringify({ type: 'coordinator.started', coordinatorId: 'c1', at: 2 }), Buffer.from(JSON.stringify({ type: 'coordinator.started', coordinatorId: 'c1', at: 3 }))
]

function label (v: unknown): string {
  return Buffer.isBuffer(v) ? `Buffer ${v.toString()}` : (JSON.stringify(v) ?? String(v)).slice(0, 80)
}
function jsonOf (v: unknown): unknown {
  const text = Buffer.isBuffer(v) ? v.toString() : v
  if (typeof text !== 'string') return v
  try { return JSON.parse(text) } catch { return undefined }
}

/** What the coordinator reads of a prepare answer (other fields may be there, unread). */
function readFields (read: ReturnType<typeof readPrepareAnswer>): unknown {
  if (read === undefined) return undefined
  const fields: Record<string, unknown> = { vote: read.vote }
  if (read.reason !== undefined) fields.reason = read.reason
  if (read.batch !== undefined) fields.batch = { maxCalls: read.batch.maxCalls, maxBytes: read.batch.maxBytes }
  return fields
}

t.test('a prepare answer is read as the hand parsing read it', async t => {
  for (const v of votes) t.strictSame(readFields(readPrepareAnswer(v)), oldPrepare(v), label(v))
  t.equal(readPrepareAnswer({ vote: 'no', reason: 'sold out' })?.reason, 'sold out')
  t.equal(readPrepareAnswer({ vote: 'no', reason: 7 })?.reason, undefined, 'a malformed reason is dropped')
  t.equal(readPrepareAnswer({ vote: 'yes', reason: 7, batch: { maxCalls: 8, maxBytes: 2048 } })?.batch?.maxCalls, 8, 'and the batch advertisement still read')
})

t.test('an error answer keeps only a well-formed code', async t => {
  for (const v of codes) t.equal(readErrorCode(v), oldCode(v), label(v))
})

t.test('a batch answer needs one result per call, each with an HTTP status', async t => {
  for (const [v, n] of batches) t.same(readBatchAnswer(v, n), oldBatch(v, n), `${label(v)} for ${n}`)
  const read = readBatchAnswer({ results: [{ status: 200, body: 1, text: 'not read' }] }, 1)
  t.same(Object.keys(read?.[0] ?? {}).sort(), ['body', 'status'], 'a result carries only its status and body')
})

t.test('the decision answer and the broker messages', async t => {
  for (const v of decisions) t.same(readDecisionAnswer(v), oldDecision(v), label(v))
  for (const v of notices) {
    t.same(parseDecisionNotice(v), oldNotice(jsonOf(v)), `decision notice ${label(v)}`)
    t.same(parseAckNotice(v), oldNotice(jsonOf(v)), `ack ${label(v)}`)
  }
  for (const v of events) t.same(parseCoordinatorStarted(v), oldStarted(jsonOf(v)), `event ${label(v)}`)
  t.same(parseAckNotice({ txid: tx, participant: 'p', decision: 'commit', extra: 1 }), { txid: tx, participant: 'p', decision: 'commit' }, 'only the known fields')
})

t.test('traceparent: one parser for both packages', async t => {
  const valid = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  t.equal(parseTraceparent(valid), valid)
  t.equal(parseTraceparent(`  ${valid.toUpperCase()} `), valid, 'trimmed, lower-cased')
  for (const bad of [undefined, null, 5, [valid], '', 'garbage', valid.replace('00-', '01-'), `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`,
    `00-4bf92f3577b34da6a3ce929d0e0e4736-${'0'.repeat(16)}-01`, `${valid}-00`, valid.slice(0, -1)]) {
    t.equal(parseTraceparent(bad), undefined, label(bad))
  }
  t.same(traceparentParts(valid), { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', flags: '01' })
  t.equal(traceparentParts(null), undefined)
  t.equal(traceparentParts('garbage'), undefined)
})
