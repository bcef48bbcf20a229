import type Database from 'better-sqlite3';
import {
  changeFromRow,
  planTrim,
  underPrefixes,
  type Change,
  type ChangeOrigin,
  type ChangeRow,
  type ChangePage,
  type ChangeQuery,
  type ChangeRetention,
  type Snapshot,
  type SnapshotDocument,
} from './change-log.js';

/**
 * The SQLite side of the change log. The store calls `append` inside its batch transaction for
 * every write that changed a document and `endBatch` before COMMIT; readers and the retention
 * pass call the rest. One tenant's next offset lives in its `change_logs` row, so offsets keep
 * increasing after retention empties the log, and SQLite's single writer makes assignment order
 * commit order.
 */

/** Schema migration adding the log; sqlite-schema.ts runs it in its own version step. */
export function createChangeLogTables(db: Database.Database): void {
  db.exec(`
    -- One row per tenant with a log: the last offset handed out and the highest removed by retention.
    CREATE TABLE change_logs (
      tenant          TEXT    PRIMARY KEY,
      last_offset     INTEGER NOT NULL,
      trimmed_through INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    -- origin: stream, epoch, seq for a put by sequence; route for an HTTP document write.
    CREATE TABLE changes (
      tenant       TEXT    NOT NULL,
      offset       INTEGER NOT NULL,
      key          TEXT    NOT NULL,
      version      INTEGER NOT NULL,
      deleted      INTEGER NOT NULL,
      state        BLOB,
      stream       TEXT,
      epoch        INTEGER,
      seq          INTEGER,
      route        TEXT,
      committed_at INTEGER NOT NULL,
      PRIMARY KEY (tenant, offset)
    ) WITHOUT ROWID;
  `);
}

interface LogRow {
  last_offset: number;
  trimmed_through: number;
}

/** A tenant's counter while a batch runs; written back once at the end of the batch. */
interface Counter {
  last: number;
  readonly existed: boolean;
}

/** Prefixes none of which lies under another, in SQLite's (UTF-8 byte) order: their key ranges are disjoint and ordered. */
function disjointPrefixes(prefixes: readonly string[]): string[] {
  const sorted = [...new Set(prefixes)].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const out: string[] = [];
  for (const p of sorted) if (!out.some((q) => p.startsWith(q))) out.push(p);
  return out;
}

export class SqliteChangeLog {
  private readonly stmt;
  private counters = new Map<string, Counter>();
  /** Compaction keeps unsuperseded changes, so its pass walks past them with a cursor per tenant. */
  private trimCursor = new Map<string, number>();

