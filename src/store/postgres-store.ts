import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { planBatch, type BatchPlan, type BatchReader, type StreamRow } from '../batch-gate.js';
import { reach } from '../crash-points.js';
import type { DocumentRow, IdempotencyRecord } from '../document-gate.js';
import { storageUnavailable, type StoredAck } from '../gate.js';
import { comparePositions, planPrune, type Position } from '../retention.js';
import { migratePostgres } from './postgres-schema.js';
import { changeFromRow, changeOrigin, planTrim, type ChangeRow, type ChangePage, type ChangeQuery, type ChangeRetention, type Snapshot } from './change-log.js';
import { isDocWrite, type Ack, type DocResult, type Put, type PutResult, type Store, type StoredDocument, type StreamHead, type Write } from './store.js';
import { processClock } from './retention-clock.js';

/**
 * The PostgreSQL store: any number of seqgate servers on one database behave as one server.
 *
 * A batch is one READ COMMITTED transaction in two round trips:
 * 1. `BEGIN; SELECT * FROM seqgate.begin_batch(...)`: placeholder rows, then row locks on the
 *    batch's streams, documents and idempotency keys in one global sorted order, then (in fresh
 *    statements, after the locks are held) the rows the gate needs.
 * 2. `SELECT seqgate.write_batch(...); COMMIT`: what planBatch decided.
 * The locks make every server's batches on one stream or document run one after the other; the
 * ack primary key and the "head only moves forward" guard are a second line of defence. A
 * deadlock or guard failure rolls back and the batch is decided again (bounded, jittered). A
 * connection lost after COMMIT was sent leaves the outcome unknown: it is resolved with
 * txid_status, or the batch is run again (safe: committed positions replay), and never answered
 * as "nothing consumed" without knowing.
 */

interface PostgresStoreOptions {
  readonly connectionString: string;
  readonly contiguous: boolean;
  readonly ackCapPerStream: number;
  /** Chunked cap eviction (src/retention.ts, acksToEvict); 0: one ack per put past the cap. */
  readonly ackCapSlack?: number;
  /** Connections for reads (hello heads, GET documents), readiness and pruning. */
  readonly poolSize?: number;
  /** Clock for commit times; tests pin it. */
  readonly now?: () => number;
  /** Append every document change to the change log (default true; false only to measure its cost). */
  readonly changeLog?: boolean;
  /** Reports outcomes it had to resolve and batches it decided again (for logs and tests). */
  readonly onEvent?: (event: PostgresStoreEvent) => void;
}

export type PostgresStoreEvent =
  | { readonly kind: 'retry'; readonly attempt: number; readonly cause: unknown }
  | { readonly kind: 'outcome-unknown'; readonly txid: string; readonly cause: unknown }
  | { readonly kind: 'outcome-resolved'; readonly txid: string; readonly status: string };

/** int8 as a JS number: seqs, versions and times are safe integers by protocol rule. */
const TYPES = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

const OUTCOME_CODES = { applied: 0, version_conflict: 1 } as const;

/** Failures that a fresh decision can get past: lock order violated, guard tripped, lock timeout. */
const DECIDE_AGAIN = new Set(['40P01', '40001', '23505', 'SGH01', '55P03']);
const MAX_ATTEMPTS = 6;

function sqlState(err: unknown): string | undefined {
  return err instanceof pg.DatabaseError ? err.code : undefined;
}

/** The connection is gone (or going): nothing about the transaction can be learned from it. */
function connectionLost(err: unknown): boolean {
  const code = sqlState(err);
  if (code === undefined) return true;
  return code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03';
}

