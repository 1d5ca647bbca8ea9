/** The crash-point helper lives in @fastify-2pc/storage; re-exported here for existing importers. */
export { makeCrashPoint, crashPoint, type CrashPoint } from '@fastify-2pc/storage'
