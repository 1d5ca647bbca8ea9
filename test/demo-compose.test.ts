/**
 * docker-compose.yml and the Dockerfile, without a Docker engine:
 * - `docker-compose config -q` (Debian's docker-compose) accepts the file. Without the binary the
 *   check is skipped LOUDLY, except in CI (`CI=true`), where it fails.
 * - Every environment variable set for a service is one that service accepts (the coordinator:
 *   the keys of coordinator/src/config.ts EnvSchema; a demo service: ACCEPTED_ENV from
 *   demo-services/src/config.ts), and the values pass the service's own validation.
 * - The shape the demo promises: the five services, healthchecks, a volume per SQLite database,
 *   one image for all, a non-root multi-stage build with `npm ci --omit=dev`.
 */
import t from 'tap'
import type { Test } from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { ACCEPTED_ENV, envFor, type ServiceName } from '@fastify-2pc/demo-services'
import { EnvSchema, configFromEnv } from '../coordinator/src/config.js'
import { missingTool } from './kit/tools.js'

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)))
const COMPOSE = join(ROOT, 'docker-compose.yml')

interface ComposeService {
  image?: string
  build?: string | { context?: string, target?: string }
  command?: string[] | string
  environment?: Record<string, string | number | boolean | null> | string[]
  volumes?: Array<string | { source?: string, target?: string }>
  healthcheck?: { test?: unknown }
  depends_on?: unknown
}
interface ComposeFile { services: Record<string, ComposeService>, volumes?: Record<string, unknown> }

const COORDINATOR_ENV: readonly string[] = Object.keys(EnvSchema.properties)

/** Which program a service runs, from its command: the coordinator's bin or a demo service's. */
function programOf (service: ComposeService): 'coordinator' | ServiceName | undefined {
  const cmd = Array.isArray(service.command) ? service.command.join(' ') : service.command ?? ''
  if (/coordinator\/dist\/bin\.js/.test(cmd)) return 'coordinator'
  const m = /demo-services\/dist\/(order|inventory|payment)-bin\.js/.exec(cmd)
  return m === null ? undefined : m[1] as ServiceName
}

function environmentOf (service: ComposeService): Record<string, string> {
  const env = service.environment ?? {}
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map(e => { const i = e.indexOf('='); return i < 0 ? [e, ''] : [e.slice(0, i), e.slice(i + 1)] }))
  }
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v === null ? '' : String(v)]))
}

/** `${NAME:-default}` / `${NAME-default}` / `${NAME}` with the defaults only (deterministic, host env ignored). */
function interpolateDefaults (text: string): string {
  return text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (_m, _name: string, def?: string) => def ?? '')
}

function checkServices (t: Test, file: ComposeFile, label: string): void {
  const services = file.services ?? {}
  t.same(Object.keys(services).sort(), ['coordinator', 'inventory', 'order', 'payment', 'rabbitmq'], `${label}: the five services`)
  t.match(services.rabbitmq?.image ?? '', /^rabbitmq:.*management/, `${label}: rabbitmq uses the management image`)
  const images = new Set<string>()
  const volumesSeen = new Map<string, string>()
  for (const [name, service] of Object.entries(services)) {
    t.ok(service.healthcheck?.test !== undefined, `${label}: ${name} has a healthcheck`)
    const env = environmentOf(service)
    if (name === 'rabbitmq') continue
    const program = programOf(service)
    t.equal(program, name, `${label}: ${name} runs its own program`)
    if (program === undefined) continue
    images.add(`${service.image ?? ''} ${JSON.stringify(service.build ?? null)}`)
    const accepted = program === 'coordinator' ? COORDINATOR_ENV : ACCEPTED_ENV[program]
    const unknown = Object.keys(env).filter(k => !accepted.includes(k))
    t.same(unknown, [], `${label}: every variable set for ${name} is one it accepts`)
    // The values pass the service's own validation (what its bin does at start).
    try {
      if (program === 'coordinator') configFromEnv(env)
      else if (program === 'order') envFor('order', env)
      else envFor(program, env)
      t.pass(`${label}: ${name}'s environment is valid for it`)
    } catch (err) {
      t.fail(`${label}: ${name}'s environment is rejected: ${(err as Error).message}`)
    }
    // Its SQLite file sits on a volume of its own.
    const dbPath = program === 'coordinator' ? env.TWOPC_DB : env.DB_PATH
    t.ok(dbPath !== undefined && posix.isAbsolute(dbPath), `${label}: ${name} sets an absolute database path`)
    if (dbPath === undefined) continue
    const mount = (service.volumes ?? []).map(v => typeof v === 'string'
      ? { source: v.split(':')[0] ?? '', target: v.split(':')[1] ?? '' }
      : { source: v.source ?? '', target: v.target ?? '' })
      .find(v => dbPath.startsWith(v.target.replace(/\/?$/, '/')))
    t.ok(mount !== undefined && file.volumes !== undefined && mount.source in file.volumes, `${label}: ${name}'s database ${dbPath} is on a named volume`)
    if (mount !== undefined) {
      t.notOk(volumesSeen.has(mount.source), `${label}: ${name}'s volume ${mount.source} is its own (not shared with ${volumesSeen.get(mount.source) ?? ''})`)
      volumesSeen.set(mount.source, name)
    }
  }
  t.equal(images.size, 1, `${label}: one image (and one build) for the coordinator and the three services`)
}