function retryable(err: unknown): boolean {
  return connectionLost(err) || DECIDE_AGAIN.has(sqlState(err) ?? '');
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Exponential backoff with full jitter, so servers that collided do not collide again in step. */
function backoff(attempt: number, capMs: number): number {
  return Math.random() * Math.min(capMs, 5 * 2 ** attempt);
}

interface BatchRow {
  kind: number;
  id: number | null;
  tenant: string | null;
  name: string | null;
  epoch: number | null;
  seq: number | null;
  n1: number | null;
  n2: number | null;
  flag: boolean | null;
  state: Buffer | null;
  fingerprint: Buffer | null;
  outcome: number | null;
  akey: string | null;
  if_version: number | null;
  scope: string | null;
}

class Unknown extends Error {}

export class PostgresStore implements Store {
  private batchClient: pg.Client | undefined;
  private pruneCursor: [number, number, number, number] = [-1, -1, -1, -1];
  private readonly changeTrimCursor = new Map<string, number>();
  private closed = false;
  private readonly now: () => number;

  private constructor(
    private readonly options: PostgresStoreOptions,
    private readonly pool: pg.Pool,
    readonly incarnation: string,
    /** The schema version found at start, before migrating (0: a new database). */
    readonly openedSchemaVersion: number,
  ) {
    // Stamps through the process clock, which pruning cutoffs rely on (src/store/retention-clock.ts).
    this.now = options.now ?? (() => processClock.now());
  }

  /** Connects, migrates (serialised across servers by a row lock) and reads the incarnation. */
  static async open(options: PostgresStoreOptions): Promise<PostgresStore> {
    const pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolSize ?? 4,
      types: TYPES,
      application_name: 'seqgate',
      idleTimeoutMillis: 30_000,
    });
    // An idle connection that dies (database restart) must not take the process with it.
    pool.on('error', () => undefined);
    try {
      const client = await pool.connect();
      let found: number;
      try {
        found = await migratePostgres(client);
      } finally {
        client.release();
      }
      const { rows } = await pool.query<{ value: string }>("SELECT value FROM seqgate.meta WHERE name = 'incarnation'");
      return new PostgresStore(options, pool, rows[0]!.value, found);
    } catch (err) {
      await pool.end().catch(() => undefined);
      throw err;
    }
  }

  private async connection(): Promise<pg.Client> {
    if (this.batchClient !== undefined) return this.batchClient;
    const client = new pg.Client({
      connectionString: this.options.connectionString,
      types: TYPES,
      application_name: 'seqgate',
      // A server that stalls mid-batch must not hold its row locks for ever.
      idle_in_transaction_session_timeout: 60_000,
    });
    client.on('error', () => this.discard(client));
    await client.connect().catch((err: unknown) => {
      void client.end().catch(() => undefined);
      throw err;
    });
    this.batchClient = client;
    return client;
  }

  private discard(client: pg.Client): void {
    if (this.batchClient === client) this.batchClient = undefined;
    void client.end().catch(() => undefined);
  }

  apply(batch: readonly Put[]): Promise<PutResult[]>;
  apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>>;
  async apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.runOnce(batch);
      } catch (err) {
        if (err instanceof Unknown) throw err.cause;
        if (attempt >= MAX_ATTEMPTS || !retryable(err) || this.closed) throw storageUnavailable(err);
        this.options.onEvent?.({ kind: 'retry', attempt, cause: err });
        await sleep(backoff(attempt, 200));
      }
    }
  }

  private async runOnce(batch: readonly Write[]): Promise<Array<PutResult | DocResult>> {
    const client = await this.connection();
    let rows: BatchRow[];
    try {
      const res = (await client.query(
        `BEGIN; SELECT * FROM seqgate.begin_batch(${pg.escapeLiteral(JSON.stringify(lockRequest(batch)))}::json, ${this.options.ackCapPerStream}, ${this.options.ackCapSlack ?? 0})`,
      )) as unknown as pg.QueryResult[];
      rows = res[1]!.rows as BatchRow[];
    } catch (err) {
      await this.rollback(client, err);
      throw err;
    }
    let plan: BatchPlan<number>;
    let txid: string;
    try {
      const loaded = readerOver(rows);
      txid = loaded.txid;
      plan = planBatch(batch, loaded.reader, {
        contiguous: this.options.contiguous,
        ackCapPerStream: this.options.ackCapPerStream,
        ackCapSlack: this.options.ackCapSlack ?? 0,
        now: this.now(),
      });
      reach('before-commit');
    } catch (err) {
      await this.rollback(client, err);
      throw err;
    }
    try {
      await client.query(`SELECT seqgate.write_batch(${pg.escapeLiteral(JSON.stringify(writeRequest(plan, this.options.changeLog ?? true)))}::json); COMMIT`);
    } catch (err) {
      if (!connectionLost(err)) {
        // The write failed before COMMIT ran: the transaction is aborted, nothing is stored.
        await this.rollback(client, err);
        throw err;
      }
      this.discard(client);
      this.options.onEvent?.({ kind: 'outcome-unknown', txid, cause: err });
      try {
        return await this.resolve(txid, batch, plan);
      } catch (resolveErr) {
        throw new Unknown('outcome unresolved', { cause: resolveErr });
      }
    }
    return plan.results;
  }

  private async rollback(client: pg.Client, cause: unknown): Promise<void> {
    if (connectionLost(cause)) {
      this.discard(client);
      return;
    }
    await client.query('ROLLBACK').catch(() => this.discard(client));
  }

  /**
   * COMMIT was sent and no answer came. Asks the database what became of the transaction, as
   * long as it takes: committed means the plan's answers are the truth; aborted means nothing
   * happened and the batch runs again (positions it did commit would replay, so this is safe).
   */
  private async resolve(txid: string, batch: readonly Write[], plan: BatchPlan<number>): Promise<Array<PutResult | DocResult>> {
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw new Error(`outcome of transaction ${txid} unknown: the store closed while the database was unreachable`);
      let status: string | null | undefined;
      try {
        status = (await this.pool.query<{ status: string | null }>('SELECT txid_status($1) AS status', [txid])).rows[0]!.status;
      } catch {
        // Still unreachable (a restart takes seconds): keep asking.
      }
      if (status === 'committed') {
        this.options.onEvent?.({ kind: 'outcome-resolved', txid, status });
        return plan.results;
      }
      if (status === 'aborted' || status === null) {
        this.options.onEvent?.({ kind: 'outcome-resolved', txid, status: status ?? 'too old to know' });
        // Nothing of it was stored: decide it again. Its own failure, if any, is a known one.
        return await this.apply(batch);
      }
      // undefined (no answer) or 'in progress' (the old backend has not noticed the lost client yet).
      await sleep(Math.min(1000, 20 * 2 ** attempt));
    }
  }

  async heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]> {
    const { rows } = await this.pool.query<{ name: string; epoch: number; seq: number; pruned_through: number }>(
      'SELECT name, epoch, seq, pruned_through FROM seqgate.streams WHERE tenant = $1 AND name = ANY($2::text[])',
      [tenant, streams],
    );
    const byName = new Map(rows.map((r) => [r.name, r]));
    return streams.map((stream) => {
      const r = byName.get(stream);
      return { stream, epoch: r?.epoch ?? 0, seq: r?.seq ?? 0, prunedThrough: r?.pruned_through ?? 0 };
    });
  }

  async document(tenant: string, key: string): Promise<StoredDocument | undefined> {
    const { rows } = await this.pool.query<{ version: number; deleted: boolean; state: Buffer | null; updated_at: number }>(
      'SELECT version, deleted, state, updated_at FROM seqgate.documents WHERE tenant = $1 AND key = $2 AND version > 0',
      [tenant, key],
    );
    const r = rows[0];
    return r && { key, version: r.version, deleted: r.deleted, state: r.state, updatedAt: r.updated_at };
  }

  async ready(): Promise<void> {
    // A real write that is rolled back: proves the database accepts writes from us right now.
    await this.pool.query(`BEGIN; INSERT INTO seqgate.meta (name, value) VALUES ('readiness_probe ${randomUUID()}', ''); ROLLBACK`);
  }

  /**
   * One pruning step. Safe with several servers pruning at once: each locks the heads of the
   * streams it prunes (in the batches' lock order), decides under the lock with planPrune, and
   * counts only the acks its DELETE really removed.
   */
  async prune(olderThan: number, maxRows: number): Promise<{ pruned: number; done: boolean }> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      const candidates = (
        await client.query<{ stream_id: number; epoch: number; seq: number; committed_at: number }>(
          `SELECT stream_id, epoch, seq, committed_at FROM seqgate.acks
          WHERE committed_at < $1 AND (committed_at, stream_id, epoch, seq) > ($2, $3, $4, $5)
          ORDER BY committed_at, stream_id, epoch, seq LIMIT $6`,
          [olderThan, ...this.pruneCursor, maxRows],
        )
      ).rows;
      const ids = [...new Set(candidates.map((c) => c.stream_id))];
      const heads = new Map(
        (
          await client.query<{ id: number; epoch: number; seq: number; pruned_through: number }>(
            `SELECT id, epoch, seq, pruned_through FROM seqgate.streams WHERE id = ANY($1::bigint[])
          ORDER BY tenant COLLATE "C", name COLLATE "C" FOR UPDATE`,
            [ids],
          )
        ).rows.map((h) => [h.id, h]),
      );
      const withHead = (r: { stream_id: number; epoch: number; seq: number }) => {
        const h = heads.get(r.stream_id)!;
        return { streamId: r.stream_id, epoch: r.epoch, seq: r.seq, head: { epoch: h.epoch, seq: h.seq, prunedThrough: h.pruned_through } };
      };
      const plan = planPrune(candidates.filter((c) => heads.has(c.stream_id)).map(withHead));
      let pruned = 0;
      if (plan.deletes.length > 0) {
        const deleted = (
          await client.query<{ stream_id: number; epoch: number; seq: number }>(
            `DELETE FROM seqgate.acks a USING unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS x(i, e, q)
            WHERE a.stream_id = x.i AND a.epoch = x.e AND a.seq = x.q RETURNING a.stream_id, a.epoch, a.seq`,
            [plan.deletes.map((d) => d.streamId), plan.deletes.map((d) => d.epoch), plan.deletes.map((d) => d.seq)],
          )
        ).rows;
        // Another server, or the cap, may have removed some first: count what this step removed.
        const done = planPrune(deleted.map(withHead));
        if (done.streams.length > 0) {
          await client.query(
            `UPDATE seqgate.streams s SET ack_count = s.ack_count - x.r, pruned_through = x.p
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS x(i, r, p) WHERE s.id = x.i`,
            [done.streams.map((s) => s.streamId), done.streams.map((s) => s.removed), done.streams.map((s) => s.prunedThrough)],
          );
        }
        pruned = done.deletes.length;
      }
      await client.query('COMMIT');
      const finished = candidates.length < maxRows;
      const last = candidates[candidates.length - 1];
      this.pruneCursor = finished || last === undefined ? [-1, -1, -1, -1] : [last.committed_at, last.stream_id, last.epoch, last.seq];
      return { pruned, done: finished };
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  /** Safe with several servers: each deletes rows nobody holds (SKIP LOCKED), so none waits. */
  async pruneIdempotency(olderThan: number, maxRows: number): Promise<number> {
    const res = await this.pool.query(
      `DELETE FROM seqgate.idempotency WHERE (tenant, scope, key) IN (
         SELECT tenant, scope, key FROM seqgate.idempotency
          WHERE created_at < $1 AND fingerprint IS NOT NULL ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)`,
      [olderThan, maxRows],
    );
    return res.rowCount ?? 0;
  }

  /**
   * One statement, so one snapshot: the log row and the changes agree, and every change at or below
   * the row's last_offset is committed (offsets are handed out under the row's lock, see write_batch).
   */
  async readChanges(tenant: string, q: ChangeQuery): Promise<ChangePage> {
    const { rows } = await this.pool.query<ChangeRow & { last_offset: number; trimmed_through: number }>(
      `SELECT l.last_offset, l.trimmed_through, c."offset", c.key, c.version, c.deleted, c.state, c.stream, c.epoch, c.seq, c.route, c.committed_at
         FROM seqgate.change_logs l
         LEFT JOIN LATERAL (
           SELECT * FROM seqgate.changes c
            WHERE c.tenant = l.tenant AND c."offset" > $2 AND c."offset" <= least(l.last_offset, $2 + $3)
              AND $2 >= l.trimmed_through AND EXISTS (SELECT 1 FROM unnest($4::text[]) p WHERE starts_with(c.key, p))
            ORDER BY c."offset" LIMIT $5) c ON true
        WHERE l.tenant = $1`,
      [tenant, q.after, Math.max(1, q.maxScan), q.prefixes, Math.max(0, q.limit)],
    );
    const tail = rows[0]?.last_offset ?? 0;
    const trimmedThrough = rows[0]?.trimmed_through ?? 0;
    if (q.after < trimmedThrough) return { expired: true, changes: [], next: q.after, tail, trimmedThrough };
    const changes = rows.filter((r) => r.offset !== null).map(changeFromRow);
    const end = Math.min(tail, q.after + Math.max(1, q.maxScan));
    const next = q.limit > 0 && changes.length >= q.limit ? changes[changes.length - 1]!.offset : Math.max(q.after, end);
    return { expired: false, changes, next, tail, trimmedThrough };
  }

  async changeTail(tenant: string): Promise<number> {
    const { rows } = await this.pool.query<{ last_offset: number }>('SELECT last_offset FROM seqgate.change_logs WHERE tenant = $1', [tenant]);
    return rows[0]?.last_offset ?? 0;
  }

  /** In one REPEATABLE READ transaction: the documents and the offset come from the same snapshot. */
  async snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number): Promise<Snapshot> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const offset =
        (await client.query<{ last_offset: number }>('SELECT last_offset FROM seqgate.change_logs WHERE tenant = $1', [tenant])).rows[0]?.last_offset ?? 0;
      const docs = (
        await client.query<{ key: string; version: number; state: Buffer }>(
          `SELECT key, version, state FROM seqgate.documents
          WHERE tenant = $1 AND version > 0 AND NOT deleted AND state IS NOT NULL
            AND ($2::text IS NULL OR key COLLATE "C" > $2::text COLLATE "C")
            AND EXISTS (SELECT 1 FROM unnest($3::text[]) p WHERE starts_with(key, p))
          ORDER BY key COLLATE "C" LIMIT $4`,
          [tenant, afterKey, prefixes, limit + 1],
        )
      ).rows;
      await client.query('COMMIT');
      const page = docs.slice(0, limit);
      return { offset, documents: page, nextKey: docs.length > limit ? page[page.length - 1]!.key : null };
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  /**
   * One retention step per tenant, deciding with planTrim like SQLite. Safe with several servers:
   * each step locks the tenant's log row first (as writers do, last), so steps on one tenant run
   * one after the other and trimmed_through only rises.
   */
  async trimChanges(policy: ChangeRetention, maxRows: number): Promise<{ removed: number; done: boolean }> {
    const tenants = (await this.pool.query<{ tenant: string }>('SELECT tenant FROM seqgate.change_logs ORDER BY tenant COLLATE "C"')).rows;
    let removed = 0;
    let budget = maxRows;
    for (const { tenant } of tenants) {
      if (budget <= 0) return { removed, done: false };
      const client = await this.pool.connect();
      let reachedNewer: boolean;
      try {
        await client.query('BEGIN');
        const last =
          (await client.query<{ last_offset: number }>('SELECT last_offset FROM seqgate.change_logs WHERE tenant = $1 FOR UPDATE', [tenant])).rows[0]
            ?.last_offset ?? 0;
        const cursor = this.changeTrimCursor.get(tenant) ?? 0;
        const want = budget;
        const rows = (
          await client.query<{ offset: number; version: number; committed_at: number; current: number | null }>(
            `SELECT c."offset", c.version, c.committed_at, d.version AS current FROM seqgate.changes c
             LEFT JOIN seqgate.documents d ON d.tenant = c.tenant AND d.key = c.key
            WHERE c.tenant = $1 AND c."offset" > $2 ORDER BY c."offset" LIMIT $3`,
            [tenant, cursor, want],
          )
        ).rows;
        budget -= rows.length;
        const plan = planTrim(
          rows.map((r) => ({ offset: r.offset, version: r.version, committedAt: r.committed_at, currentVersion: r.current ?? undefined })),
          policy,
          last,
          want,
          cursor,
        );
        if (plan.remove.length > 0) {
          await client.query('DELETE FROM seqgate.changes WHERE tenant = $1 AND "offset" = ANY($2::bigint[])', [tenant, plan.remove]);
        }
        if (plan.trimmedThrough > 0) {
          await client.query('UPDATE seqgate.change_logs SET trimmed_through = greatest(trimmed_through, $2) WHERE tenant = $1', [tenant, plan.trimmedThrough]);
        }
        await client.query('COMMIT');
        removed += plan.remove.length;
        if (policy.compact && !plan.reachedNewer) this.changeTrimCursor.set(tenant, plan.walked);
        else this.changeTrimCursor.delete(tenant);
        reachedNewer = plan.reachedNewer;
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw err;
      } finally {
        client.release();
      }
      if (!reachedNewer) return { removed, done: false };
    }
    return { removed, done: true };
  }

  /** For tests and tooling inside this package: a query on the store's pool. */
  query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
    return this.pool.query<R>(text, values);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.batchClient !== undefined) {
      const c = this.batchClient;
      this.batchClient = undefined;
      await c.end().catch(() => undefined);
    }
    await this.pool.end().catch(() => undefined);
  }
}

