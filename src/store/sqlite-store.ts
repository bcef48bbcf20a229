import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { decide, type DocumentMeta, type StoredAck } from '../gate.js';
import { reach } from '../crash-points.js';
import { DatabaseUnusableError, migrate } from './sqlite-schema.js';
import { FileIdentity, type FileLostError } from './file-identity.js';

export { DatabaseUnusableError };
import {
  isDocWrite, type Ack, type DocResult, type DocWrite, type Head, type Put, type PutResult, type Store,
  type StoredDocument, type StreamHead, type Write,
} from './store.js';

export interface SqliteStoreOptions {
  /** File path, or ':memory:' for tests. */
  readonly path: string;
  /** 'full' survives power loss; 'normal' survives process crashes only. */
  readonly synchronous: 'full' | 'normal';
  readonly contiguous: boolean;
  readonly ackCapPerStream: number;
  /** Integrity check at open: 'quick' (default), 'full' (slow on large files) or 'off'. */
  readonly startupCheck?: 'quick' | 'full' | 'off';
  /** Upper bound on the file size in pages (0: none); a full database fails batches retryably. */
  readonly maxPages?: number;
  /** Clock for commit times; tests pin it. */
  readonly now?: () => number;
  /** Told when the database file (or its -wal) is found removed or replaced, and when it is back. */
  readonly onFileLost?: (lost: FileLostError | undefined) => void;
}

interface StreamRow {
  id: number;
  epoch: number;
  seq: number;
  pruned_through: number;
  ack_count: number;
}

interface AckRow {
  fingerprint: Buffer;
  outcome: number;
  key: string;
  version: number;
  deleted: number;
  if_version: number | null;
  committed_at: number;
}

/** A stream's state while a batch runs; written back once at the end of the batch. */
interface StreamState {
  id: number | null;
  readonly tenant: string;
  readonly name: string;
  epoch: number;
  seq: number;
  prunedThrough: number;
  ackCount: number;
  dirty: boolean;
  /**
   * Cap eviction within a batch: the oldest acks, read once, and the last one evicted so far.
   * Evicted acks are deleted with one statement when the batch ends; until then readAck treats
   * everything at or below `evictedThrough` as gone, exactly as if it had been deleted at once.
   */
  oldest: Array<{ epoch: number; seq: number }>;
  evictedThrough: { epoch: number; seq: number } | null;
}

const OUTCOME_CODES = { applied: 0, version_conflict: 1 } as const;

function isEvicted(s: StreamState, put: Put): boolean {
  const e = s.evictedThrough;
  return e !== null && (put.epoch < e.epoch || (put.epoch === e.epoch && put.seq <= e.seq));
}

export class SqliteStore implements Store {
  readonly incarnation: string;
  /** The schema version found on open, before migrating (0: new file). */
  readonly openedSchemaVersion: number;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly stmt;
  private readonly runBatch: (batch: readonly Write[]) => Array<PutResult | DocResult>;
  private readonly runPrune: (olderThan: number, maxRows: number) => { pruned: number; done: boolean };
  private pruneCursor: [number, number, number, number] = [-1, -1, -1, -1];
  /** The files SQLite has open; checked before every commit and readiness answer. */
  private readonly files: FileIdentity | undefined;

