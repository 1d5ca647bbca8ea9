/**
 * `coordinatorClientPlugin`: `app.coordinatorClient` for initiators, closed with the app.
 * (Not `app.coordinator`: the coordinator service decorates that name with its own type.)
 */
import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import { createCoordinatorClient } from './client.js'
import type { CoordinatorClient, CoordinatorClientOptions } from './client.js'

declare module 'fastify' {
  interface FastifyInstance {
    coordinatorClient: CoordinatorClient
  }
}

const plugin: FastifyPluginAsync<CoordinatorClientOptions> = async (fastify, options) => {
  const client = createCoordinatorClient(options)
  fastify.decorate('coordinatorClient', client)
  fastify.addHook('onClose', async () => { await client.close() })
}

export const coordinatorClientPlugin = fp(plugin, { name: '@fastify-2pc/participant-sdk/coordinator-client', fastify: '5.x' })
