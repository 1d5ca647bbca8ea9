import t from 'tap'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Ajv2020 } from 'ajv/dist/2020.js'
import { callbackSchemaText, CALLBACK_SCHEMA_FILE, JSON_LIMITS_KEYWORD } from '@fastify-2pc/protocol'

const root = fileURLToPath(new URL('../../', import.meta.url))
const committed = readFileSync(root + CALLBACK_SCHEMA_FILE, 'utf8')

t.test('the committed JSON Schema file is what the schemas generate (npm run schema)', async t => {
  t.equal(committed, callbackSchemaText(), `${CALLBACK_SCHEMA_FILE} is stale: run npm run schema and commit it`)
})

t.test('a participant in another language can validate against the file', async t => {
  const document = JSON.parse(committed) as { $defs: Record<string, unknown> }
  // A standard 2020-12 validator; x-json-limits is an annotation to it.
  const ajv = new Ajv2020({ strict: true, keywords: [JSON_LIMITS_KEYWORD] })
  ajv.addSchema(document, 'callbacks')
  const check = (name: string, value: unknown): boolean => ajv.validate(`callbacks#/$defs/${name}`, value)
  const txid = 'c1.0123456789abcdefghjkmnpqrs'
  const prepare = { txid, participant: 'inventory', payload: { sku: 'a', qty: 1 }, deadline: 1767225600000 }
  t.ok(check('PrepareRequest', prepare))
  t.ok(check('PrepareRequest', { ...prepare, onePhase: true }))
  t.notOk(check('PrepareRequest', { ...prepare, extra: 1 }), 'unknown fields refused')
  t.notOk(check('PrepareRequest', { ...prepare, txid: 'nope' }))
  t.ok(check('DecisionRequest', { txid, participant: 'inventory' }))
  t.ok(check('PrepareAnswer', { vote: 'yes', batch: { maxCalls: 128, maxBytes: 1048576 } }))
  t.ok(check('PrepareAnswer', { vote: 'no', reason: 'out of stock' }))
  t.notOk(check('PrepareAnswer', { vote: 'maybe' }))
  t.notOk(check('PrepareAnswer', { vote: 'yes', batch: { maxCalls: 257, maxBytes: 1 } }), 'maxCalls over MAX_BATCH_CALLS')
  t.ok(check('OkAnswer', { ok: true }))
  t.ok(check('ErrorAnswer', { statusCode: 409, code: 'TX_ALREADY_ABORTED', error: 'Conflict', message: 'aborted before' }))
  t.notOk(check('ErrorAnswer', { statusCode: 409, code: 'not a code' }))
  t.ok(check('BatchRequest', { calls: [{ op: 'prepare', body: prepare }, { op: 'commit', body: { txid }, traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' }] }))
  t.notOk(check('BatchRequest', { calls: [] }))
  t.notOk(check('BatchRequest', { calls: [{ op: 'commit', body: prepare }] }), 'a commit call carries a decision body')
  t.ok(check('BatchAnswer', { results: [{ status: 200, body: { vote: 'yes' } }, { status: 409, body: { code: 'TX_UNKNOWN' } }] }))
  t.ok(check('DecisionAnswer', { decision: 'pending' }))
  t.ok(check('DecisionNotice', { txid, participant: 'inventory', decision: 'commit' }))
  t.ok(check('AckNotice', { txid, participant: 'inventory', decision: 'abort' }))
  t.ok(check('CoordinatorStarted', { type: 'coordinator.started', coordinatorId: 'c1', at: 1767225600000 }))
  t.notOk(check('CoordinatorStarted', { type: 'coordinator.started', coordinatorId: 'c1', at: -1 }))
})
