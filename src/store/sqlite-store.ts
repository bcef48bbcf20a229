import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { planBatch, type BatchPlan, type BatchReader } from '../batch-gate.js';
import { storageUnavailable, type StoredAck } from '../gate.js';
import { afterForgetting, planPrune, type Position } from '../retention.js';
import { reach } from '../crash-points.js';
import { SeqgateError } from '../errors.js';
import { DatabaseUnusableError, migrate } from './sqlite-schema.js';
import { WalCheckpointer } from './wal-checkpointer.js';
import { WalSync, type SyncFile } from './wal-sync.js';
import { changeOrigin, type ChangePage, type ChangeQuery, type ChangeRetention, type Snapshot } from './change-log.js';
import { SqliteChangeLog } from './sqlite-change-log.js';
import { FileIdentity, type FileLostError } from './file-identity.js';
import { processClock } from './retention-clock.js';

export { DatabaseUnusableError };
import { type Ack, type DocResult, type Head, type Put, type PutResult, type Store, type StoredDocument, type StreamHead, type Write } from './store.js';

export interface SqliteStoreOptions {
  /** File path, or ':memory:' for tests. */
  readonly path: string;
  /** 'full' survives power loss; 'normal' survives process crashes only. */
  readonly synchronous: 'full' | 'normal';
  readonly contiguous: boolean;
  readonly ackCapPerStream: number;
  /** Acks a stream may hold above the cap before eviction takes it back to the cap in one delete (default 0). */
  readonly ackCapSlack?: number;
  /**
   * Who copies the WAL back into the database file: 'commit' (default) is SQLite's own
   * autocheckpoint, inside the COMMIT that pushes the WAL past 1000 pages; 'background' is a worker
   * thread running PASSIVE checkpoints beside the commits (see wal-checkpointer.ts).
   */
  readonly walCheckpoint?: 'commit' | 'background';
  /**
   * synchronous 'full' only: who syncs the WAL after a commit. 'commit' (default) is SQLite's own
   * fsync inside COMMIT, on the event loop; 'background' commits with synchronous=NORMAL and runs
   * fdatasync of the WAL on libuv's pool, and nothing a commit changed leaves the store (batch
   * results, heads, documents, changes) before a sync that started after it ends (wal-sync.ts).
   */
  readonly walSync?: 'commit' | 'background';
  /** walSync 'background': replaces fdatasync, for tests that hold or fail a sync. */
  readonly syncFile?: SyncFile;
  /**
   * 'background' only: least time between two checkpoints of the worker (default 500 ms). Longer
   * copies a page that several batches rewrote once instead of once per checkpoint; the WAL holds
   * that much more.
   */
  readonly checkpointIntervalMs?: number;
  /** 'background' only: WAL size in bytes above which a checkpoint rewinds the WAL (default 64 MiB). */
  readonly maxWalBytes?: number;
  /** Integrity check at open: 'quick' (default), 'full' (slow on large files) or 'off'. */
  readonly startupCheck?: 'quick' | 'full' | 'off';
  /** Upper bound on the file size in pages (0: none); a full database fails batches retryably. */
  readonly maxPages?: number;
  /** Clock for commit times (default: the process's RetentionClock, which pruning cutoffs rely on); tests pin it. */
  readonly now?: () => number;
  /** Told when a background checkpoint fails (the next one retries). */
  readonly onCheckpointError?: (err: Error) => void;
  /** Told when the database file (or its -wal) is found removed or replaced, and when it is back. */
  readonly onFileLost?: (lost: FileLostError | undefined) => void;
  /** Append every document change to the change log (default true; false only to measure its cost). */
  readonly changeLog?: boolean;
  /**
   * Acks held in commit order (`recent_acks`) before they are moved into the per-stream table, in
   * steps (default 16384; 0: every ack goes straight to the per-stream table, as before v4).
   */
  readonly ackSettleRows?: number;
  /** Told when moving recent acks fails (the next batch tries again). */
  readonly onSettleError?: (err: Error) => void;
  /** Recent acks one step of a scheduled move takes, about (whole streams); default 2048 (src/config.ts). */
  readonly settleStepRows?: number;
}

interface StreamRow {
  id: number;
  epoch: number;
  seq: number;
  pruned_through: number;
  ack_count: number;
  oldest_ack_at: number | null;
}

