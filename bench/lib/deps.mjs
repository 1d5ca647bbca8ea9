// Dependencies of the bench, resolved from the workspaces that declare them (bench/ is not a
// workspace of its own, so nothing here needs an install): undici 7 from the participant SDK,
// fastify and better-sqlite3 from the coordinator.
import { createRequire } from 'node:module'

const fromSdk = createRequire(new URL('../../participant-sdk/package.json', import.meta.url))
const fromCoordinator = createRequire(new URL('../../coordinator/package.json', import.meta.url))

/** @type {typeof import('undici')} */
export const undici = fromSdk('undici')
export const Fastify = fromCoordinator('fastify')
export const Database = fromCoordinator('better-sqlite3')