/** What begin_batch locks and reads: every stream, document and idempotency key the batch names. */
function lockRequest(batch: readonly Write[]): unknown {
  const streams = new Map<string, { t: string; n: string; c: number }>();
  const docs = new Map<string, { t: string; k: string; full: boolean }>();
  const idem = new Map<string, { t: string; sc: string; k: string }>();
  const positions: Array<{ t: string; n: string; e: number; q: number }> = [];
  const doc = (t: string, k: string, full: boolean) => {
    const id = t + '\u0000' + k;
    const d = docs.get(id);
    if (d === undefined) docs.set(id, { t, k, full });
    else if (full) d.full = true;
  };
  for (const w of batch) {
    if (isDocWrite(w)) {
      doc(w.tenant, w.key, w.op === 'replace');
      if (w.op === 'create') idem.set(w.tenant + '\u0000' + w.scope + '\u0000' + w.idempotencyKey, { t: w.tenant, sc: w.scope, k: w.idempotencyKey });
      continue;
    }
    const id = w.tenant + '\u0000' + w.stream;
    const s = streams.get(id);
    if (s === undefined) streams.set(id, { t: w.tenant, n: w.stream, c: 1 });
    else s.c++;
    doc(w.tenant, w.key, false);
    positions.push({ t: w.tenant, n: w.stream, e: w.epoch, q: w.seq });
  }
  return { s: [...streams.values()], d: [...docs.values()], i: [...idem.values()], p: positions };
}

