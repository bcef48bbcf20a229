import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ClientClosedError, MemoryOutbox, type Outbox, type OutboxEntry, type PutSettlement, type StreamRecord } from '@seqgate/client';
import { SqliteOutbox } from '@seqgate/client/node';
import { ERRORS } from '../../src/errors.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startTestServer } from '../support/test-client.js';
import { failure, newClient, waitUntil } from './helpers.js';

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-outbox-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const record = (over: Partial<StreamRecord> = {}): StreamRecord => ({
  epoch: 3, nextSeq: 10, lastAcked: { epoch: 3, seq: 7 }, incarnation: 'inc-1', checkpoint: { offset: 41, file: 'log-2' }, ...over,
});
const entry = (pos: number, over: Partial<OutboxEntry> = {}): OutboxEntry => ({
  pos, epoch: 3, seq: pos + 7, key: `k${pos}`, state: Uint8Array.of(0x81, 0xa1, 0x61, pos), ifVersion: null, createdAt: 1_700_000_000_000 + pos, ...over,
});

function plain(entries: OutboxEntry[]): unknown[] {
  return entries.map((e) => ({ ...e, state: e.state === null ? null : [...e.state] }));
}

const kinds: Array<[string, () => Outbox]> = [
  ['MemoryOutbox', () => new MemoryOutbox()],
  ['SqliteOutbox', () => {
    const o = new SqliteOutbox(join(tempDir(), 'outbox.sqlite'));
    cleanups.push(() => o.close());
    return o;
  }],
];

describe.each(kinds)('%s', (_, make) => {
  it('starts with no record and no entries for a stream', async () => {
    expect(await make().load('s')).toEqual({ record: null, entries: [] });
  });

  it('keeps appended entries in order with the record, and removes settled ones', async () => {
    const o = make();
    await o.append('s', record(), [entry(1), entry(2, { state: null }), entry(3, { ifVersion: 0 })]);
    await o.append('other', record({ epoch: 1 }), [entry(1, { key: 'x' })]);
    await o.settle('s', record({ lastAcked: { epoch: 3, seq: 9 } }), [2]);
    const loaded = await o.load('s');
    expect(loaded.record).toEqual(record({ lastAcked: { epoch: 3, seq: 9 } }));
    expect(plain(loaded.entries)).toEqual(plain([entry(1), entry(3, { ifVersion: 0 })]));
    expect((await o.load('other')).entries.map((e) => e.key)).toEqual(['x']);
  });

  it('replaces every entry of a stream at once, and forgets a stream entirely', async () => {
    const o = make();
    await o.append('s', record(), [entry(1), entry(2)]);
    await o.replace('s', record({ epoch: 4, nextSeq: 2, lastAcked: null, checkpoint: undefined }), [entry(2, { epoch: 4, seq: 1 })]);
    const loaded = await o.load('s');
    expect(loaded.record).toEqual(record({ epoch: 4, nextSeq: 2, lastAcked: null, checkpoint: undefined }));
    expect(plain(loaded.entries)).toEqual(plain([entry(2, { epoch: 4, seq: 1 })]));
    await o.forget('s');
    expect(await o.load('s')).toEqual({ record: null, entries: [] });
  });

  it('stores a record whose epoch is not decided yet, with unnumbered entries', async () => {
    const o = make();
    await o.append('s', record({ epoch: null, nextSeq: 1, lastAcked: null, incarnation: null }), [entry(1, { epoch: 0, seq: 0 })]);
    const loaded = await o.load('s');
    expect(loaded.record).toMatchObject({ epoch: null, nextSeq: 1 });
    expect(loaded.entries[0]).toMatchObject({ epoch: 0, seq: 0 });
  });
});

describe('SqliteOutbox', () => {
  it('keeps everything across a close and reopen of the file', async () => {
    const path = join(tempDir(), 'o.sqlite');
    const a = new SqliteOutbox(path);
    await a.append('s', record(), [entry(1), entry(2, { state: Uint8Array.of(0xc0) }), entry(3, { state: null })]);
    a.close();
    const b = new SqliteOutbox(path);
    cleanups.push(() => b.close());
    const loaded = await b.load('s');
    expect(loaded.record).toEqual(record());
    // A state of nil (c0) and a delete (null) stay distinct.
    expect(loaded.entries.map((e) => (e.state === null ? null : [...e.state]))).toEqual([[0x81, 0xa1, 0x61, 1], [0xc0], null]);
  });
});

describe('a client on a durable outbox', () => {
  it('keeps unanswered puts when closed, and the next client resends them and reports them as recovered', async () => {
    const t = await startTestServer();
    cleanups.push(() => t.stop());
    const proxy = await FaultProxy.start(t.url);
    cleanups.push(() => proxy.close());
    // The puts commit, but their answers never arrive on the first connection.
    proxy.onFrame = (f) => (f.connection.id === 1 && f.direction === 'toClient' && f.index >= 1 ? 'stall' : undefined);
    const path = join(tempDir(), 'o.sqlite');
    const first = new SqliteOutbox(path);
    const a = newClient(proxy.url, 'dev-o', { outbox: first, putTimeoutMs: 60_000 });
    const puts = [failure(a.put('k1', 1)), failure(a.put('k2', 2))];
    await waitUntil(() => a.stats.sent === 2);
    const report = await a.close({ timeoutMs: 200 });
    expect(report).toEqual({ drained: false, left: [{ stream: 'dev-o', epoch: 1, seq: 1, key: 'k1' }, { stream: 'dev-o', epoch: 1, seq: 2, key: 'k2' }] });
    for (const p of puts) {
      const err = await p;
      expect(err).toBeInstanceOf(ClientClosedError);
      expect(err.keptInOutbox).toBe(true);
    }
    first.close();

    const second = new SqliteOutbox(path);
    cleanups.push(() => second.close());
    const b = newClient(proxy.url, 'dev-o', { outbox: second });
    cleanups.push(() => b.close({ timeoutMs: 100 }));
    const recovered: PutSettlement[] = [];
    b.on('result', (s) => recovered.push(s));
    await waitUntil(() => recovered.length === 2);
    expect(recovered.map((s) => [s.recovered, s.put.seq, s.result?.replay])).toEqual([[true, 1, true], [true, 2, true]]);
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
    const all = readdirSync(clientDir, { recursive: true }).map(String).filter((f) => f.endsWith('.ts'));
    // Every source file but the Node entry is reachable from the browser entries.
    expect([...seen].sort()).toEqual(all.filter((f) => f !== 'node.ts').sort());
  });

  it('uses the server registry names for every code the server can send', () => {
    for (const code of ['SEQUENCE_REUSED', 'FENCED', 'STALE', 'EXPIRED', 'GAP', 'INVALID_FIELD', 'LIMIT_EXCEEDED', 'STORAGE_UNAVAILABLE', 'FORBIDDEN']) {
      expect(Object.keys(ERRORS)).toContain(code);
    }
  });
});
