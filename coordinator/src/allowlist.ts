/**
 * Which participant URLs the coordinator may call (TWOPC_PARTICIPANT_ALLOWLIST), so the API
 * cannot be used to make the coordinator probe arbitrary hosts. Unset or empty: loopback only.
 * Entries are comma-separated; each is an origin (`https://inventory.internal:8443`) matched
 * exactly, a `host:port`, or a host pattern (`inventory`, `*.svc.cluster.local`) matched on the
 * host name, any port.
 * Host names are matched as written: DNS is not resolved here (see the README's limits).
 */
export type UrlCheck =
  | { ok: true, url: URL }
  | { ok: false, code: 'BAD_PARTICIPANT_URL' | 'PARTICIPANT_URL_NOT_ALLOWED', message: string }

const MAX_URL_LENGTH = 2048

function isLoopback (hostname: string): boolean {
  return hostname === 'localhost' ||
    hostname === '[::1]' ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname)
}

export interface Allowlist {
  describe: string
  check: (raw: string) => UrlCheck
}

export function parseAllowlist (spec: string | undefined): Allowlist {
  const entries = (spec ?? '').split(',').map(s => s.trim()).filter(s => s !== '')
  const origins = new Set<string>()
  const hosts: Array<(host: string) => boolean> = []
  /** `host:port` entries: that host on that port only. */
  const hostPorts = new Set<string>()
  for (const entry of entries) {
    if (entry.includes('://')) {
      let origin: string
      try { origin = new URL(entry).origin } catch { throw new Error(`TWOPC_PARTICIPANT_ALLOWLIST: "${entry}" is not a valid origin`) }
      origins.add(origin)
    } else if (entry.startsWith('*.')) {
      const suffix = entry.slice(1).toLowerCase()
      hosts.push(h => h.endsWith(suffix) && h.length > suffix.length)
    } else if (/^[A-Za-z0-9.-]+:\d{1,5}$/.test(entry)) {
      const [host, port] = entry.toLowerCase().split(':') as [string, string]
      hostPorts.add(`${host}:${port}`)
    } else if (/^[A-Za-z0-9.[\]:-]+$/.test(entry)) {
      const host = entry.toLowerCase()
      hosts.push(h => h === host)
    } else {
      throw new Error(`TWOPC_PARTICIPANT_ALLOWLIST: "${entry}" is neither an origin nor a host pattern`)
    }
  }
  const loopbackOnly = entries.length === 0

  return {
    describe: loopbackOnly ? 'loopback only' : entries.join(', '),
    check (raw) {
      if (raw.length > MAX_URL_LENGTH) return { ok: false, code: 'BAD_PARTICIPANT_URL', message: `url is longer than ${MAX_URL_LENGTH} characters` }
      let url: URL
      try { url = new URL(raw) } catch { return { ok: false, code: 'BAD_PARTICIPANT_URL', message: `"${raw}" is not an absolute URL` } }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') {
        return { ok: false, code: 'BAD_PARTICIPANT_URL', message: `url must be http or https, not ${url.protocol}` }
      }
      if (url.username !== '' || url.password !== '') return { ok: false, code: 'BAD_PARTICIPANT_URL', message: 'url must not carry credentials' }
      if (url.search !== '' || url.hash !== '') return { ok: false, code: 'BAD_PARTICIPANT_URL', message: 'url must not have a query or fragment: it is a callback base' }
      const allowed = loopbackOnly
        ? isLoopback(url.hostname)
        : origins.has(url.origin) || hosts.some(h => h(url.hostname)) ||
          hostPorts.has(`${url.hostname}:${url.port !== '' ? url.port : url.protocol === 'https:' ? '443' : '80'}`)
      if (!allowed) {
        return { ok: false, code: 'PARTICIPANT_URL_NOT_ALLOWED', message: `${url.origin} is not in the participant allowlist (${loopbackOnly ? 'loopback only' : entries.join(', ')})` }
      }
      return { ok: true, url }
    }
  }
}
