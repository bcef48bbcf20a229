import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  AuthenticationError,
  ClientClosedError,
  ExpiredError,
  FencedError,
  ForbiddenError,
  InvalidPutError,
  MemoryOutbox,
  SequenceReusedError,
  StaleError,
  VersionConflictError,
  WriterConflictError,
  type EpochChange,
  type PutResult,
  type TransientError,
} from '@seqgate/client';
import { storageUnavailable } from '../../src/gate.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/store.js';
import { Cleanup } from '../support/cleanup.js';
import { withDb } from '../support/db-checker.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { TestClient } from '../support/test-client.js';
import { closedAfterTest, failure, newClient, waitUntil } from './helpers.js';

const cleanup = new Cleanup();
const client = closedAfterTest(cleanup, 200);

/** Writes one put on a raw connection, as another writer of the stream would. */
async function rawPut(url: string, fields: Record<string, unknown>): Promise<Record<string, unknown>> {
  const raw = await TestClient.connect(url);
  raw.send({ type: 'put', puts: [{ id: 1, key: 'other', state: 'x', ...fields }] });
  const [result] = await raw.waitResults(1);
  await raw.close();
  return result;
}

/**
 * A client that has written one put to `stream` when another writer puts at `at`; then the
 * client's next put, and what it rejects with. `stopped` collects the client's stopped events.
 */
async function overtaken(stream: string, at: { epoch: number; seq: number }) {
  const t = await cleanup.server();
  const c = client(t.url, stream);
  const stopped: Error[] = [];
  c.on('stopped', (e) => stopped.push(e));
  await c.put('k', 1);
  await rawPut(t.url, { stream, ...at });
  const err = await failure(c.put('k', 2));
  return { t, c, stopped, err };
}

/**
 * A store whose first batch fails after a pause, so that a later put (sent meanwhile, in its own
 * frame) lands in the next batch and commits while the first is being refused.
 */
function storeFailingFirstBatch(dir: string, contiguous: boolean): Store {
  const inner = new SqliteStore({ path: join(dir, 'db.sqlite'), synchronous: 'normal', contiguous, ackCapPerStream: 1000 });
  let first = true;
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'apply') {
        return async (batch: readonly unknown[]) => {
          if (first) {
            first = false;
            await new Promise((resolve) => setTimeout(resolve, 100));
            throw storageUnavailable(new Error('injected'));
          }
          return target.apply(batch as never);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  }) as Store;
}

