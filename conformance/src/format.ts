/** The human output of `twopc-conformance`: a header, the table, the verdict. */
import type { CheckResult, ConformanceReport } from './checks.js'

const RESULT_LABEL: Record<CheckResult['result'], string> = { pass: 'pass', fail: 'FAIL', warn: 'warn', skip: 'skip' }

export function formatReport (report: ConformanceReport): string {
  const lines: string[] = []
  const vote = report.vote === undefined ? 'no valid vote' : `vote "${report.vote}"`
  lines.push(`twopc-conformance ${report.participant}`)
  lines.push(`  participant "${report.name}", ${report.signed ? 'signed with --secret' : 'unsigned (no --secret: signature checks skipped)'}, payload ${JSON.stringify(report.payload)} -> ${vote}`)
  if (report.vote === 'no' || report.vote === 'read-only') {
    lines.push(`  skipped: the participant voted ${report.vote} to --payload — the checks that need a yes vote are skipped; pass a --payload it votes yes to`)
  }
  lines.push('')
  const rows = [['check', 'level', 'result', 'detail'], ...report.checks.map(c => [c.id, c.level, RESULT_LABEL[c.result], c.detail])]
  const widths = [0, 1, 2].map(i => Math.max(...rows.map(r => (r[i] as string).length)))
  for (const r of rows) {
    lines.push(r.map((cell, i) => i < 3 ? cell.padEnd(widths[i] as number) : cell).join('  ').trimEnd())
  }
  lines.push('')
  const { passed, failed, warnings, skipped } = report.summary
  lines.push(`${passed} passed, ${failed} failed (MUST), ${warnings} warning${warnings === 1 ? '' : 's'} (SHOULD), ${skipped} skipped`)
  if (report.cleanup.aborted > 0 || report.cleanup.failed.length > 0) {
    lines.push(`clean-up: aborted ${report.cleanup.aborted} transaction(s) left prepared${report.cleanup.failed.length > 0 ? `; could NOT abort ${report.cleanup.failed.length}: ${report.cleanup.failed.join('; ')}` : ''}`)
  }
  lines.push(report.ok
    ? 'CONFORMS: every MUST check passed'
    : `DOES NOT CONFORM: ${failed} MUST check${failed === 1 ? '' : 's'} failed (${report.checks.filter(c => c.result === 'fail').map(c => c.id).join(', ')})`)
  return lines.join('\n') + '\n'
}