  constructor(db: Database.Database) {
    this.stmt = {
      getLog: db.prepare<[string], LogRow>('SELECT last_offset, trimmed_through FROM change_logs WHERE tenant = ?'),
      insertLog: db.prepare<[string, number]>('INSERT INTO change_logs (tenant, last_offset) VALUES (?, ?)'),
      updateLog: db.prepare<[number, string]>('UPDATE change_logs SET last_offset = ? WHERE tenant = ?'),
      setTrimmed: db.prepare<[number, string]>('UPDATE change_logs SET trimmed_through = max(trimmed_through, ?) WHERE tenant = ?'),
      tenants: db.prepare<[], { tenant: string; last_offset: number }>('SELECT tenant, last_offset FROM change_logs ORDER BY tenant'),
      insert: db.prepare<[string, number, string, number, number, Buffer | null, string | null, number | null, number | null, string | null, number]>(
        `INSERT INTO changes (tenant, offset, key, version, deleted, state, stream, epoch, seq, route, committed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ),
      window: db.prepare<[string, number, number], ChangeRow>(
        `SELECT offset, key, version, deleted, state, stream, epoch, seq, route, committed_at
           FROM changes WHERE tenant = ? AND offset > ? AND offset <= ? ORDER BY offset`,
      ),
      oldest: db.prepare<[string, number, number], { offset: number; key: string; version: number; committed_at: number }>(
        'SELECT offset, key, version, committed_at FROM changes WHERE tenant = ? AND offset > ? ORDER BY offset LIMIT ?',
      ),
      remove: db.prepare<[string, number]>('DELETE FROM changes WHERE tenant = ? AND offset = ?'),
      docVersion: db.prepare<[string, string], { version: number }>('SELECT version FROM documents WHERE tenant = ? AND key = ?'),
      docsFrom: db.prepare<[string, string], { key: string; version: number; deleted: number; state: Buffer | null }>(
        'SELECT key, version, deleted, state FROM documents WHERE tenant = ? AND key >= ? ORDER BY key',
      ),
    };
  }

  /** Inside the store's transaction, before any append of the batch. */
  beginBatch(): void {
    this.counters.clear();
  }

  /** Appends one change at the tenant's next offset; returns that offset. */
  append(tenant: string, key: string, version: number, deleted: boolean, state: Buffer | null, origin: ChangeOrigin, committedAt: number): number {
    let c = this.counters.get(tenant);
    if (c === undefined) {
      const row = this.stmt.getLog.get(tenant);
      c = { last: row?.last_offset ?? 0, existed: row !== undefined };
      this.counters.set(tenant, c);
    }
    c.last++;
    const put = 'stream' in origin ? origin : null;
    this.stmt.insert.run(
      tenant,
      c.last,
      key,
      version,
      deleted ? 1 : 0,
      state,
      put?.stream ?? null,
      put?.epoch ?? null,
      put?.seq ?? null,
      put === null ? (origin as { route: string }).route : null,
      committedAt,
    );
    return c.last;
  }

  /** Inside the store's transaction, after the last append of the batch. */
  endBatch(): void {
    for (const [tenant, c] of this.counters) {
      if (c.existed) this.stmt.updateLog.run(c.last, tenant);
      else this.stmt.insertLog.run(tenant, c.last);
    }
    this.counters.clear();
  }

  /** Forgets the batch's counters after a rollback. */
  abortBatch(): void {
    this.counters.clear();
  }

  tail(tenant: string): number {
    return this.stmt.getLog.get(tenant)?.last_offset ?? 0;
  }

  read(tenant: string, q: ChangeQuery): ChangePage {
    const log = this.stmt.getLog.get(tenant);
    const tail = log?.last_offset ?? 0;
    const trimmedThrough = log?.trimmed_through ?? 0;
    if (q.after < trimmedThrough) return { expired: true, changes: [], next: q.after, tail, trimmedThrough };
    const end = Math.min(tail, q.after + Math.max(1, q.maxScan));
    const changes: Change[] = [];
    let next = Math.max(q.after, end);
    if (q.prefixes.length > 0 && q.limit > 0 && end > q.after) {
      for (const row of this.stmt.window.iterate(tenant, q.after, end)) {
        if (!underPrefixes(row.key, q.prefixes)) continue;
        changes.push(changeFromRow(row));
        if (changes.length >= q.limit) {
          next = row.offset;
          break;
        }
      }
    }
    return { expired: false, changes, next, tail, trimmedThrough };
  }

  /** Runs inside one read transaction so that documents and offset agree. */
  snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number): Snapshot {
    const offset = this.tail(tenant);
    const documents: SnapshotDocument[] = [];
    let nextKey: string | null = null;
    outer: for (const p of disjointPrefixes(prefixes)) {
      const from = afterKey !== null && Buffer.compare(Buffer.from(afterKey), Buffer.from(p)) > 0 ? afterKey : p;
      for (const row of this.stmt.docsFrom.iterate(tenant, from)) {
        if (!row.key.startsWith(p)) break;
        if (afterKey !== null && row.key === afterKey) continue;
        if (row.deleted === 1 || row.state === null) continue;
        if (documents.length >= limit) {
          nextKey = documents[documents.length - 1]!.key;
          break outer;
        }
        documents.push({ key: row.key, version: row.version, state: row.state });
      }
    }
    return { offset, documents, nextKey };
  }

  /** One retention step; the caller runs it in a write transaction. */
  trim(policy: ChangeRetention, maxRows: number): { removed: number; done: boolean } {
    let removed = 0;
    let budget = maxRows;
    for (const { tenant, last_offset: last } of this.stmt.tenants.all()) {
      if (budget <= 0) return { removed, done: false };
      const cursor = this.trimCursor.get(tenant) ?? 0;
      const want = budget;
      const rows = this.stmt.oldest.all(tenant, cursor, want).map((r) => ({
        offset: r.offset,
        version: r.version,
        committedAt: r.committed_at,
        currentVersion: policy.compact ? this.stmt.docVersion.get(tenant, r.key)?.version : undefined,
      }));
      budget -= rows.length;
      const plan = planTrim(rows, policy, last, want, cursor);
      for (const offset of plan.remove) this.stmt.remove.run(tenant, offset);
      removed += plan.remove.length;
      if (plan.trimmedThrough > 0) this.stmt.setTrimmed.run(plan.trimmedThrough, tenant);
      if (policy.compact && !plan.reachedNewer) this.trimCursor.set(tenant, plan.walked);
      else this.trimCursor.delete(tenant);
      if (!plan.reachedNewer) return { removed, done: false };
    }
    return { removed, done: true };
  }
}
