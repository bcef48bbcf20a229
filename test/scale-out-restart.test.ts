import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { createTestDatabase, postgresAvailable, type TestDatabase } from './support/postgres.js';
import { PutDriver, type DriverPut, type WireResult } from './support/put-driver.js';

/**
 * PostgreSQL restarted under load, with two seqgate servers on it: every put is answered or told
 * to retry, nothing acked is lost, and ingestion resumes by itself. It restarts the machine's
 * shared PostgreSQL (a few seconds), so it runs only with SEQGATE_TEST_PG_RESTART=1: .ci/run runs it on
 * its own after `npm test`, since every other PostgreSQL suite would see the restart too.
 */

const ENABLED = process.env['SEQGATE_TEST_PG_RESTART'] === '1' && (await postgresAvailable());
const STREAMS = 8;
const SEQS = 150;

/** Asynchronous, so the clients keep sending while PostgreSQL is down. */
async function restartPostgres(): Promise<void> {
  const version = readdirSync('/etc/postgresql')[0]!;
  await promisify(execFile)('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'restart'], { timeout: 60_000 });
}

describe.skipIf(!ENABLED)('PostgreSQL restarted mid-load under two seqgate servers', () => {
  let db: TestDatabase;
  let dir: TempDb;
  const servers: ChildServer[] = [];

  beforeAll(async () => {
    db = await createTestDatabase('seqgate_pgrestart');
    dir = tempDb('seqgate-pgrestart-');
    for (let i = 0; i < 2; i++) servers.push(new ChildServer({ dbPath: dir.dbPath, args: ['--store', 'postgres', '--database-url', db.url] }));
    await Promise.all(servers.map((s) => s.start()));
  }, 60_000);

  afterAll(async () => {
    for (const s of servers) await s.dispose();
    dir?.remove();
    await db?.drop();
  }, 60_000);

  it('answers every put or asks for a retry, loses nothing acked, and resumes by itself', async () => {
    const started = (await db.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t')).rows[0]!.t.getTime();
    const drivers = servers.map((s, c) => {
      const puts: DriverPut[] = [];
      for (let seq = 1; seq <= SEQS; seq++) {
        for (let i = 0; i < STREAMS / 2; i++) {
          const stream = `restart-${c}-${i}`;
          puts.push({ id: `${stream}:${seq}`, stream, epoch: 1, seq, key: `${stream}/d${seq % 2}`, state: { seq } });
        }
      }
      // A small window keeps the load going while PostgreSQL is down and back.
      return new PutDriver(() => s.url, puts, { window: 16, perFrame: 4, timeoutMs: 120_000 });
    });
    const running = Promise.all(drivers.map((d) => d.run()));
    while (drivers.reduce((n, d) => n + d.answers.size, 0) < STREAMS * SEQS * 0.25) await new Promise((r) => setTimeout(r, 10));
    await restartPostgres();
    await running;

    const after = (await db.query<{ t: Date }>('SELECT pg_postmaster_start_time() AS t')).rows[0]!.t.getTime();
    expect(after).toBeGreaterThan(started);
    const retried = drivers.flatMap((d) => [...d.answers.values()].filter((list) => list.some((r) => r.error?.code === 'STORAGE_UNAVAILABLE')));
    process.stdout.write(`[pg-restart] ${retried.length} puts were told STORAGE_UNAVAILABLE and sent again\n`);

    const acks: WireResult[] = [];
    const problems: string[] = [];
    for (const d of drivers) {
      for (const [id, list] of d.answers) {
        const last = list[list.length - 1]!;
        if (last.outcome === 'applied') acks.push(last);
        // A put told to retry may find a later seq of its stream already applied: stale, never applied.
        else if (!(last.outcome === 'stale' && list.some((r) => r.error?.retryable))) problems.push(`${id}: ${JSON.stringify(list.map((r) => r.outcome))}`);
        for (const r of list) if (r.outcome === 'error' && r.error?.code !== 'STORAGE_UNAVAILABLE') problems.push(`${id}: ${r.error?.code}`);
      }
    }
    expect(problems.slice(0, 10)).toEqual([]);

    // Nothing acked is lost: every ack is stored as sent; heads reached the last seq; versions 1..N.
    const rows = (
      await db.query<{ name: string; seq: string; key: string; version: string; committed_at: string }>(
        'SELECT s.name, a.seq, a.key, a.version, a.committed_at FROM seqgate.acks a JOIN seqgate.streams s ON s.id = a.stream_id',
      )
    ).rows;
    const stored = new Map(rows.map((r) => [`${r.name}/${r.seq}`, r]));
    for (const a of acks.map((r) => r.ack!)) {
      const row = stored.get(`${String(a['stream'])}/${String(a['seq'])}`);
      expect(row && { key: row.key, version: Number(row.version), committedAt: Number(row.committed_at) }).toEqual({
        key: a['key'],
        version: a['version'],
        committedAt: a['committedAt'],
      });
    }
    const heads = (await db.query<{ name: string; seq: string }>("SELECT name, seq FROM seqgate.streams WHERE name LIKE 'restart-%'")).rows;
    expect(heads.map((h) => Number(h.seq))).toEqual(new Array(STREAMS).fill(SEQS));
    const docs = (await db.query<{ key: string; version: string }>("SELECT key, version FROM seqgate.documents WHERE key LIKE 'restart-%' AND version > 0"))
      .rows;
    for (const d of docs) {
      const versions = acks
        .filter((r) => r.ack!['key'] === d.key)
        .map((r) => Number(r.ack!['version']))
        .sort((x, y) => x - y);
      expect(versions).toEqual(Array.from({ length: Number(d.version) }, (_, i) => i + 1));
    }
  }, 180_000);
});
