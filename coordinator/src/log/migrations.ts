/**
 * Numbered migrations of the coordinator's log. Append only: a shipped migration never
 * changes; a new one gets the next number. Each runs in its own SQLite transaction together
 * with the row that records it.
 */
export interface Migration {
  version: number
  name: string
  sql: string
}

export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: 'initial log: transactions, participants, decisions, attention',
    sql: `
      CREATE TABLE coordinator_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) STRICT;

      CREATE TABLE transactions (
        id              TEXT PRIMARY KEY,
        state           TEXT NOT NULL CHECK (state IN ('active', 'preparing', 'committed', 'aborted')),
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        decided_at      INTEGER,
        completed_at    INTEGER,
        reason          TEXT,
        needs_attention INTEGER NOT NULL DEFAULT 0,
        one_phase       INTEGER NOT NULL DEFAULT 0,
        metadata        TEXT
      ) STRICT;
      CREATE INDEX transactions_by_state ON transactions (state, created_at, id);
      CREATE INDEX transactions_by_created ON transactions (created_at, id);
      CREATE INDEX transactions_open ON transactions (expires_at) WHERE state IN ('active', 'preparing');
      CREATE INDEX transactions_unfinished ON transactions (decided_at)
        WHERE completed_at IS NULL AND state IN ('committed', 'aborted');

      -- A decision, once logged, is final: the log itself refuses to change it.
      CREATE TRIGGER transactions_decision_is_final
        BEFORE UPDATE OF state ON transactions
        WHEN OLD.state IN ('committed', 'aborted') AND NEW.state <> OLD.state
      BEGIN
        SELECT RAISE(ABORT, 'a logged decision never changes');
      END;

      CREATE TABLE participants (
        tx_id           TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        name            TEXT NOT NULL,
        url             TEXT NOT NULL,
        payload         TEXT,
        one_phase       INTEGER NOT NULL DEFAULT 0,
        vote            TEXT CHECK (vote IN ('yes', 'no', 'read-only')),
        vote_reason     TEXT,
        ack             TEXT NOT NULL CHECK (ack IN ('none', 'pending', 'acked', 'not-needed', 'heuristic')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at INTEGER,
        PRIMARY KEY (tx_id, name)
      ) STRICT;

      CREATE TABLE decisions (
        tx_id      TEXT PRIMARY KEY REFERENCES transactions (id) ON DELETE CASCADE,
        decision   TEXT NOT NULL CHECK (decision IN ('commit', 'abort')),
        decided_at INTEGER NOT NULL,
        reason     TEXT
      ) STRICT;
      CREATE TRIGGER decisions_are_final BEFORE UPDATE ON decisions
      BEGIN
        SELECT RAISE(ABORT, 'a logged decision never changes');
      END;

      -- Heuristic outcomes and exhausted retry budgets: recorded, never hidden.
      CREATE TABLE attention (
        id          INTEGER PRIMARY KEY,
        tx_id       TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        participant TEXT,
        kind        TEXT NOT NULL CHECK (kind IN ('heuristic', 'retry-budget')),
        detail      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        resolved_at INTEGER,
        resolution  TEXT
      ) STRICT;
      CREATE INDEX attention_by_tx ON attention (tx_id);
      CREATE INDEX attention_open ON attention (created_at) WHERE resolved_at IS NULL;
    `
  },
  {
    version: 2,
    name: 'transactional messages and the outbox',
    sql: `
      ALTER TABLE transactions ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;

      -- Messages enlisted with a transaction: copied to the outbox by the commit decision's own
      -- SQLite transaction, never on abort.
      CREATE TABLE tx_messages (
        tx_id       TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        position    INTEGER NOT NULL,
        exchange    TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        body        TEXT NOT NULL,
        headers     TEXT,
        PRIMARY KEY (tx_id, position)
      ) STRICT;

      -- Everything bound for RabbitMQ, written in the same SQLite transaction as the state change
      -- that causes it; marked published only after the broker's confirm.
      CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        tx_id        TEXT,
        kind         TEXT NOT NULL CHECK (kind IN ('decision', 'event', 'message')),
        exchange     TEXT NOT NULL,
        routing_key  TEXT NOT NULL,
        message_id   TEXT NOT NULL UNIQUE,
        body         TEXT NOT NULL,
        headers      TEXT,
        created_at   INTEGER NOT NULL,
        published_at INTEGER,
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        dead_at      INTEGER
      ) STRICT;
      CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL AND dead_at IS NULL;
      CREATE INDEX outbox_by_tx ON outbox (tx_id);
    `
  },
  {
    version: 3,
    name: 'operator actions: audit, timeline events, the resolved ack state',
    sql: `
      -- The 'resolved' ack state (an operator marked the participant handled): SQLite cannot alter
      -- a CHECK constraint, so the table is rebuilt. Nothing references participants.
      CREATE TABLE participants_v3 (
        tx_id           TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        name            TEXT NOT NULL,
        url             TEXT NOT NULL,
        payload         TEXT,
        one_phase       INTEGER NOT NULL DEFAULT 0,
        vote            TEXT CHECK (vote IN ('yes', 'no', 'read-only')),
        vote_reason     TEXT,
        ack             TEXT NOT NULL CHECK (ack IN ('none', 'pending', 'acked', 'not-needed', 'heuristic', 'resolved')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at INTEGER,
        PRIMARY KEY (tx_id, name)
      ) STRICT;
      INSERT INTO participants_v3 SELECT tx_id, position, name, url, payload, one_phase, vote, vote_reason, ack,
        attempts, last_error, next_attempt_at FROM participants;
      DROP TABLE participants;
      ALTER TABLE participants_v3 RENAME TO participants;
      -- Small partial indexes for the console's views and counters (only the rare rows are indexed).
      CREATE INDEX participants_heuristic ON participants (tx_id) WHERE ack = 'heuristic';
      CREATE INDEX transactions_attention ON transactions (created_at) WHERE needs_attention = 1;

      -- Operator actions (retry, resolve), written in the same SQLite transaction as the change.
      -- No foreign key: the trail outlives the transaction's retention.
      CREATE TABLE audit (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        tx_id  TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT,
        actor  TEXT NOT NULL,
        at     INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX audit_by_tx ON audit (tx_id);

      -- A transaction's timeline (begin, enlist, votes, decision, phase-2 failures and acks, …),
      -- derived from each step's before/after and written in the step's own SQLite transaction.
      CREATE TABLE tx_events (
        id          INTEGER PRIMARY KEY,
        tx_id       TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        at          INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        participant TEXT,
        detail      TEXT
      ) STRICT;
      CREATE INDEX tx_events_by_tx ON tx_events (tx_id, id);
    `
  },
  {
    version: 4,
    name: 'trace context of a transaction; heuristic flag; index for retention',
    sql: `
      -- W3C traceparent of the request that began the transaction: passed on to every callback.
      ALTER TABLE transactions ADD COLUMN traceparent TEXT;
      -- A participant refused the decision at some point: needs_attention then stays for an operator.
      ALTER TABLE transactions ADD COLUMN heuristic INTEGER NOT NULL DEFAULT 0;
      CREATE INDEX transactions_completed ON transactions (completed_at) WHERE completed_at IS NOT NULL;
    `
  },
  {
    version: 5,
    name: 'timeline: the common events read from the record instead of tx_events rows',
    sql: `
      -- Ten tx_events rows per transaction (begin, enlistments, prepare, votes, decision, acks,
      -- completion) were a third of the WAL pages every log write dirtied. Their times now live
      -- in columns of rows each step writes anyway; tx_events keeps the rare events only
      -- (failures, retries, heuristics, resolutions, messages). operator-tables.ts derives the rest.
      ALTER TABLE transactions ADD COLUMN prepared_at INTEGER;
      ALTER TABLE participants ADD COLUMN enlisted_at INTEGER;
      ALTER TABLE participants ADD COLUMN voted_at INTEGER;
      ALTER TABLE participants ADD COLUMN acked_at INTEGER;
      UPDATE transactions SET prepared_at =
        (SELECT min(e.at) FROM tx_events e WHERE e.tx_id = transactions.id AND e.kind = 'prepare');
      UPDATE participants SET
        enlisted_at = (SELECT min(e.at) FROM tx_events e WHERE e.tx_id = participants.tx_id AND e.participant = participants.name AND e.kind = 'enlist'),
        voted_at = (SELECT min(e.at) FROM tx_events e WHERE e.tx_id = participants.tx_id AND e.participant = participants.name AND e.kind = 'vote'),
        acked_at = (SELECT max(e.at) FROM tx_events e WHERE e.tx_id = participants.tx_id AND e.participant = participants.name AND e.kind = 'acked');
      DELETE FROM tx_events WHERE kind IN ('begin', 'enlist', 'prepare', 'vote', 'decision', 'acked', 'completed');
    `
  },
  {
    version: 6,
    name: 'participants and decisions stored in their primary key (WITHOUT ROWID)',
    sql: `
      -- A table with a TEXT primary key is two B-trees in SQLite (the rows by rowid, and the key
      -- index pointing to them): every insert wrote both and every upsert searched both. Keyed
      -- by (tx_id, name) and tx_id alone (ids sort by creation time, so new rows append), each is
      -- one B-tree: ~3 of the ~20 pages a log write dirtied were these two key indexes.
      CREATE TABLE participants_v6 (
        tx_id           TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        position        INTEGER NOT NULL,
        name            TEXT NOT NULL,
        url             TEXT NOT NULL,
        payload         TEXT,
        one_phase       INTEGER NOT NULL DEFAULT 0,
        vote            TEXT CHECK (vote IN ('yes', 'no', 'read-only')),
        vote_reason     TEXT,
        ack             TEXT NOT NULL CHECK (ack IN ('none', 'pending', 'acked', 'not-needed', 'heuristic', 'resolved')),
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at INTEGER,
        enlisted_at     INTEGER,
        voted_at        INTEGER,
        acked_at        INTEGER,
        PRIMARY KEY (tx_id, name)
      ) STRICT, WITHOUT ROWID;
      INSERT INTO participants_v6 (tx_id, position, name, url, payload, one_phase, vote, vote_reason, ack, attempts,
          last_error, next_attempt_at, enlisted_at, voted_at, acked_at)
        SELECT tx_id, position, name, url, payload, one_phase, vote, vote_reason, ack, attempts,
          last_error, next_attempt_at, enlisted_at, voted_at, acked_at FROM participants;
      DROP TABLE participants;
      ALTER TABLE participants_v6 RENAME TO participants;
      CREATE INDEX participants_heuristic ON participants (tx_id) WHERE ack = 'heuristic';

      CREATE TABLE decisions_v6 (
        tx_id      TEXT PRIMARY KEY REFERENCES transactions (id) ON DELETE CASCADE,
        decision   TEXT NOT NULL CHECK (decision IN ('commit', 'abort')),
        decided_at INTEGER NOT NULL,
        reason     TEXT
      ) STRICT, WITHOUT ROWID;
      INSERT INTO decisions_v6 (tx_id, decision, decided_at, reason) SELECT tx_id, decision, decided_at, reason FROM decisions;
      DROP TABLE decisions;
      ALTER TABLE decisions_v6 RENAME TO decisions;
      CREATE TRIGGER decisions_are_final BEFORE UPDATE ON decisions
      BEGIN
        SELECT RAISE(ABORT, 'a logged decision never changes');
      END;
    `
  },
  {
    version: 7,
    name: 'outbox: indexes for retention and the parked count',
    sql: `
      -- Published rows stay until retention (7 days by default): with transactional messages the
      -- outbox holds every message of that window. Retention's delete (every minute) and the
      -- parked count (every /readyz and scrape) each read the whole table on the event loop.
      CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
      CREATE INDEX outbox_parked ON outbox (id) WHERE dead_at IS NOT NULL;
    `
  },
  {
    version: 8,
    name: 'compact records of pruned commits some participant never acked',
    sql: `
      -- A committed transaction that retention prunes while a participant never acked it (an
      -- operator resolved it) leaves its id here, in the same SQLite transaction as the delete:
      -- the decision endpoint answers commit from it instead of a presumed abort, for a
      -- participant restored from a backup or down longer than the retention. Retention never
      -- deletes these rows; an operator's forget does (audited).
      CREATE TABLE pruned_commits (
        id         TEXT PRIMARY KEY,
        decided_at INTEGER NOT NULL,
        pruned_at  INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;
    `
  },
  {
    version: 9,
    name: 'attention kinds unauthorized and not-found',
    sql: `
      -- A phase-2 delivery answered 401, or 404 without TX_UNKNOWN, is retried and flagged: its
      -- entry now says which (it was kind 'retry-budget' with the cause in its detail). SQLite
      -- cannot alter a CHECK constraint, so the table is rebuilt with the same rows and ids.
      CREATE TABLE attention_v9 (
        id          INTEGER PRIMARY KEY,
        tx_id       TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
        participant TEXT,
        kind        TEXT NOT NULL CHECK (kind IN ('heuristic', 'retry-budget', 'unauthorized', 'not-found')),
        detail      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        resolved_at INTEGER,
        resolution  TEXT
      ) STRICT;
      INSERT INTO attention_v9 (id, tx_id, participant, kind, detail, created_at, resolved_at, resolution)
        SELECT id, tx_id, participant, kind, detail, created_at, resolved_at, resolution FROM attention;
      DROP TABLE attention;
      ALTER TABLE attention_v9 RENAME TO attention;
      CREATE INDEX attention_by_tx ON attention (tx_id);
      CREATE INDEX attention_open ON attention (created_at) WHERE resolved_at IS NULL;
    `
  }
]
