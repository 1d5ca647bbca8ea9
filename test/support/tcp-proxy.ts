/**
 * A TCP proxy a test controls, between a client and a real server (RabbitMQ, an HTTP service).
 * It simulates network faults without touching the shared server:
 *
 * - `cut()`       destroys every open connection and refuses (destroys at once) new ones;
 * - `blackhole()` keeps accepting connections but forwards nothing in either direction, and
 *                 stops forwarding on the open ones: the peer sees silence, not a reset;
 * - `restore()`   forwards again (new connections; connections held while black-holed are
 *                 destroyed, since bytes were dropped and their stream is no longer coherent);
 *                 also ends a delay;
 * - `delay(ms)`   keeps forwarding, every chunk `ms` late (order kept, per direction): a slow
 *                 network. `delay(0)` or `restore()` ends it.
 *
 * The `onData` option (a test hook) sees every chunk before it is forwarded and can cut that one
 * connection right there: a fault at an exact point of the protocol exchange, not at a time.
 */

import net from 'node:net'

export type ProxyMode = 'open' | 'cut' | 'blackhole'

export interface TcpProxy {
  /** The local port clients connect to (on 127.0.0.1). */
  readonly port: number
  readonly host: string
  /** `${host}:${port}` — convenient for URLs. */
  readonly address: string
  readonly mode: ProxyMode
  /** Current added latency per chunk (ms). */
  readonly delayMs: number
  /** Connections accepted so far (whatever the mode). */
  readonly accepted: number
  /** Connections currently open (client side). */
  readonly openConnections: number
  /** Bytes forwarded client -> target and target -> client so far. */
  readonly bytesToTarget: number
  readonly bytesFromTarget: number
  cut (): void
  blackhole (): void
  restore (): void
  delay (ms: number): void
  close (): Promise<void>
}

export interface ProxyChunk {
  /** 1-based number of the connection, in accept order (as counted by `accepted`). */
  connection: number
  direction: 'toTarget' | 'fromTarget'
  chunk: Buffer
}

export interface TcpProxyOptions {
  target: { host: string, port: number }
  /** Port to listen on (default 0: any free port). */
  port?: number
  host?: string
  /**
   * Test hook, called synchronously for every chunk about to be forwarded (in mode `open`, before
   * any delay). Returning `'cut'` destroys this connection (both sockets) instead of forwarding
   * the chunk; other connections and the mode are not affected.
   */
  onData?: (info: ProxyChunk) => 'cut' | undefined | void
}

interface Pair {
  client: net.Socket
  upstream: net.Socket | undefined
  held: boolean
}

export async function startTcpProxy (opts: TcpProxyOptions): Promise<TcpProxy> {
  const host = opts.host ?? '127.0.0.1'
  let mode: ProxyMode = 'open'
  let delayMs = 0
  let accepted = 0
  let bytesToTarget = 0
  let bytesFromTarget = 0
  const pairs = new Set<Pair>()

  const destroyPair = (p: Pair): void => {
    pairs.delete(p)
    p.client.destroy()
    p.upstream?.destroy()
  }

  const server = net.createServer((client) => {
    const connection = ++accepted
    client.on('error', () => {})
    if (mode === 'cut') {
      client.destroy()
      return
    }
    const pair: Pair = { client, upstream: undefined, held: mode === 'blackhole' }
    pairs.add(pair)
    client.on('close', () => destroyPair(pair))
    if (pair.held) {
      // Accept and hold: read and drop whatever the client sends, answer nothing.
      client.on('data', () => {})
      return
    }
    const upstream = net.connect(opts.target.port, opts.target.host)
    pair.upstream = upstream
    upstream.on('error', () => {})
    upstream.on('close', () => destroyPair(pair))
    // Manual piping, so a black-hole can drop bytes on live connections and a delay can hold them.
    let dueToTarget = 0
    let dueFromTarget = 0
    const send = (to: net.Socket, chunk: Buffer, due: number): number => {
      if (delayMs <= 0 && due <= Date.now()) {
        to.write(chunk)
        return 0
      }
      const at = Math.max(Date.now() + delayMs, due)
      setTimeout(() => { if (!to.destroyed && mode === 'open' && !pair.held) to.write(chunk) }, at - Date.now())
      return at
    }
    const cutHere = (direction: ProxyChunk['direction'], chunk: Buffer): boolean => {
      if (opts.onData?.({ connection, direction, chunk }) !== 'cut') return false
      destroyPair(pair)
      return true
    }
    client.on('data', (chunk: Buffer) => {
      if (mode === 'open' && !pair.held) {
        if (cutHere('toTarget', chunk)) return
        bytesToTarget += chunk.length
        dueToTarget = send(upstream, chunk, dueToTarget)
      }
    })
    upstream.on('data', (chunk: Buffer) => {
      if (mode === 'open' && !pair.held) {
        if (cutHere('fromTarget', chunk)) return
        bytesFromTarget += chunk.length
        dueFromTarget = send(client, chunk, dueFromTarget)
      }
    })
  })

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const addr = server.address()
  if (addr === null || typeof addr === 'string') throw new Error('tcp proxy: no port')
  const port = addr.port
  let closed = false

  return {
    port,
    host,
    address: `${host}:${port}`,
    get mode () { return mode },
    get delayMs () { return delayMs },
    get accepted () { return accepted },
    get openConnections () { return pairs.size },
    get bytesToTarget () { return bytesToTarget },
    get bytesFromTarget () { return bytesFromTarget },
    cut () {
      mode = 'cut'
      for (const p of [...pairs]) destroyPair(p)
    },
    blackhole () {
      mode = 'blackhole'
      for (const p of pairs) p.held = true
    },
    delay (ms: number) {
      delayMs = Math.max(0, ms)
    },
    restore () {
      mode = 'open'
      delayMs = 0
      for (const p of [...pairs]) if (p.held) destroyPair(p)
    },
    async close () {
      if (closed) return
      closed = true
      mode = 'cut'
      for (const p of [...pairs]) destroyPair(p)
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
