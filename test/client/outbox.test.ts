import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ClientClosedError, MemoryOutbox, type PutSettlement } from '@seqgate/client';
import { SqliteOutbox } from '@seqgate/client/node';
import { KeyValueOutbox, type KeyValueStore } from '@seqgate/client/async-storage';
import { ERRORS } from '../../src/errors.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { Cleanup } from '../support/cleanup.js';
import { failure, newClient, waitUntil } from './helpers.js';
import { entry, offsetContract, outboxContract, record, type OutboxMaker } from './outbox-contract.js';

const cleanup = new Cleanup();
const tempDir = (): string => cleanup.tempDir('seqgate-outbox-');

/** The third field: the outbox keeps subscriptions' offsets and applied versions (offsetContract). */
const kinds: Array<[string, OutboxMaker, boolean]> = [
  ['MemoryOutbox', { make: () => new MemoryOutbox() }, false],
  [
    'SqliteOutbox',
    {
      make: () => {
        const o = new SqliteOutbox(join(tempDir(), 'outbox.sqlite'));
        cleanup.push(() => o.close());
        return o;
      },
      reopen: (o) => {
        const path = (o as SqliteOutbox).path;
        (o as SqliteOutbox).close();
        const again = new SqliteOutbox(path);
        cleanup.push(() => again.close());
        return again;
      },
      share: (o) => {
        const twin = new SqliteOutbox((o as SqliteOutbox).path);
        cleanup.push(() => twin.close());
        return twin;
      },
    },
    true,
  ],
];

/** React Native's AsyncStorage as far as KeyValueOutbox uses it: strings, each key written atomically. */
class MemoryAsyncStorage implements KeyValueStore {
  readonly data = new Map<string, string>();
  async getItem(key: string): Promise<string | null> {
    return this.data.get(key) ?? null;
  }
  async setItem(key: string, value: string): Promise<void> {
    if (typeof value !== 'string') throw new TypeError('AsyncStorage stores strings only');
    this.data.set(key, value);
  }
  async removeItem(key: string): Promise<void> {
    this.data.delete(key);
  }
}
kinds.push([
  'KeyValueOutbox over an AsyncStorage fake',
  {
    make: () => new KeyValueOutbox(new MemoryAsyncStorage()),
    // A restart: a new outbox on what the store holds, through a copy (nothing shared but strings).
    reopen: (o) => {
      const copy = new MemoryAsyncStorage();
      for (const [k, v] of (o as unknown as { kv: MemoryAsyncStorage }).kv.data) copy.data.set(k, v);
      return new KeyValueOutbox(copy);
    },
    share: (o) => new KeyValueOutbox((o as unknown as { kv: MemoryAsyncStorage }).kv),
  },
  true,
]);

describe.each(kinds)('outbox contract: %s', (_, maker) => {
  it.each(outboxContract.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    await c.run(maker);
  });
});

describe.each(kinds.filter(([, , keepsOffsets]) => keepsOffsets))('offset and version contract: %s', (_, maker) => {
  it.each(offsetContract.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    await c.run(maker);
  });
});

it('the offset contract fails on an outbox that does not keep offsets, instead of passing vacuously', async () => {
  for (const c of offsetContract) await expect(c.run({ make: () => new MemoryOutbox(), reopen: (o) => o, share: (o) => o })).rejects.toThrow(/loadOffset/);
});

describe('SqliteOutbox', () => {
  it('keeps everything across a close and reopen of the file', async () => {
    const path = join(tempDir(), 'o.sqlite');
    const a = new SqliteOutbox(path);
    await a.append('s', record(), [entry(1), entry(2, { state: Uint8Array.of(0xc0) }), entry(3, { state: null })]);
    a.close();
    const b = new SqliteOutbox(path);
    cleanup.push(() => b.close());
    const loaded = await b.load('s');
    expect(loaded.record).toEqual(record());
    // A state of nil (c0) and a delete (null) stay distinct.
    expect(loaded.entries.map((e) => (e.state === null ? null : [...e.state]))).toEqual([[0x81, 0xa1, 0x61, 1], [0xc0], null]);
  });
});