interface StoredPosition {
  epoch: number;
  seq: number;
  committed_at: number;
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

const OUTCOME_CODES = { applied: 0, version_conflict: 1 } as const;

/**
 * How long a statement waits for a lock held by another connection to the file (the background
 * checkpointer, an operator's sqlite3 shell) before it fails, and with it the batch, retryably.
 */
const BUSY_TIMEOUT_MS = 5000;
/** maxWalBytes when the options leave it out (the option's default, src/config.ts). */
const DEFAULT_MAX_WAL_BYTES = 64 * 1024 * 1024;
/** Longest wait for the worker's two checkpoints before this connection checkpoints itself, ms. */
const REWIND_WAIT_MS = 1000;
/** checkpointIntervalMs when the options leave it out (the option's default, src/config.ts). */
const DEFAULT_CHECKPOINT_INTERVAL_MS = 500;
/** ackSettleRows when the options leave it out (the option's default, src/config.ts). */
const DEFAULT_ACK_SETTLE_ROWS = 16_384;
/**
 * settleStepRows when the options leave it out (src/config.ts). Moving all 16k recent acks at once
 * held the event loop for 80-120 ms (bench/README.md, lever (r)); steps of whole streams keep each
 * stream's acks going into its pages together, and batches run between them.
 */
const DEFAULT_SETTLE_STEP_ROWS = 2048;

/** Every stream id (ids are SQLite rowids, from 1), for a move of all recent acks at once. */
const EVERY_STREAM = [0, Number.MAX_SAFE_INTEGER] as const;

class ProbeDone extends Error {}

export class SqliteStore implements Store {
  readonly incarnation: string;
  /** The schema version found on open, before migrating (0: new file). */
  readonly openedSchemaVersion: number;
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly stmt;
  private readonly changes: SqliteChangeLog;
  private readonly logChanges: boolean;
  private readonly runBatch: (batch: readonly Write[]) => Array<PutResult | DocResult>;
  private readonly reader: BatchReader<number>;
  private readonly runPrune: (olderThan: number, maxRows: number) => { pruned: number; done: boolean };
  /** oldest_ack_at of each stream the batch in progress read, by id. */
  private readonly batchOldest = new Map<number, number | null>();
  /** Whether the last batch failed to commit; readiness then needs a probe that really commits. */
  private lastWriteFailed = false;
  private readonly checkpointer: WalCheckpointer | undefined;
  private readonly maxWalBytes: number;
  /** A checkpoint on this connection is scheduled, to let the WAL rewind. */
  private rewinding = false;
  /** Set while the worker copies the WAL's last frames: batches wait for it (rewindIfLong). */
  private batchesHeld: Promise<void> | undefined;
  private releaseBatches: (() => void) | undefined;
  /** The files SQLite has open; checked before every commit and readiness answer. */
  private readonly files: FileIdentity | undefined;
  private readonly settleRows: number;
  /** Rows in recent_acks, counted by this connection (the only writer). */
  private recentRows = 0;
  /** A move is under way: its steps, each a range of stream ids, of the acks up to `last` (by id). */
  private settling: { readonly last: number; readonly ranges: Array<readonly [number, number]> } | 'planning' | undefined;
  /** Change to recentRows made by the batch in progress; counted only once it commits. */
  private batchRecentRows = 0;
  private readonly runSettle: (last: number, streams: readonly [number, number]) => number;
  private readonly walSync: WalSync | undefined;