/** The rows begin_batch returned, as the gate's reader. */
function readerOver(rows: readonly BatchRow[]): { reader: BatchReader<number>; txid: string } {
  const streams = new Map<string, StreamRow<number>>();
  const docs = new Map<string, DocumentRow>();
  const acks = new Map<string, BatchRow>();
  const oldest = new Map<number, Position[]>();
  const idem = new Map<string, IdempotencyRecord>();
  let txid = '';
  for (const r of rows) {
    switch (r.kind) {
      case 0:
        streams.set(r.tenant! + '\u0000' + r.name!, { id: r.id!, epoch: r.epoch!, seq: r.seq!, prunedThrough: r.n1!, ackCount: r.n2! });
        break;
      case 1:
        docs.set(r.tenant! + '\u0000' + r.name!, { version: r.n1!, deleted: r.flag!, state: r.state, updatedAt: r.n2! });
        break;
      case 2:
        acks.set(`${r.id!}:${r.epoch!}:${r.seq!}`, r);
        break;
      case 3: {
        const list = oldest.get(r.id!) ?? [];
        list.push({ epoch: r.epoch!, seq: r.seq! });
        oldest.set(r.id!, list);
        break;
      }
      case 4:
        idem.set(r.tenant! + '\u0000' + r.scope! + '\u0000' + r.name!, { fingerprint: r.fingerprint!, key: r.akey!, version: r.n1!, createdAt: r.n2! });
        break;
      case 9:
        txid = String(r.id!);
        break;
    }
  }
  for (const list of oldest.values()) list.sort(comparePositions);
  const reader: BatchReader<number> = {
    stream: (tenant, name) => streams.get(tenant + '\u0000' + name),
    ack: (streamId, put): StoredAck | undefined => {
      const r = acks.get(`${streamId}:${put.epoch}:${put.seq}`);
      if (r === undefined) return undefined;
      const ack: Ack = {
        outcome: r.outcome === OUTCOME_CODES.applied ? 'applied' : 'version_conflict',
        stream: put.stream,
        epoch: put.epoch,
        seq: put.seq,
        key: r.akey!,
        version: r.n1!,
        deleted: r.flag!,
        ...(r.if_version !== null ? { ifVersion: r.if_version } : {}),
        committedAt: r.n2!,
      };
      return { fingerprint: r.fingerprint!, ack };
    },
    documentMeta: (tenant, key) => docs.get(tenant + '\u0000' + key),
    document: (tenant, key) => docs.get(tenant + '\u0000' + key),
    idempotency: (tenant, scope, key) => idem.get(tenant + '\u0000' + scope + '\u0000' + key),
    oldestAcks: (streamId, after, limit) => {
      const list = oldest.get(streamId) ?? [];
      const from = after === null ? 0 : list.findIndex((p) => comparePositions(p, after) > 0);
      return from < 0 ? [] : list.slice(from, from + limit);
    },
  };
  return { reader, txid };
}

