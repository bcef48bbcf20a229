import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { migrate, SCHEMA_VERSION } from '../src/store/sqlite-schema.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import { canonicalEncode, putFingerprint } from '../src/protocol/canonical.js';

const LIMITS = { maxBytes: 65536, maxDepth: 32, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'seqgate-schema-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const open = (path: string) => new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 10 });

describe('on-disk schema', () => {
  it('creates a new file at the current schema version with a random incarnation id', async () => {
    const a = open(join(dir, 'a.db'));
    const b = open(join(dir, 'b.db'));
    expect(a.openedSchemaVersion).toBe(0);
    expect(a.database.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(a.incarnation).toMatch(/^[0-9a-f-]{36}$/);
    expect(a.incarnation).not.toBe(b.incarnation);
    await a.close();
    await b.close();
  });

  it('keeps the incarnation id and data across restarts', async () => {
    const path = join(dir, 'db');
    const first = open(path);
    const id = first.incarnation;
    await first.close();
    const again = open(path);
    expect(again.incarnation).toBe(id);
    expect(again.openedSchemaVersion).toBe(SCHEMA_VERSION);
    await again.close();
  });

  it('migrates an older file forward on start', async () => {
    const path = join(dir, 'old.db');
    const raw = new Database(path);
    raw.pragma('user_version = 0');
    raw.close();
    const store = open(path);
    expect(store.openedSchemaVersion).toBe(0);
    expect(store.database.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    await store.close();
  });

  it('moves a version 3 file (acks indexed by commit time) to oldest_ack_at per stream: pruning and replays as before', async () => {
    const path = join(dir, 'v3.db');
    const raw = new Database(path);
    migrate(raw, 3);
    const stream = raw.prepare("INSERT INTO streams (tenant, name, epoch, seq, pruned_through, ack_count) VALUES ('default', ?, ?, ?, 0, ?) RETURNING id");
    const ack = raw.prepare(
      "INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at) VALUES (?, ?, ?, ?, 0, 'k', ?, 0, NULL, ?)",
    );
    const state = canonicalEncode({ v: 1 }, LIMITS, 'state');
    const fp = putFingerprint('k', state, null);
    // old: acks at t = 100, 200, 300 (head seq 3); lone: only its head's ack; epochs: epoch 1 acks, then the head in epoch 2.
    const old = (stream.get('old', 1, 3, 3) as { id: number }).id;
    for (const seq of [1, 2, 3]) ack.run(old, 1, seq, fp, seq, seq * 100);
    const lone = (stream.get('lone', 1, 1, 1) as { id: number }).id;
    ack.run(lone, 1, 1, fp, 1, 100);
    const epochs = (stream.get('epochs', 2, 1, 3) as { id: number }).id;
    ack.run(epochs, 1, 1, fp, 1, 50);
    ack.run(epochs, 1, 2, fp, 2, 60);
    ack.run(epochs, 2, 1, fp, 3, 400);
    raw.close();

    const store = new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 10, now: () => 1000 });
    expect(store.openedSchemaVersion).toBe(3);
    const oldest = store.database.prepare('SELECT name, oldest_ack_at AS at FROM streams ORDER BY name').all();
    expect(oldest).toEqual([
      { name: 'epochs', at: 50 },
      { name: 'lone', at: null },
      { name: 'old', at: 100 },
    ]);
    expect(store.database.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'acks_by_commit_time'").get()).toEqual({ n: 0 });

    // Everything committed before 250 goes, except a head's own ack.
    let pruned = 0;
    for (let done = false; !done;) {
      const step = await store.prune(250, 1);
      pruned += step.pruned;
      done = step.done;
    }
    expect(pruned).toBe(4);
    const left = store.database.prepare('SELECT s.name, a.epoch, a.seq FROM acks_all a JOIN streams s ON s.id = a.stream_id ORDER BY 1, 2, 3').all();
    expect(left).toEqual([
      { name: 'epochs', epoch: 2, seq: 1 },
      { name: 'lone', epoch: 1, seq: 1 },
      { name: 'old', epoch: 1, seq: 3 },
    ]);
    expect(await store.heads('default', ['old', 'epochs'])).toEqual([
      { stream: 'old', epoch: 1, seq: 3, prunedThrough: 2 },
      { stream: 'epochs', epoch: 2, seq: 1, prunedThrough: 0 },
    ]);
    expect(store.database.prepare('SELECT name, oldest_ack_at AS at FROM streams ORDER BY name').all()).toEqual([
      { name: 'epochs', at: null },
      { name: 'lone', at: null },
      { name: 'old', at: null },
    ]);
    // The head's ack still replays, and once a new put moves the head, it becomes prunable.
    const put = (seq: number) => ({ tenant: 'default', stream: 'old', epoch: 1, seq, key: 'k', state, ifVersion: null, fingerprint: fp });
    expect((await store.apply([put(3)]))[0]).toMatchObject({ kind: 'ack', replay: true });
    expect((await store.apply([put(4)]))[0]).toMatchObject({ kind: 'ack', replay: false });
    expect(store.database.prepare("SELECT oldest_ack_at AS at FROM streams WHERE name = 'old'").get()).toEqual({ at: 300 });
    await store.close();
  });

  it('with ackSettleRows 0, moves recent acks left by an earlier run before writing straight to acks', async () => {
    const path = join(dir, 'switch.db');
    const state = canonicalEncode({ v: 1 }, LIMITS, 'state');
    const put = (seq: number) => ({
      tenant: 'default',
      stream: 's',
      epoch: 1,
      seq,
      key: 'k',
      state,
      ifVersion: null,
      fingerprint: putFingerprint('k', state, null),
    });
    const count = (store: SqliteStore, table: string) => (store.database.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    const first = new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 3 });
    for (const seq of [1, 2, 3]) await first.apply([put(seq)]);
    expect(count(first, 'recent_acks')).toBe(3);
    await first.close();

    const direct = new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 3, ackSettleRows: 0 });
    expect([count(direct, 'recent_acks'), count(direct, 'acks')]).toEqual([0, 3]);
    // The cap evicts the oldest (seq 1), not the newest: the order of the two tables held.
    expect((await direct.apply([put(4)]))[0]).toMatchObject({ kind: 'ack', replay: false });
    const seqs = direct.database.prepare('SELECT seq FROM acks_all ORDER BY seq').all();
    expect(seqs).toEqual([{ seq: 2 }, { seq: 3 }, { seq: 4 }]);
    expect((await direct.apply([put(2)]))[0]).toMatchObject({ kind: 'ack', replay: true });
    await direct.close();
  });

  it('moves recent acks itself in steps of whole streams, one per event-loop turn, with batches between them', async () => {
    const state = canonicalEncode({ v: 1 }, LIMITS, 'state');
    const put = (stream: string, seq: number) => ({
      tenant: 'default',
      stream,
      epoch: 1,
      seq,
      key: `k-${stream}`,
      state,
      ifVersion: null,
      fingerprint: putFingerprint(`k-${stream}`, state, null),
    });
    const store = new SqliteStore({
      path: join(dir, 'steps.db'),
      synchronous: 'full',
      contiguous: false,
      ackCapPerStream: 100,
      ackSettleRows: 12,
      settleStepRows: 4,
    });
    const count = (table: string) => (store.database.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
    // Six streams with two acks each reach the threshold: the move is planned at the next turn.
    for (const seq of [1, 2]) await store.apply(['a', 'b', 'c', 'd', 'e', 'f'].map((s) => put(s, seq)));
    expect(count('recent_acks')).toBe(12);
    const moved: number[] = [];
    await turn();
    moved.push(count('acks'));
    // A batch between two steps: its acks are newer than every planned one and stay recent.
    await store.apply([put('a', 3), put('f', 3)]);
    for (let i = 0; i < 4; i++) {
      await turn();
      moved.push(count('acks'));
    }
    // Two streams (4 acks) per step, one step per turn, then nothing more to move.
    expect(moved).toEqual([4, 8, 12, 12, 12]);
    expect(count('recent_acks')).toBe(2);
    const recent = store.database.prepare('SELECT s.name, r.seq FROM recent_acks r JOIN streams s ON s.id = r.stream_id ORDER BY s.name').all();
    expect(recent).toEqual([
      { name: 'a', seq: 3 },
      { name: 'f', seq: 3 },
    ]);
    // Every ack still replays, from whichever table holds it.
    for (const s of ['a', 'f']) for (const seq of [1, 2, 3]) expect((await store.apply([put(s, seq)]))[0]).toMatchObject({ kind: 'ack', replay: true });
    await store.close();
  });

  it('refuses a file written by a newer seqgate instead of guessing', () => {
    const path = join(dir, 'new.db');
    const raw = new Database(path);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(() => open(path)).toThrow(/newer than this seqgate understands/);
  });

  it('uses WAL with synchronous=FULL by default and NORMAL when asked', async () => {
    const full = open(join(dir, 'full.db'));
    expect(full.database.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(full.database.pragma('synchronous', { simple: true })).toBe(2);
    const normal = new SqliteStore({ path: join(dir, 'n.db'), synchronous: 'normal', contiguous: false, ackCapPerStream: 10 });
    expect(normal.database.pragma('synchronous', { simple: true })).toBe(1);
    await full.close();
    await normal.close();
  });
});