describe('client outcomes against a real server', () => {
  it('resolves a put once the server applied it, with the ack the server stored', async () => {
    const t = await cleanup.server();
    const c = client(t.url, 'dev-1');
    const r = await c.put('k', { temp: 21.5, unit: 'C' });
    expect(r.outcome).toBe('applied');
    expect(r.replay).toBe(false);
    expect(r.ack).toMatchObject({ stream: 'dev-1', epoch: 1, seq: 1, key: 'k', version: 1, deleted: false });
    withDb(t.dbPath, (db) => {
      expect(db.document('k')?.state).toEqual({ temp: 21.5, unit: 'C' });
      expect(db.ack('dev-1', 1, 1)?.committedAt).toBe(r.ack.committedAt);
    });
    const d = await c.delete('k');
    expect(d.ack).toMatchObject({ seq: 2, version: 2, deleted: true });
  });

  it('refuses an invalid put locally, before it gets a seq, so the next put takes seq 1', async () => {
    const t = await cleanup.server();
    const c = client(t.url, 'dev-inv');
    const bad = await Promise.all([
      failure(c.put('', 1)),
      failure(c.put('k\u0001', 1)),
      failure(c.put('k', new Date())),
      failure(c.put('k', { a: undefined })),
      failure(c.put('k', 'x'.repeat(70_000))),
      failure(c.put('k', 1, { ifVersion: -1 })),
    ]);
    for (const err of bad) {
      expect(err).toBeInstanceOf(InvalidPutError);
      expect(err.local).toBe(true);
    }
    expect(bad[4]).toMatchObject({ code: 'LIMIT_EXCEEDED', field: 'state', limit: 'maxStateBytes', max: 65536 });
    const ok = await c.put('k', 1);
    expect(ok.ack.seq).toBe(1);
  });

  it('refuses, after the welcome, states above the limits the server announced', async () => {
    const t = await cleanup.server({ maxStateBytes: 100 });
    const c = client(t.url, 'dev-lim');
    await c.put('k', 'small');
    expect(await failure(c.put('k', 'y'.repeat(200)))).toMatchObject({ name: 'InvalidPutError', code: 'LIMIT_EXCEEDED', max: 100, local: true });
  });

  it('refuses a put that could not fit in a frame on its own, in either encoding', async () => {
    const t = await cleanup.server({ maxFrameBytes: 2048 });
    const c = client(t.url, 'dev-frame');
    await c.put('k', 'small');
    expect(await failure(c.put('k', 'z'.repeat(3000)))).toMatchObject({ code: 'LIMIT_EXCEEDED', limit: 'maxFrameBytes', local: true });
    // 1500 control characters: 1503 bytes as MessagePack, six times that as JSON escapes.
    const j = client(t.url, 'dev-frame-json', { format: 'json' });
    await j.put('k', 'small');
    expect(await failure(j.put('k', '\u0001'.repeat(1500)))).toMatchObject({ limit: 'maxFrameBytes', local: true });
    expect((await c.put('k', '\u0001'.repeat(1500))).ack.seq).toBe(2);
  });

  it('rejects a put whose ifVersion does not match with VersionConflictError carrying the stored ack', async () => {
    const t = await cleanup.server();
    const c = client(t.url, 'dev-vc');
    await c.put('doc', { v: 1 });
    const err = await failure(c.put('doc', { v: 2 }, { ifVersion: 5 }));
    expect(err).toBeInstanceOf(VersionConflictError);
    expect(err.code).toBe('VERSION_CONFLICT');
    expect(err.replay).toBe(false);
    expect(err.ack).toMatchObject({ seq: 2, version: 1, deleted: false, ifVersion: 5 });
    // The seq was consumed: the next put moves on, and a matching ifVersion applies.
    const ok = await c.put('doc', { v: 3 }, { ifVersion: 1 });
    expect(ok.ack).toMatchObject({ seq: 3, version: 2 });
  });

  it('stops when fenced: this put and every later one reject with FencedError naming the new epoch', async () => {
    const { t, c, stopped, err: fenced } = await overtaken('dev-f', { epoch: 7, seq: 1 });
    expect(fenced).toBeInstanceOf(FencedError);
    expect(fenced.epoch).toBe(7);
    expect(c.state).toBe('stopped');
    expect(stopped).toHaveLength(1);
    const laterError = await failure(c.put('k', 3));
    expect(laterError).toBeInstanceOf(FencedError);
    expect(laterError.cause).toBe(stopped[0]);
    withDb(t.dbPath, (db) => expect(db.document('k')?.state).toBe(1));
  });

  it('reports a stale answer to its own put as another writer, and stops writing', async () => {
    const { c, stopped, err } = await overtaken('dev-s', { epoch: 1, seq: 5 });
    expect(err).toBeInstanceOf(StaleError);
    expect(err.ownSkip).toBe(false);
    expect(err.head).toEqual({ epoch: 1, seq: 5 });
    expect(err.message).toMatch(/another writer/);
    expect(stopped[0]).toBeInstanceOf(WriterConflictError);
    expect((stopped[0] as WriterConflictError).cause).toBe(err);
    expect(await failure(c.put('k', 3))).toBeInstanceOf(WriterConflictError);
  });

  it('reports a position consumed by another payload as SequenceReusedError, and stops writing', async () => {
    const t = await cleanup.server();
    const c = client(t.url, 'dev-r');
    await c.put('k', 1);
    await rawPut(t.url, { stream: 'dev-r', epoch: 1, seq: 2, key: 'k', state: 'not mine' });
    expect(await failure(c.put('k', 2))).toBeInstanceOf(SequenceReusedError);
    expect(c.stoppedBecause).toBeInstanceOf(WriterConflictError);
  });

  it('rejects a resent put whose ack was pruned with ExpiredError, and replays the one still stored', async () => {
    const t = await cleanup.server({ ackCapPerStream: 1, ackCapSlack: 0 });
    const proxy = await FaultProxy.start(t.url);
    cleanup.push(() => proxy.close());
    // The first connection loses its first results frame: the three puts commit, their answers vanish.
    proxy.onFrame = (f) => (f.connection.id === 1 && f.direction === 'toClient' && f.index === 1 ? 'cut' : undefined);
    const c = client(proxy.url, 'dev-e');
    const settled = await Promise.all([failure(c.put('a', 1)), failure(c.put('b', 2)), c.put('c', 3)]);
    expect(settled[0]).toBeInstanceOf(ExpiredError);
    expect(settled[1]).toBeInstanceOf(ExpiredError);
    expect(settled[2]).toMatchObject({ outcome: 'applied', replay: true });
    expect(c.state).toBe('connected');
  });

  it('resends a put after a transient storage error, and reports the error to listeners', async () => {
    const dir = cleanup.tempDir('seqgate-client-');
    const inner = new SqliteStore({ path: join(dir, 'db.sqlite'), synchronous: 'normal', contiguous: false, ackCapPerStream: 1000 });
    let failures = 2;
    const store = new Proxy(inner, {
      get(target, prop, receiver) {
        if (prop === 'apply') {
          return async (batch: readonly unknown[]) => {
            if (failures-- > 0) throw storageUnavailable(new Error('injected'));
            return target.apply(batch as never);
          };
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    }) as Store;
    const t = await cleanup.server({}, { store });
    const c = client(t.url, 'dev-t');
    const transient: TransientError[] = [];
    c.on('transientError', (e) => transient.push(e));
    const r = await c.put('k', 'v');
    expect(r).toMatchObject({ outcome: 'applied', replay: false, ack: { seq: 1, version: 1 } });
    expect(transient.map((e) => e.code)).toEqual(['STORAGE_UNAVAILABLE', 'STORAGE_UNAVAILABLE']);
    expect(c.stats.sent).toBe(3);
  });

  it('reports a put overtaken by its own later put after a transient error as StaleError with ownSkip, and keeps writing', async () => {
    const dir = cleanup.tempDir('seqgate-client-');
    const t = await cleanup.server({}, { store: storeFailingFirstBatch(dir, false) });
    const c = client(t.url, 'dev-skip');
    await c.ready;
    const first = failure(c.put('a', 1));
    await new Promise((resolve) => setTimeout(resolve, 30));
    const second = c.put('b', 2);
    expect((await second).ack).toMatchObject({ seq: 2, version: 1 });
    const err = await first;
    expect(err).toBeInstanceOf(StaleError);
    expect(err.ownSkip).toBe(true);
    expect(err.head).toEqual({ epoch: 1, seq: 2 });
    expect(c.state).toBe('connected');
    expect((await c.put('c', 3)).ack.seq).toBe(3);
  });

  it('in contiguous mode, a put after a transient error waits for the failed one and both apply in order', async () => {
    const dir = cleanup.tempDir('seqgate-client-');
    const t = await cleanup.server({ contiguous: true }, { store: storeFailingFirstBatch(dir, true) });
    const c = client(t.url, 'dev-cskip');
    await c.ready;
    const first = c.put('a', 1);
    await new Promise((resolve) => setTimeout(resolve, 30));
    const second = c.put('b', 2);
    const [r1, r2] = await Promise.all([first, second]);
    expect([r1.ack.seq, r2.ack.seq]).toEqual([1, 2]);
    expect(c.stats.sent).toBe(4);
  });

  it('sends its token in the hello; a put the token may not write is ForbiddenError, a bad token stops the client', async () => {
    const token = 'tok-0123456789abcdef';
    const tokens = JSON.stringify({ tokens: [{ token, tenant: 'default', write: { streams: ['dev-'], documents: ['dev-'] } }] });
    const t = await cleanup.server({ tokens });
    const c = client(t.url, 'dev-auth', { token });
    expect((await c.put('dev-doc', 1)).ack.seq).toBe(1);
    const forbidden = await failure(c.put('other-doc', 2));
    expect(forbidden).toBeInstanceOf(ForbiddenError);
    expect((await c.put('dev-doc', 3)).ack.seq).toBe(3);

    const intruder = client(t.url, 'dev-auth', { token: 'wrong-token-0123456789' });
    const refused = await failure(intruder.put('dev-doc', 4));
    expect(refused.code).toBe('UNAUTHORIZED');
    expect(refused).toBeInstanceOf(AuthenticationError);
    expect(intruder.state).toBe('stopped');
    expect(intruder.stoppedBecause).toBeInstanceOf(AuthenticationError);
    expect((intruder.stoppedBecause as AuthenticationError).closeCode).toBe(4401);
  });

  it('in contiguous mode, steps over a hole it left by moving to a new epoch', async () => {
    const t = await cleanup.server({ contiguous: true });
    // An outbox from an earlier run whose record says seq 5 comes next: the server expects seq 1.
    const outbox = new MemoryOutbox();
    await outbox.append('dev-g', { epoch: 1, nextSeq: 5, lastAcked: null, incarnation: null, checkpoint: undefined }, []);
    const c = client(t.url, 'dev-g', { outbox });
    const epochs: EpochChange[] = [];
    c.on('epoch', (e) => epochs.push(e));
    const r = await c.put('k', 1);
    expect(r.ack).toMatchObject({ epoch: 2, seq: 1 });
    expect(epochs).toMatchObject([{ epoch: 2, previous: 1, reason: 'gap' }]);
  });

  it('in contiguous mode, a put the server refuses as invalid does not block the ones after it', async () => {
    const t = await cleanup.server({ contiguous: true });
    // A recovered entry the client never validated (written by an older client, say).
    const outbox = new MemoryOutbox();
    const state = Uint8Array.of(0x01);
    await outbox.append('dev-h', { epoch: 1, nextSeq: 3, lastAcked: null, incarnation: null, checkpoint: undefined }, [
      { pos: 1, epoch: 1, seq: 1, key: 'bad\u0001key', state, ifVersion: null, createdAt: 0 },
      { pos: 2, epoch: 1, seq: 2, key: 'good', state, ifVersion: null, createdAt: 0 },
    ]);
    const c = client(t.url, 'dev-h', { outbox });
    const recovered: Array<{ key: string; error?: Error; result?: PutResult }> = [];
    c.on('result', (s) => {
      if (s.recovered) recovered.push({ key: s.put.key, ...(s.error ? { error: s.error } : {}), ...(s.result ? { result: s.result } : {}) });
    });
    const r = await c.put('after', 2);
    await waitUntil(() => recovered.length === 2);
    expect(recovered[0]!.error).toBeInstanceOf(InvalidPutError);
    expect((recovered[0]!.error as InvalidPutError).local).toBe(false);
    expect(recovered[1]!.result?.ack).toMatchObject({ key: 'good', epoch: 2, seq: 1 });
    expect(r.ack).toMatchObject({ epoch: 2, seq: 2 });
  });

  it('matches answers by id: duplicated and reordered answer frames settle each put exactly once', async () => {
    const t = await cleanup.server();
    const proxy = await FaultProxy.start(t.url, { duplicate: 0.3, reorder: 0.3 });
    cleanup.push(() => proxy.close());
    const c = client(proxy.url, 'dev-d', { window: 8 });
    let settledEvents = 0;
    c.on('result', () => settledEvents++);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => c.put(`k${i % 7}`, i)));
    expect(results.map((r) => r.ack.seq)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(results.every((r) => r.outcome === 'applied' && !r.replay)).toBe(true);
    expect(settledEvents).toBe(200);
    expect(proxy.stats.duplicates + proxy.stats.reorders).toBeGreaterThan(0);
    withDb(t.dbPath, (db) => expect(db.countAcks('dev-d')).toBe(200));
  });

  it('speaks the JSON subprotocol, and refuses states JSON cannot carry before sending', async () => {
    const t = await cleanup.server();
    const c = client(t.url, 'dev-j', { format: 'json' });
    const r = await c.put('k', { list: [1, 2.5, 'x', null, true], nested: { a: {} } });
    expect(r.ack.version).toBe(1);
    withDb(t.dbPath, (db) => expect(db.document('k')?.state).toEqual({ list: [1, 2.5, 'x', null, true], nested: { a: {} } }));
    expect(await failure(c.put('k', Uint8Array.of(1)))).toBeInstanceOf(InvalidPutError);
  });

  it('notices a dead connection by its ping while idle, and reconnects once the network is back', async () => {
    const t = await cleanup.server();
    const proxy = await FaultProxy.start(t.url);
    cleanup.push(() => proxy.close());
    const c = client(proxy.url, 'dev-p', { pingIntervalMs: 100, pongTimeoutMs: 300 });
    await c.put('k', 1);
    proxy.stallAll();
    await waitUntil(() => c.state !== 'connected', 5000, 'the client to give up on the stalled connection');
    expect(c.stats.timeouts).toBeGreaterThanOrEqual(1);
    proxy.resumeAll();
    const r = await c.put('k', 2);
    expect(r.ack.seq).toBe(2);
  });

  it('close() drains what was accepted, then reports nothing left', async () => {
    const t = await cleanup.server();
    const c = newClient(t.url, 'dev-c');
    const puts = Array.from({ length: 50 }, (_, i) => c.put(`k${i}`, i));
    const report = await c.close();
    expect(report).toEqual({ drained: true, left: [] });
    expect((await Promise.all(puts)).length).toBe(50);
    expect(c.state).toBe('closed');
    expect(await failure(c.put('k', 1))).toBeInstanceOf(ClientClosedError);
  });

  it('close() without a server reports the puts left, rejecting them as dropped from a memory outbox', async () => {
    const c = newClient('ws://127.0.0.1:9', 'dev-x');
    const p = failure(c.put('k', 1));
    const report = await c.close({ timeoutMs: 300 });
    expect(report.drained).toBe(false);
    expect(report.left).toEqual([{ stream: 'dev-x', epoch: 0, seq: 0, key: 'k' }]);
    const err = await p;
    expect(err).toBeInstanceOf(ClientClosedError);
    expect(err.keptInOutbox).toBe(false);
  });
});
