/**
 * `coordinatorClientPlugin`: `app.coordinator` for initiators, closed with the app.
 */
import fp from 'fastify-plugin'
import type { FastifyPluginAsync } from 'fastify'
import { createCoordinatorClient } from './client.js'
import type { CoordinatorClient, CoordinatorClientOptions } from './client.js'

declare module 'fastify' {
  interface FastifyInstance {
    coordinator: CoordinatorClient
  }
}

const plugin: FastifyPluginAsync<CoordinatorClientOptions> = async (fastify, options) => {
  const client = createCoordinatorClient(options)
  fastify.decorate('coordinator', client)
  fastify.addHook('onClose', async () => { await client.close() })
}

export const coordinatorClientPlugin = fp(plugin, { name: '@fastify-2pc/participant-sdk/coordinator-client', fastify: '5.x' })
