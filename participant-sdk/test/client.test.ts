import t from 'tap'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { createCoordinatorClient, coordinatorClientPlugin, CoordinatorError } from '../src/index.js'

interface Seen { method: string, url: string, body: unknown, auth: string | undefined }

/**
 * A real HTTP server that answers like the coordinator's API and records what it was sent;
 * `answers` overrides the answer per "METHOD path" key.
 */
async function stubCoordinator (t: { teardown: (fn: () => unknown) => void }): Promise<{ url: string, seen: Seen[], answers: Map<string, { status: number, body: unknown }>, app: FastifyInstance }> {
  const seen: Seen[] = []
  const answers = new Map<string, { status: number, body: unknown }>()
  const app = Fastify()
  const id = 'c1.0123456789abcdefghjkmnpqrs'
  app.all('/*', async (request, reply) => {
    seen.push({ method: request.method, url: request.url, body: request.body, auth: request.headers.authorization })
    const override = answers.get(`${request.method} ${request.url}`)
    if (override?.status === 0) {
      // Status 0: the request arrived, the answer is lost (connection cut).
      reply.hijack()
      request.raw.socket.destroy()
      return
    }
    if (override !== undefined) return await reply.code(override.status).send(override.body)
    if (request.url === '/v1/transactions' && (request.body as { commit?: boolean }).commit === true) return { id, state: 'committed' }
    if (request.url === '/v1/transactions') return await reply.code(201).send({ id, state: 'active', expiresAt: Date.now() + 1000 })
    if (request.url.endsWith('/commit')) return { id, state: 'committed' }
    if (request.url.endsWith('/abort')) return { id, state: 'aborted' }
    if (request.url.endsWith('/decision')) return { decision: 'pending' }
    return await reply.code(201).send({})
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return { url: `http://127.0.0.1:${port}`, seen, answers, app }
}

const inventory = { name: 'inventory', url: 'http://127.0.0.1:3001/2pc', payload: { sku: 'apple', qty: 1 } }
const payment = { name: 'payment', url: 'http://127.0.0.1:3002/2pc', payload: { amount: 5 } }

t.test('when nothing needed the id, commit sends begin + enlist + commit as one request', async t => {
  const coordinator = await stubCoordinator(t)
  const client = createCoordinatorClient({ url: coordinator.url, token: 'tok' })
  t.teardown(() => client.close())
  const tx = await client.begin({ timeoutMs: 5000, metadata: { order: 7 } })
  t.equal(coordinator.seen.length, 0, 'begin makes no request')
  t.equal(tx.id, undefined)
  tx.enlist(inventory).enlist(payment)
  tx.publish({ exchange: 'orders', routingKey: 'order.created', body: { order: 7 } })
  const outcome = await tx.commit()
  t.same(outcome, { id: 'c1.0123456789abcdefghjkmnpqrs', state: 'committed' })
  t.equal(tx.id, outcome.id)
  t.equal(tx.status, 'committed')
  t.same(coordinator.seen, [{
    method: 'POST',
    url: '/v1/transactions',
    auth: 'Bearer tok',
    body: {
      participants: [inventory, payment],
      commit: true,
      timeoutMs: 5000,
      metadata: { order: 7 },
      messages: [{ exchange: 'orders', routingKey: 'order.created', body: { order: 7 } }]
    }
  }])
  t.same(await tx.commit(), outcome, 'commit twice returns the same outcome without a request')
  t.equal(coordinator.seen.length, 1)
  t.throws(() => tx.enlist(payment), { code: 'CLIENT_TX_FINISHED' })
})

t.test('start() creates the server transaction; commit then sends enlistments, messages and commit in order', async t => {
  const coordinator = await stubCoordinator(t)
  const client = createCoordinatorClient({ url: coordinator.url + '/' })
  t.teardown(() => client.close())
  const tx = await client.begin()
  const id = await tx.start()
  t.equal(id, 'c1.0123456789abcdefghjkmnpqrs')
  t.equal(tx.id, id)
  t.equal(await tx.start(), id, 'start is idempotent')
  tx.enlist(inventory).publish({ exchange: 'e', routingKey: 'k', body: 1 })
  t.same(await tx.commit(), { id, state: 'committed' })
  t.same(coordinator.seen.map(s => `${s.method} ${s.url}`), [
    'POST /v1/transactions',
    `POST /v1/transactions/${id}/participants`,
    `POST /v1/transactions/${id}/messages`,
    `POST /v1/transactions/${id}/commit`
  ])
  t.same(coordinator.seen[0]?.body, {}, 'begin without options sends an empty object')
  t.equal(coordinator.seen[0]?.auth, undefined, 'no token, no authorization header')
})

t.test('an aborted outcome is an answer, with its reason', async t => {
  const coordinator = await stubCoordinator(t)
  coordinator.answers.set('POST /v1/transactions', { status: 200, body: { id: 'c1.0123456789abcdefghjkmnpqrs', state: 'aborted', reason: 'payment voted no' } })
  const client = createCoordinatorClient({ url: coordinator.url })
  t.teardown(() => client.close())
  const tx = (await client.begin()).enlist(inventory)
  t.same(await tx.commit(), { id: 'c1.0123456789abcdefghjkmnpqrs', state: 'aborted', reason: 'payment voted no' })
  t.equal(tx.status, 'aborted')
})

t.test('coordinator errors are thrown as CoordinatorError with its code and status', async t => {
  const coordinator = await stubCoordinator(t)
  coordinator.answers.set('POST /v1/transactions', { status: 400, body: { statusCode: 400, code: 'BAD_PARTICIPANT_URL', error: 'Bad Request', message: 'not allowed' } })
  const client = createCoordinatorClient({ url: coordinator.url })
  t.teardown(() => client.close())
  const tx = (await client.begin()).enlist(inventory)
  const err = await tx.commit().catch((e: unknown) => e)
  t.ok(err instanceof CoordinatorError)
  t.match(err, { code: 'BAD_PARTICIPANT_URL', statusCode: 400, message: 'not allowed' })
  t.equal(tx.status, 'failed')

  coordinator.answers.set('POST /v1/transactions', { status: 502, body: 'gateway says no' })
  const plain = await (await client.begin()).commit().catch((e: unknown) => e)
  t.match(plain, { code: 'COORDINATOR_BAD_RESPONSE', statusCode: 502 }, 'a non-JSON answer')

  coordinator.answers.set('POST /v1/transactions', { status: 503, body: {} })
  t.match(await (await client.begin()).commit().catch((e: unknown) => e), { code: 'HTTP_503', statusCode: 503 }, 'an error without a code')
})

t.test('a failed enlistment after start aborts the server transaction and throws', async t => {
  const coordinator = await stubCoordinator(t)
  const client = createCoordinatorClient({ url: coordinator.url })
  t.teardown(() => client.close())
  const tx = await client.begin()
  const id = await tx.start()
  coordinator.answers.set(`POST /v1/transactions/${id}/participants`, { status: 409, body: { statusCode: 409, code: 'TX_NOT_ACTIVE', error: 'Conflict', message: 'expired' } })
  tx.enlist(inventory)
  await t.rejects(tx.commit(), { code: 'TX_NOT_ACTIVE', statusCode: 409, txid: id })
  t.same(coordinator.seen.map(s => s.url).slice(1), [`/v1/transactions/${id}/participants`, `/v1/transactions/${id}/abort`])
})

t.test('abort before start sends nothing; after start it aborts on the server', async t => {
  const coordinator = await stubCoordinator(t)
  const client = createCoordinatorClient({ url: coordinator.url })
  t.teardown(() => client.close())
  const local = (await client.begin()).enlist(inventory)
  t.same(await local.abort(), { id: undefined, state: 'aborted' })
  t.equal(coordinator.seen.length, 0)
  await t.rejects(local.commit(), { code: 'CLIENT_TX_FINISHED' })

  const remote = await client.begin()
  const id = await remote.start()
  t.same(await remote.abort(), { id, state: 'aborted' })
  t.equal(coordinator.seen.at(-1)?.url, `/v1/transactions/${id}/abort`)
})

t.test('unreachable coordinator: a commit that never left is UNREACHABLE', async t => {
  const client = createCoordinatorClient({ url: 'http://127.0.0.1:9' })
  t.teardown(() => client.close())
  await t.rejects((await client.begin()).enlist(inventory).commit(), { code: 'COORDINATOR_UNREACHABLE', statusCode: undefined })
  await t.rejects(client.decision('c1.0123456789abcdefghjkmnpqrs'), { code: 'COORDINATOR_UNREACHABLE' })
})

t.test('a commit whose answer is lost is COMMIT_OUTCOME_UNKNOWN, not a failure', async t => {
  const coordinator = await stubCoordinator(t)
  coordinator.answers.set('POST /v1/transactions', { status: 0, body: null })
  const client = createCoordinatorClient({ url: coordinator.url })
  t.teardown(() => client.close())
  await t.rejects((await client.begin()).enlist(inventory).commit(), { code: 'COMMIT_OUTCOME_UNKNOWN' })
  t.equal(coordinator.seen.length, 1, 'the coordinator did receive the commit')
})

t.test('arguments are checked locally, before any request', async t => {
  t.throws(() => createCoordinatorClient({ url: 'nope' }), { code: 'CLIENT_INVALID_ARGUMENT' })
  t.throws(() => createCoordinatorClient({ url: 'ftp://x' }), { code: 'CLIENT_INVALID_ARGUMENT' })
  t.throws(() => createCoordinatorClient({ url: 'http://x', connections: 0 }), { code: 'CLIENT_INVALID_ARGUMENT' })
  const client = createCoordinatorClient({ url: 'http://127.0.0.1:9' })
  t.teardown(() => client.close())
  await t.rejects(client.begin({ timeoutMs: -1 }), { code: 'CLIENT_INVALID_ARGUMENT' })
  const tx = await client.begin()
  t.throws(() => tx.enlist({ name: 'bad name', url: 'http://x/2pc' }), { code: 'CLIENT_INVALID_ARGUMENT' })
  t.throws(() => tx.enlist({ name: 'a', url: 'not a url' }), { code: 'CLIENT_INVALID_ARGUMENT' })
  tx.enlist({ name: 'a', url: 'http://x/2pc' })
  t.throws(() => tx.enlist({ name: 'a', url: 'http://y/2pc' }), { code: 'CLIENT_INVALID_ARGUMENT' }, 'duplicate name')
  for (let i = 1; i < 100; i++) tx.enlist({ name: `p${i}`, url: 'http://x/2pc' })
  t.throws(() => tx.enlist({ name: 'one-too-many', url: 'http://x/2pc' }), { code: 'CLIENT_INVALID_ARGUMENT' })
  await t.rejects(client.decision('not-an-id'), { code: 'CLIENT_INVALID_ARGUMENT' })
})

t.test('a response larger than the limit is refused', async t => {
  const coordinator = await stubCoordinator(t)
  coordinator.answers.set('GET /v1/transactions/c1.0123456789abcdefghjkmnpqrs/decision', { status: 200, body: { decision: 'commit', pad: 'x'.repeat(2 * 1024 * 1024) } })
  const client = createCoordinatorClient({ url: coordinator.url })
  t.teardown(() => client.close())
  await t.rejects(client.decision('c1.0123456789abcdefghjkmnpqrs'), { code: 'COORDINATOR_BAD_RESPONSE' })
  // The pool is still usable afterwards.
  coordinator.answers.clear()
  t.same(await client.decision('c1.0123456789abcdefghjkmnpqrs'), { decision: 'pending' })
})

t.test('coordinatorClientPlugin decorates app.coordinatorClient and closes it with the app', async t => {
  const coordinator = await stubCoordinator(t)
  const app = Fastify()
  await app.register(coordinatorClientPlugin, { url: coordinator.url })
  const tx = (await app.coordinatorClient.begin()).enlist(inventory)
  t.equal((await tx.commit()).state, 'committed')
  await app.close()
  await t.rejects(app.coordinatorClient.begin(), { code: 'CLIENT_CLOSED' })
})
