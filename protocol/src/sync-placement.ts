/** SyncPlacement lives in @fastify-2pc/storage; re-exported here for existing importers. */
export { SyncPlacement, DEFAULT_INLINE_SYNC_MAX_MS, MAX_INLINE_SYNC_MS } from '@fastify-2pc/storage'