  constructor(private readonly options: SqliteStoreOptions) {
    if (options.path !== ':memory:') mkdirSync(dirname(options.path), { recursive: true });
    this.db = new Database(options.path);
    this.now = options.now ?? (() => processClock.now());
    try {
      this.checkIntegrity(options.startupCheck ?? 'quick');
    } catch (err) {
      this.db.close();
      throw err;
    }
    const fileBacked = options.path !== ':memory:' && options.path !== '';
    // With walSync 'background' the connection commits without syncing and WalSync syncs instead.
    const syncAfterCommit = options.synchronous === 'full' && options.walSync === 'background' && fileBacked;
    // better-sqlite3 defaults WAL to synchronous=NORMAL, so FULL must be explicit.
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${options.synchronous === 'full' && !syncAfterCommit ? 'FULL' : 'NORMAL'}`);
    this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    if (options.maxPages) this.db.pragma(`max_page_count = ${options.maxPages}`);
    this.openedSchemaVersion = migrate(this.db);
    this.incarnation = (this.db.prepare("SELECT value FROM meta WHERE name = 'incarnation'").get() as { value: string }).value;
    const maxWalBytes = options.maxWalBytes ?? DEFAULT_MAX_WAL_BYTES;
    this.maxWalBytes = maxWalBytes;
    if (options.walCheckpoint === 'background' && fileBacked) {
      this.db.pragma('wal_autocheckpoint = 0');
      // After a checkpoint rewinds the WAL, the file is truncated back to this size.
      this.db.pragma(`journal_size_limit = ${maxWalBytes}`);
      this.checkpointer = new WalCheckpointer({
        path: options.path,
        synchronous: options.synchronous,
        intervalMs: options.checkpointIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS,
        ...(options.onCheckpointError ? { onError: options.onCheckpointError } : {}),
      });
    }
    // The files a restart reads acks from. A lost -shm is rebuilt from the WAL at the next open.
    this.files = fileBacked ? new FileIdentity([options.path, `${options.path}-wal`], options.onFileLost) : undefined;
    if (syncAfterCommit) this.walSync = new WalSync(`${options.path}-wal`, options.syncFile);

    const db = this.db;
    this.settleRows = options.ackSettleRows ?? DEFAULT_ACK_SETTLE_ROWS;
    this.changes = new SqliteChangeLog(db);
    this.logChanges = options.changeLog ?? true;
    this.stmt = {
      getStream: db.prepare<[string, string], StreamRow>(
        'SELECT id, epoch, seq, pruned_through, ack_count, oldest_ack_at FROM streams WHERE tenant = ? AND name = ?',
      ),
      insertStream: db.prepare<[string, string, number, number, number, number], { id: number }>(
        'INSERT INTO streams (tenant, name, epoch, seq, pruned_through, ack_count) VALUES (?, ?, ?, ?, ?, ?) RETURNING id',
      ),
      updateStream: db.prepare<[number, number, number, number, number]>(
        'UPDATE streams SET epoch = ?, seq = ?, pruned_through = ?, ack_count = ? WHERE id = ?',
      ),
      getRecentAck: db.prepare<[number, number, number], AckRow>(
        'SELECT fingerprint, outcome, key, version, deleted, if_version, committed_at FROM recent_acks WHERE stream_id = ? AND epoch = ? AND seq = ?',
      ),
      getAck: db.prepare<[number, number, number], AckRow>(
        'SELECT fingerprint, outcome, key, version, deleted, if_version, committed_at FROM acks WHERE stream_id = ? AND epoch = ? AND seq = ?',
      ),
      insertAck: db.prepare<[number, number, number, Buffer, number, string, number, number, number | null, number]>(
        `INSERT INTO ${this.settleRows === 0 ? 'acks' : 'recent_acks'} (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      // A stream's recent acks are all newer than its acks in `acks` (see oldestAcks), so the
      // oldest are read from `acks` first and from recent_acks only for what is missing.
      settledOldest: db.prepare<[number, number, number, number], StoredPosition>(
        'SELECT epoch, seq, committed_at FROM acks WHERE stream_id = ? AND (epoch, seq) > (?, ?) ORDER BY epoch, seq LIMIT ?',
      ),
      recentOldest: db.prepare<[number, number, number, number], StoredPosition>(
        'SELECT epoch, seq, committed_at FROM recent_acks WHERE stream_id = ? AND (epoch, seq) > (?, ?) ORDER BY epoch, seq LIMIT ?',
      ),
      // What the gate needs, read from the index alone.
      recentPositions: db.prepare<[number, number, number, number], Position>(
        'SELECT epoch, seq FROM recent_acks WHERE stream_id = ? AND (epoch, seq) > (?, ?) ORDER BY epoch, seq LIMIT ?',
      ),
      setOldestAck: db.prepare<[number | null, number]>('UPDATE streams SET oldest_ack_at = ? WHERE id = ?'),
      deleteAcksThrough: db.prepare<[number, number, number]>('DELETE FROM acks WHERE stream_id = ? AND (epoch, seq) <= (?, ?)'),
      deleteRecentAcksThrough: db.prepare<[number, number, number]>('DELETE FROM recent_acks WHERE stream_id = ? AND (epoch, seq) <= (?, ?)'),
      recentCount: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM recent_acks'),
      lastRecentId: db.prepare<[], { id: number | null }>('SELECT max(id) AS id FROM recent_acks'),
      // The acks of the streams in an id range, up to an ack id, from the index: sorted by the
      // target's key, so each stream's acks go into its pages together.
      settleCopy: db.prepare<[number, number, number]>(
        `INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
         SELECT stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at
           FROM recent_acks WHERE stream_id BETWEEN ? AND ? AND id <= ? ORDER BY stream_id, epoch, seq`,
      ),
      settleDelete: db.prepare<[number, number, number]>('DELETE FROM recent_acks WHERE stream_id BETWEEN ? AND ? AND id <= ?'),
      recentPerStream: db.prepare<[number], { stream_id: number; n: number }>(
        'SELECT stream_id, count(*) AS n FROM recent_acks INDEXED BY recent_acks_by_stream WHERE id <= ? GROUP BY stream_id ORDER BY stream_id',
      ),
      getDoc: db.prepare<[string, string], { version: number; deleted: number }>('SELECT version, deleted FROM documents WHERE tenant = ? AND key = ?'),
      upsertDoc: db.prepare<[string, string, number, number, Buffer | null, number]>(
        `INSERT INTO documents (tenant, key, version, deleted, state, updated_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (tenant, key) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
           state = excluded.state, updated_at = excluded.updated_at`,
      ),
      getDocFull: db.prepare<[string, string], { version: number; deleted: number; state: Buffer | null; updated_at: number }>(
        'SELECT version, deleted, state, updated_at FROM documents WHERE tenant = ? AND key = ?',
      ),
      getIdempotency: db.prepare<[string, string, string], { fingerprint: Buffer; doc_key: string; version: number; created_at: number }>(
        'SELECT fingerprint, doc_key, version, created_at FROM idempotency WHERE tenant = ? AND scope = ? AND key = ?',
      ),
      insertIdempotency: db.prepare<[string, string, string, Buffer, string, number, number]>(
        'INSERT INTO idempotency (tenant, scope, key, fingerprint, doc_key, version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      pruneIdempotency: db.prepare<[number, number]>(
        `DELETE FROM idempotency WHERE (tenant, scope, key) IN
           (SELECT tenant, scope, key FROM idempotency INDEXED BY idempotency_by_time WHERE created_at < ? LIMIT ?)`,
      ),
      insertProbe: db.prepare<[string]>("INSERT INTO meta (name, value) VALUES ('readiness_probe', ?)"),
      deleteProbe: db.prepare("DELETE FROM meta WHERE name = 'readiness_probe'"),
      streamsToPrune: db.prepare<[number, number], { id: number; epoch: number; seq: number; pruned_through: number; oldest_ack_at: number }>(
        `SELECT id, epoch, seq, pruned_through, oldest_ack_at FROM streams INDEXED BY streams_by_oldest_ack
          WHERE oldest_ack_at IS NOT NULL AND oldest_ack_at < ? ORDER BY oldest_ack_at LIMIT ?`,
      ),
      notePruned: db.prepare<[number, number, number]>('UPDATE streams SET ack_count = ack_count - ?, pruned_through = ? WHERE id = ?'),
    };

    const stmt = this.stmt;
    this.reader = {
      stream: (tenant, name) => {
        const row = stmt.getStream.get(tenant, name);
        if (row === undefined) return undefined;
        this.batchOldest.set(row.id, row.oldest_ack_at);
        return { id: row.id, epoch: row.epoch, seq: row.seq, prunedThrough: row.pruned_through, ackCount: row.ack_count };
      },
      ack: (streamId, put) => this.readAck(streamId, put),
      documentMeta: (tenant, key) => {
        const row = stmt.getDoc.get(tenant, key);
        return row === undefined ? undefined : { version: row.version, deleted: row.deleted === 1 };
      },
      document: (tenant, key) => {
        const row = stmt.getDocFull.get(tenant, key);
        return row === undefined ? undefined : { version: row.version, deleted: row.deleted === 1, state: row.state, updatedAt: row.updated_at };
      },
      idempotency: (tenant, scope, key) => {
        const row = stmt.getIdempotency.get(tenant, scope, key);
        return row === undefined ? undefined : { fingerprint: row.fingerprint, key: row.doc_key, version: row.version, createdAt: row.created_at };
      },
      oldestAcks: (streamId, after, limit) => this.oldestAcks(streamId, after, limit, false),
    };
    this.runBatch = this.db.transaction((batch: readonly Write[]) => {
      this.batchRecentRows = 0;
      this.batchOldest.clear();
      const plan = planBatch(batch, this.reader, {
        contiguous: this.options.contiguous,
        ackCapPerStream: this.options.ackCapPerStream,
        ackCapSlack: this.options.ackCapSlack ?? 0,
        now: this.now(),
      });
      this.write(plan);
      reach('before-commit');
      // Last thing before COMMIT: a batch committed into a deleted or replaced file must not be acked.
      this.files?.assertSame();
      return plan.results;
    }).immediate;
    this.runPrune = this.db.transaction((olderThan: number, maxRows: number) => this.pruneInTransaction(olderThan, maxRows)).immediate;
    this.recentRows = stmt.recentCount.get()!.n;
    this.runSettle = this.db.transaction((last: number, streams: readonly [number, number]) => {
      stmt.settleCopy.run(streams[0], streams[1], last);
      const moved = stmt.settleDelete.run(streams[0], streams[1], last).changes;
      reach('settle-before-commit');
      this.files?.assertSame();
      return moved;
    }).immediate;
    // Writing straight to `acks`: recent acks left by an earlier run move first, so that every
    // stream's recent acks stay newer than its others (oldestAcks relies on it).
    if (this.settleRows === 0 && this.recentRows > 0) this.settleAcks();
  }

