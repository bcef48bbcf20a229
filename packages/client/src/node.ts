import { mkdirSync } from 'node:fs';
import type { OffsetStore, VersionStore } from './subscription.js';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { AnswerEntry, Outbox, OutboxEntry, StreamRecord } from './outbox.js';

/**
 * Node-only parts of the client SDK (`seqgate/client/node`): an outbox in a SQLite file that
 * survives a process kill and a reboot. Everything of `seqgate/client` is re-exported, so a Node
 * program needs one import.
 */
export * from './index.js';

export interface SqliteOutboxOptions {
  /**
   * `full` (default): every recorded put survives power loss. `normal`: survives a process crash;
   * after a power loss the last writes may be gone, and a lost record makes the next start act as
   * after a counter loss (a new epoch), which is safe; a lost settlement only causes a replay.
   */
  readonly synchronous?: 'full' | 'normal';
}

interface RecordRow {
  epoch: number | null;
  next_seq: number;
  acked_epoch: number | null;
  acked_seq: number | null;
  incarnation: string | null;
  checkpoint: string | null;
}

interface EntryRow {
  pos: number;
  epoch: number;
  seq: number;
  key: string;
  state: Buffer | null;
  if_version: number | null;
  created_at: number;
  answer: string | null;
}

/** 2 added `entries.answer` (the answer kept until the application has seen it). */
const SCHEMA_VERSION = 2;

/** One file can hold the outboxes of many streams (one client per stream). */
export class SqliteOutbox implements Outbox, OffsetStore, VersionStore {
  readonly durable = true;
  private readonly db: Database.Database;
  private readonly stmt;
  private readonly tx;

