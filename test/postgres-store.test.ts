import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalEncode, putFingerprint } from '../src/protocol/canonical.js';
import { PG_SCHEMA_VERSION } from '../src/store/postgres-schema.js';
import { PostgresStore, type PostgresStoreEvent } from '../src/store/postgres-store.js';
import { DatabaseUnusableError } from '../src/store/sqlite-schema.js';
import type { Put } from '../src/store/store.js';
import { createTestDatabase, postgresAvailable, type TestDatabase } from './support/postgres.js';

/**
 * What only the PostgreSQL store has to get right (the shared behaviour is in the contract suite):
 * a connection lost after COMMIT was sent, concurrent migrations, a newer schema, and pruning and
 * Idempotency-Key expiry run by several servers at once.
 */

const PG = await postgresAvailable();
const LIMITS = { maxBytes: 65536, maxDepth: 32, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };

function put(stream: string, seq: number, key = `${stream}/doc`): Put {
  const state = canonicalEncode({ stream, seq }, LIMITS, 'state');
  return { tenant: 'default', stream, epoch: 1, seq, key, state, ifVersion: null, fingerprint: putFingerprint(key, state, null) };
}

/**
 * A TCP proxy in front of PostgreSQL that can lose the connection carrying a batch's COMMIT,
 * either just before forwarding it (the transaction aborts) or just after (it commits, and the
 * answer never arrives).
 */
class CommitCutter {
  mode: 'none' | 'before' | 'after' = 'none';
  cuts = 0;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  constructor(target: { host: string; port: number }) {
    this.server = createServer((client) => {
      const upstream = connect(target.port, target.host);
      this.sockets.add(client).add(upstream);
      const cleanup = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', cleanup);
      upstream.on('error', cleanup);
      client.on('close', cleanup);
      upstream.on('close', cleanup);
      upstream.on('data', (d) => client.write(d));
      client.on('data', (d: Buffer) => {
        if (this.mode !== 'none' && d.includes('; COMMIT\u0000')) {
          const mode = this.mode;
          this.mode = 'none';
          this.cuts++;
          if (mode === 'after') upstream.end(d);
          else upstream.destroy();
          client.destroy();
          return;
        }
        upstream.write(d);
      });
    });
  }

