import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { ChildServer, tempDb } from './support/child-server.js';
import { createTestDatabase, postgresAvailable } from './support/postgres.js';

/**
 * /readyz against a store that hangs (HTTP.md §9), with the real server on PostgreSQL: the probe's
 * table is locked by another session, so every probe waits. /readyz must answer 503 within its
 * deadline, and a flood of unauthenticated /readyz requests must share one probe instead of
 * taking every pooled connection from the puts.
 */

const PG = await postgresAvailable();

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function readyz(server: ChildServer): Promise<{ status: number; body: { error?: { code: string; message: string } }; ms: number }> {
  const started = Date.now();
  const res = await fetch(`http://127.0.0.1:${server.port}/readyz`);
  return { status: res.status, body: (await res.json()) as { error?: { code: string; message: string } }, ms: Date.now() - started };
}

describe.skipIf(!PG)('/readyz while the store hangs', () => {
  it('answers 503 within its 2 s deadline, runs one probe for a flood of requests, and leaves the pool to the puts', async () => {
    const db = await createTestDatabase('seqgate_ready', { fastCommits: true });
    cleanup.push(() => db.drop());
    const dir = tempDb();
    cleanup.push(() => dir.remove());
    const server = new ChildServer({ dbPath: dir.dbPath, args: ['--store', 'postgres', '--database-url', db.url] });
    cleanup.push(() => server.dispose());
    await server.start();
    expect((await readyz(server)).status).toBe(200);

    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    cleanup.push(() => locker.end().catch(() => undefined));
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE seqgate.meta IN ACCESS EXCLUSIVE MODE');

    const answers = await Promise.all(Array.from({ length: 60 }, () => readyz(server)));
    for (const a of answers) {
      expect(a.status).toBe(503);
      expect(a.body.error).toMatchObject({ code: 'NOT_READY' });
      expect(a.body.error!.message).toMatch(/did not answer a probe within 2000 ms/);
      expect(a.ms).toBeLessThan(6_000);
    }
    const waiting = await db.query<{ n: string }>(
      "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' AND query LIKE '%readiness_probe%'",
      [db.name],
    );
    expect(Number(waiting.rows[0]!.n)).toBe(1);

    // The pool is not handed to probes: a put commits while the probe still waits.
    const put = await fetch(`http://127.0.0.1:${server.port}/v1/streams/s/puts`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ epoch: 1, seq: 1, key: 'k', state: { a: 1 } }),
    });
    expect(put.status).toBe(200);

    await locker.query('ROLLBACK');
    let after = await readyz(server);
    for (let i = 0; i < 20 && after.status !== 200; i++) after = await readyz(server);
    expect(after.status).toBe(200);
  }, 60_000);
});