  constructor(private readonly options: SqliteStoreOptions) {
    if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
    this.db = new Database(options.path);
    this.now = options.now ?? Date.now;
    try {
      this.checkIntegrity(options.startupCheck ?? 'quick');
    } catch (err) {
      this.db.close();
      throw err;
    }
    // better-sqlite3 defaults WAL to synchronous=NORMAL, so FULL must be explicit.
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
    this.db.pragma('busy_timeout = 5000');
    if (options.maxPages) this.db.pragma(`max_page_count = ${options.maxPages}`);
    this.openedSchemaVersion = migrate(this.db);
    this.incarnation = (this.db.prepare("SELECT value FROM meta WHERE name = 'incarnation'").get() as { value: string }).value;
    this.files = options.path === ':memory:' || options.path === '' ? undefined
      // The files a restart reads acks from. A lost -shm is rebuilt from the WAL at the next open.
      : new FileIdentity([options.path, `${options.path}-wal`], options.onFileLost);

    const db = this.db;
    this.stmt = {
      getStream: db.prepare<[string, string], StreamRow>(
        'SELECT id, epoch, seq, pruned_through, ack_count FROM streams WHERE tenant = ? AND name = ?'),
      insertStream: db.prepare<[string, string, number, number], { id: number }>(
        'INSERT INTO streams (tenant, name, epoch, seq) VALUES (?, ?, ?, ?) RETURNING id'),
      updateStream: db.prepare<[number, number, number, number, number]>(
        'UPDATE streams SET epoch = ?, seq = ?, pruned_through = ?, ack_count = ? WHERE id = ?'),
      getAck: db.prepare<[number, number, number], AckRow>(
        'SELECT fingerprint, outcome, key, version, deleted, if_version, committed_at FROM acks WHERE stream_id = ? AND epoch = ? AND seq = ?'),
      insertAck: db.prepare<[number, number, number, Buffer, number, string, number, number, number | null, number]>(
        'INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)'),
      oldestAcks: db.prepare<[number, number, number, number], { epoch: number; seq: number }>(
        'SELECT epoch, seq FROM acks WHERE stream_id = ? AND (epoch, seq) > (?, ?) ORDER BY epoch, seq LIMIT ?'),
      deleteAcksThrough: db.prepare<[number, number, number]>(
        'DELETE FROM acks WHERE stream_id = ? AND (epoch, seq) <= (?, ?)'),
      deleteAck: db.prepare<[number, number, number]>(
        'DELETE FROM acks WHERE stream_id = ? AND epoch = ? AND seq = ?'),
      getDoc: db.prepare<[string, string], { version: number; deleted: number }>(
        'SELECT version, deleted FROM documents WHERE tenant = ? AND key = ?'),
      upsertDoc: db.prepare<[string, string, number, number, Buffer | null, number]>(
        `INSERT INTO documents (tenant, key, version, deleted, state, updated_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (tenant, key) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
           state = excluded.state, updated_at = excluded.updated_at`),
      getDocFull: db.prepare<[string, string], { version: number; deleted: number; state: Buffer | null; updated_at: number }>(
        'SELECT version, deleted, state, updated_at FROM documents WHERE tenant = ? AND key = ?'),
      getIdempotency: db.prepare<[string, string, string], { fingerprint: Buffer; doc_key: string; version: number; created_at: number }>(
        'SELECT fingerprint, doc_key, version, created_at FROM idempotency WHERE tenant = ? AND scope = ? AND key = ?'),
      insertIdempotency: db.prepare<[string, string, string, Buffer, string, number, number]>(
        'INSERT INTO idempotency (tenant, scope, key, fingerprint, doc_key, version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      pruneIdempotency: db.prepare<[number, number]>(
        `DELETE FROM idempotency WHERE (tenant, scope, key) IN
           (SELECT tenant, scope, key FROM idempotency INDEXED BY idempotency_by_time WHERE created_at < ? LIMIT ?)`),
      insertProbe: db.prepare<[string]>("INSERT INTO meta (name, value) VALUES ('readiness_probe', ?)"),
      deleteProbe: db.prepare("DELETE FROM meta WHERE name = 'readiness_probe'"),
      pruneCandidates: db.prepare<[number, number, number, number, number, number], {
        stream_id: number; epoch: number; seq: number; committed_at: number; head_epoch: number; head_seq: number;
      }>(
        `SELECT a.stream_id, a.epoch, a.seq, a.committed_at, s.epoch AS head_epoch, s.seq AS head_seq
           FROM acks AS a INDEXED BY acks_by_commit_time JOIN streams AS s ON s.id = a.stream_id
          WHERE a.committed_at < ? AND (a.committed_at, a.stream_id, a.epoch, a.seq) > (?, ?, ?, ?)
          ORDER BY a.committed_at, a.stream_id, a.epoch, a.seq LIMIT ?`),
      notePruned: db.prepare<[{ epoch: number; seq: number; id: number }]>(
        `UPDATE streams SET ack_count = ack_count - 1,
           pruned_through = CASE WHEN epoch = @epoch AND @seq > pruned_through THEN @seq ELSE pruned_through END
         WHERE id = @id`),
    };

    this.runBatch = this.db.transaction((batch: readonly Write[]) => {
      const results = this.applyInTransaction(batch);
      // Last thing before COMMIT: a batch committed into a deleted or replaced file must not be acked.
      this.files?.assertSame();
      return results;
    }).immediate;
    this.runPrune = this.db.transaction((olderThan: number, maxRows: number) => this.pruneInTransaction(olderThan, maxRows)).immediate;
  }

  /** Refuses to serve a damaged file: better down with a clear message than acking into it. */
  private checkIntegrity(mode: 'quick' | 'full' | 'off'): void {
    if (mode === 'off') return;
    let rows: Array<Record<string, unknown>>;
    try {
      rows = this.db.pragma(mode === 'quick' ? 'quick_check' : 'integrity_check') as Array<Record<string, unknown>>;
    } catch (err) {
      throw new DatabaseUnusableError(`${this.options.path} cannot be read as a SQLite database: ${(err as Error).message}`, { cause: err });
    }
    const problems = rows.map((r) => String(Object.values(r)[0])).filter((v) => v !== 'ok');
    if (problems.length > 0) {
      throw new DatabaseUnusableError(`${this.options.path} is corrupt (${mode}_check): ${problems.slice(0, 5).join('; ')}`);
    }
  }

