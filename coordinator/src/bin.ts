#!/usr/bin/env node
/**
 * `twopc-coordinator`: reads the environment through one validated schema and starts the
 * coordinator. SIGTERM/SIGINT: stop accepting, let requests in flight finish, close the log.
 */
import closeWithGrace from 'close-with-grace'
import { configFromEnv, type ServerConfig } from './config.js'
import { buildCoordinator } from './app.js'

let config: ServerConfig
try {
  config = configFromEnv()
} catch (err) {
  process.stderr.write(`twopc-coordinator: invalid configuration: ${(err as Error).message}\n`)
  process.exit(78) // EX_CONFIG
}

if (config.amqpUrl === undefined) {
  process.stderr.write('twopc-coordinator: AMQP_URL is not set — running WITHOUT RabbitMQ: undelivered decisions are retried over HTTP only\n')
}

let app: Awaited<ReturnType<typeof buildCoordinator>>
try {
  app = await buildCoordinator(config.options)
} catch (err) {
  // A stable code first when there is one (LOG_LOCKED: another process holds the log).
  const code = (err as { code?: unknown }).code
  process.stderr.write(`twopc-coordinator: cannot start: ${code === 'LOG_LOCKED' ? 'LOG_LOCKED: ' : ''}${(err as Error).message}\n`)
  process.exit(1)
}

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) app.log.error({ err }, 'shutting down after an error')
  else app.log.info({ signal }, 'shutting down')
  await app.close()
})

await app.listen({ port: config.port, host: config.host })
