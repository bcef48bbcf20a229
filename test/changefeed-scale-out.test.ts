import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { createTestDatabase, postgresAvailable, type TestDatabase } from './support/postgres.js';
import { PutDriver, type DriverPut } from './support/put-driver.js';
import { type JsonChange, offsetPosition } from './support/json-change.js';

/**
 * The change log with three seqgate servers on one PostgreSQL database, as real processes.
 * Writers on every server commit concurrently into one tenant's log (sharing documents, so their
 * batches contend on row locks), while a reader on every server tails GET /v1/changes by
 * long-poll. An offset that became visible after a higher one would be skipped by a reader that
 * had already read past it: each reader must see offsets 1, 2, 3, … with no gap and no repeat,
 * the same sequence of changes on every server, and replaying it must give the stored documents.
 */

const PG = await postgresAvailable();
const SERVERS = 3;
const PUTS_PER_SERVER = 400;

let db: TestDatabase;
let dir: TempDb;
const servers: ChildServer[] = [];

/** Tails the log through one server until `stop()` and the reader reached `target`; records every problem. */
function tail(server: ChildServer): { changes: JsonChange[]; problems: string[]; until(target: () => number): Promise<void> } {
  const changes: JsonChange[] = [];
  const problems: string[] = [];
  const base = server.url.replace(/^ws/, 'http');
  return {
    changes,
    problems,
    async until(target) {
      let offset = '-1';
      let last = 0;
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline) {
        const res = await fetch(`${base}/v1/changes?offset=${offset}&live=long-poll`);
        if (res.status === 200) {
          for (const c of (await res.json()) as JsonChange[]) {
            if (offsetPosition(c.offset) !== last + 1) problems.push(`after ${last} came ${offsetPosition(c.offset)}`);
            last = offsetPosition(c.offset);
            changes.push(c);
          }
        } else if (res.status !== 204) {
          problems.push(`status ${res.status}`);
        }
        offset = res.headers.get('stream-next-offset') ?? offset;
        if (target() > 0 && last >= target()) return;
      }
      problems.push(`timed out at ${last}`);
    },
  };
}

describe.skipIf(!PG)('the change log with several servers on one PostgreSQL database', () => {
  beforeAll(async () => {
    db = await createTestDatabase('seqgate_feed_scaleout', { fastCommits: true });
    dir = tempDb('seqgate-feed-scaleout-');
    for (let i = 0; i < SERVERS; i++) {
      servers.push(
        new ChildServer({
          dbPath: dir.dbPath,
          args: ['--store', 'postgres', '--database-url', db.url, '--changes-poll-interval-ms', '20', '--changes-long-poll-ms', '1000'],
        }),
      );
    }
    await Promise.all(servers.map((s) => s.start()));
  }, 90_000);

  afterAll(async () => {
    for (const s of servers) await s.dispose();
    dir?.remove();
    await db?.drop();
  }, 30_000);

  it('never shows an offset after a higher one: readers on every server see 1..N without gaps while writers on every server commit', async () => {
    let applied = 0;
    const readers = servers.map((s) => tail(s));
    const reading = readers.map((r) => r.until(() => applied));
    const drivers = servers.map((s, c) => {
      const puts: DriverPut[] = [];
      for (let seq = 1; seq <= PUTS_PER_SERVER / 4; seq++) {
        for (let k = 0; k < 4; k++) {
          // Keys shared by every server's writers: their batches contend on the same document rows.
          puts.push({ id: `c${c}:${k}:${seq}`, stream: `w${c}-${k}`, epoch: 1, seq, key: `doc-${(seq + k) % 7}`, state: { c, k, seq } });
        }
      }
      return { driver: new PutDriver(() => s.url, puts, { window: 64, perFrame: 8, timeoutMs: 120_000 }), puts };
    });
    await Promise.all(drivers.map((d) => d.driver.run()));
    for (const { driver, puts } of drivers) {
      for (const p of puts) if (driver.final(p.id)?.outcome === 'applied') applied++;
    }
    expect(applied).toBe(SERVERS * PUTS_PER_SERVER);
    await Promise.all(reading);

    for (const r of readers) expect(r.problems.slice(0, 5)).toEqual([]);
    for (const r of readers) expect(r.changes.length).toBe(applied);
    const sequenceOf = (r: { changes: JsonChange[] }) => r.changes.map((c) => `${c.offset} ${c.key} ${c.version}`);
    for (const r of readers.slice(1)) expect(sequenceOf(r)).toEqual(sequenceOf(readers[0]!));

    // Per key, versions arrive as 1, 2, 3, … in offset order, and the last one is what is stored.
    const latest = new Map<string, JsonChange>();
    for (const c of readers[0]!.changes) {
      expect(c.version).toBe((latest.get(c.key)?.version ?? 0) + 1);
      latest.set(c.key, c);
    }
    const stored = (await db.query<{ key: string; version: string }>('SELECT key, version FROM seqgate.documents WHERE version > 0')).rows;
    expect(new Map(stored.map((r) => [r.key, Number(r.version)]))).toEqual(new Map([...latest].map(([k, c]) => [k, c.version])));
  }, 180_000);
});
