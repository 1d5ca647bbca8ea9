import t from 'tap'
import { startCoordinator, startParticipant, waitFor } from './support/participant.js'
import { parseTraceparent, childTraceparent } from '../src/trace.js'

const TP = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

t.test('the initiator\'s traceparent flows into every participant callback, one span each', async t => {
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const b = await startParticipant(t)
  const incoming = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
  const res = await c.api.post('/v1/transactions', { participants: [{ name: 'a', url: a.url }, { name: 'b', url: b.url }], commit: true }, { traceparent: incoming })
  t.equal(res.body.state, 'committed')
  await waitFor(() => a.callsTo('commit').length === 1 && b.callsTo('commit').length === 1)
  const seen = [...a.calls, ...b.calls].map(call => call.headers.traceparent as string)
  t.equal(seen.length, 4)
  const spans = new Set<string>()
  for (const tp of seen) {
    const m = TP.exec(tp)
    t.ok(m, `valid traceparent ${tp}`)
    t.equal(m?.[1], '4bf92f3577b34da6a3ce929d0e0e4736', 'same trace')
    t.equal(m?.[3], '01', 'flags kept')
    spans.add(m?.[2] ?? '')
  }
  t.equal(spans.size, 4, 'a new span per callback')
  t.notOk(spans.has('00f067aa0ba902b7'))
  t.equal((await c.api.get(`/v1/transactions/${res.body.id as string}`)).body.traceparent, incoming)
})

t.test('without a (valid) traceparent the coordinator starts a trace', async t => {
  const c = await startCoordinator(t)
  const a = await startParticipant(t)
  const res = await c.api.post('/v1/transactions', { participants: [{ name: 'a', url: a.url }], commit: true }, { traceparent: 'garbage' })
  await waitFor(() => a.callsTo('commit').length === 1)
  const tp = (await c.api.get(`/v1/transactions/${res.body.id as string}`)).body.traceparent as string
  t.match(tp, TP)
  t.equal(TP.exec(a.callsTo('prepare')[0]?.headers.traceparent as string)?.[1], TP.exec(tp)?.[1])
})

t.test('parseTraceparent follows the spec', async t => {
  t.equal(parseTraceparent(undefined), null)
  t.equal(parseTraceparent(['a', 'b']), null)
  t.equal(parseTraceparent('00-00000000000000000000000000000000-00f067aa0ba902b7-01'), null, 'all-zero trace id')
  t.equal(parseTraceparent('00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01'), null, 'all-zero span id')
  t.equal(parseTraceparent(' 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01 '), '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
  t.match(childTraceparent('not one'), TP)
})
