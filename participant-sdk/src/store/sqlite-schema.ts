/**
 * The SQLite participant log's schema, its migrations, the SQL of its periodic reads, and the
 * durability check of a better-sqlite3 database: one row per (participant, transaction) in the
 * service's own database, so that the SDK's record and the service's business writes commit
 * together.
 */
import type { Database } from 'better-sqlite3'
import type { RecordState } from '../state-machine.js'

/** Name of the SDK's table in the service's database; `twopc_schema_version` tracks migrations. */
export const PARTICIPANT_LOG_TABLE = 'twopc_participant_log'
export const SCHEMA_VERSION_TABLE = 'twopc_schema_version'
const SCHEMA_COMPONENT = 'participant-sdk'

/** Migrations in order; index i brings the schema from version i to i + 1. Never edit one. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE ${PARTICIPANT_LOG_TABLE} (
     participant TEXT NOT NULL,
     txid        TEXT NOT NULL,
     state       TEXT NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted', 'read-only', 'tombstone')),
     reason      TEXT,
     created_at  INTEGER NOT NULL,
     updated_at  INTEGER NOT NULL,
     PRIMARY KEY (participant, txid)
   ) WITHOUT ROWID;
   CREATE INDEX ${PARTICIPANT_LOG_TABLE}_by_state ON ${PARTICIPANT_LOG_TABLE} (participant, state, updated_at);`,
  // The in-doubt recovery pages through prepared records in txid order every second; through
  // the primary key that read every record of the participant (~14 ms at 300,000 records, on
  // the event loop). Only prepared records are in this index, so a page costs what it returns.
  `CREATE INDEX ${PARTICIPANT_LOG_TABLE}_prepared ON ${PARTICIPANT_LOG_TABLE} (participant, txid) WHERE state = 'prepared';`
]

export class SchemaTooNewError extends Error {
  constructor (found: number, known: number) {
    super(`${SCHEMA_VERSION_TABLE} says participant-sdk schema ${found}, this SDK knows up to ${known}: refusing to run an older SDK on a newer log`)
    this.name = 'SchemaTooNewError'
  }
}

/** Brings the SDK's tables to the current version; safe to call on every start. */
export function migrate (db: Database): void {
  db.transaction(() => {
    db.exec(`CREATE TABLE IF NOT EXISTS ${SCHEMA_VERSION_TABLE} (component TEXT PRIMARY KEY, version INTEGER NOT NULL)`)
    const row = db.prepare(`SELECT version FROM ${SCHEMA_VERSION_TABLE} WHERE component = ?`).get(SCHEMA_COMPONENT) as { version: number } | undefined
    const current = row?.version ?? 0
    if (current > MIGRATIONS.length) throw new SchemaTooNewError(current, MIGRATIONS.length)
    for (let version = current; version < MIGRATIONS.length; version++) {
      db.exec(MIGRATIONS[version] as string)
    }
    db.prepare(`INSERT INTO ${SCHEMA_VERSION_TABLE} (component, version) VALUES (?, ?)
                ON CONFLICT (component) DO UPDATE SET version = excluded.version`).run(SCHEMA_COMPONENT, MIGRATIONS.length)
  }).immediate()
}

/** Every state but `prepared`: the records retention may delete. */
const SETTLED_STATES = ['committed', 'aborted', 'read-only', 'tombstone'] as const satisfies ReadonlyArray<Exclude<RecordState, 'none' | 'prepared'>>
// Fails to compile when a state is added to RecordState and not to the list above.
const settledStatesComplete: [Exclude<RecordState, 'none' | 'prepared' | typeof SETTLED_STATES[number]>] extends [never] ? true : false = true
void settledStatesComplete

export const GET_SQL = `SELECT txid, state, reason, created_at, updated_at FROM ${PARTICIPANT_LOG_TABLE}
  WHERE participant = ? AND txid = ?`

export const UPSERT_SQL = `INSERT INTO ${PARTICIPANT_LOG_TABLE} (participant, txid, state, reason, created_at, updated_at)
  VALUES (?, ?, ?, ?, ?, ?)
  ON CONFLICT (participant, txid) DO UPDATE
  SET state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at`

export const PREPARED_SUMMARY_SQL = `SELECT count(*) AS n, min(updated_at) AS oldest FROM ${PARTICIPANT_LOG_TABLE}
  WHERE participant = ? AND state = 'prepared'`

/**
 * One page of prepared records in txid order (the in-doubt recovery's periodic read). INDEXED BY:
 * without statistics the planner may still take the primary key for its order — a read of every
 * record of the participant.
 */
export const PREPARED_PAGE_SQL = `SELECT txid, state, reason, created_at, updated_at
  FROM ${PARTICIPANT_LOG_TABLE} INDEXED BY ${PARTICIPANT_LOG_TABLE}_prepared
  WHERE participant = ? AND state = 'prepared' AND txid > ?
  ORDER BY txid LIMIT ?`

// WITHOUT ROWID tables have no rowid (and DELETE ... LIMIT is a compile-time option):
// prune by primary key through a bounded subquery. The settled states are listed rather
// than written `state <> 'prepared'`: a list is one range of `_by_state` per state, so a
// run reads only what it deletes; `<>` read every record of the participant (~15 ms at
// 300,000 records, every second, on the event loop, with nothing old enough to delete).
export const PRUNE_SQL = `DELETE FROM ${PARTICIPANT_LOG_TABLE}
  WHERE participant = @participant AND txid IN (
    SELECT txid FROM ${PARTICIPANT_LOG_TABLE} INDEXED BY ${PARTICIPANT_LOG_TABLE}_by_state
    WHERE participant = @participant AND state IN (${SETTLED_STATES.map(s => `'${s}'`).join(', ')})
      AND updated_at < @before
    LIMIT @limit)`

/**
 * How the SDK's transactions are made durable on `db`:
 * - `wal`: committed with `synchronous=NORMAL`, then the SDK's own fdatasync of the WAL;
 * - `rollback`: committed with `synchronous=EXTRA` (SQLite syncs before the COMMIT returns);
 * - `memory`: an in-memory database, nothing survives a restart anyway;
 * - `{ unsafe }`: no commit on it can be made durable; the reason names the setting to change.
 * `synchronous=OFF` is refused in WAL mode too: the service's own commits would then run SQLite's
 * checkpoints without their fsyncs, and a checkpoint that restarts the WAL can lose records the
 * SDK had synced.
 */
export function logDurability (db: Database): 'wal' | 'rollback' | 'memory' | { unsafe: string } {
  if (db.memory) return 'memory'
  const journal = String(db.pragma('journal_mode', { simple: true })).toLowerCase()
  if (journal !== 'wal' && journal !== 'delete' && journal !== 'truncate' && journal !== 'persist') {
    return { unsafe: `journal_mode=${journal}: a crash in the middle of a commit can leave the database half written. Needed: journal_mode=WAL (db.pragma('journal_mode = WAL'), recommended), or DELETE, TRUNCATE or PERSIST` }
  }
  if (db.pragma('synchronous', { simple: true }) === 0) {
    return { unsafe: "synchronous=OFF: SQLite skips the fsyncs of commits and checkpoints, so a yes vote could be lost in a power cut. Needed: synchronous=NORMAL or higher (db.pragma('synchronous = NORMAL'); FULL is fine too)" }
  }
  return journal === 'wal' ? 'wal' : 'rollback'
}
