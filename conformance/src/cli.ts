#!/usr/bin/env node
/**
 * `twopc-conformance <participant-base-url> [options]`: protocol conformance checks against any
 * 2PC participant over HTTP. Exit 0 when every MUST check passed, 1 when one failed, 2 on a
 * usage error.
 */
import { parseArgs } from 'node:util'
import { COORDINATOR_ID_PATTERN, PARTICIPANT_NAME_PATTERN } from '@fastify-2pc/protocol'
import { runConformance, type ConformanceOptions } from './checks.js'
import { formatReport } from './format.js'

const USAGE = `usage: twopc-conformance <participant-base-url> [options]

  <participant-base-url>   the participant's callback base, e.g. http://127.0.0.1:3001/2pc
                           (the kit POSTs to <url>/prepare, <url>/commit, <url>/abort, and
                           <url>/batch when prepare answers advertise a batch route)
  --name NAME              participant name sent in prepare bodies (default: conformance)
  --payload JSON           prepare payload (default: {}); give one the participant votes yes to,
                           or the checks that need a yes vote are skipped
  --secret S               the participant's HMAC secret (default: $TWOPC_SECRET): signs every
                           request and runs the signature checks
  --timeout-ms N           per-request timeout (default: 5000)
  --coordinator-id ID      prefix of the generated transaction ids (default: conformance)
  --json                   print the report as JSON instead of a table
  -h, --help               this text

Runs against a test instance: with a yes payload it commits a few transactions (about 8)
and aborts the rest. Exit code: 0 every MUST check passed, 1 a MUST check failed, 2 usage error.
`

function usageError (message: string): never {
  process.stderr.write(`twopc-conformance: ${message}\n\n${USAGE}`)
  process.exit(2)
}

function parse (argv: string[]): { options: ConformanceOptions, json: boolean } {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        name: { type: 'string' },
        payload: { type: 'string' },
        secret: { type: 'string' },
        'timeout-ms': { type: 'string' },
        'coordinator-id': { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      }
    })
  } catch (err) {
    usageError((err as Error).message)
  }
  const { values, positionals } = parsed
  if (values.help === true) {
    process.stdout.write(USAGE)
    process.exit(0)
  }
  if (positionals.length !== 1) usageError(positionals.length === 0 ? 'the participant base url is missing' : `one url expected, got ${positionals.length} arguments`)
  const url = positionals[0] as string
  if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) usageError(`not an http(s) url: ${url}`)
  const name = values.name ?? 'conformance'
  if (!new RegExp(PARTICIPANT_NAME_PATTERN).test(name)) usageError(`--name must match ${PARTICIPANT_NAME_PATTERN}`)
  const coordinatorId = values['coordinator-id'] ?? 'conformance'
  if (!new RegExp(COORDINATOR_ID_PATTERN).test(coordinatorId)) usageError(`--coordinator-id must match ${COORDINATOR_ID_PATTERN}`)
  let payload: unknown = {}
  if (values.payload !== undefined) {
    try {
      payload = JSON.parse(values.payload)
    } catch (err) {
      usageError(`--payload is not JSON: ${(err as Error).message}`)
    }
  }
  const timeoutText = values['timeout-ms'] ?? '5000'
  const timeoutMs = Number(timeoutText)
  if (!/^\d+$/.test(timeoutText) || !Number.isSafeInteger(timeoutMs) || timeoutMs < 1) usageError('--timeout-ms must be a positive integer')
  const secret = values.secret ?? (process.env.TWOPC_SECRET !== '' ? process.env.TWOPC_SECRET : undefined)
  if (secret === '') usageError('--secret must not be empty')
  return { options: { url, name, payload, coordinatorId, secret, timeoutMs }, json: values.json === true }
}

const { options, json } = parse(process.argv.slice(2))
const report = await runConformance(options)
process.stdout.write(json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report))
process.exitCode = report.ok ? 0 : 1
