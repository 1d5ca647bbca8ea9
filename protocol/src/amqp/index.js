// `@fastify-2pc/protocol/amqp` is kept for existing imports: the RabbitMQ link, its topology and
// broker signatures are `@fastify-2pc/amqp` (an optional peer dependency: install it to use this
// path). This package is the wire contract only. Plain JavaScript, outside the TypeScript build:
// the amqp package depends on this one, so a compiled re-export would make the builds circular.
export * from '@fastify-2pc/amqp'
