import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../src/store/sqlite-store.js';
import { put, startTestServer, TestClient, type Msg, type TestServer } from './support/test-client.js';
import { HeldStore } from './support/held-store.js';
import { until } from './support/until.js';

let t: TestServer;
beforeEach(async () => {
  t = await startTestServer();
});
afterEach(async () => {
  await t.stop();
});

describe('WebSocket ingestion', () => {
  it('answers a hello with protocol version, incarnation, limits and the named heads', async () => {
    const c = await TestClient.connect(t.url);
    c.send({ type: 'hello', streams: ['a', 'b'] });
    const w = await c.waitMessage('welcome');
    expect(w.protocol).toBe(1);
    expect(w.incarnation).toBe(t.server.store.incarnation);
    expect(w.limits.maxPutsPerFrame).toBe(1000);
    expect(w.heads).toEqual([
      { stream: 'a', epoch: 0, seq: 0, prunedThrough: 0 },
      { stream: 'b', epoch: 0, seq: 0, prunedThrough: 0 },
    ]);
    await c.close();
  });

  it('answers pipelined puts exactly once each, in the order they were sent', async () => {
    const c = await TestClient.connect(t.url);
    const ids: number[] = [];
    for (let i = 1; i <= 50; i++) {
      const p = put({ stream: 'order', seq: i, key: `k${i % 3}` });
      ids.push(p.id as number);
      c.send({ type: 'put', puts: [p] });
    }
    const results = await c.waitResults(50);
    expect(results.map((r: { id: number }) => r.id)).toEqual(ids);
    expect(results.every((r: { outcome: string }) => r.outcome === 'applied')).toBe(true);
    await c.close();
  });
});

describe('group commit', () => {
  let held: HeldStore;
  let h: TestServer;
  beforeEach(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'seqgate-gc-'));
    held = new HeldStore(new SqliteStore({ path: join(dir, 'db'), synchronous: 'full', contiguous: false, ackCapPerStream: 1000 }));
    h = await startTestServer({}, { store: held });
  });
  afterEach(async () => {
    held.open();
    await h.stop();
  });

  it('commits puts from several connections in one transaction, a conflicting or invalid put leaving the others applied', async () => {
    const [a, b, c] = await Promise.all([TestClient.connect(h.url), TestClient.connect(h.url), TestClient.connect(h.url)]);
    held.hold();
    a.send({ type: 'put', puts: [put({ stream: 'a', seq: 1, key: 'first' })] });
    await until(() => held.batches.length === 1);
    a.send({ type: 'put', puts: [put({ stream: 'a', seq: 2, key: 'shared' })] });
    b.send({ type: 'put', puts: [put({ stream: 'b', seq: 1, key: 'shared', ifVersion: 7 })] });
    c.send({ type: 'put', puts: [put({ stream: 'c', seq: 1, key: 'c1' }), put({ stream: 'c', seq: 2, key: '' }), put({ stream: 'c', seq: 3, key: 'c3' })] });
    await until(() => h.server.queuedPuts === 4);
    held.open();
    await Promise.all([a.waitResults(2), b.waitResults(1), c.waitResults(3)]);

    expect(held.batches[1]!.map((p) => `${p.stream}${p.seq}`)).toEqual(['a2', 'b1', 'c1', 'c3']);
    expect(a.results().map((r: Msg) => r.outcome)).toEqual(['applied', 'applied']);
    expect(b.results()[0]).toMatchObject({ outcome: 'version_conflict', ack: { version: 1, ifVersion: 7 } });
    expect(c.results().map((r: Msg) => r.outcome)).toEqual(['applied', 'invalid', 'applied']);
    expect(c.results()[1].error).toMatchObject({ code: 'INVALID_FIELD', field: 'key' });
    // One transaction: every put of the batch carries the same commit time.
    const times = new Set([a.results()[1], b.results()[0], c.results()[0], c.results()[2]].map((r: Msg) => r.ack.committedAt));
    expect(times.size).toBe(1);
  });

  it('answers a duplicate of a put still in an uncommitted batch only after that batch commits', async () => {
    const [a, b] = await Promise.all([TestClient.connect(h.url), TestClient.connect(h.url)]);
    held.hold();
    const p = put({ stream: 'dup', seq: 1 });
    a.send({ type: 'put', puts: [p] });
    await until(() => held.batches.length === 1);
    b.send({ type: 'put', puts: [p] });
    await until(() => h.server.queuedPuts === 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(a.results()).toEqual([]);
    expect(b.results()).toEqual([]);
    held.open();
    const [ra] = await a.waitResults(1);
    const [rb] = await b.waitResults(1);
    expect(ra).toMatchObject({ outcome: 'applied', replay: false });
    expect(rb).toEqual({ ...ra, replay: true });
  });
});

describe('storage faults', () => {
  it('fails the whole batch with retryable STORAGE_UNAVAILABLE, consumes nothing, and recovers when the fault clears', async () => {
    const store = t.server.store as SqliteStore;
    const [a, b] = await Promise.all([TestClient.connect(t.url), TestClient.connect(t.url)]);
    a.send({ type: 'put', puts: [put({ stream: 'f', seq: 1 })] });
    await a.waitResults(1);
    store.database.pragma('query_only = ON');
    const pa = put({ stream: 'f', seq: 2 });
    const pb = put({ stream: 'g', seq: 1 });
    a.send({ type: 'put', puts: [pa] });
    b.send({ type: 'put', puts: [pb] });
    const [, failedA] = await a.waitResults(2);
    const [failedB] = await b.waitResults(1);
    for (const r of [failedA, failedB]) expect(r).toMatchObject({ outcome: 'error', error: { code: 'STORAGE_UNAVAILABLE', retryable: true } });
    store.database.pragma('query_only = OFF');
    a.send({ type: 'put', puts: [pa] });
    b.send({ type: 'put', puts: [pb] });
    expect((await a.waitResults(3))[2]).toMatchObject({ outcome: 'applied', replay: false, ack: { seq: 2 } });
    expect((await b.waitResults(2))[1]).toMatchObject({ outcome: 'applied', replay: false, ack: { seq: 1 } });
  });
});

describe('ack retention', () => {
  it('prunes acks past the retention window in the background and answers their retries expired', async () => {
    const p = await startTestServer({ ackRetentionSeconds: 0, pruneIntervalMs: 20 });
    try {
      const c = await TestClient.connect(p.url);
      const puts = [1, 2, 3].map((seq) => put({ stream: 'r', seq }));
      c.send({ type: 'put', puts });
      await c.waitResults(3);
      await new Promise((resolve) => setTimeout(resolve, 150));
      c.send({ type: 'put', puts });
      const results = await c.waitResults(6);
      expect(results.slice(3).map((r: Msg) => r.outcome)).toEqual(['expired', 'expired', 'applied']);
      expect(results[5]).toMatchObject({ replay: true });
      expect(results[3].error).toMatchObject({ code: 'EXPIRED', head: { epoch: 1, seq: 3 }, prunedThrough: 2 });
    } finally {
      await p.stop();
    }
  });
});
