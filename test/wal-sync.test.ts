import { fdatasync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { putFingerprint } from '../src/protocol/canonical.js';
import { SqliteStore, type SqliteStoreOptions } from '../src/store/sqlite-store.js';
import type { Put, PutResult } from '../src/store/store.js';
import { put as wirePut, startTestServer, TestClient, type TestServer } from './support/test-client.js';
import { until } from './support/until.js';

/**
 * The WAL's fsync off the event loop (--wal-sync background, ADR 0011): the connection commits
 * with synchronous=NORMAL and src/store/wal-sync.ts runs fdatasync on the thread pool. It is as
 * strong as synchronous=FULL only if nothing that reflects a commit leaves the store before a sync
 * that started after that commit has ended. These tests hold the syncs by hand and check exactly
 * that, for batch results and for every read a client can see (heads, documents, changes), and
 * that a failed sync stops the store. (Crash points: test/crash-points.test.ts, before-sync.)
 */

/** Stands in for fdatasync: each call waits until the test releases or fails it. */
class HeldSyncs {
  readonly calls: Array<{ fd: number; release: () => void; fail: (err: Error) => void }> = [];
  /** Once set (at cleanup), syncs run at once, so that closing never waits on a held one. */
  open = false;
  private readonly pending = new Set<() => void>();
  constructor() {
    held.push(this);
  }
  readonly syncFile = (fd: number): Promise<void> =>
    new Promise((resolve, reject) => {
      // The real sync, so that what the test releases is really on disk.
      const release = (): void => {
        if (!this.pending.delete(release)) return;
        fdatasync(fd, (err) => (err ? reject(err) : resolve()));
      };
      this.pending.add(release);
      this.calls.push({ fd, release, fail: (err) => this.pending.delete(release) && reject(err) });
      if (this.open) release();
    });
  releaseAll(): void {
    this.open = true;
    for (const r of [...this.pending]) r();
  }
}
const held: HeldSyncs[] = [];

const dirs: string[] = [];
const stores: SqliteStore[] = [];
const servers: TestServer[] = [];
afterEach(async () => {
  for (const h of held.splice(0)) h.releaseAll();
  for (const s of servers.splice(0)) await s.stop();
  for (const s of stores.splice(0)) await s.close().catch(() => undefined);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function open(overrides: Partial<SqliteStoreOptions> = {}): SqliteStore {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-walsync-'));
  dirs.push(dir);
  const store = new SqliteStore({ path: join(dir, 'db'), synchronous: 'full', contiguous: false, ackCapPerStream: 1000, walSync: 'background', ...overrides });
  stores.push(store);
  return store;
}

function put(stream: string, seq: number, key = `${stream}-doc`): Put {
  const state = Buffer.from([0x81, 0xa1, 0x6e, seq & 0x7f]);
  return { tenant: 'default', stream, epoch: 1, seq, key, state, ifVersion: null, fingerprint: putFingerprint(key, state, null) };
}

/** Lets every callback that is ready run (the pool's answer, promise jobs, immediates). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Tracks whether a promise has settled, without letting its rejection go unhandled. */
function watch<T>(p: Promise<T>): { readonly done: boolean; readonly value: Promise<T> } {
  const w = { done: false, value: p };
  p.then(
    () => (w.done = true),
    () => (w.done = true),
  );
  return w;
}

describe('--wal-sync background: the store answers only what is on disk', () => {
  it('commits with synchronous=NORMAL and syncs itself; commit mode keeps SQLite FULL', () => {
    expect(open().database.pragma('synchronous', { simple: true }), 'background: NORMAL').toBe(1);
    expect(open({ walSync: 'commit' }).database.pragma('synchronous', { simple: true }), 'commit: FULL').toBe(2);
    expect(open({ synchronous: 'normal' }).database.pragma('synchronous', { simple: true }), 'synchronous normal: no sync at all').toBe(1);
  });

  it('resolves a batch only after a sync that started after its commit has ended', async () => {
    const syncs = new HeldSyncs();
    const store = open({ syncFile: syncs.syncFile });

    const first = watch(store.apply([put('a', 1)]));
    await until(() => syncs.calls.length === 1);
    await settle();
    expect(first.done, 'results while the sync covering the batch is held').toBe(false);
    // The batch is committed all the same: the next one reads it and can commit behind it.
    const second = watch(store.apply([put('a', 2)]));
    await settle();
    expect(syncs.calls.length, 'one sync in flight at a time').toBe(1);

    syncs.calls[0]!.release();
    await until(() => first.done);
    const [r1] = (await first.value) as PutResult[];
    expect(r1).toMatchObject({ kind: 'ack', replay: false, ack: { seq: 1 } });
    // The first sync started before the second commit, so it does not cover it.
    await until(() => syncs.calls.length === 2);
    await settle();
    expect(second.done, 'a batch committed while an earlier sync ran waits for the next one').toBe(false);

    syncs.calls[1]!.release();
    const [r2] = (await second.value) as PutResult[];
    expect(r2).toMatchObject({ kind: 'ack', replay: false, ack: { seq: 2 } });
  });

  it('holds replays, heads, documents and changes read after a commit until that commit is synced', async () => {
    const syncs = new HeldSyncs();
    const store = open({ syncFile: syncs.syncFile });
    const applied = watch(store.apply([put('a', 1, 'doc')]));
    await until(() => syncs.calls.length === 1);

    const reads = {
      replay: watch(store.apply([put('a', 1, 'doc')])),
      heads: watch(store.heads('default', ['a'])),
      document: watch(store.document('default', 'doc')),
      changes: watch(store.readChanges('default', { after: 0, limit: 10, maxScan: 100, prefixes: [''] })),
      tail: watch(store.changeTail('default')),
      snapshot: watch(store.snapshot('default', [''], null, 10)),
    };
    await settle();
    for (const [name, w] of Object.entries(reads)) expect(w.done, `${name} while the commit is not synced`).toBe(false);
    expect(applied.done).toBe(false);

    syncs.calls[0]!.release();
    await until(() => applied.done);
    // The replay's batch committed (nothing) after the first sync started: it needs the second.
    await until(() => syncs.calls.length === 2);
    syncs.calls[1]!.release();
    const [replay] = (await reads.replay.value) as PutResult[];
    expect(replay).toMatchObject({ kind: 'ack', replay: true, ack: { seq: 1, version: 1 } });
    expect(await reads.heads.value).toEqual([{ stream: 'a', epoch: 1, seq: 1, prunedThrough: 0 }]);
    expect(await reads.document.value).toMatchObject({ key: 'doc', version: 1, deleted: false });
    expect((await reads.changes.value).changes.map((c) => c.key)).toEqual(['doc']);
    expect(await reads.tail.value).toBe(1);
    expect((await reads.snapshot.value).documents.map((d) => d.key)).toEqual(['doc']);

    // Nothing new committed: a read answers at once, without another sync.
    const calls = syncs.calls.length;
    expect(await store.heads('default', ['a'])).toEqual([{ stream: 'a', epoch: 1, seq: 1, prunedThrough: 0 }]);
    expect(syncs.calls.length).toBe(calls);
  });

  it('after a failed sync: the batch is answered STORAGE_UNAVAILABLE, and the store refuses every write and read until restarted', async () => {
    const syncs = new HeldSyncs();
    const store = open({ syncFile: syncs.syncFile });
    const failed = watch(store.apply([put('a', 1)]));
    await until(() => syncs.calls.length === 1);
    syncs.calls[0]!.fail(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await expect(failed.value).rejects.toMatchObject({ code: 'STORAGE_UNAVAILABLE', message: expect.stringMatching(/not made durable.*EIO/) });

    await expect(store.apply([put('b', 1)]), 'a later batch').rejects.toMatchObject({ code: 'STORAGE_UNAVAILABLE' });
    await expect(store.ready(), 'readiness').rejects.toThrow(/fdatasync/);
    await expect(store.heads('default', ['a']), 'a read').rejects.toMatchObject({ code: 'STORAGE_UNAVAILABLE' });
    expect(syncs.calls.length, 'no sync is tried again').toBe(1);
    // The later batch never ran: nothing of it is in the file.
    const streams = store.database.prepare('SELECT name FROM streams ORDER BY name').pluck().all();
    expect(streams).toEqual(['a']);
  });

  it('with the real fdatasync, every acked put is in the file after a reopen', async () => {
    const store = open();
    for (let seq = 1; seq <= 20; seq++) {
      const [r] = await store.apply([put('a', seq), put(`b${seq}`, 1)]);
      expect(r).toMatchObject({ kind: 'ack', replay: false });
    }
    const path = store.database.name;
    await store.close();
    const again = new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 1000, walSync: 'background' });
    stores.push(again);
    expect(await again.heads('default', ['a', 'b20'])).toEqual([
      { stream: 'a', epoch: 1, seq: 20, prunedThrough: 0 },
      { stream: 'b20', epoch: 1, seq: 1, prunedThrough: 0 },
    ]);
  });
});

describe('--wal-sync background through the server', () => {
  it('sends no results frame and no welcome head for a commit before its sync has ended', async () => {
    const syncs = new HeldSyncs();
    const dir = mkdtempSync(join(tmpdir(), 'seqgate-walsync-srv-'));
    dirs.push(dir);
    const store = new SqliteStore({
      path: join(dir, 'db'),
      synchronous: 'full',
      contiguous: false,
      ackCapPerStream: 1000,
      walSync: 'background',
      syncFile: syncs.syncFile,
    });
    const t = await startTestServer({}, { store });
    servers.push(t);
    const writer = await TestClient.connect(t.url);
    writer.send({ type: 'hello', protocol: 1, streams: ['dev'] });
    await writer.waitMessage('welcome');
    writer.send({ type: 'put', puts: [wirePut({ id: 'p1', stream: 'dev', seq: 1, key: 'dev-doc' })] });
    await until(() => syncs.calls.length === 1);

    const reader = await TestClient.connect(t.url);
    reader.send({ type: 'hello', protocol: 1, streams: ['dev'] });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(writer.results(), 'results before the sync').toEqual([]);
    expect(
      reader.messages.filter((m) => m.type === 'welcome'),
      'a welcome carrying the new head before the sync',
    ).toEqual([]);

    syncs.calls[0]!.release();
    const [result] = await writer.waitResults(1);
    expect(result).toMatchObject({ id: 'p1', outcome: 'applied', replay: false });
    const welcome = await reader.waitMessage('welcome');
    expect(welcome.heads).toEqual([{ stream: 'dev', epoch: 1, seq: 1, prunedThrough: 0 }]);
    writer.ws.terminate();
    reader.ws.terminate();
  });
});