  /**
   * Moves every recent ack into the per-stream table in one transaction; a failure leaves both
   * tables as they were. Between batches the store moves them itself, in steps (scheduleSettle).
   */
  settleAcks(): number {
    const last = this.stmt.lastRecentId.get()!.id;
    if (last === null) return 0;
    const moved = this.runSettle(last, EVERY_STREAM);
    this.recentRows = 0;
    if (moved > 0) this.noteCommit();
    return moved;
  }

  /**
   * Once `ackSettleRows` have gathered, moves the recent acks committed so far in steps of whole
   * streams (about `settleStepRows` acks each), one transaction per step and one step per event-loop
   * turn, so that batches commit between them. Each stream's recent acks stay newer than its moved
   * ones (what oldestAcks relies on): a step moves all of a stream's acks up to the same id, and
   * every later ack has a higher id. A failed step ends the move; the next batch starts another.
   */
  private scheduleSettle(): void {
    if (this.settleRows === 0 || this.settling !== undefined || this.recentRows < this.settleRows) return;
    this.settling = 'planning';
    setImmediate(() => this.settleStep());
  }

  private settleStep(): void {
    if (!this.db.open) {
      this.settling = undefined;
      return;
    }
    try {
      if (this.settling === 'planning') this.settling = this.planSettle();
      const move = this.settling;
      const range = move?.ranges.shift();
      if (move !== undefined && range !== undefined) {
        const moved = this.runSettle(move.last, range);
        this.recentRows -= moved;
        if (moved > 0) this.noteCommit();
        if (move.ranges.length > 0) {
          setImmediate(() => this.settleStep());
          return;
        }
      }
    } catch (err) {
      this.options.onSettleError?.(err as Error);
    }
    this.settling = undefined;
  }