  apply(batch: readonly Put[]): Promise<PutResult[]>;
  apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>>;
  async apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>> {
    try {
      return this.runBatch(batch);
    } catch (err) {
      // The transaction rolled back: nothing of the batch was applied or consumed.
      const message = `batch not committed: ${(err as Error).message}`;
      return batch.map(() => ({ kind: 'rejected', outcome: 'error', code: 'STORAGE_UNAVAILABLE', message }));
    }
  }

  private applyInTransaction(batch: readonly Write[]): Array<PutResult | DocResult> {
    const now = this.now();
    const streams = new Map<string, StreamState>();
    const results: Array<PutResult | DocResult> = [];

    for (const put of batch) {
      if (isDocWrite(put)) {
        results.push(this.writeDocument(put, now));
        continue;
      }
      const streamKey = put.tenant + '\u0000' + put.stream;
      let s = streams.get(streamKey);
      if (s === undefined) {
        const row = this.stmt.getStream.get(put.tenant, put.stream);
        s = row
          ? { id: row.id, tenant: put.tenant, name: put.stream, epoch: row.epoch, seq: row.seq, prunedThrough: row.pruned_through, ackCount: row.ack_count, dirty: false, oldest: [], evictedThrough: null }
          : { id: null, tenant: put.tenant, name: put.stream, epoch: 0, seq: 0, prunedThrough: 0, ackCount: 0, dirty: false, oldest: [], evictedThrough: null };
        streams.set(streamKey, s);
      }
      const state = s;
      const decision = decide(put, {
        head: { epoch: state.epoch, seq: state.seq, prunedThrough: state.prunedThrough },
        storedAck: () => (state.id === null || isEvicted(state, put) ? undefined : this.readAck(state.id, put)),
        document: () => this.readDocument(put.tenant, put.key),
        contiguous: this.options.contiguous,
        now,
      });

      if (decision.kind === 'replay') {
        results.push({ kind: 'ack', ack: decision.ack, replay: true });
        continue;
      }
      if (decision.kind === 'reject') {
        results.push({ kind: 'rejected', ...decision.rejection });
        continue;
      }

      const { ack, write } = decision;
      if (write !== null) {
        this.stmt.upsertDoc.run(put.tenant, put.key, write.version, write.deleted ? 1 : 0, write.state, now);
      }
      if (state.id === null) {
        state.id = this.stmt.insertStream.get(put.tenant, put.stream, put.epoch, put.seq)!.id;
      }
      if (put.epoch !== state.epoch) state.prunedThrough = 0;
      state.epoch = put.epoch;
      state.seq = put.seq;
      state.dirty = true;
      this.stmt.insertAck.run(
        state.id, put.epoch, put.seq, put.fingerprint, OUTCOME_CODES[ack.outcome], ack.key, ack.version,
        ack.deleted ? 1 : 0, ack.ifVersion ?? null, ack.committedAt,
      );
      state.ackCount++;
      if (state.ackCount > this.options.ackCapPerStream) this.evictOldestAck(state);
      results.push({ kind: 'ack', ack, replay: false });
    }

    for (const s of streams.values()) {
      if (!s.dirty) continue;
      if (s.evictedThrough !== null) this.stmt.deleteAcksThrough.run(s.id!, s.evictedThrough.epoch, s.evictedThrough.seq);
      this.stmt.updateStream.run(s.epoch, s.seq, s.prunedThrough, s.ackCount, s.id!);
    }
    reach('before-commit');
    return results;
  }

  private writeDocument(w: DocWrite, now: number): DocResult {
    if (w.op === 'create') {
      const prior = this.stmt.getIdempotency.get(w.tenant, w.scope, w.idempotencyKey);
      if (prior !== undefined) {
        if (!prior.fingerprint.equals(w.fingerprint)) return { kind: 'idempotency_key_reused' };
        return { kind: 'created', key: prior.doc_key, version: prior.version, deleted: false, createdAt: prior.created_at, replay: true };
      }
      this.stmt.upsertDoc.run(w.tenant, w.key, 1, 0, w.state, now);
      this.stmt.insertIdempotency.run(w.tenant, w.scope, w.idempotencyKey, w.fingerprint, w.key, 1, now);
      return { kind: 'created', key: w.key, version: 1, deleted: false, createdAt: now, replay: false };
    }
    const doc = this.stmt.getDocFull.get(w.tenant, w.key);
    const exists = doc !== undefined && doc.deleted === 0;
    const version = doc?.version ?? 0;
    if (w.ifVersion !== null && !(w.ifVersion === 0 ? !exists : exists && version === w.ifVersion)) {
      return { kind: 'precondition_failed', key: w.key, version, deleted: !exists };
    }
    // Natural idempotence: writing the state a document already has, or deleting what is gone,
    // changes nothing, so a repeated request leaves the version where it was.
    const unchanged = w.state === null ? !exists : exists && doc!.state !== null && doc!.state.equals(w.state);
    if (unchanged) {
      return { kind: 'written', key: w.key, version, deleted: !exists, changed: false, updatedAt: doc?.updated_at ?? now };
    }
    this.stmt.upsertDoc.run(w.tenant, w.key, version + 1, w.state === null ? 1 : 0, w.state, now);
    return { kind: 'written', key: w.key, version: version + 1, deleted: w.state === null, changed: true, updatedAt: now };
  }