/** What write_batch writes: the plan, with a document written twice in the batch sent once (its last state). */
function writeRequest(plan: BatchPlan<number>, logChanges: boolean): unknown {
  const s: unknown[] = [];
  const a: unknown[] = [];
  for (const w of plan.streams) {
    s.push({
      i: w.id,
      e: w.head.epoch,
      q: w.head.seq,
      p: w.head.prunedThrough,
      c: w.ackCount,
      ee: w.evictThrough?.epoch ?? null,
      eq: w.evictThrough?.seq ?? null,
    });
    for (const { fingerprint, ack } of w.acks) {
      a.push({
        i: w.id,
        e: ack.epoch,
        q: ack.seq,
        f: fingerprint.toString('base64'),
        o: OUTCOME_CODES[ack.outcome],
        k: ack.key,
        v: ack.version,
        d: ack.deleted,
        iv: ack.ifVersion ?? null,
        ca: ack.committedAt,
      });
    }
  }
  const docs = new Map<string, unknown>();
  for (const d of plan.documents) {
    const id = d.tenant + '\u0000' + d.key;
    docs.delete(id);
    docs.set(id, { t: d.tenant, k: d.key, v: d.row.version, d: d.row.deleted, s: d.row.state?.toString('base64') ?? null, u: d.row.updatedAt });
  }
  const i = plan.idempotency.map((r) => ({
    t: r.tenant,
    sc: r.scope,
    k: r.idempotencyKey,
    f: r.record.fingerprint.toString('base64'),
    dk: r.record.key,
    v: r.record.version,
    ca: r.record.createdAt,
  }));
  // Every document upsert is one change, in batch order; n numbers a tenant's changes of the batch
  // from 1, and write_batch adds the tenant's last offset under the log row's lock.
  const c: unknown[] = [];
  if (logChanges) {
    const perTenant = new Map<string, number>();
    for (const d of plan.documents) {
      const n = (perTenant.get(d.tenant) ?? 0) + 1;
      perTenant.set(d.tenant, n);
      const origin = changeOrigin(d.origin, d.row.deleted);
      const put = 'stream' in origin ? origin : undefined;
      c.push({
        t: d.tenant,
        n,
        k: d.key,
        v: d.row.version,
        d: d.row.deleted,
        s: d.row.state?.toString('base64') ?? null,
        sn: put?.stream ?? null,
        e: put?.epoch ?? null,
        q: put?.seq ?? null,
        r: put === undefined ? (origin as { route: string }).route : null,
        ca: d.row.updatedAt,
      });
    }
  }
  return { s, a, d: [...docs.values()], i, c };
}