  listen(): Promise<number> {
    return new Promise((resolve) => this.server.listen(0, '127.0.0.1', () => resolve((this.server.address() as { port: number }).port)));
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

describe.skipIf(!PG)('PostgresStore', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase('seqgate_pgstore', { fastCommits: true });
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('migrates once when several servers start together, and refuses a database from a newer seqgate', async () => {
    const stores = await Promise.all(Array.from({ length: 4 }, () => PostgresStore.open({ connectionString: db.url, contiguous: false, ackCapPerStream: 10 })));
    try {
      expect(new Set(stores.map((s) => s.incarnation)).size).toBe(1);
      expect(stores.filter((s) => s.openedSchemaVersion === 0)).toHaveLength(1);
      expect((await db.query('SELECT version FROM seqgate.schema_version')).rows).toEqual([{ version: PG_SCHEMA_VERSION }]);
    } finally {
      for (const s of stores) await s.close();
    }
    await db.query('UPDATE seqgate.schema_version SET version = version + 1');
    try {
      await expect(PostgresStore.open({ connectionString: db.url, contiguous: false, ackCapPerStream: 10 })).rejects.toBeInstanceOf(DatabaseUnusableError);
    } finally {
      await db.query('UPDATE seqgate.schema_version SET version = version - 1');
    }
  });

  for (const mode of ['before', 'after'] as const) {
    it(`resolves a connection lost with the COMMIT (${mode} PostgreSQL got it) instead of answering "nothing consumed"`, async () => {
      const target = new URL(db.url);
      const proxy = new CommitCutter({ host: target.hostname, port: Number(target.port) });
      const url = new URL(db.url);
      url.port = String(await proxy.listen());
      const events: PostgresStoreEvent[] = [];
      const store = await PostgresStore.open({ connectionString: url.toString(), contiguous: false, ackCapPerStream: 10, onEvent: (e) => events.push(e) });
      try {
        const stream = `cut-${mode}`;
        expect((await store.apply([put(stream, 1)]))[0]).toMatchObject({ kind: 'ack', replay: false });
        proxy.mode = mode;
        const [r] = await store.apply([put(stream, 2)]);
        expect(proxy.cuts).toBe(1);
        // Either way the answer is the truth: applied now, consumed exactly once.
        expect(r).toMatchObject({ kind: 'ack', replay: false, ack: { seq: 2, version: 2 } });
        const kinds = events.map((e) => (e.kind === 'outcome-resolved' ? `${e.kind}:${e.status}` : e.kind));
        expect(kinds).toContain('outcome-unknown');
        expect(kinds).toContain(mode === 'after' ? 'outcome-resolved:committed' : 'outcome-resolved:aborted');
        const [retry] = await store.apply([put(stream, 2)]);
        expect(retry).toMatchObject({ kind: 'ack', replay: true, ack: { seq: 2, version: 2 } });
        expect(
          (await db.query('SELECT count(*)::int AS n FROM seqgate.acks a JOIN seqgate.streams s ON s.id = a.stream_id WHERE s.name = $1', [stream])).rows,
        ).toEqual([{ n: 2 }]);
      } finally {
        await store.close();
        await proxy.close();
      }
    });
  }

  it('prunes safely with several servers pruning at once while puts go on: no head ack lost, counts and marks exact', async () => {
    const clock = { now: 1_000_000 };
    const open = () => PostgresStore.open({ connectionString: db.url, contiguous: false, ackCapPerStream: 10_000, now: () => clock.now, poolSize: 2 });
    const stores = await Promise.all([open(), open(), open(), open()]);
    try {
      const streams = Array.from({ length: 12 }, (_, i) => `prune-${i}`);
      for (let seq = 1; seq <= 30; seq++) await stores[0]!.apply(streams.map((s) => put(s, seq)));
      clock.now += 60_000;
      const writer = stores[3]!;
      let seq = 30;
      const writing = (async () => {
        for (let i = 0; i < 10; i++) {
          seq++;
          await writer.apply(streams.map((s) => put(s, seq)));
        }
      })();
      const pruned = await Promise.all(
        stores.slice(0, 3).map(async (s) => {
          let total = 0;
          for (;;) {
            const step = await s.prune(clock.now - 30_000, 7);
            total += step.pruned;
            if (step.done) return total;
          }
        }),
      );
      await writing;
      const rows = (
        await db.query<{ name: string; seq: string; pruned_through: string; ack_count: string; n: number; lo: string; has_head: boolean }>(
          `SELECT s.name, s.seq, s.pruned_through, s.ack_count, count(a.*)::int AS n, min(a.seq) AS lo,
                bool_or(a.seq = s.seq) AS has_head
           FROM seqgate.streams s LEFT JOIN seqgate.acks a ON a.stream_id = s.id WHERE s.name LIKE 'prune-%' GROUP BY s.id`,
        )
      ).rows;
      expect(rows).toHaveLength(streams.length);
      // Each old ack went exactly once, whoever pruned it: the counts add up to what is gone.
      expect(pruned.reduce((a, b) => a + b, 0)).toBe(streams.length * 40 - rows.reduce((a, r) => a + r.n, 0));
      for (const r of rows) {
        // Seq 30 was the head's ack until the writer moved on; whether it went depends on who came first.
        const lowest = Number(r.lo);
        expect(lowest === 30 || lowest === 31).toBe(true);
        expect({ seq: Number(r.seq), prunedThrough: Number(r.pruned_through), count: Number(r.ack_count), head: r.has_head }).toEqual({
          seq: 40,
          prunedThrough: lowest - 1,
          count: r.n,
          head: true,
        });
        expect(r.n).toBe(40 - lowest + 1);
      }
      const [expired] = await stores[1]!.apply([put('prune-0', 5)]);
      expect(expired).toMatchObject({ kind: 'rejected', outcome: 'expired' });
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('expires Idempotency-Key records with several servers at once: each record goes exactly once, none waits', async () => {
    const clock = { now: 2_000_000 };
    const open = () => PostgresStore.open({ connectionString: db.url, contiguous: false, ackCapPerStream: 10, now: () => clock.now, poolSize: 2 });
    const stores = await Promise.all([open(), open(), open()]);
    try {
      const state = canonicalEncode({ created: true }, LIMITS, 'state');
      await stores[0]!.apply(
        Array.from({ length: 60 }, (_, i) => ({
          op: 'create' as const,
          tenant: 'idem',
          scope: 'POST /v1/docs',
          idempotencyKey: `k-${i}`,
          fingerprint: Buffer.alloc(16, 1),
          key: `idem-doc-${i}`,
          state,
        })),
      );
      const deleted = await Promise.all(
        stores.map(async (s) => {
          let n = 0;
          for (;;) {
            const step = await s.pruneIdempotency(clock.now + 1, 7);
            n += step;
            if (step === 0) return n;
          }
        }),
      );
      expect(deleted.reduce((a, b) => a + b, 0)).toBe(60);
      expect((await db.query("SELECT count(*)::int AS n FROM seqgate.idempotency WHERE tenant = 'idem'")).rows).toEqual([{ n: 0 }]);
    } finally {
      for (const s of stores) await s.close();
    }
  });
});
