/**
 * The coordinator's log: the LogStore interface (log-store.ts) and its SQLite implementation
 * (sqlite/), re-exported from where they were exported before.
 */
export { CoordinatorLog } from './sqlite/sqlite-log.js'
export { UNFINISHED_IDS_SQL, OUTBOX_STATS_SQL, PRUNE_BATCH_SQL, KEEP_PRUNED_COMMITS_SQL } from './sqlite/statements.js'
export { diskFailure } from '@fastify-2pc/storage'
export type {
  AttentionEntry, NewAttention, StepWrites, PrunedCommit, OutboxRow, OutboxStats, NoticeRouting, ListQuery, LogStore
} from './log-store.js'
