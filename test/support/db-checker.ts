import Database from 'better-sqlite3';
import { Unpackr } from 'msgpackr';

/**
 * Reads a seqgate database file directly with raw SQL, read-only, without any code from src/:
 * a check that went through the store could share the store's bugs. It relies on the tables and
 * columns below (created by schema version 1, src/store/sqlite-schema.ts) and checks on open
 * that they are there, so that a schema change shows up as one clear error here rather than as
 * confusing mismatches in the tests.
 */

export const DEFAULT_TENANT = 'default';

const REQUIRED_COLUMNS: Readonly<Record<string, readonly string[]>> = {
  meta: ['name', 'value'],
  streams: ['id', 'tenant', 'name', 'epoch', 'seq', 'pruned_through', 'ack_count'],
  documents: ['tenant', 'key', 'version', 'deleted', 'state', 'updated_at'],
  acks: ['stream_id', 'epoch', 'seq', 'fingerprint', 'outcome', 'key', 'version', 'deleted', 'if_version', 'committed_at'],
};

const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

export interface DbHead {
  readonly id: number;
  readonly epoch: number;
  readonly seq: number;
  readonly prunedThrough: number;
  readonly ackCount: number;
}

export interface DbDocument {
  readonly version: number;
  readonly deleted: boolean;
  /** The stored canonical msgpack, or null for a deleted document. */
  readonly stateBytes: Buffer | null;
  /** The stored state decoded (maps as plain objects, binaries as Buffers), or null. */
  readonly state: unknown;
  readonly updatedAt: number;
}

export interface DbAck {
  readonly outcome: 'applied' | 'version_conflict';
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
  readonly ifVersion: number | null;
  readonly committedAt: number;
  readonly fingerprint: Buffer;
}

interface StreamRow {
  id: number;
  epoch: number;
  seq: number;
  pruned_through: number;
  ack_count: number;
}
interface DocRow {
  version: number;
  deleted: number;
  state: Buffer | null;
  updated_at: number;
}
/** An acks row as raw SQL returns it (the columns every reader of acks selects). */
export interface AckRow {
  outcome: number;
  key: string;
  version: number;
  deleted: number;
  if_version: number | null;
  committed_at: number;
  fingerprint: Buffer;
}

export class DbChecker {
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();

  constructor(readonly path: string) {
    this.db = new Database(path, { readonly: true, fileMustExist: true });
    const missing: string[] = [];
    for (const [table, columns] of Object.entries(REQUIRED_COLUMNS)) {
      const have = new Set((this.db.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>).map((c) => c.name));
      for (const c of columns) if (!have.has(c)) missing.push(`${table}.${c}`);
    }
    if (missing.length > 0) {
      const version = this.schemaVersion();
      this.db.close();
      throw new Error(`${path} (schema version ${version}) lacks ${missing.join(', ')}: update test/support/db-checker.ts`);
    }
  }

  /** Prepared once per checker: the checks run one query per put over tens of thousands of puts. */
  private q(sql: string): Database.Statement {
    let stmt = this.statements.get(sql);
    if (stmt === undefined) {
      stmt = this.db.prepare(sql);
      this.statements.set(sql, stmt);
    }
    return stmt;
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  /** Rows of PRAGMA integrity_check: exactly ['ok'] for a sound file. */
  integrityCheck(): string[] {
    return (this.q('PRAGMA integrity_check').all() as Array<{ integrity_check: string }>).map((r) => r.integrity_check);
  }

  incarnation(): string | undefined {
    const row = this.q("SELECT value FROM meta WHERE name = 'incarnation'").get() as { value: string } | undefined;
    return row?.value;
  }

  /** The stream's head row, or undefined if the stream was never written. */
  head(stream: string, tenant = DEFAULT_TENANT): DbHead | undefined {
    const row = this.q('SELECT id, epoch, seq, pruned_through, ack_count FROM streams WHERE tenant = ? AND name = ?').get(tenant, stream) as
      StreamRow | undefined;
    return row === undefined ? undefined : { id: row.id, epoch: row.epoch, seq: row.seq, prunedThrough: row.pruned_through, ackCount: row.ack_count };
  }

  /** Every stream name of the tenant. */
  streams(tenant = DEFAULT_TENANT): string[] {
    return (this.q('SELECT name FROM streams WHERE tenant = ? ORDER BY name').all(tenant) as Array<{ name: string }>).map((r) => r.name);
  }

  document(key: string, tenant = DEFAULT_TENANT): DbDocument | undefined {
    const row = this.q('SELECT version, deleted, state, updated_at FROM documents WHERE tenant = ? AND key = ?').get(tenant, key) as DocRow | undefined;
    if (row === undefined) return undefined;
    return {
      version: row.version,
      deleted: row.deleted === 1,
      stateBytes: row.state,
      state: row.state === null ? null : unpackr.unpack(row.state),
      updatedAt: row.updated_at,
    };
  }

  /** Every document key of the tenant. */
  documentKeys(tenant = DEFAULT_TENANT): string[] {
    return (this.q('SELECT key FROM documents WHERE tenant = ? ORDER BY key').all(tenant) as Array<{ key: string }>).map((r) => r.key);
  }

  /** The stored ack of (stream, epoch, seq), or undefined if none is stored (never acked, or pruned). */
  ack(stream: string, epoch: number, seq: number, tenant = DEFAULT_TENANT): DbAck | undefined {
    const row = this.q(
      `SELECT a.outcome, a.key, a.version, a.deleted, a.if_version, a.committed_at, a.fingerprint
         FROM acks_all AS a JOIN streams AS s ON s.id = a.stream_id
        WHERE s.tenant = ? AND s.name = ? AND a.epoch = ? AND a.seq = ?`,
    ).get(tenant, stream, epoch, seq) as AckRow | undefined;
    if (row === undefined) return undefined;
    return {
      outcome: row.outcome === 0 ? 'applied' : row.outcome === 1 ? 'version_conflict' : (`unknown outcome ${row.outcome}` as never),
      key: row.key,
      version: row.version,
      deleted: row.deleted === 1,
      ifVersion: row.if_version,
      committedAt: row.committed_at,
      fingerprint: row.fingerprint,
    };
  }

  /** How many ack rows the stream has (compare with its head's ackCount). */
  countAcks(stream: string, tenant = DEFAULT_TENANT): number {
    return (
      this.q('SELECT count(*) AS n FROM acks_all AS a JOIN streams AS s ON s.id = a.stream_id WHERE s.tenant = ? AND s.name = ?').get(tenant, stream) as {
        n: number;
      }
    ).n;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

/** Opens `path`, runs `fn`, closes the file whatever happens. */
export function withDb<T>(path: string, fn: (db: DbChecker) => T): T {
  const db = new DbChecker(path);
  try {
    return fn(db);
  } finally {
    db.close();
  }
}
