/**
 * The public surface of `@fastify-2pc/amqp`, and the older path `@fastify-2pc/protocol/amqp`,
 * which re-exports it: programs importing either get the same classes and functions.
 */
import t from 'tap'
import * as amqp from '@fastify-2pc/amqp'
import * as viaProtocol from '@fastify-2pc/protocol/amqp'

const PUBLIC = [
  'AmqpLink', 'AmqpNotConnectedError', 'AmqpPublishError', 'BROKER_SIGNATURE_MAX_AGE_MS',
  'DEFAULT_DELIVERY_LIMIT', 'PoisonMessageError', 'createAmqpLink', 'deadLetterQueueArguments',
  'declareParticipantQueue', 'declareTopology', 'declareWorkQueue', 'signBrokerMessage',
  'topologyObjects', 'verifyBrokerMessage', 'workQueueArguments'
]

t.test('the package exports the link, its errors, the topology and broker signatures, and nothing internal', async t => {
  t.same(Object.keys(amqp).sort(), [...PUBLIC].sort())
})

t.test('@fastify-2pc/protocol/amqp re-exports the same objects', async t => {
  t.same(Object.keys(viaProtocol).sort(), [...PUBLIC].sort())
  for (const name of PUBLIC) t.equal((viaProtocol as Record<string, unknown>)[name], (amqp as Record<string, unknown>)[name], name)
})

t.test('a link is built without connecting; its options are checked at once', async t => {
  const link = amqp.createAmqpLink({ url: 'amqp://127.0.0.1:1', prefix: 'twopc-exports' })
  t.ok(link instanceof amqp.AmqpLink)
  t.equal(link.names.prefix, 'twopc-exports')
  t.same(link.status(), { connected: false, lastError: undefined, since: link.status().since, reconnectAttempts: 0, connects: 0, blocked: false })
  t.throws(() => new amqp.AmqpLink({ url: 'http://127.0.0.1' }), /url must be amqp:\/\/ or amqps:\/\//)
  t.throws(() => new amqp.AmqpLink({ url: 'not a url' }), /url is not a valid URL/)
  await link.close()
  await t.rejects(link.start(), /start\(\) after close\(\)/)
})