describe('a client on a durable outbox', () => {
  it('keeps unanswered puts when closed, and the next client resends them and reports them as recovered', async () => {
    const t = await cleanup.server();
    const proxy = await FaultProxy.start(t.url);
    cleanup.push(() => proxy.close());
    // The puts commit, but their answers never arrive on the first connection.
    proxy.onFrame = (f) => (f.connection.id === 1 && f.direction === 'toClient' && f.index >= 1 ? 'stall' : undefined);
    const path = join(tempDir(), 'o.sqlite');
    const first = new SqliteOutbox(path);
    const a = newClient(proxy.url, 'dev-o', { outbox: first, putTimeoutMs: 60_000 });
    const puts = [failure(a.put('k1', 1)), failure(a.put('k2', 2))];
    await waitUntil(() => a.stats.sent === 2);
    const report = await a.close({ timeoutMs: 200 });
    expect(report).toEqual({
      drained: false,
      left: [
        { stream: 'dev-o', epoch: 1, seq: 1, key: 'k1' },
        { stream: 'dev-o', epoch: 1, seq: 2, key: 'k2' },
      ],
    });
    for (const p of puts) {
      const err = await p;
      expect(err).toBeInstanceOf(ClientClosedError);
      expect(err.keptInOutbox).toBe(true);
    }
    first.close();

    const second = new SqliteOutbox(path);
    cleanup.push(() => second.close());
    const b = newClient(proxy.url, 'dev-o', { outbox: second });
    cleanup.push(async () => {
      await b.close({ timeoutMs: 100 });
    });
    const recovered: PutSettlement[] = [];
    b.on('result', (s) => recovered.push(s));
    await waitUntil(() => recovered.length === 2);
    expect(recovered.map((s) => [s.recovered, s.put.seq, s.result?.replay])).toEqual([
      [true, 1, true],
      [true, 2, true],
    ]);
    // Seen answers leave the outbox with its next write, at the latest when the client closes.
    await b.close({ timeoutMs: 100 });
    expect((await second.load('dev-o')).entries).toEqual([]);
  });
});

describe('the core client entry', () => {
  const clientDir = fileURLToPath(new URL('../../packages/client/src/', import.meta.url));

  it('imports no Node built-in and no package at all, only its own files (it runs in browsers)', () => {
    const seen = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const source = readFileSync(join(clientDir, file), 'utf8');
      for (const m of source.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s+'([^']+)'/g)) {
        const spec = m[1]!;
        expect(spec.startsWith('./') || spec.startsWith('../'), `${file} imports ${spec}`).toBe(true);
        const target = join(dirname(file), spec).replace(/\.js$/, '.ts');
        expect(target, `${file} imports the Node-only entry`).not.toBe('node.ts');
        visit(target);
      }
    };
    visit('index.ts');
    visit('wire/index.ts');
    visit('indexeddb.ts');
    visit('async-storage.ts');
    const all = readdirSync(clientDir, { recursive: true })
      .map(String)
      .filter((f) => f.endsWith('.ts'));
    // Every source file but the Node entry is reachable from the browser entries.
    expect([...seen].sort()).toEqual(all.filter((f) => f !== 'node.ts').sort());
  });

  it('uses the server registry names for every code the server can send', () => {
    for (const code of ['SEQUENCE_REUSED', 'FENCED', 'STALE', 'EXPIRED', 'GAP', 'INVALID_FIELD', 'LIMIT_EXCEEDED', 'STORAGE_UNAVAILABLE', 'FORBIDDEN']) {
      expect(Object.keys(ERRORS)).toContain(code);
    }
  });
});

describe('answers the application has not confirmed', () => {
  it('stay in the outbox with confirmResults manual, are reported again by the next client, and leave once confirmed', async () => {
    const t = await cleanup.server();
    const path = join(tempDir(), 'o.sqlite');
    const first = new SqliteOutbox(path);
    const a = newClient(t.url, 'dev-m', { outbox: first, confirmResults: 'manual' });
    const seenByA: PutSettlement[] = [];
    a.on('result', (s) => seenByA.push(s));
    await a.put('k1', 1);
    await a.put('k2', 2);
    expect(a.unconfirmedResults).toBe(2);
    expect(a.confirm(seenByA[0]!)).toBe(true);
    expect(a.confirm(seenByA[0]!)).toBe(false);
    await a.close();
    first.close();

    const second = new SqliteOutbox(path);
    cleanup.push(() => second.close());
    expect((await second.load('dev-m')).entries.map((e) => [e.seq, e.answer?.ok])).toEqual([[2, true]]);
    const b = newClient(t.url, 'dev-m', { outbox: second, confirmResults: 'manual' });
    const seenByB: PutSettlement[] = [];
    b.on('result', (s) => seenByB.push(s));
    await waitUntil(() => seenByB.length === 1);
    expect(seenByB[0]).toMatchObject({ recovered: true, put: { seq: 2, key: 'k2' }, result: { replay: false, ack: { seq: 2, version: 1 } } });
    expect(b.confirm(seenByB[0]!)).toBe(true);
    await b.close();
    expect((await second.load('dev-m')).entries).toEqual([]);
  });
});