  /** The cap never evicts the newest ack: it is the head's, and the cap is at least 1. */
  private evictOldestAck(s: StreamState): void {
    if (s.oldest.length === 0) {
      const after = s.evictedThrough ?? { epoch: -1, seq: -1 };
      s.oldest = this.stmt.oldestAcks.all(s.id!, after.epoch, after.seq, 64).reverse();
    }
    const oldest = s.oldest.pop();
    if (oldest === undefined) return;
    s.evictedThrough = oldest;
    s.ackCount--;
    if (oldest.epoch === s.epoch && oldest.seq > s.prunedThrough) s.prunedThrough = oldest.seq;
  }

  private readAck(streamId: number, put: Put): StoredAck | undefined {
    const row = this.stmt.getAck.get(streamId, put.epoch, put.seq);
    if (row === undefined) return undefined;
    const ack: Ack = {
      outcome: row.outcome === OUTCOME_CODES.applied ? 'applied' : 'version_conflict',
      stream: put.stream,
      epoch: put.epoch,
      seq: put.seq,
      key: row.key,
      version: row.version,
      deleted: row.deleted === 1,
      ...(row.if_version !== null ? { ifVersion: row.if_version } : {}),
      committedAt: row.committed_at,
    };
    return { fingerprint: row.fingerprint, ack };
  }

  private readDocument(tenant: string, key: string): DocumentMeta | undefined {
    const row = this.stmt.getDoc.get(tenant, key);
    return row === undefined ? undefined : { version: row.version, deleted: row.deleted === 1 };
  }

  async heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]> {
    return streams.map((stream) => {
      const row = this.stmt.getStream.get(tenant, stream);
      const head: Head = row ? { epoch: row.epoch, seq: row.seq, prunedThrough: row.pruned_through } : { epoch: 0, seq: 0, prunedThrough: 0 };
      return { stream, ...head };
    });
  }

  async document(tenant: string, key: string): Promise<StoredDocument | undefined> {
    const row = this.stmt.getDocFull.get(tenant, key);
    if (row === undefined) return undefined;
    return { key, version: row.version, deleted: row.deleted === 1, state: row.state, updatedAt: row.updated_at };
  }

  async ready(): Promise<void> {
    this.files?.assertSame();
    // A real commit that leaves every row as it was. It allocates pages (refused at max_page_count,
    // like a put that needs room), appends to the WAL and syncs like a batch, so a database that
    // cannot take a write fails here too and not only in puts.
    const probe = this.db.transaction(() => {
      this.stmt.insertProbe.run('x'.repeat(2 * (this.db.pragma('page_size', { simple: true }) as number)));
      this.stmt.deleteProbe.run();
    });
    probe.immediate();
  }

  async pruneIdempotency(olderThan: number, maxRows: number): Promise<number> {
    return this.stmt.pruneIdempotency.run(olderThan, maxRows).changes;
  }

  async prune(olderThan: number, maxRows: number): Promise<{ pruned: number; done: boolean }> {
    return this.runPrune(olderThan, maxRows);
  }

  private pruneInTransaction(olderThan: number, maxRows: number): { pruned: number; done: boolean } {
    const rows = this.stmt.pruneCandidates.all(olderThan, ...this.pruneCursor, maxRows);
    let pruned = 0;
    for (const r of rows) {
      if (r.epoch === r.head_epoch && r.seq === r.head_seq) continue; // a stream's latest ack stays
      this.stmt.deleteAck.run(r.stream_id, r.epoch, r.seq);
      this.stmt.notePruned.run({ epoch: r.epoch, seq: r.seq, id: r.stream_id });
      pruned++;
    }
    const done = rows.length < maxRows;
    const last = rows[rows.length - 1];
    this.pruneCursor = done || last === undefined ? [-1, -1, -1, -1] : [last.committed_at, last.stream_id, last.epoch, last.seq];
    return { pruned, done };
  }

  /** For tests and operational tooling inside this package: the underlying connection. */
  get database(): Database.Database {
    return this.db;
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
