/**
 * A test whose tool (a binary: chromium, docker-compose, rabbitmqctl) is missing: skipped LOUDLY
 * on a developer's machine, a failure in CI (`CI=true` or `CI=1`), with the command that installs it.
 */

export function isCI (): boolean {
  const ci = process.env.CI
  return ci === 'true' || ci === '1'
}

/** The subset of a tap Test this helper uses (keeps it independent of tap's types). */
export interface ToolTest {
  name: string
  fail (message: string): unknown
  skip (...args: any[]): unknown
}

/** Records the missing tool: `t.fail` in CI, else a loud line on stderr and a skip. */
export function missingTool (t: ToolTest, what: string, install: string): void {
  const msg = `${t.name}: ${what} (install: ${install})`
  if (isCI()) {
    t.fail(`FAILED (CI): ${msg}`)
    return
  }
  process.stderr.write(`\n${'!'.repeat(78)}\n!!! SKIPPED: ${msg}\n!!! (in CI this is a failure)\n${'!'.repeat(78)}\n\n`)
  t.skip(`SKIPPED: ${msg}`)
}
