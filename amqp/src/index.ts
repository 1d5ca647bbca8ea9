/**
 * `@fastify-2pc/amqp`: the RabbitMQ link of the coordinator and the participant SDK (one
 * recovering connection, confirmed publishing, consumers), the topology of docs/protocol.md and signed
 * broker messages. The names and message bodies on the wire are `@fastify-2pc/protocol`'s.
 */
export { AmqpLink, createAmqpLink } from './link.js'
export * from './types.js'
export * from './topology.js'
export * from './signing.js'
