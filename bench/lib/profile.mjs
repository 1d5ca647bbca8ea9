// Summarizes a V8 .cpuprofile (node --cpu-prof): self time per function and per module.
import { readFileSync } from 'node:fs'

/** @param {string} url @param {string} root */
export function moduleOf (url, root) {
  if (url === '') return '(native / V8 builtins)'
  if (url.startsWith('wasm://')) return 'wasm (undici\'s llhttp parser)'
  if (url.startsWith('node:')) return 'node:' + url.slice(5).split('/').slice(0, 2).join('/')
  const path = url.replace(/^file:\/\//, '')
  const nm = path.lastIndexOf('/node_modules/')
  if (nm >= 0) {
    const parts = path.slice(nm + 14).split('/')
    return (parts[0]?.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]) ?? path
  }
  if (path.startsWith(root + '/')) return path.slice(root.length + 1).replace('/dist/', '/')
  return path
}

/**
 * @param {string} file
 * @param {string} root  repository root, to shorten paths
 * @param {{ from: number, to: number }} [windowFromEndUs]  keep only samples taken between `from` and `to` µs before the profile's end
 */
export function summarizeProfile (file, root, windowFromEndUs) {
  /** @type {{ nodes: { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }[], samples: number[], timeDeltas: number[], startTime: number, endTime: number }} */
  const prof = JSON.parse(readFileSync(file, 'utf8'))
  /** @type {Map<number, number>} */
  const selfById = new Map()
  const from = windowFromEndUs === undefined ? -Infinity : prof.endTime - windowFromEndUs.from
  const to = windowFromEndUs === undefined ? Infinity : prof.endTime - windowFromEndUs.to
  let t = prof.startTime
  for (let i = 0; i < prof.samples.length; i++) {
    t += prof.timeDeltas[i] ?? 0
    if (t < from || t > to) continue
    const id = /** @type {number} */ (prof.samples[i])
    selfById.set(id, (selfById.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0))
  }
  // Inclusive (total) time of the project's own functions: every sample is charged once to each
  // distinct coordinator/protocol/participant-sdk function on its stack.
  /** @type {Map<number, number>} */ const parent = new Map()
  /** @type {Map<number, typeof prof.nodes[number]>} */ const nodeById = new Map()
  for (const node of prof.nodes) {
    nodeById.set(node.id, node)
    for (const child of node.children ?? []) parent.set(child, node.id)
  }
  const ownCode = (/** @type {string} */ url) => /\/(coordinator|protocol|participant-sdk)\/dist\//.test(url) && !url.includes('/node_modules/')
  /** @type {Map<string, number>} */ const inclusive = new Map()
  for (const [id, us] of selfById) {
    const seen = new Set()
    for (let cur = /** @type {number | undefined} */ (id); cur !== undefined; cur = parent.get(cur)) {
      const cf = nodeById.get(cur)?.callFrame
      if (cf === undefined || !ownCode(cf.url)) continue
      const key = `${cf.functionName || '(anonymous)'} ${moduleOf(cf.url, root)}:${cf.lineNumber + 1}`
      if (seen.has(key)) continue
      seen.add(key)
      inclusive.set(key, (inclusive.get(key) ?? 0) + us)
    }
  }
  /** @type {Map<string, number>} */ const byFunction = new Map()
  /** @type {Map<string, number>} */ const byModule = new Map()
  let total = 0
  let idle = 0
  for (const node of prof.nodes) {
    const us = selfById.get(node.id) ?? 0
    if (us === 0) continue
    total += us
    const { functionName, url, lineNumber } = node.callFrame
    if (functionName === '(idle)') { idle += us; continue }
    const special = functionName.startsWith('(') && url === ''
    const mod = special ? functionName : moduleOf(url, root)
    const fn = special ? functionName : `${functionName || '(anonymous)'} ${mod}${url === '' ? '' : `:${lineNumber + 1}`}`
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us)
    byModule.set(mod, (byModule.get(mod) ?? 0) + us)
  }
  const busy = total - idle
  const top = (/** @type {Map<string, number>} */ m, /** @type {number} */ n) => [...m.entries()]
    .sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([name, us]) => ({ name, ms: Math.round(us / 1000), pctOfBusy: Math.round(1000 * us / busy) / 10 }))
  return {
    wallMs: Math.round((Math.min(to, prof.endTime) - Math.max(from, prof.startTime)) / 1000),
    sampledMs: Math.round(total / 1000),
    idleMs: Math.round(idle / 1000),
    busyMs: Math.round(busy / 1000),
    topFunctions: top(byFunction, 25),
    topModules: top(byModule, 20),
    topOwnInclusive: top(inclusive, 20)
  }
}
