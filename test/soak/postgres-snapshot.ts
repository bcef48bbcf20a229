import { rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import pg from 'pg';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { scratchDatabase } from '../support/postgres.js';

/**
 * The soak's checker reads a SQLite file. For `--store postgres` the database's rows are copied,
 * as they are, into a fresh SQLite file of seqgate's own schema, and the same checker reads that:
 * one checker for both stores. Lock placeholders (a stream at seq 0, a document at version 0, an
 * empty idempotency row) are what the PostgreSQL store reads as "never written", so they are left
 * out, exactly as the store itself leaves them out.
 */
export async function snapshotPostgres(url: string, path: string): Promise<void> {
  rmSync(path, { force: true });
  await new SqliteStore({ path, synchronous: 'normal', contiguous: false, ackCapPerStream: 1 }).close();
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const db = new Database(path);
  try {
    db.pragma('synchronous = OFF');
    // One snapshot of the whole database: a server may still be writing while the copy is taken.
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const streams = (
      await client.query<{ id: string; tenant: string; name: string; epoch: string; seq: string; pruned_through: string; ack_count: string }>(
        'SELECT id, tenant, name, epoch, seq, pruned_through, ack_count FROM seqgate.streams WHERE seq > 0',
      )
    ).rows;
    const acks = (
      await client.query<{
        stream_id: string;
        epoch: string;
        seq: string;
        fingerprint: Buffer;
        outcome: number;
        key: string;
        version: string;
        deleted: boolean;
        if_version: string | null;
        committed_at: string;
      }>('SELECT stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at FROM seqgate.acks')
    ).rows;
    const docs = (
      await client.query<{ tenant: string; key: string; version: string; deleted: boolean; state: Buffer | null; updated_at: string }>(
        'SELECT tenant, key, version, deleted, state, updated_at FROM seqgate.documents WHERE version > 0',
      )
    ).rows;
    await client.query('COMMIT');
    const insStream = db.prepare('INSERT INTO streams (id, tenant, name, epoch, seq, pruned_through, ack_count) VALUES (?, ?, ?, ?, ?, ?, ?)');
    const insAck = db.prepare(
      'INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    const insDoc = db.prepare('INSERT INTO documents (tenant, key, version, deleted, state, updated_at) VALUES (?, ?, ?, ?, ?, ?)');
    db.transaction(() => {
      for (const s of streams) insStream.run(Number(s.id), s.tenant, s.name, Number(s.epoch), Number(s.seq), Number(s.pruned_through), Number(s.ack_count));
      for (const a of acks) {
        insAck.run(
          Number(a.stream_id),
          Number(a.epoch),
          Number(a.seq),
          a.fingerprint,
          a.outcome,
          a.key,
          Number(a.version),
          a.deleted ? 1 : 0,
          a.if_version === null ? null : Number(a.if_version),
          Number(a.committed_at),
        );
      }
      for (const d of docs) insDoc.run(d.tenant, d.key, Number(d.version), d.deleted ? 1 : 0, d.state, Number(d.updated_at));
    })();
  } finally {
    db.close();
    await client.end();
  }
}

/** A database of its own for one soak run, on the PostgreSQL at `adminUrl`. */
export function createSoakDatabase(adminUrl: string): Promise<{ url: string; drop(): Promise<void> }> {
  return scratchDatabase(adminUrl, 'seqgate_soak');
}
