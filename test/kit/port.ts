import { createServer } from 'node:net'
import { once } from 'node:events'

/** A port that was free a moment ago on 127.0.0.1 (a restarted child takes the same one). */
export async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as { port: number }).port
  server.close()
  await once(server, 'close')
  return port
}

/** Starts a Fastify app (or anything with `listen` and `server`) on 127.0.0.1, a free port; its base URL. */
export async function listenLocal (app: { listen: (o: { port: number, host: string }) => Promise<unknown>, server: { address: () => unknown } }): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
}
