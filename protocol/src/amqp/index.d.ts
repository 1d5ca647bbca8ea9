// Types of the `@fastify-2pc/protocol/amqp` re-export (index.js): `@fastify-2pc/amqp`'s.
export * from '@fastify-2pc/amqp'
