import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DurableStreamError, FetchError, stream, type JsonBatch } from '@durable-streams/client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChildServer } from './support/child-server.js';
import { type JsonChange } from './support/json-change.js';

/**
 * GET /v1/changes read by the Durable Streams reference client (@durable-streams/client), against
 * the real server as a child process: catch-up, live tailing by long-poll and SSE across a
 * restart, resume from a saved offset, grants, and the documented errors.
 */

const READER_A = 'reader-a-token-0123456789';
const ADMIN = 'admin-token-0123456789abc';
const TOKENS = JSON.stringify({
  tokens: [
    { token: ADMIN, tenant: 'acme' },
    { token: READER_A, tenant: 'acme', read: { streams: [''], documents: ['a/'] }, write: { streams: [], documents: [] } },
  ],
});

let dir: string;
let server: ChildServer;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'seqgate-changes-http-'));
  server = new ChildServer({
    dbPath: join(dir, 'seqgate.db'),
    args: ['--changes-long-poll-ms', '1000', '--changes-sse-max-ms', '3000', '--changes-poll-interval-ms', '50'],
    env: { SEQGATE_TOKENS: TOKENS },
  });
  await server.start();
});

afterEach(async () => {
  await server.dispose();
  rmSync(dir, { recursive: true, force: true });
});

function http(): string {
  return server.url.replace(/^ws:/, 'http:');
}

function auth(token = ADMIN): Record<string, string> {
  return { Authorization: `Bearer ${token}` };
}

