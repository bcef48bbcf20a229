import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import pg from 'pg';
import { PostgresStore } from '../../src/store/postgres-store.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { DEFAULT_TENANT } from '../../src/store/store.js';
import { scratchDatabase } from '../../test/support/postgres.js';
import { KEYS_PER_STREAM } from './workload.js';

/**
 * Databases prepared before a server starts. The schema comes from seqgate itself (SqliteStore
 * migrates the new file); rows are then written directly, because producing a million acks
 * through the server would take most of the time budget.
 */

export interface SeedGroup {
  readonly streamName: (index: number) => string;
  readonly streams: number;
  /** Acks of stream `index`; the head sits at the last one (epoch 1, seq = that count). */
  readonly acksPerStream: number | ((index: number) => number);
  /**
   * committed_at of each stream's newest seeded ack, ms since the Unix epoch; each older ack is
   * 1 ms older, as if every stream had put once per millisecond. Distinct times matter: the commit
   * time index then interleaves streams as a long run leaves it, and evicting a stream's oldest
   * acks touches it where a real server would.
   */
  readonly committedAt: number;
}

export async function seedDatabase(path: string, groups: readonly SeedGroup[]): Promise<number> {
  const store = new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 1000 });
  await store.close();
  const db = new Database(path);
  try {
    db.pragma('journal_mode = WAL');
    // Seeding is preparation, not measurement: durability of the seed itself does not matter.
    db.pragma('synchronous = OFF');
    const insertStream = db.prepare<[string, string, number, number, number | null], { id: number }>(
      'INSERT INTO streams (tenant, name, epoch, seq, pruned_through, ack_count, oldest_ack_at) VALUES (?, ?, 1, ?, 0, ?, ?) RETURNING id',
    );
    const insertAck = db.prepare<[number, number, Buffer, string, number, number]>(
      `INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
       VALUES (?, 1, ?, ?, 0, ?, ?, 0, NULL, ?)`,
    );
    const fingerprint = randomBytes(16);
    let rows = 0;
    db.transaction(() => {
      for (const g of groups) {
        for (let i = 0; i < g.streams; i++) {
          const name = g.streamName(i);
          const count = typeof g.acksPerStream === 'number' ? g.acksPerStream : g.acksPerStream(i);
          // The oldest ack that pruning may take: seq 1, unless it is the head's own.
          const { id } = insertStream.get(DEFAULT_TENANT, name, count, count, count > 1 ? g.committedAt - (count - 1) : null)!;
          for (let seq = 1; seq <= count; seq++) {
            fingerprint.writeUInt32BE(seq, 0);
            insertAck.run(id, seq, fingerprint, `${name}/k${seq % KEYS_PER_STREAM}`, Math.floor(seq / KEYS_PER_STREAM) + 1, g.committedAt - (count - seq));
            rows++;
          }
        }
      }
    })();
    return rows;
  } finally {
    db.close();
  }
}

/** Acks committed before `before` (ms); readable while a server holds the file (WAL readers). */
export function countAcksBefore(path: string, before: number): number {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    const row = db.prepare<[number], { n: number }>('SELECT count(*) AS n FROM acks_all WHERE committed_at < ?').get(before);
    return row?.n ?? 0;
  } finally {
    db.close();
  }
}

/**
 * The PostgreSQL arms' database: created empty (random name) on the server at `adminUrl`,
 * migrated by seqgate itself, then seeded with the same rows as seedDatabase (each load stream at
 * the ack cap, so every put also evicts), written with one SQL statement per group.
 */
export async function createPostgresSeed(adminUrl: string, groups: readonly SeedGroup[]): Promise<{ url: string; rows: number; drop(): Promise<void> }> {
  const { url, drop } = await scratchDatabase(adminUrl, 'seqgate_bench');
  let rows = 0;
  try {
    const store = await PostgresStore.open({ connectionString: url, contiguous: false, ackCapPerStream: 1000, poolSize: 1 });
    await store.close();
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      await c.query('SET synchronous_commit = off');
      for (const g of groups) {
        const names = Array.from({ length: g.streams }, (_, i) => g.streamName(i));
        const counts = names.map((_, i) => (typeof g.acksPerStream === 'number' ? g.acksPerStream : g.acksPerStream(i)));
        await c.query(
          `INSERT INTO seqgate.streams (tenant, name, epoch, seq, pruned_through, ack_count)
           SELECT $1, x.n, 1, x.c, 0, x.c FROM unnest($2::text[], $3::int[]) AS x(n, c)`,
          [DEFAULT_TENANT, names, counts],
        );
        const res = await c.query(
          `INSERT INTO seqgate.acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
           SELECT s.id, 1, q, decode(lpad(to_hex(q), 8, '0') || repeat('ab', 12), 'hex'), 0,
                  s.name || '/k' || (q % $2), q / $2 + 1, false, NULL, $3 - (s.seq - q)
             FROM seqgate.streams s CROSS JOIN LATERAL generate_series(1, s.seq::int) AS q WHERE s.name = ANY($1::text[])`,
          [names, KEYS_PER_STREAM, g.committedAt],
        );
        rows += res.rowCount ?? 0;
      }
      await c.query('VACUUM ANALYZE');
    } finally {
      await c.end();
    }
  } catch (err) {
    await drop().catch(() => undefined);
    throw err;
  }
  return { url, rows, drop };
}
