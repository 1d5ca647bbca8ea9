/**
 * `@fastify-2pc/conformance`: protocol conformance checks against any 2PC participant over HTTP
 * (the `twopc-conformance` bin is cli.ts), for programs that run them in process.
 */
export { runConformance, CHECKS } from './checks.js'
export type { CheckDef, CheckResult, ConformanceOptions, ConformanceReport, Level, Result } from './checks.js'
export { formatReport } from './format.js'