  constructor(
    readonly path: string,
    options: SqliteOutboxOptions = {},
  ) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    // better-sqlite3 builds with WAL defaulting to NORMAL; the outbox's promise needs FULL.
    this.db.pragma(`synchronous = ${options.synchronous === 'normal' ? 'NORMAL' : 'FULL'}`);
    this.db.pragma('busy_timeout = 5000');
    const found = this.db.pragma('user_version', { simple: true }) as number;
    if (found > SCHEMA_VERSION) throw new Error(`outbox ${path} has schema ${found}, newer than this client (${SCHEMA_VERSION})`);
    if (found === 1) {
      this.db
        .transaction(() => {
          this.db.exec('ALTER TABLE entries ADD COLUMN answer TEXT');
          this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
        })
        .immediate();
    } else if (found < SCHEMA_VERSION) {
      this.db
        .transaction(() => {
          this.db.exec(`
          CREATE TABLE streams (
            stream      TEXT PRIMARY KEY,
            epoch       INTEGER,
            next_seq    INTEGER NOT NULL,
            acked_epoch INTEGER,
            acked_seq   INTEGER,
            incarnation TEXT,
            checkpoint  TEXT
          ) WITHOUT ROWID;
          -- state NULL is a delete; a state of nil is the one byte c0.
          CREATE TABLE entries (
            stream     TEXT    NOT NULL,
            pos        INTEGER NOT NULL,
            epoch      INTEGER NOT NULL,
            seq        INTEGER NOT NULL,
            key        TEXT    NOT NULL,
            state      BLOB,
            if_version INTEGER,
            created_at INTEGER NOT NULL,
            answer     TEXT,
            PRIMARY KEY (stream, pos)
          ) WITHOUT ROWID;
        `);
          this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
        })
        .immediate();
    }
    // The changefeed's offsets and applied versions live next to the entries (subscription.ts);
    // tables an older client does not know leave its schema version alone.
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS changefeed_offsets (name TEXT PRIMARY KEY, "offset" TEXT NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS changefeed_versions (key TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
    `);
    const db = this.db;
    this.stmt = {
      getOffset: db.prepare<[string], { offset: string }>('SELECT "offset" FROM changefeed_offsets WHERE name = ?'),
      putOffset: db.prepare<[string, string]>(
        'INSERT INTO changefeed_offsets (name, "offset") VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "offset" = excluded."offset"',
      ),
      getVersion: db.prepare<[string], { version: number }>('SELECT version FROM changefeed_versions WHERE key = ?'),
      putVersion: db.prepare<[string, number]>(
        'INSERT INTO changefeed_versions (key, version) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET version = max(version, excluded.version)',
      ),
      getRecord: db.prepare<[string], RecordRow>('SELECT epoch, next_seq, acked_epoch, acked_seq, incarnation, checkpoint FROM streams WHERE stream = ?'),
      getEntries: db.prepare<[string], EntryRow>(
        'SELECT pos, epoch, seq, key, state, if_version, created_at, answer FROM entries WHERE stream = ? ORDER BY pos',
      ),
      putRecord: db.prepare<[string, number | null, number, number | null, number | null, string | null, string | null]>(
        `INSERT INTO streams (stream, epoch, next_seq, acked_epoch, acked_seq, incarnation, checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (stream) DO UPDATE SET epoch = excluded.epoch, next_seq = excluded.next_seq, acked_epoch = excluded.acked_epoch,
           acked_seq = excluded.acked_seq, incarnation = excluded.incarnation, checkpoint = excluded.checkpoint`,
      ),
      putEntry: db.prepare<[string, number, number, number, string, Uint8Array | null, number | null, number, string | null]>(
        'INSERT OR REPLACE INTO entries (stream, pos, epoch, seq, key, state, if_version, created_at, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      deleteEntry: db.prepare<[string, number]>('DELETE FROM entries WHERE stream = ? AND pos = ?'),
      answerEntry: db.prepare<[string, string, number]>('UPDATE entries SET answer = ? WHERE stream = ? AND pos = ?'),
      deleteEntries: db.prepare<[string]>('DELETE FROM entries WHERE stream = ?'),
      deleteUnanswered: db.prepare<[string]>('DELETE FROM entries WHERE stream = ? AND answer IS NULL'),
      deleteRecord: db.prepare<[string]>('DELETE FROM streams WHERE stream = ?'),
    };
    this.tx = {
      append: db.transaction((stream: string, record: StreamRecord, entries: readonly OutboxEntry[]) => {
        this.writeRecord(stream, record);
        for (const e of entries) this.writeEntry(stream, e);
      }),
      settle: db.transaction((stream: string, record: StreamRecord, answers: readonly AnswerEntry[], seen: readonly number[]) => {
        this.writeRecord(stream, record);
        for (const a of answers) this.stmt.answerEntry.run(JSON.stringify(a.answer), stream, a.pos);
        for (const p of seen) this.stmt.deleteEntry.run(stream, p);
      }),
      replace: db.transaction((stream: string, record: StreamRecord, entries: readonly OutboxEntry[]) => {
        this.writeRecord(stream, record);
        this.stmt.deleteUnanswered.run(stream);
        for (const e of entries) this.writeEntry(stream, e);
      }),
      forget: db.transaction((stream: string) => {
        this.stmt.deleteEntries.run(stream);
        this.stmt.deleteRecord.run(stream);
      }),
    };
  }

  private writeRecord(stream: string, r: StreamRecord): void {
    this.stmt.putRecord.run(
      stream,
      r.epoch,
      r.nextSeq,
      r.lastAcked?.epoch ?? null,
      r.lastAcked?.seq ?? null,
      r.incarnation,
      r.checkpoint === undefined ? null : JSON.stringify(r.checkpoint),
    );
  }

  private writeEntry(stream: string, e: OutboxEntry): void {
    this.stmt.putEntry.run(
      stream,
      e.pos,
      e.epoch,
      e.seq,
      e.key,
      e.state,
      e.ifVersion,
      e.createdAt,
      e.answer === undefined || e.answer === null ? null : JSON.stringify(e.answer),
    );
  }

  async load(stream: string): Promise<{ record: StreamRecord | null; entries: OutboxEntry[] }> {
    const row = this.stmt.getRecord.get(stream);
    const record: StreamRecord | null =
      row === undefined
        ? null
        : {
            epoch: row.epoch,
            nextSeq: row.next_seq,
            lastAcked: row.acked_epoch === null || row.acked_seq === null ? null : { epoch: row.acked_epoch, seq: row.acked_seq },
            incarnation: row.incarnation,
            checkpoint: row.checkpoint === null ? undefined : JSON.parse(row.checkpoint),
          };
    const entries = this.stmt.getEntries.all(stream).map((e): OutboxEntry => ({
      pos: e.pos,
      epoch: e.epoch,
      seq: e.seq,
      key: e.key,
      state: e.state,
      ifVersion: e.if_version,
      createdAt: e.created_at,
      answer: e.answer === null ? null : JSON.parse(e.answer),
    }));
    return { record, entries };
  }

  async append(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    this.tx.append.immediate(stream, record, entries);
  }

  async settle(stream: string, record: StreamRecord, answers: readonly AnswerEntry[], seen: readonly number[]): Promise<void> {
    this.tx.settle.immediate(stream, record, answers, seen);
  }

  async replace(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    this.tx.replace.immediate(stream, record, entries);
  }

  async forget(stream: string): Promise<void> {
    this.tx.forget.immediate(stream);
  }

  async loadOffset(name: string): Promise<string | null> {
    return this.stmt.getOffset.get(name)?.offset ?? null;
  }

  async saveOffset(name: string, offset: string): Promise<void> {
    this.stmt.putOffset.run(name, offset);
  }

  async appliedVersion(key: string): Promise<number | undefined> {
    return this.stmt.getVersion.get(key)?.version;
  }

  async markApplied(key: string, version: number): Promise<void> {
    this.stmt.putVersion.run(key, version);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
