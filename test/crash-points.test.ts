import { afterEach, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { ackBytes } from './conformance/client.js';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { withDb, type DbAck } from './support/db-checker.js';
import { TestClient, type Msg } from './support/test-client.js';

/**
 * Deterministic crash points (src/crash-points.ts): the real server is started with
 * SEQGATE_TEST_CRASH_AT=<point>:2 and SIGKILLs itself at that point of the second batch, the
 * first being a put that is acked normally so that the head has somewhere to stay. The server is
 * then restarted WITHOUT the switch on the same file and the same puts are sent again. What each
 * retry gets is what PROTOCOL.md promises (§5 step 1, §8.2, §12.2, §12.4):
 *
 * - before-commit: nothing of the batch is stored, the head is where the first put left it, and
 *   the retry is applied as new (replay: false);
 * - after-commit (committed, ack not yet sent): the ack never reached the client; the retry gets
 *   the stored ack with replay: true;
 * - after-ack (the results frame was written to the socket): the client has the ack; the retry
 *   gets replay: true and the same ack, byte for byte in MessagePack.
 *
 * Each case is run for a single put and for a batch of three puts in one frame, and ends with a
 * put of a different payload at a seq that was consumed: sequence_reused, nothing changed.
 */

const STREAM = 'crash-stream';
const EPOCH = 1;

type Point = 'before-commit' | 'before-sync' | 'after-commit' | 'after-ack';

interface WirePut {
  id: string;
  stream: string;
  epoch: number;
  seq: number;
  key: string;
  state: Record<string, unknown>;
}

function put(id: string, seq: number, key: string, n: number): WirePut {
  return { id, stream: STREAM, epoch: EPOCH, seq, key, state: { n, note: `payload ${n}`, blob: Buffer.from([n, n + 1, n + 2]) } };
}

/** The put acked before the crash: head (1, 1), doc-a at version 1. */
const FIRST = put('first', 1, 'doc-a', 1);

/** The puts in flight at the crash, and the document versions their applying gives. */
const SHAPES = {
  'a single put': {
    puts: [put('p2', 2, 'doc-a', 2)],
    versions: [2],
    docs: { 'doc-a': 2 } as Record<string, number>,
  },
  'a batch of three puts in one frame': {
    puts: [put('p2', 2, 'doc-a', 2), put('p3', 3, 'doc-b', 3), put('p4', 4, 'doc-a', 4)],
    versions: [2, 1, 3],
    docs: { 'doc-a': 3, 'doc-b': 1 } as Record<string, number>,
  },
} as const;

type Shape = keyof typeof SHAPES;

// ---- One crash and one restart ----

interface Received {
  readonly result: Msg;
  readonly ackBytes: Buffer | undefined;
}

/** Every put result the client received, with the raw bytes of its ack. */
function received(client: TestClient): Received[] {
  const out: Received[] = [];
  client.messages.forEach((m, i) => {
    if (m.type !== 'results') return;
    // The raw bytes, walked by the conformance client: acks are compared byte for byte, not decoded.
    const frame = client.frames[i]!;
    (m.results as Msg[]).forEach((r, j) => out.push({ result: r, ackBytes: r.ack === undefined ? undefined : ackBytes(frame, j) }));
  });
  return out;
}

interface DbSnapshot {
  readonly head: { epoch: number; seq: number; ackCount: number } | undefined;
  readonly acks: Array<DbAck | undefined>;
  readonly docs: Record<string, { version: number; state: unknown } | undefined>;
  readonly integrity: string[];
}

function snapshot(path: string, seqs: readonly number[]): DbSnapshot {
  return withDb(path, (db) => {
    const head = db.head(STREAM);
    const docs: DbSnapshot['docs'] = {};
    for (const key of ['doc-a', 'doc-b']) {
      const d = db.document(key);
      docs[key] = d === undefined ? undefined : { version: d.version, state: d.state };
    }
    return {
      head: head === undefined ? undefined : { epoch: head.epoch, seq: head.seq, ackCount: head.ackCount },
      acks: seqs.map((seq) => db.ack(STREAM, EPOCH, seq)),
      docs,
      integrity: db.integrityCheck(),
    };
  });
}

interface Crash {
  readonly db: TempDb;
  /** Results received on the connection the crash ended, after the first put's. */
  readonly beforeCrash: Received[];
  readonly firstAck: Msg;
  /** The database as the crash left it, before any restart. */
  readonly afterCrash: DbSnapshot;
  /** The restarted server (no crash switch), its client and the welcome it sent. */
  readonly server: ChildServer;
  readonly client: TestClient;
  readonly welcomeHead: Msg;
}

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function helloed(url: string): Promise<{ client: TestClient; head: Msg }> {
  const client = await TestClient.connect(url);
  cleanups.push(() => {
    client.ws.terminate();
  });
  client.send({ type: 'hello', protocol: 1, streams: [STREAM] });
  const welcome = await client.waitMessage('welcome', 15_000);
  return { client, head: welcome.heads[0] };
}

async function crashAt(point: Point, puts: readonly WirePut[]): Promise<Crash> {
  const db = tempDb('seqgate-crash-point-');
  cleanups.push(() => db.remove());
  const crashing = new ChildServer({ dbPath: db.dbPath, env: { SEQGATE_TEST_CRASH_AT: `${point}:2` } });
  cleanups.push(() => crashing.dispose());
  await crashing.start();

  const { client } = await helloed(crashing.url);
  client.send({ type: 'put', puts: [FIRST] });
  const [first] = await client.waitResults(1, 15_000);
  expect(first, 'the first put, before the crash batch').toMatchObject({ id: 'first', outcome: 'applied', replay: false });

  client.send({ type: 'put', puts });
  const exit = await crashing.waitExit(30_000);
  expect(exit, `the server killed itself at ${point}\n${crashing.stderr}`).toEqual({ code: null, signal: 'SIGKILL' });
  const closed = await client.closed;
  expect(closed.code, 'the connection died without a close frame').toBe(1006);
  const beforeCrash = received(client).slice(1);
  const afterCrash = snapshot(
    db.dbPath,
    puts.map((p) => p.seq),
  );

  // The same file, without the switch: the process an operator would restart.
  const server = new ChildServer({ dbPath: db.dbPath });
  cleanups.push(() => server.dispose());
  await server.start();
  const { client: retryClient, head } = await helloed(server.url);
  return { db, beforeCrash, firstAck: first.ack, afterCrash, server, client: retryClient, welcomeHead: head };
}

/** Sends `puts` again on the restarted server and returns their results. */
async function retry(c: Crash, puts: readonly WirePut[]): Promise<Received[]> {
  const already = received(c.client).length;
  c.client.send({ type: 'put', puts });
  await c.client.waitResults(already + puts.length, 15_000);
  return received(c.client).slice(already);
}

/** The puts were applied once: replaying them wrote nothing, and their seqs stay consumed. */
async function expectReplaysWroteNothing(c: Crash, puts: readonly WirePut[]): Promise<void> {
  expect(
    snapshot(
      c.db.dbPath,
      puts.map((p) => p.seq),
    ),
    'database after the replays',
  ).toEqual(c.afterCrash);
  await expectSequenceReused(c, puts);
}

/** A put at a consumed seq with another payload is refused and changes nothing. */
async function expectSequenceReused(c: Crash, puts: readonly WirePut[]): Promise<void> {
  const before = snapshot(
    c.db.dbPath,
    puts.map((p) => p.seq),
  );
  const changed = puts.map((p) => ({ ...p, id: `${p.id}-changed`, state: { ...p.state, n: 1000 + p.seq } }));
  const results = await retry(c, changed);
  for (const [i, r] of results.entries()) {
    expect(r.result, `a different payload at seq ${changed[i]!.seq}`).toMatchObject({
      id: changed[i]!.id,
      outcome: 'sequence_reused',
      error: { code: 'SEQUENCE_REUSED', retryable: false },
    });
  }
  expect(
    snapshot(
      c.db.dbPath,
      puts.map((p) => p.seq),
    ),
    'database after the refused puts',
  ).toEqual(before);
}

function expectStored(snap: DbSnapshot, puts: readonly WirePut[], versions: readonly number[], committedAt: readonly number[]): void {
  puts.forEach((p, i) => {
    expect(snap.acks[i], `stored ack of seq ${p.seq}`).toEqual({
      outcome: 'applied',
      key: p.key,
      version: versions[i],
      deleted: false,
      ifVersion: null,
      committedAt: committedAt[i],
      fingerprint: expect.any(Buffer),
    });
  });
}

describe.each(Object.keys(SHAPES) as Shape[])('crash points with %s in flight', (shape) => {
  const { puts, versions, docs } = SHAPES[shape];
  const lastSeq = puts[puts.length - 1]!.seq;

  it('before-commit: nothing is stored, the head stays at the first put, and the retry is applied fresh (replay false)', async () => {
    const c = await crashAt('before-commit', puts);
    expect(c.beforeCrash, 'results received before the crash').toEqual([]);
    expect(c.afterCrash.integrity).toEqual(['ok']);
    expect(c.afterCrash.head, 'head on disk after the crash').toEqual({ epoch: EPOCH, seq: 1, ackCount: 1 });
    expect(c.afterCrash.acks, 'acks on disk after the crash').toEqual(puts.map(() => undefined));
    expect(c.afterCrash.docs, 'documents on disk after the crash').toEqual({ 'doc-a': { version: 1, state: expect.anything() }, 'doc-b': undefined });
    expect(c.welcomeHead, 'head announced after the restart, before the retry').toEqual({ stream: STREAM, epoch: EPOCH, seq: 1, prunedThrough: 0 });

    const results = await retry(c, puts);
    results.forEach((r, i) => {
      expect(r.result, `retry of seq ${puts[i]!.seq}`).toMatchObject({
        id: puts[i]!.id,
        outcome: 'applied',
        replay: false,
        ack: { stream: STREAM, epoch: EPOCH, seq: puts[i]!.seq, key: puts[i]!.key, version: versions[i], deleted: false },
      });
    });
    const after = snapshot(
      c.db.dbPath,
      puts.map((p) => p.seq),
    );
    expect(after.head, 'head after the retry').toEqual({ epoch: EPOCH, seq: lastSeq, ackCount: 1 + puts.length });
    expectStored(
      after,
      puts,
      versions,
      results.map((r) => r.result.ack.committedAt),
    );
    for (const [key, version] of Object.entries(docs)) expect(after.docs[key]?.version, `version of ${key}`).toBe(version);

    await expectSequenceReused(c, puts);
  });

  // before-sync: committed with synchronous=NORMAL, the WAL's fdatasync not started (the default
  // --wal-sync background). SIGKILL keeps what the kernel holds, so the batch is there after the
  // restart; what matters is that no answer went out before the sync, and the retry replays.
  it.each(['before-sync', 'after-commit'] as const)(
    '%s: the ack never arrives, the batch is on disk, and the retry gets the stored ack with replay true',
    async (point) => {
      const c = await crashAt(point, puts);
      expect(c.beforeCrash, 'results received before the crash').toEqual([]);
      expect(c.afterCrash.integrity).toEqual(['ok']);
      expect(c.afterCrash.head, 'head on disk after the crash').toEqual({ epoch: EPOCH, seq: lastSeq, ackCount: 1 + puts.length });
      const committedAt = c.afterCrash.acks.map((a) => a?.committedAt ?? -1);
      expectStored(c.afterCrash, puts, versions, committedAt);
      for (const [key, version] of Object.entries(docs)) expect(c.afterCrash.docs[key]?.version, `version of ${key} on disk`).toBe(version);
      expect(c.welcomeHead, 'head announced after the restart').toEqual({ stream: STREAM, epoch: EPOCH, seq: lastSeq, prunedThrough: 0 });

      const results = await retry(c, puts);
      results.forEach((r, i) => {
        const stored = c.afterCrash.acks[i]!;
        expect(r.result, `retry of seq ${puts[i]!.seq}`).toEqual({
          id: puts[i]!.id,
          outcome: 'applied',
          replay: true,
          ack: { stream: STREAM, epoch: EPOCH, seq: puts[i]!.seq, key: stored.key, version: stored.version, deleted: false, committedAt: stored.committedAt },
        });
      });
      await expectReplaysWroteNothing(c, puts);
    },
  );

  it('after-ack: the client has the ack, and the retry gets replay true with a byte-identical ack', async () => {
    const c = await crashAt('after-ack', puts);
    expect(
      c.beforeCrash.map((r) => r.result),
      'results received before the crash',
    ).toEqual(
      puts.map((p, i) => ({
        id: p.id,
        outcome: 'applied',
        replay: false,
        ack: { stream: STREAM, epoch: EPOCH, seq: p.seq, key: p.key, version: versions[i], deleted: false, committedAt: expect.any(Number) },
      })),
    );
    expect(c.afterCrash.integrity).toEqual(['ok']);
    expect(c.afterCrash.head, 'head on disk after the crash').toEqual({ epoch: EPOCH, seq: lastSeq, ackCount: 1 + puts.length });
    expectStored(
      c.afterCrash,
      puts,
      versions,
      c.beforeCrash.map((r) => r.result.ack.committedAt),
    );
    expect(c.welcomeHead, 'head announced after the restart').toEqual({ stream: STREAM, epoch: EPOCH, seq: lastSeq, prunedThrough: 0 });

    const results = await retry(c, puts);
    results.forEach((r, i) => {
      const original = c.beforeCrash[i]!;
      expect({ ...r.result, replay: false }, `retry of seq ${puts[i]!.seq}, but for the replay flag`).toEqual(original.result);
      expect(r.result.replay, `replay flag of the retry of seq ${puts[i]!.seq}`).toBe(true);
      expect(r.ackBytes?.toString('hex'), `ack bytes of the retry of seq ${puts[i]!.seq}`).toBe(original.ackBytes?.toString('hex'));
      expect(r.ackBytes, 'an ack was found in the frame').toBeDefined();
    });
    await expectReplaysWroteNothing(c, puts);
  });
});

/**
 * SQLite moves recent acks (commit order) into the per-stream table in one transaction between
 * batches (`--ack-settle-rows`). Killed inside that transaction, the move must roll back whole:
 * every ack still stored once, every retry a replay of the ack the client got; and the next
 * move, after the restart, must lose nothing either.
 */
describe('crash point inside the move of recent acks (settle-before-commit)', () => {
  const SETTLE = ['--ack-settle-rows', '3'];
  const rows = (path: string): { recent: number; settled: number } => {
    const raw = new Database(path, { readonly: true, fileMustExist: true });
    try {
      const n = (table: string): number => (raw.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
      return { recent: n('recent_acks'), settled: n('acks') };
    } finally {
      raw.close();
    }
  };

  it('rolls the move back whole: every ack replays, byte for byte, before and after the next move', async () => {
    const db = tempDb('seqgate-crash-settle-');
    cleanups.push(() => db.remove());
    const crashing = new ChildServer({ dbPath: db.dbPath, args: SETTLE, env: { SEQGATE_TEST_CRASH_AT: 'settle-before-commit:1' } });
    cleanups.push(() => crashing.dispose());
    await crashing.start();
    const { client } = await helloed(crashing.url);
    const { puts } = SHAPES['a batch of three puts in one frame'];
    const all = [FIRST, ...puts];
    client.send({ type: 'put', puts: [FIRST] });
    await client.waitResults(1, 15_000);
    // Four acks pass the threshold of three: the move starts after this batch commits.
    client.send({ type: 'put', puts });
    const exit = await crashing.waitExit(30_000);
    expect(exit, `the server killed itself inside the move\n${crashing.stderr}`).toEqual({ code: null, signal: 'SIGKILL' });
    await client.closed;
    const sent = received(client);

    const afterCrash = snapshot(
      db.dbPath,
      all.map((p) => p.seq),
    );
    expect(afterCrash.integrity).toEqual(['ok']);
    expect(rows(db.dbPath), 'the move rolled back: every ack still in recent_acks').toEqual({ recent: 4, settled: 0 });
    expect(afterCrash.head).toEqual({ epoch: EPOCH, seq: 4, ackCount: 4 });
    expect(afterCrash.acks.every((a) => a !== undefined)).toBe(true);

    const server = new ChildServer({ dbPath: db.dbPath, args: SETTLE });
    cleanups.push(() => server.dispose());
    await server.start();
    const { client: again } = await helloed(server.url);
    const crash: Crash = { db, beforeCrash: sent, firstAck: sent[0]!.result.ack, afterCrash, server, client: again, welcomeHead: undefined as unknown as Msg };

    const expectReplays = async (): Promise<void> => {
      const results = await retry(crash, all);
      results.forEach((r, i) => {
        const stored = afterCrash.acks[i]!;
        expect(r.result, `retry of seq ${all[i]!.seq}`).toEqual({
          id: all[i]!.id,
          outcome: 'applied',
          replay: true,
          ack: { stream: STREAM, epoch: EPOCH, seq: all[i]!.seq, key: stored.key, version: stored.version, deleted: false, committedAt: stored.committedAt },
        });
        // What the client received before the crash (the first put always; the batch if its frame got out).
        const original = sent.find((s) => s.result.id === all[i]!.id);
        if (original !== undefined) expect(r.ackBytes?.toString('hex'), `ack bytes of seq ${all[i]!.seq}`).toBe(original.ackBytes?.toString('hex'));
      });
    };
    await expectReplays();

    // The restarted server counted the four acks it found; its next batch (those replays) moves them.
    const settled = async (want: { recent: number; settled: number }): Promise<void> => {
      const deadline = Date.now() + 10_000;
      while (JSON.stringify(rows(db.dbPath)) !== JSON.stringify(want) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(rows(db.dbPath)).toEqual(want);
    };
    await settled({ recent: 0, settled: 4 });
    expect(
      snapshot(
        db.dbPath,
        all.map((p) => p.seq),
      ).acks,
      'the moved acks are the acks that were stored',
    ).toEqual(afterCrash.acks);
    await expectReplays();

    // A new ack lands in recent_acks beside the moved ones; retries find acks in both tables.
    const next = put('p5', 5, 'doc-b', 5);
    const [fresh] = await retry(crash, [next]);
    expect(fresh!.result).toMatchObject({ outcome: 'applied', replay: false });
    await settled({ recent: 1, settled: 4 });
    await expectReplays();
    const [again5] = await retry(crash, [next]);
    expect(again5!.result).toEqual({ ...fresh!.result, replay: true });
  });
});
