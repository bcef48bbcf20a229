import { randomUUID } from 'node:crypto';
import type Database from 'better-sqlite3';
import { createChangeLogTables } from './sqlite-change-log.js';

/**
 * On-disk schema, versioned by `PRAGMA user_version`. Each migration moves the file one version
 * forward inside one transaction; a file from a newer seqgate is refused rather than guessed at.
 * Changing a released migration is forbidden: add a new one.
 */
const MIGRATIONS: ReadonlyArray<(db: Database.Database) => void> = [
  (db) => {
    db.exec(`
      CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
      ) WITHOUT ROWID;

      -- Heads are never deleted: a stream's mark only moves forward, so an old seq cannot apply twice.
      CREATE TABLE streams (
        id             INTEGER PRIMARY KEY,
        tenant         TEXT    NOT NULL,
        name           TEXT    NOT NULL,
        epoch          INTEGER NOT NULL,
        seq            INTEGER NOT NULL,
        pruned_through INTEGER NOT NULL DEFAULT 0,
        ack_count      INTEGER NOT NULL DEFAULT 0,
        UNIQUE (tenant, name)
      );

      -- A deleted document keeps its row (state NULL) so that its version never restarts.
      CREATE TABLE documents (
        tenant     TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        version    INTEGER NOT NULL,
        deleted    INTEGER NOT NULL,
        state      BLOB,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)
      ) WITHOUT ROWID;

      -- outcome: 0 applied, 1 version_conflict
      CREATE TABLE acks (
        stream_id    INTEGER NOT NULL,
        epoch        INTEGER NOT NULL,
        seq          INTEGER NOT NULL,
        fingerprint  BLOB    NOT NULL,
        outcome      INTEGER NOT NULL,
        key          TEXT    NOT NULL,
        version      INTEGER NOT NULL,
        deleted      INTEGER NOT NULL,
        if_version   INTEGER,
        committed_at INTEGER NOT NULL,
        PRIMARY KEY (stream_id, epoch, seq)
      ) WITHOUT ROWID;
      CREATE INDEX acks_by_commit_time ON acks (committed_at);
    `);
    const insert = db.prepare('INSERT INTO meta (name, value) VALUES (?, ?)');
    insert.run('incarnation', randomUUID());
    insert.run('created_at', new Date().toISOString());
  },
  (db) => {
    // The stored answer of an Idempotency-Key create; a retry renders the same response from it.
    db.exec(`
      CREATE TABLE idempotency (
        tenant      TEXT    NOT NULL,
        scope       TEXT    NOT NULL,
        key         TEXT    NOT NULL,
        fingerprint BLOB    NOT NULL,
        doc_key     TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (tenant, scope, key)
      ) WITHOUT ROWID;
      CREATE INDEX idempotency_by_time ON idempotency (created_at);
    `);
  },
  // The change log (transactional outbox) of the changefeed.
  createChangeLogTables,
  (db) => {
    // New acks land here, in commit order, so one batch's acks share pages whichever streams they
    // belong to; the store moves them into `acks` (ordered by stream) in large sorted passes. In
    // `acks` every put would dirty a page of its own stream. `acks_all` is every stored ack.
    db.exec(`
      CREATE TABLE recent_acks (
        id           INTEGER PRIMARY KEY,
        stream_id    INTEGER NOT NULL,
        epoch        INTEGER NOT NULL,
        seq          INTEGER NOT NULL,
        fingerprint  BLOB    NOT NULL,
        outcome      INTEGER NOT NULL,
        key          TEXT    NOT NULL,
        version      INTEGER NOT NULL,
        deleted      INTEGER NOT NULL,
        if_version   INTEGER,
        committed_at INTEGER NOT NULL
      );
      CREATE UNIQUE INDEX recent_acks_by_stream ON recent_acks (stream_id, epoch, seq);
      CREATE VIEW acks_all AS
        SELECT stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at FROM acks
        UNION ALL
        SELECT stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at FROM recent_acks;
    `);
  },
  (db) => {
    // Time-based pruning finds streams by the commit time of their oldest prunable ack (NULL: only
    // the head's own ack is stored, which is never pruned). The index on acks(committed_at) it
    // replaces was updated at every ack insert and, scattered over old pages, at every eviction.
    db.exec(`
      ALTER TABLE streams ADD COLUMN oldest_ack_at INTEGER;
      UPDATE streams SET oldest_ack_at = (
        SELECT a.committed_at FROM acks_all AS a
         WHERE a.stream_id = streams.id AND (a.epoch, a.seq) < (streams.epoch, streams.seq)
         ORDER BY a.epoch, a.seq LIMIT 1);
      CREATE INDEX streams_by_oldest_ack ON streams (oldest_ack_at) WHERE oldest_ack_at IS NOT NULL;
      DROP INDEX acks_by_commit_time;
    `);
  },
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export class DatabaseUnusableError extends Error {
  override readonly name = 'DatabaseUnusableError';
}

/** Brings the file to SCHEMA_VERSION (tests: to an older `target`, to build old files); returns the version it found. */
export function migrate(db: Database.Database, target = SCHEMA_VERSION): number {
  const found = db.pragma('user_version', { simple: true }) as number;
  if (found > SCHEMA_VERSION) {
    throw new DatabaseUnusableError(`database schema version ${found} is newer than this seqgate understands (${SCHEMA_VERSION}); refusing to open it`);
  }
  for (let v = found; v < target; v++) {
    db.transaction(() => {
      MIGRATIONS[v]!(db);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
  return found;
}
