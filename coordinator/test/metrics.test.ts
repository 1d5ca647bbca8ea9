import t from 'tap'
import { startCoordinator, startParticipant } from './support/participant.js'

function metric (text: string, name: string): number | undefined {
  const line = text.split('\n').find(l => l.startsWith(name + ' ') || l.startsWith(name + '{'))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

t.test('/metrics counts decisions, retries, flushes and requests; gauges read the log', async t => {
  const c = await startCoordinator(t)
  const yes = await startParticipant(t)
  const no = await startParticipant(t, { vote: 'no' })
  const flaky = await startParticipant(t, { phase2Failure: { status: 503, times: 2 } })
  t.equal((await c.api.post('/v1/transactions', { participants: [{ name: 'y', url: yes.url }], commit: true })).body.state, 'committed')
  t.equal((await c.api.post('/v1/transactions', { participants: [{ name: 'y', url: yes.url }, { name: 'n', url: no.url }], commit: true })).body.state, 'aborted')
  const f = (await c.api.post('/v1/transactions', { participants: [{ name: 'f', url: flaky.url }], commit: true })).body
  t.equal(f.state, 'committed')
  // wait until the flaky participant acked after its two refusals
  for (let i = 0; i < 200 && (await c.api.get(`/v1/transactions/${f.id as string}`)).body.completed !== true; i++) await new Promise(resolve => setTimeout(resolve, 10))
  await c.api.post('/v1/transactions', { timeoutMs: 60_000 }) // stays active

  const res = await c.api.get('/metrics')
  t.equal(res.status, 200)
  t.match(res.headers['content-type'], /text\/plain/)
  const text = res.text
  t.equal(metric(text, 'twopc_transactions_begun_total'), 4)
  t.equal(metric(text, 'twopc_transactions_committed_total'), 2)
  t.equal(metric(text, 'twopc_transactions_aborted_total{reason="vote-no"}'), 1)
  t.equal(metric(text, 'twopc_phase2_retries_total'), 2)
  t.equal(metric(text, 'twopc_phase1_duration_seconds_count'), 3)
  t.equal(metric(text, 'twopc_phase2_duration_seconds_count'), 3)
  t.ok((metric(text, 'twopc_log_flush_batch_size_count') ?? 0) >= 1)
  t.equal(metric(text, 'twopc_transactions_in_doubt'), 0)
  t.equal(metric(text, 'twopc_transactions_needs_attention'), 0)
  t.match(text, /twopc_http_requests_total\{method="POST",route="\/v1\/transactions",status="200"\} 3/)
  t.match(text, /twopc_process_resident_memory_bytes/)
})

t.test('OpenAPI is generated from the route schemas; Swagger UI at /docs', async t => {
  const c = await startCoordinator(t)
  const spec = (await c.api.get('/docs/json')).body
  t.equal(spec.openapi.slice(0, 2), '3.')
  t.ok(spec.paths['/v1/transactions'].post.requestBody, 'begin has its body schema')
  t.ok(spec.paths['/v1/transactions/{id}/decision'].get)
  t.notOk(spec.paths['/metrics'], 'hidden')
  t.equal((await c.api.get('/docs')).status < 400, true)
})