  /** The steps of a move: ranges of stream ids holding about settleStepRows recent acks each. */
  private planSettle(): { last: number; ranges: Array<readonly [number, number]> } | undefined {
    const last = this.stmt.lastRecentId.get()!.id;
    if (last === null) return undefined;
    const step = this.options.settleStepRows ?? DEFAULT_SETTLE_STEP_ROWS;
    const ranges: Array<readonly [number, number]> = [];
    let from: number | undefined;
    let rows = 0;
    let to = 0;
    for (const { stream_id: id, n } of this.stmt.recentPerStream.iterate(last)) {
      if (from !== undefined && rows + n > step) {
        ranges.push([from, to]);
        from = undefined;
        rows = 0;
      }
      from ??= id;
      to = id;
      rows += n;
    }
    if (from !== undefined) ranges.push([from, to]);
    return { last, ranges };
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

  apply(batch: readonly Put[], committed?: () => void): Promise<PutResult[]>;
  apply(batch: readonly Write[], committed?: () => void): Promise<Array<PutResult | DocResult>>;
  async apply(batch: readonly Write[], committed?: () => void): Promise<Array<PutResult | DocResult>> {
    // The worker is copying the WAL's last frames so that the next write rewinds it (rewindIfLong).
    if (this.batchesHeld !== undefined) await this.batchesHeld;
    let results: Array<PutResult | DocResult>;
    try {
      // A failed WAL sync is final (wal-sync.ts): no commit after it could be made durable.
      if (this.walSync?.failed) throw this.walSync.failed;
      // Also first: reads from a replaced file (or from its old -wal beside a new file) can fail in
      // any way, and the refusal should name the cause.
      this.files?.assertSame();
      results = this.runBatch(batch);
      this.lastWriteFailed = false;
      this.recentRows += this.batchRecentRows;
      this.noteCommit();
      if (this.checkpointer !== undefined) this.rewindIfLong(this.checkpointer);
      this.scheduleSettle();
    } catch (err) {
      this.lastWriteFailed = true;
      // The transaction rolled back: nothing of the batch was applied or consumed.
      throw storageUnavailable(err);
    }
    // The batch committed but may not be on disk yet. If the sync fails its outcome is unknown
    // (PROTOCOL.md §8.3): answered STORAGE_UNAVAILABLE like a batch that failed, the store refuses
    // every write from then on, and a resent put finds its stored ack after the restart if it survived.
    reach('before-sync');
    // The next batch may be decided now (every call runs its transaction at once, in call order);
    // the sync that covers this one is already started or will be by the wait below.
    if (this.walSync !== undefined) committed?.();
    await this.durable();
    return results;
  }

  /** Waits until everything committed so far is on disk (walSync 'background'); rejects retryably if it cannot be. */
  private durable(): Promise<void> {
    if (this.walSync === undefined) return Promise.resolve();
    return this.walSync.durable().catch((err: unknown) => {
      this.lastWriteFailed = true;
      throw new SeqgateError('STORAGE_UNAVAILABLE', `commit not made durable: ${(err as Error).message}`, {}, { cause: err });
    });
  }

  /** Tells those who follow this connection's commits that one happened. */
  private noteCommit(): void {
    this.checkpointer?.committed();
    this.walSync?.committed();
  }

  /**
   * Once the WAL file passes its bound it is rewound to its start, which SQLite does at the start
   * of a write once every frame has been copied into the database file (and that file synced). Under
   * continuous writes the worker's checkpoints never catch the last frames, so: ask the worker for a
   * checkpoint at once; when it ends, hold new batches and ask for one more, which has only the
   * frames written meanwhile to copy; then let batches go, and the next one rewinds the WAL
   * (truncated to journal_size_limit). The event loop stays free throughout: run on this
   * connection, that last checkpoint spent 30-60 ms in its two fsyncs. Batches are held early if
   * the WAL reaches twice its bound before the first checkpoint ends (a slow disk), so it stays
   * under that. If the two checkpoints have not both ended within REWIND_WAIT_MS, this connection
   * checkpoints itself and lets batches go.
   */
  private rewindIfLong(checkpointer: WalCheckpointer): void {
    if (this.rewinding) {
      if (this.batchesHeld === undefined && checkpointer.walBytes() > 2 * this.maxWalBytes) this.holdBatches();
      return;
    }
    if (checkpointer.walBytes() <= this.maxWalBytes) return;
    this.rewinding = true;
    let done = false;
    const finish = (answered: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(fallback);
      if (!answered && this.db.open) {
        try {
          this.db.pragma('wal_checkpoint(PASSIVE)');
        } catch (err) {
          this.options.onCheckpointError?.(err as Error);
        }
      }
      this.rewinding = false;
      const release = this.releaseBatches;
      this.batchesHeld = undefined;
      this.releaseBatches = undefined;
      release?.();
    };
    const fallback = setTimeout(() => finish(false), REWIND_WAIT_MS);
    fallback.unref();
    checkpointer.afterNextCheckpoint(() => {
      if (done) return;
      this.holdBatches();
      checkpointer.afterNextCheckpoint(() => finish(true));
    });
  }

  private holdBatches(): void {
    if (this.batchesHeld !== undefined) return;
    this.batchesHeld = new Promise((resolve) => (this.releaseBatches = resolve));
  }

  /** Carries out a plan of the gate, inside the batch's transaction. */
  private write(plan: BatchPlan<number>): void {
    const { stmt } = this;
    for (const s of plan.streams) {
      let id: number;
      if (s.id === null) {
        id = stmt.insertStream.get(s.tenant, s.name, s.head.epoch, s.head.seq, s.head.prunedThrough, s.ackCount)!.id;
      } else {
        id = s.id;
        stmt.updateStream.run(s.head.epoch, s.head.seq, s.head.prunedThrough, s.ackCount, id);
        if (s.evictThrough !== null) {
          stmt.deleteAcksThrough.run(id, s.evictThrough.epoch, s.evictThrough.seq);
          this.batchRecentRows -= stmt.deleteRecentAcksThrough.run(id, s.evictThrough.epoch, s.evictThrough.seq).changes;
        }
      }
      for (const { fingerprint, ack } of s.acks) {
        stmt.insertAck.run(
          id,
          ack.epoch,
          ack.seq,
          fingerprint,
          OUTCOME_CODES[ack.outcome],
          ack.key,
          ack.version,
          ack.deleted ? 1 : 0,
          ack.ifVersion ?? null,
          ack.committedAt,
        );
      }
      if (this.settleRows > 0) this.batchRecentRows += s.acks.length;
      // Only these can change which ack is the oldest prunable one: a new stream, an eviction, and
      // a stream that held only its head's ack (that ack became prunable when the head moved).
      const known = s.id === null ? undefined : this.batchOldest.get(id);
      if (known === undefined || known === null || s.evictThrough !== null) this.noteOldestAck(id, s.head, known ?? null);
    }
    this.changes.beginBatch();
    for (const d of plan.documents) {
      stmt.upsertDoc.run(d.tenant, d.key, d.row.version, d.row.deleted ? 1 : 0, d.row.state, d.row.updatedAt);
      // The change log row goes in the same transaction: it commits exactly when the document does.
      if (this.logChanges) {
        this.changes.append(d.tenant, d.key, d.row.version, d.row.deleted, d.row.state, changeOrigin(d.origin, d.row.deleted), d.row.updatedAt);
      }
    }
    this.changes.endBatch();
    for (const i of plan.idempotency) {
      stmt.insertIdempotency.run(i.tenant, i.scope, i.idempotencyKey, i.record.fingerprint, i.record.key, i.record.version, i.record.createdAt);
    }
  }

  /**
   * Keeps streams.oldest_ack_at equal to the commit time of the stream's oldest ack that may be
   * pruned: NULL when only the head's own ack is stored (it is never pruned). Returns the value.
   */
  private noteOldestAck(streamId: number, head: { epoch: number; seq: number }, known: number | null): number | null {
    const first = this.oldestAcks(streamId, null, 1, true)[0];
    const at = first === undefined || (first.epoch === head.epoch && first.seq === head.seq) ? null : first.committed_at;
    if (at !== known) this.stmt.setOldestAck.run(at, streamId);
    return at;
  }

  /**
   * A stream's oldest acks after `after`, in position order. Its acks in recent_acks are newer than
   * those in `acks`: a move takes all recent acks, new acks go to recent_acks (or, with
   * ackSettleRows 0, to `acks` once the constructor has moved any recent ones).
   */
  private oldestAcks(streamId: number, after: Position | null, limit: number, withTime: true): StoredPosition[];
  private oldestAcks(streamId: number, after: Position | null, limit: number, withTime: false): Position[];
  private oldestAcks(streamId: number, after: Position | null, limit: number, withTime: boolean): Position[] {
    const rows: Position[] = this.stmt.settledOldest.all(streamId, after?.epoch ?? -1, after?.seq ?? -1, limit);
    if (rows.length >= limit) return rows;
    const from = rows[rows.length - 1] ?? after;
    const recent = withTime ? this.stmt.recentOldest : this.stmt.recentPositions;
    return rows.concat(recent.all(streamId, from?.epoch ?? -1, from?.seq ?? -1, limit - rows.length));
  }

  private readAck(streamId: number, put: Put): StoredAck | undefined {
    const row = this.stmt.getRecentAck.get(streamId, put.epoch, put.seq) ?? this.stmt.getAck.get(streamId, put.epoch, put.seq);
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

  // Every read below answers only once what it read is on disk (walSync 'background'): a head or
  // a document seen by a client must not go back after a power loss, any more than an ack may.

  async heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]> {
    const heads = streams.map((stream) => {
      const row = this.stmt.getStream.get(tenant, stream);
      const head: Head = row ? { epoch: row.epoch, seq: row.seq, prunedThrough: row.pruned_through } : { epoch: 0, seq: 0, prunedThrough: 0 };
      return { stream, ...head };
    });
    await this.durable();
    return heads;
  }

  async document(tenant: string, key: string): Promise<StoredDocument | undefined> {
    const row = this.stmt.getDocFull.get(tenant, key);
    await this.durable();
    if (row === undefined) return undefined;
    return { key, version: row.version, deleted: row.deleted === 1, state: row.state, updatedAt: row.updated_at };
  }

  async ready(): Promise<void> {
    if (this.walSync?.failed) throw this.walSync.failed;
    this.files?.assertSame();
    // A write that allocates pages (refused at max_page_count, like a put that needs room) and
    // leaves every row as it was. Normally it is rolled back: /readyz needs no token, so a probe
    // must cost no fsync. After a batch failed to commit (a full disk shows only at commit), the
    // probe commits, and readiness comes back only when a write really commits again.
    const commit = this.lastWriteFailed;
    const probe = this.db.transaction(() => {
      this.stmt.insertProbe.run('x'.repeat(2 * (this.db.pragma('page_size', { simple: true }) as number)));
      this.stmt.deleteProbe.run();
      if (!commit) throw new ProbeDone();
    });
    try {
      probe.immediate();
    } catch (err) {
      if (!(err instanceof ProbeDone)) throw err;
    }
    if (commit) {
      this.walSync?.committed();
      await this.walSync?.durable();
    }
    this.lastWriteFailed = false;
  }

  async pruneIdempotency(olderThan: number, maxRows: number): Promise<number> {
    const removed = this.stmt.pruneIdempotency.run(olderThan, maxRows).changes;
    this.walSync?.committed();
    return removed;
  }

  async prune(olderThan: number, maxRows: number): Promise<{ pruned: number; done: boolean }> {
    const step = this.runPrune(olderThan, maxRows);
    // Even a step that deleted nothing may have rewritten streams.oldest_ack_at.
    this.walSync?.committed();
    if (step.pruned > 0) this.checkpointer?.committed();
    return step;
  }

  /**
   * One step: the streams whose oldest prunable ack is older than the cutoff, oldest first; of
   * each, the acks older than the cutoff from its oldest on, up to the first younger one (a
   * stream's acks are in commit order by position; after a backward clock step a younger stamp
   * may come first, and the acks behind it are then kept longer, never pruned early).
   */
  private pruneInTransaction(olderThan: number, maxRows: number): { pruned: number; done: boolean } {
    const { stmt } = this;
    const streams = stmt.streamsToPrune.all(olderThan, maxRows);
    let budget = maxRows;
    let pruned = 0;
    let done = streams.length < maxRows;
    for (const st of streams) {
      if (budget <= 0) {
        done = false;
        break;
      }
      const head = { epoch: st.epoch, seq: st.seq, prunedThrough: st.pruned_through };
      // One more than the budget: the head's own ack may be among them and is never deleted.
      const rows = this.oldestAcks(st.id, null, budget + 1, true);
      const old: StoredPosition[] = [];
      for (const r of rows) {
        if (r.committed_at >= olderThan) break;
        old.push(r);
      }
      const plan = planPrune(old.map((r) => ({ streamId: st.id, epoch: r.epoch, seq: r.seq, head })));
      const deletes = plan.deletes.slice(0, budget);
      if (deletes.length < plan.deletes.length) done = false;
      if (deletes.length > 0) {
        // The deletes are every ack of the stream up to the last of them (a prefix in position
        // order; only the head's, the newest, is ever left out): one range delete per table.
        const last = deletes[deletes.length - 1]!;
        stmt.deleteAcksThrough.run(st.id, last.epoch, last.seq);
        this.recentRows -= stmt.deleteRecentAcksThrough.run(st.id, last.epoch, last.seq).changes;
        stmt.notePruned.run(deletes.length, afterForgetting(head, last).prunedThrough, st.id);
      }
      budget -= deletes.length;
      pruned += deletes.length;
      this.noteOldestAck(st.id, st, st.oldest_ack_at);
    }
    return { pruned, done };
  }

  /** For tests and operational tooling inside this package: the underlying connection. */
  get database(): Database.Database {
    return this.db;
  }

  /** The background checkpointer, if the store runs one; for tests. */
  get walCheckpointer(): WalCheckpointer | undefined {
    return this.checkpointer;
  }

  async readChanges(tenant: string, query: ChangeQuery): Promise<ChangePage> {
    const page = this.changes.read(tenant, query);
    await this.durable();
    return page;
  }

  async changeTail(tenant: string): Promise<number> {
    const tail = this.changes.tail(tenant);
    await this.durable();
    return tail;
  }

  async snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number): Promise<Snapshot> {
    // One read transaction: the documents and the offset come from the same moment.
    const snap = this.db.transaction(() => this.changes.snapshot(tenant, prefixes, afterKey, limit))();
    await this.durable();
    return snap;
  }

  async trimChanges(policy: ChangeRetention, maxRows: number): Promise<{ removed: number; done: boolean }> {
    const step = this.db.transaction(() => this.changes.trim(policy, maxRows)).immediate();
    this.walSync?.committed();
    if (step.removed > 0) this.checkpointer?.committed();
    return step;
  }

  async close(): Promise<void> {
    await this.walSync?.close();
    // The worker's connection closes first, so the store's is the last and checkpoints at close.
    await this.checkpointer?.close();
    if (this.db.open) this.db.close();
    // A batch held for a rewind the closed worker will never finish fails now, not after REWIND_WAIT_MS.
    this.releaseBatches?.();
  }
}
