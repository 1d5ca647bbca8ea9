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