t.test('docker-compose.yml as written: services, environment, volumes', async t => {
  const text = readFileSync(COMPOSE, 'utf8')
  const file = parse(interpolateDefaults(text), { merge: true }) as ComposeFile
  checkServices(t, file, 'file')
})

t.test('docker-compose config -q accepts the file; the resolved config passes the same checks', async t => {
  const probe = spawnSync('docker-compose', ['version'], { encoding: 'utf8' })
  if (probe.error !== undefined) {
    missingTool(t, `docker-compose is not installed (${probe.error.message})`, 'apt-get install -y docker-compose')
    return
  }
  // Neither the host's variables nor a .env file may change the outcome.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TWOPC_|AMQP_URL$|COMPOSE_)/.test(k)))
  const quiet = spawnSync('docker-compose', ['-f', COMPOSE, '--project-directory', ROOT, 'config', '-q'], { encoding: 'utf8', env })
  t.equal(quiet.status, 0, `docker-compose config -q exits 0\n${quiet.stderr}`)
  const full = spawnSync('docker-compose', ['-f', COMPOSE, '--project-directory', ROOT, 'config'], { encoding: 'utf8', env })
  t.equal(full.status, 0, 'docker-compose config prints the resolved file')
  if (full.status === 0) checkServices(t, parse(full.stdout) as ComposeFile, 'resolved')
})

t.test('Dockerfile: multi-stage, production dependencies only, non-root', async t => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  t.ok((text.match(/^FROM /gm) ?? []).length >= 2, 'multi-stage')
  t.match(text, /npm ci --omit=dev/, 'npm ci --omit=dev')
  const users = text.match(/^USER\s+(\S+)/gm) ?? []
  const last = users.at(-1)?.split(/\s+/)[1]
  t.ok(last !== undefined && last !== 'root' && last !== '0', `runs as a non-root user (${last ?? 'none'})`)
  const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  t.match(ignore, /node_modules/, '.dockerignore keeps host node_modules out')
})

t.test('Dockerfile: every workspace the services load is in the image, with its own node_modules', async t => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const rootPackage = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { workspaces: string[] }
  // The coordinator and the demo services load these at run time (directly or through each other).
  const shipped = ['storage', 'protocol', 'amqp', 'coordinator', 'participant-sdk', 'demo-services']
  for (const ws of shipped) t.ok(rootPackage.workspaces.includes(ws), `${ws} is a workspace`)
  for (const ws of rootPackage.workspaces) {
    t.ok(text.includes(`COPY ${ws}/package.json ${ws}/`), `the deps stage installs with ${ws}/package.json (npm ci needs every workspace of the lock)`)
  }
  for (const ws of shipped) {
    t.ok(text.includes(`COPY --from=build /app/${ws}/dist ./${ws}/dist`), `the image holds ${ws}/dist`)
    t.ok(text.includes(`COPY --from=build /app/${ws}/package.json ./${ws}/package.json`), `the image holds ${ws}/package.json`)
    t.ok(text.includes(`COPY --from=deps /app/${ws}/node_modules ./${ws}/node_modules`), `the image holds ${ws}/node_modules (a version other than the root's)`)
  }
})

t.test('the coordinator runs with the same V8 flags in the Dockerfile, docker-compose.yml and the bench, and node accepts them', async t => {
  const flagsIn = (text: string): string[] => [...text.matchAll(/"(--[a-z0-9-]+=\d+)"|'(--[a-z0-9-]+=\d+)'/g)].map(m => m[1] ?? m[2] ?? '')
  const dockerCmd = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').split('\n').find(l => l.startsWith('CMD ')) ?? ''
  const compose = parse(readFileSync(COMPOSE, 'utf8')) as ComposeFile
  const composeCmd = compose.services.coordinator?.command
  const bench = /const COORDINATOR_NODE_FLAGS = \[(.*)\]/.exec(readFileSync(join(ROOT, 'bench', 'run.mjs'), 'utf8'))?.[1] ?? ''
  const shipped = flagsIn(dockerCmd)
  t.ok(shipped.length > 0, `the Dockerfile's CMD passes V8 flags: ${dockerCmd}`)
  t.same(Array.isArray(composeCmd) ? composeCmd.filter(a => a.startsWith('--')) : [], shipped, 'docker-compose.yml: the same flags')
  t.same(flagsIn(bench), shipped, 'bench/run.mjs: the same flags')
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
  t.ok(readme.includes(shipped.join(' ')), 'the README names them')
  const run = spawnSync(process.execPath, [...shipped, '-e', 'process.exit(0)'], { encoding: 'utf8' })
  t.equal(run.status, 0, `node accepts them\n${run.stderr}`)
})
