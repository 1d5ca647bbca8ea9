/** The admin console at /admin (server-rendered HTML). */
import type { FastifyInstance } from 'fastify'
import type { Engine } from '../engine.js'
import type { CoordinatorLog } from '../log/store.js'

export interface ConsoleDeps {
  engine: Engine
  log: CoordinatorLog
  apiToken: string | undefined
  coordinatorId: string
}

export async function adminConsole (app: FastifyInstance, deps: ConsoleDeps): Promise<void> {
  void app
  void deps
}
