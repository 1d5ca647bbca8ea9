/**
 * The shared test kit (test/kit): what each helper promises, so the tests built on it can fail.
 */
import t from 'tap'
import { createServer } from 'node:net'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { freePort } from './kit/port.js'
import { waitFor } from './kit/wait.js'
import { seededRandom } from './kit/random.js'
import { listeningPort, runNode, spawnNode } from './kit/child.js'
import { missingTool, type ToolTest } from './kit/tools.js'

t.test('freePort: a port on 127.0.0.1 that can be bound', async t => {
  const port = await freePort()
  t.ok(port > 0 && port < 65536)
  const server = createServer()
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  t.equal((server.address() as { port: number }).port, port)
  server.close()
})

t.test('waitFor: resolves with the first truthy value, retries throws, times out naming what and state', async t => {
  let n = 0
  t.equal(await waitFor('three', () => ++n >= 3 ? n : 0, 2000, { everyMs: 1 }), 3)
  let calls = 0
  t.equal(await waitFor('after a throw', () => { if (++calls === 1) throw new Error('not yet'); return 'ok' }, 2000, { everyMs: 1 }), 'ok')
  await t.rejects(waitFor('never', () => false, 50, { everyMs: 5, state: () => ({ seen: 'nothing' }) }),
    /timed out after 50 ms waiting for never — \{"seen":"nothing"\}/)
  await t.rejects(waitFor('a server', () => { throw new Error('ECONNREFUSED') }, 30, { everyMs: 5 }), /last error: ECONNREFUSED/)
})

t.test('seededRandom: the same seed gives the same sequence, in [0, 1)', async t => {
  const a = seededRandom(42)
  const b = seededRandom(42)
  const xs = Array.from({ length: 100 }, () => a())
  t.same(Array.from({ length: 100 }, () => b()), xs)
  t.ok(xs.every(x => x >= 0 && x < 1))
  t.not(seededRandom(43)(), xs[0])
})

t.test('spawnNode and listeningPort: the printed port, the output, the exit', async t => {
  const dir = t.testdir()
  const file = join(dir, 'child.mjs')
  writeFileSync(file, "console.error('to stderr'); console.log('LISTENING 4321'); setTimeout(() => process.exit(3), 50)\n")
  const child = spawnNode(file, { name: 'fixture', nodeArgs: [] })
  t.equal(await listeningPort(child, 20_000), 4321)
  t.same(await child.exited, { code: 3, signal: null })
  t.match(child.stderr(), /to stderr/)
  t.equal(child.alive(), false)

  const silent = join(dir, 'silent.mjs')
  writeFileSync(silent, 'process.exit(0)\n')
  await t.rejects(listeningPort(spawnNode(silent, { name: 'silent', nodeArgs: [] }), 20_000), /silent exited before listening/)

  const forever = join(dir, 'forever.mjs')
  writeFileSync(forever, 'setInterval(() => {}, 1000)\n')
  const hung = spawnNode(forever, { name: 'hung', nodeArgs: [] })
  await t.rejects(listeningPort(hung, 100), /hung did not start/)
  t.same(await hung.kill(), { code: null, signal: 'SIGKILL' })
})

t.test('runNode: the whole output and the exit; killed after its time, with the signal asked for', async t => {
  const dir = t.testdir()
  const file = join(dir, 'args.mjs')
  writeFileSync(file, "console.log(process.argv.slice(2).join(','), process.env.KIT_SET, process.env.KIT_UNSET ?? 'unset'); console.error('e'.repeat(100)); process.exit(2)\n")
  process.env.KIT_UNSET = 'inherited'
  t.teardown(() => { delete process.env.KIT_UNSET })
  const run = await runNode(file, { nodeArgs: [], args: ['a', 'b'], env: { KIT_SET: 'set', KIT_UNSET: undefined }, timeoutMs: 20_000 })
  t.same([run.code, run.signal, run.stdout, run.stderr.length], [2, null, 'a,b set unset\n', 101])
  const forever = join(dir, 'forever.mjs')
  writeFileSync(forever, "process.on('SIGINT', () => process.exit(7)); setInterval(() => {}, 1000); console.log('up')\n")
  t.same((await runNode(forever, { nodeArgs: [], timeoutMs: 5000, killSignal: 'SIGINT' })).code, 7, 'stopped by SIGINT after its time')
})

t.test('missingTool: a failure in CI, with the install command; a skip elsewhere', async t => {
  const record = (): ToolTest & { failed: string[], skipped: string[] } => {
    const r = { name: 'some test', failed: [] as string[], skipped: [] as string[], fail: (m: string) => r.failed.push(m), skip: (m: string) => r.skipped.push(m) }
    return r
  }
  const saved = process.env.CI
  t.teardown(() => { if (saved === undefined) delete process.env.CI; else process.env.CI = saved })
  for (const ci of ['true', '1']) {
    process.env.CI = ci
    const r = record()
    missingTool(r, 'chromium is missing', 'apt-get install -y chromium')
    t.same(r.skipped, [], `CI=${ci}: not skipped`)
    t.match(r.failed, [/^FAILED \(CI\): some test: chromium is missing \(install: apt-get install -y chromium\)$/], `CI=${ci}: failed`)
  }
  process.env.CI = ''
  const r = record()
  const write = process.stderr.write
  let loud = ''
  process.stderr.write = ((s: string) => { loud += s; return true }) as typeof process.stderr.write
  try { missingTool(r, 'chromium is missing', 'apt-get install -y chromium') } finally { process.stderr.write = write }
  t.same(r.failed, [], 'outside CI: not failed')
  t.match(r.skipped, [/SKIPPED: some test: chromium is missing \(install: apt-get install -y chromium\)/])
  t.match(loud, /!!! SKIPPED: some test: chromium is missing/, 'said loudly on stderr')
})
