import { Packr } from 'msgpackr';
import WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { canonicalEncode } from '../src/protocol/canonical.js';
import { captureLogs } from './support/log-capture.js';
import { put, startTestServer, TestClient, type Msg, type TestServer } from './support/test-client.js';

/**
 * The changefeed on the WebSocket: subscribe, changes, resume after reconnect, read grants,
 * errors, and a subscriber that stops reading under the slow-consumer rule.
 */

const LIMITS = { maxBytes: 65536, maxDepth: 32, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };
let t: TestServer | undefined;
const clients: TestClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.ws.terminate();
  await t?.stop();
  t = undefined;
});

async function connect(format: 'msgpack' | 'json' = 'msgpack', token?: string): Promise<TestClient> {
  const c = await TestClient.connect(t!.url, format, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  clients.push(c);
  return c;
}

function changes(c: TestClient, id: unknown): Msg[] {
  return c.messages.filter((m) => m.type === 'changes' && m.id === id).flatMap((m) => m.changes);
}

/** Sends puts (`delete: true` puts carry no state) and waits until all are applied. */
async function write(c: TestClient, ...puts: Array<Record<string, unknown>>): Promise<void> {
  const before = c.results().length;
  c.send({
    type: 'put',
    puts: puts.map((p) => {
      const full = put(p);
      if (p.delete === true) delete full.state;
      return full;
    }),
  });
  const results = await c.waitResults(before + puts.length);
  expect(results.slice(before).map((r: Msg) => r.outcome)).toEqual(puts.map(() => 'applied'));
}

describe('subscribe', () => {
  it('sends past changes, then live ones, in offset order, and says when it is up to date', async () => {
    t = await startTestServer();
    const writer = await connect();
    await write(writer, { seq: 1, key: 'a/1', state: { n: 1 } }, { seq: 2, key: 'b/1', state: { n: 2 } });
    const reader = await connect('json');
    reader.send({ type: 'subscribe', id: 'feed', prefix: 'a/', from: '-1' });
    await reader.waitFor(() => reader.messages.some((m) => m.type === 'changes' && m.upToDate));
    expect(reader.messages[0]).toMatchObject({ type: 'subscribed', id: 'feed' });
    expect(changes(reader, 'feed').map((c) => [c.key, c.version, c.state, c.origin])).toEqual([['a/1', 1, { n: 1 }, { stream: 's', epoch: 1, seq: 1 }]]);
    await write(writer, { seq: 3, key: 'a/2', state: [1, 2] }, { seq: 4, key: 'a/1', delete: true });
    await reader.waitFor(() => changes(reader, 'feed').length === 3);
    const got = changes(reader, 'feed');
    expect(got.map((c) => [c.key, c.version, c.deleted, c.state])).toEqual([
      ['a/1', 1, false, { n: 1 }],
      ['a/2', 1, false, [1, 2]],
      ['a/1', 2, true, null],
    ]);
    const offsets = got.map((c) => c.offset);
    expect([...offsets].sort()).toEqual(offsets);
  });

  it('resumes after a reconnect from the saved offset with exactly the changes after it', async () => {
    t = await startTestServer();
    const writer = await connect();
    await write(writer, { seq: 1, key: 'k1' }, { seq: 2, key: 'k2' });
    const first = await connect();
    first.send({ type: 'subscribe', id: 1, from: '-1' });
    await first.waitFor(() => first.messages.some((m) => m.type === 'changes' && m.upToDate));
    const saved = first.messages.filter((m) => m.type === 'changes').at(-1).next as string;
    first.ws.terminate();
    await write(writer, { seq: 3, key: 'k3' }, { seq: 4, key: 'k1' });
    const second = await connect();
    second.send({ type: 'subscribe', id: 1, from: saved });
    await second.waitFor(() => changes(second, 1).length >= 2);
    await new Promise((r) => setTimeout(r, 50));
    expect(changes(second, 1).map((c) => [c.key, c.version])).toEqual([
      ['k3', 1],
      ['k1', 2],
    ]);
  });

  it('carries the canonical msgpack bytes as state under msgpack, and JSON under the JSON subprotocol', async () => {
    t = await startTestServer();
    const writer = await connect();
    await write(writer, { seq: 1, key: 'x', state: { b: 2, a: [1, 'z'] } });
    const mp = await connect('msgpack');
    mp.send({ type: 'subscribe', id: 's', from: '-1' });
    await mp.waitFor(() => changes(mp, 's').length === 1);
    expect(Buffer.from(changes(mp, 's')[0].state)).toEqual(canonicalEncode({ b: 2, a: [1, 'z'] }, LIMITS, 'state'));
  });

  it('narrows a subscription to the read grant, refuses a prefix outside it, and ends on unsubscribe', async () => {
    const tokens = JSON.stringify({
      tokens: [
        { token: 'writer-token-0123456789', tenant: 'acme' },
        { token: 'reader-token-0123456789', tenant: 'acme', read: { streams: [''], documents: ['a/', 'c/'] } },
      ],
    });
    t = await startTestServer({ tokens });
    const writer = await connect('msgpack', 'writer-token-0123456789');
    const reader = await connect('msgpack', 'reader-token-0123456789');
    reader.send({ type: 'subscribe', id: 'all', from: '-1' });
    reader.send({ type: 'subscribe', id: 'b', prefix: 'b/', from: '-1' });
    await reader.waitFor(() => reader.messages.some((m) => m.type === 'error' && m.id === 'b'));
    expect(reader.messages.find((m) => m.type === 'error')).toMatchObject({ code: 'FORBIDDEN', id: 'b', retryable: false });
    await write(writer, { seq: 1, key: 'a/1' }, { seq: 2, key: 'b/1' }, { seq: 3, key: 'c/1' });
    await reader.waitFor(() => changes(reader, 'all').length === 2);
    expect(changes(reader, 'all').map((c) => c.key)).toEqual(['a/1', 'c/1']);
    reader.send({ type: 'unsubscribe', id: 'all' });
    await reader.waitMessage('unsubscribed');
    await write(writer, { seq: 4, key: 'a/2' });
    await new Promise((r) => setTimeout(r, 100));
    expect(changes(reader, 'all').map((c) => c.key)).toEqual(['a/1', 'c/1']);
  });

  it('answers bad subscriptions with documented errors and keeps the connection', async () => {
    t = await startTestServer();
    const c = await connect('json');
    c.send({ type: 'subscribe', id: 1, from: 'banana' });
    c.send({ type: 'subscribe', id: 2, from: '0000000000000005_deadbeef' });
    c.send({ type: 'subscribe', id: 3, from: -1 });
    c.send({ type: 'subscribe', from: '-1' });
    c.send({ type: 'subscribe', id: 5, from: '-1', prefix: 5 });
    await c.waitFor(() => c.messages.filter((m) => m.type === 'error').length === 5);
    // Checking an offset against the log is asynchronous, so that answer may come last.
    const errors = c.messages.filter((m) => m.type === 'error');
    expect(errors.map((e) => [e.code, e.id ?? null, e.field ?? null]).sort()).toEqual([
      ['INVALID_MESSAGE', null, 'id'],
      ['INVALID_MESSAGE', 5, 'prefix'],
      ['INVALID_OFFSET', 1, 'from'],
      ['INVALID_OFFSET', 3, 'from'],
      ['OFFSET_UNKNOWN', 2, null],
    ]);
    c.send({ type: 'ping', nonce: 7 });
    expect(await c.waitMessage('pong')).toMatchObject({ nonce: 7 });
  });
});

describe('a subscriber that stops reading', () => {
  it('is closed with 1008 like any slow consumer, and the writer is unaffected', async () => {
    const { logger, messages: warnings } = captureLogs();
    t = await startTestServer({ outboundHighWaterBytes: 256 * 1024, slowConsumerTimeoutMs: 500 }, { logger });
    const writer = await connect();
    const big = 'x'.repeat(60_000);
    for (let i = 0; i < 20; i++) await write(writer, ...Array.from({ length: 10 }, (_, j) => ({ seq: i * 10 + j + 1, key: `k${j}`, state: big })));
    const ws = new WebSocket(t.url, 'seqgate.v1');
    await new Promise((resolve) => ws.once('open', resolve));
    const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
    ws.send(new Packr({ useRecords: false }).pack({ type: 'subscribe', id: 1, from: '-1' }));
    ws.pause();
    // Read again once the server has decided, to see the close frame behind the unread changes.
    const deadline = Date.now() + 10_000;
    while (!warnings.some((m) => /slow consumer/i.test(m)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    ws.resume();
    expect(await closed).toBe(1008);
    // The writer's connection is unaffected.
    await write(writer, { seq: 1000, key: 'after' });
  });

  it('with --changefeed false: writes still apply, subscribe is UNKNOWN_TYPE and /v1/changes 404 NOT_FOUND', async () => {
    t = await startTestServer({ changefeed: false });
    const c = await connect('json');
    await write(c, { seq: 1, key: 'a/1', state: { n: 1 } });
    c.send({ type: 'subscribe', id: 's', prefix: '', from: '-1' });
    await c.waitFor(() => c.messages.some((m) => m.type === 'error' && m.id === 's'));
    expect(c.messages.find((m) => m.type === 'error')).toMatchObject({ code: 'UNKNOWN_TYPE', id: 's' });
    const http = t.url.replace(/^ws:/, 'http:');
    for (const path of ['/v1/changes?offset=-1', '/v1/changes?offset=-1&live=sse', '/v1/changes/snapshot']) {
      const res = await fetch(`${http}${path}`);
      expect(res.status).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('NOT_FOUND');
    }
    // The write went to the document, not to any log.
    expect((await (await fetch(`${http}/v1/docs/a%2F1`)).json()) as unknown).toEqual({ n: 1 });
  });

  it('does not hold back a subscriber sent the same shared messages while it stops reading', async () => {
    const { logger, messages: warnings } = captureLogs();
    t = await startTestServer({ outboundHighWaterBytes: 256 * 1024, slowConsumerTimeoutMs: 4000 }, { logger });
    const writer = await connect();
    const big = 'x'.repeat(30_000);
    for (let i = 0; i < 20; i++) await write(writer, ...Array.from({ length: 10 }, (_, j) => ({ seq: i * 10 + j + 1, key: `k${j}`, state: big })));
    // Same prefix, same id, same format: both are sent the very same message bytes.
    const slow = new WebSocket(t.url, 'seqgate.v1');
    await new Promise((resolve) => slow.once('open', resolve));
    let slowClosedAt: number | undefined;
    const slowClosed = new Promise<number>((resolve) =>
      slow.once('close', (code) => {
        slowClosedAt = Date.now();
        resolve(code);
      }),
    );
    slow.send(new Packr({ useRecords: false }).pack({ type: 'subscribe', id: 1, from: '-1' }));
    slow.pause();
    const fast = await connect();
    fast.send({ type: 'subscribe', id: 1, prefix: '', from: '-1' });
    await fast.waitFor(() => changes(fast, 1).length === 200);
    await write(writer, { seq: 1000, key: 'live' });
    await fast.waitFor(() => changes(fast, 1).length === 201);
    const liveAt = Date.now();
    const offsets = changes(fast, 1).map((c) => c.offset as string);
    expect(offsets).toEqual([...offsets].sort());
    expect(new Set(offsets).size).toBe(201);
    expect(changes(fast, 1).at(-1)).toMatchObject({ key: 'live', version: 1 });
    // The slow one was still connected, paused, while the other read everything and a live change.
    expect(slowClosedAt).toBeUndefined();
    const deadline = Date.now() + 15_000;
    while (!warnings.some((m) => /slow consumer/i.test(m)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    slow.resume();
    expect(await slowClosed).toBe(1008);
    expect(slowClosedAt! >= liveAt).toBe(true);
  });
});
