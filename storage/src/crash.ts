/**
 * Test-only fault injection: `TWOPC_CRASH_AT=<point>[:<nth>]` ends the process at once — no
 * cleanup, no flush, like SIGKILL — the nth time (default 1st) the named point is reached.
 * Unset, `crashPoint` is a no-op function: one call, no string compare.
 */
export type CrashPoint = (point: string) => void

function parseCrashAt (value: string | undefined): { point: string, nth: number } | undefined {
  if (value === undefined || value === '') return undefined
  const [point, nthText] = value.split(':')
  const nth = nthText === undefined ? 1 : Number(nthText)
  if (point === undefined || point === '' || !Number.isInteger(nth) || nth < 1) {
    throw new Error(`TWOPC_CRASH_AT must be <point>[:<nth>] with nth >= 1, got "${value}"`)
  }
  return { point, nth }
}

export function makeCrashPoint (value: string | undefined = process.env.TWOPC_CRASH_AT): CrashPoint {
  const target = parseCrashAt(value)
  if (target === undefined) return () => {}
  let seen = 0
  return (point: string) => {
    if (point !== target.point) return
    seen++
    if (seen === target.nth) {
      process.stderr.write(`TWOPC_CRASH_AT: crashing at ${point} (#${seen})\n`)
      process.kill(process.pid, 'SIGKILL')
    }
  }
}

/** The process-wide crash point, configured from the environment at load. */
export const crashPoint: CrashPoint = makeCrashPoint()