let seq = 0;
async function putDoc(key: string, state: unknown, streamName = 'dev-1'): Promise<number> {
  const res = await fetch(`${http()}/v1/streams/${streamName}/puts`, {
    method: 'POST',
    headers: { ...auth(), 'content-type': 'application/json' },
    body: JSON.stringify({ epoch: 1, seq: ++seq, key, state }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { ack: { version: number } }).ack.version;
}

async function raw(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${http()}${path}`, { ...init, headers: { ...auth(), ...(init.headers as Record<string, string>) } });
}

/** Collects a live session's items until `count` arrived (or fails after the timeout). */
function collect(res: Awaited<ReturnType<typeof stream<JsonChange>>>): {
  items: JsonChange[];
  batches: Array<JsonBatch<JsonChange>>;
  until(n: number, ms?: number): Promise<void>;
} {
  const items: JsonChange[] = [];
  const batches: Array<JsonBatch<JsonChange>> = [];
  let waiters: Array<() => void> = [];
  res.subscribeJson((batch) => {
    batches.push(batch);
    items.push(...batch.items);
    for (const w of waiters.splice(0)) w();
  });
  return {
    items,
    batches,
    async until(n, ms = 15_000) {
      const deadline = Date.now() + ms;
      while (items.length < n) {
        if (Date.now() > deadline) throw new Error(`timed out with ${items.length}/${n} items: ${JSON.stringify(items.map((i) => i.key))}`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 100);
          waiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
      waiters = [];
    },
  };
}

function expectInOrder(items: JsonChange[]): void {
  const offsets = items.map((i) => i.offset);
  expect([...offsets].sort()).toEqual(offsets);
  expect(new Set(offsets).size).toBe(offsets.length);
  for (const o of offsets) expect(o).toMatch(/^\d{16}_[0-9a-f]{8}$/);
}

describe('GET /v1/changes with @durable-streams/client', () => {
  it('catches up from the start in JSON mode: every change once, in offset order, with state and origin', async () => {
    await putDoc('a/1', { n: 1 });
    await putDoc('b/1', { n: 2 });
    await putDoc('a/1', { n: 3 });
    const res = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: '-1', live: false, headers: auth() });
    const items = await res.json();
    expect(items.map((i) => [i.key, i.version, i.state])).toEqual([
      ['a/1', 1, { n: 1 }],
      ['b/1', 1, { n: 2 }],
      ['a/1', 2, { n: 3 }],
    ]);
    expect(items[0]!.origin).toEqual({ stream: 'dev-1', epoch: 1, seq: 1 });
    expectInOrder(items);
    expect(res.offset).toBe(items[2]!.offset);
    expect(res.upToDate).toBe(true);
  });

  it('resumes from a saved offset with exactly the changes after it', async () => {
    await putDoc('a/1', 1);
    await putDoc('a/2', 2);
    const first = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: '-1', live: false, headers: auth() });
    expect(await first.json()).toHaveLength(2);
    const saved = first.offset;
    await putDoc('a/3', 3);
    await putDoc('a/1', 4);
    const resumed = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: saved, live: false, headers: auth() });
    expect((await resumed.json()).map((i) => [i.key, i.state])).toEqual([
      ['a/3', 3],
      ['a/1', 4],
    ]);
    // At the tail: an empty page that keeps the offset.
    const tail = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: resumed.offset, live: false, headers: auth() });
    expect(await tail.json()).toEqual([]);
    expect(tail.offset).toBe(resumed.offset);
  });

  // The SSE reader of @durable-streams/client 0.2.7 reconnects when a stream ends, but gives up on
  // a connection reset (a kill -9 of the server) with "terminated": SSE is restarted gracefully
  // (SIGTERM ends every SSE response cleanly), long-poll is killed.
  for (const [live, signal] of [
    ['long-poll', 'SIGKILL'],
    ['sse', 'SIGTERM'],
  ] as const) {
    it(`tails live (${live}) across a server restart (${signal}) without gaps or repeats`, async () => {
      await putDoc('a/0', 0);
      const res = await stream<JsonChange>({
        url: `${http()}/v1/changes`,
        offset: '-1',
        live,
        headers: auth(),
        backoffOptions: { initialDelay: 50, maxDelay: 300, multiplier: 1.5 },
      });
      const got = collect(res);
      await got.until(1);
      await putDoc('a/1', 1);
      await putDoc('a/2', 2);
      await got.until(3);
      await server.kill(signal);
      await server.restart();
      await putDoc('a/3', 3);
      await putDoc('a/4', 4);
      await got.until(5);
      res.cancel();
      expect(got.items.map((i) => i.key)).toEqual(['a/0', 'a/1', 'a/2', 'a/3', 'a/4']);
      expectInOrder(got.items);
    });
  }

  it('shows a token only the documents its read grant covers, and refuses a prefix outside it', async () => {
    await putDoc('a/1', 1);
    await putDoc('b/1', 2);
    await putDoc('a/2', 3);
    const res = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: '-1', live: false, headers: auth(READER_A) });
    expect((await res.json()).map((i) => i.key)).toEqual(['a/1', 'a/2']);
    const narrowed = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: '-1', live: false, headers: auth(READER_A), params: { prefix: 'a/2' } });
    expect((await narrowed.json()).map((i) => i.key)).toEqual(['a/2']);
    await expect(stream({ url: `${http()}/v1/changes`, offset: '-1', live: false, headers: auth(READER_A), params: { prefix: 'b/' } })).rejects.toSatisfy(
      (e: unknown) => (e instanceof FetchError || e instanceof DurableStreamError) && (e as { status?: number }).status === 403,
    );
    expect((await fetch(`${http()}/v1/changes`)).status).toBe(401);
  });
});

describe('GET /v1/changes: headers and errors', () => {
  it('sends the protocol headers, answers 304 to a matching If-None-Match, and HEAD gives the tail', async () => {
    await putDoc('a/1', 1);
    const res = await raw('/v1/changes?offset=-1');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(res.headers.get('stream-up-to-date')).toBe('true');
    const next = res.headers.get('stream-next-offset')!;
    expect(next).toMatch(/^0000000000000001_[0-9a-f]{8}$/);
    const etag = res.headers.get('etag')!;
    expect((await raw('/v1/changes?offset=-1', { headers: { 'if-none-match': etag } })).status).toBe(304);
    const head = await raw('/v1/changes', { method: 'HEAD' });
    expect(head.headers.get('stream-next-offset')).toBe(next);
    const now = await raw('/v1/changes?offset=now');
    expect(await now.json()).toEqual([]);
    expect(now.headers.get('stream-next-offset')).toBe(next);
  });

  it('answers an empty long-poll with 204, the offset and a cursor that moves forward when echoed', async () => {
    const first = await raw('/v1/changes?offset=now&live=long-poll');
    expect(first.status).toBe(204);
    expect(first.headers.get('stream-up-to-date')).toBe('true');
    const cursor = first.headers.get('stream-cursor')!;
    expect(cursor).toMatch(/^\d+$/);
    const second = await raw(`/v1/changes?offset=now&live=long-poll&cursor=${cursor}`);
    expect(Number(second.headers.get('stream-cursor'))).toBeGreaterThan(Number(cursor));
  });

  it('wakes a waiting long-poll as soon as a matching change commits', async () => {
    const tail = (await raw('/v1/changes?offset=now')).headers.get('stream-next-offset')!;
    const waiting = raw(`/v1/changes?offset=${tail}&live=long-poll&prefix=a/`);
    await new Promise((r) => setTimeout(r, 100));
    await putDoc('b/1', 1); // outside the prefix: the poll keeps waiting
    await putDoc('a/7', 7);
    const res = await waiting;
    expect(res.status).toBe(200);
    expect(((await res.json()) as JsonChange[]).map((c) => c.key)).toEqual(['a/7']);
  });

  it('refuses malformed and foreign offsets with documented codes', async () => {
    await putDoc('a/1', 1);
    const bad = await raw('/v1/changes?offset=banana');
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe('INVALID_OFFSET');
    const foreign = await raw('/v1/changes?offset=0000000000000001_deadbeef');
    expect(foreign.status).toBe(410);
    expect(((await foreign.json()) as { error: { code: string } }).error.code).toBe('OFFSET_UNKNOWN');
    const own = (await raw('/v1/changes?offset=now')).headers.get('stream-next-offset')!;
    const beyond = await raw(`/v1/changes?offset=${own.replace(/^\d{16}/, '0000000000000099')}`);
    expect(((await beyond.json()) as { error: { code: string } }).error.code).toBe('OFFSET_UNKNOWN');
    const live = await raw('/v1/changes?live=forever');
    expect(live.status).toBe(400);
  });
});

describe('retention and snapshot restart', () => {
  it('tells a reader behind the retained log 410 OFFSET_EXPIRED, and a snapshot plus its offset continues it consistently', async () => {
    await server.kill('SIGTERM');
    server = new ChildServer({
      dbPath: join(dir, 'seqgate.db'),
      args: ['--changes-max-per-tenant', '2', '--prune-interval-ms', '50'],
      env: { SEQGATE_TOKENS: TOKENS },
    });
    await server.start();
    const start = (await raw('/v1/changes?offset=now')).headers.get('stream-next-offset')!;
    for (let i = 0; i < 5; i++) await putDoc(`a/${i % 3}`, i);
    // The retention pass runs every 50 ms: wait for it to cut the log to 2 changes.
    let res: Response;
    for (let tries = 0; ; tries++) {
      res = await raw(`/v1/changes?offset=${start}`);
      if (res.status === 410 || tries > 100) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(res.status).toBe(410);
    const body = (await res.json()) as { error: { code: string; earliest: string } };
    expect(body.error.code).toBe('OFFSET_EXPIRED');
    expect(body.error.earliest).toMatch(/^\d{16}_[0-9a-f]{8}$/);

    const snap = (await (await raw('/v1/changes/snapshot?prefix=a/')).json()) as {
      offset: string;
      documents: Array<{ key: string; version: number; state: unknown }>;
      nextKey: string | null;
    };
    expect(snap.documents.map((d) => [d.key, d.version, d.state])).toEqual([
      ['a/0', 2, 3],
      ['a/1', 2, 4],
      ['a/2', 1, 2],
    ]);
    expect(snap.nextKey).toBeNull();
    await putDoc('a/2', 9);
    const after = await stream<JsonChange>({ url: `${http()}/v1/changes`, offset: snap.offset, live: false, headers: auth() });
    expect((await after.json()).map((c) => [c.key, c.version, c.state])).toEqual([['a/2', 2, 9]]);
  });
});
