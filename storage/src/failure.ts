/** Why a log stopped taking writes: `full` (no space left), `failed` (an I/O error, a sync refused). */
export type FailureKind = 'full' | 'failed'

/**
 * Whether an error of a write means the disk cannot take the log: `full` (no space left),
 * `failed` (an I/O error, a read-only or damaged file); undefined for anything else (a
 * constraint, a busy lock: that batch fails, the next one is tried).
 */
export function diskFailure (err: unknown): FailureKind | undefined {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined
  if (typeof code !== 'string') return undefined
  if (code === 'SQLITE_FULL' || code === 'ENOSPC' || code === 'EDQUOT') return 'full'
  if (/^SQLITE_(IOERR|CORRUPT|NOTADB|CANTOPEN|READONLY)/.test(code) || code === 'EIO' || code === 'EROFS') return 'failed'
  return undefined
}
