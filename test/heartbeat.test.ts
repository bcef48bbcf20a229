import { once } from 'node:events';
import { Writable } from 'node:stream';
import { Packr } from 'msgpackr';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { SqliteStore } from '../src/store/sqlite-store.js';
import type { Store } from '../src/store/store.js';
import { put, startTestServer, TestClient, type Format, type Msg, type TestServer } from './support/test-client.js';

/**
 * Liveness: the server's ping sweep drops connections that stop answering, keeps the ones that
 * answer, and the protocol's own ping is answered at once, ahead of results still being committed.
 */

const HEARTBEAT_MS = 100;
const packr = new Packr({ useRecords: false });

let t: TestServer | undefined;
const sockets: WebSocket[] = [];
const releases: Array<() => void> = [];
afterEach(async () => {
  // A held store would keep shutdown waiting for its commit.
  for (const release of releases.splice(0)) release();
  for (const ws of sockets.splice(0)) ws.terminate();
  await t?.stop();
  t = undefined;
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(5);
  }
}

async function connectTestClient(url: string, format: Format = 'msgpack'): Promise<TestClient> {
  const c = await TestClient.connect(url, format);
  sockets.push(c.ws);
  return c;
}

/** A raw client that receives pings but never answers them. */
async function connectSilent(url: string): Promise<{ ws: WebSocket; pings: () => number; closed: Promise<number>; openedAt: number }> {
  const ws = new WebSocket(url, 'seqgate.v1', { autoPong: false });
  sockets.push(ws);
  let pings = 0;
  ws.on('ping', () => {
    pings++;
  });
  ws.on('error', () => undefined);
  const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
  await once(ws, 'open');
  return { ws, pings: () => pings, closed, openedAt: Date.now() };
}

/** A SQLite store whose commits can be held back, to keep results pending for as long as a test needs. */
function holdableStore(): { store: Store; hold: () => void; release: () => void } {
  const inner = new SqliteStore({ path: ':memory:', synchronous: 'normal', contiguous: false, ackCapPerStream: 1000 });
  let gate: Promise<void> | undefined;
  let open: (() => void) | undefined;
  const store = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'apply') {
        return async (batch: Parameters<Store['apply']>[0]) => {
          if (gate !== undefined) await gate;
          return target.apply(batch as never);
        };
      }
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as unknown as Store;
  const release = (): void => {
    gate = undefined;
    open?.();
  };
  releases.push(release);
  return {
    store,
    hold: () => {
      gate = new Promise((resolve) => {
        open = resolve;
      });
    },
    release,
  };
}

describe('heartbeat sweep', () => {
  it('drops a client that does not answer pings within a few sweeps, and keeps one that does', async () => {
    t = await startTestServer({ heartbeatIntervalMs: HEARTBEAT_MS });
    const server = t;
    const normal = await connectTestClient(server.url);
    const silent = await connectSilent(server.url);
    await until(() => server.server.connectionCount === 2, 'both connections are registered');

    const code = await Promise.race([silent.closed, sleep(3000).then(() => 'still open')]);
    const lifetime = Date.now() - silent.openedAt;
    expect(code).toBe(1006);
    // It was pinged and given a sweep to answer before being dropped.
    expect(silent.pings()).toBeGreaterThanOrEqual(1);
    expect(lifetime).toBeGreaterThanOrEqual(HEARTBEAT_MS / 2);
    await until(() => server.server.connectionCount === 1, 'the server forgets the dropped connection');

    // Ten more sweeps: the client that answers pings is still there and still served.
    await sleep(10 * HEARTBEAT_MS);
    expect(normal.ws.readyState).toBe(WebSocket.OPEN);
    expect(server.server.connectionCount).toBe(1);
    const p = put({ stream: 'alive', seq: 1 });
    normal.send({ type: 'put', puts: [p] });
    const [r] = await normal.waitResults(1);
    expect(r).toMatchObject({ id: p.id, outcome: 'applied' });
  });

  it('drops several silent clients and none of the answering ones', async () => {
    t = await startTestServer({ heartbeatIntervalMs: HEARTBEAT_MS });
    const server = t;
    const normals = await Promise.all([1, 2, 3].map(() => connectTestClient(server.url)));
    const silents = await Promise.all([1, 2, 3].map(() => connectSilent(server.url)));
    await until(() => server.server.connectionCount === 6, 'all connections are registered');
    const codes = await Promise.all(silents.map((s) => s.closed));
    expect(codes).toEqual([1006, 1006, 1006]);
    await until(() => server.server.connectionCount === 3, 'the server forgets the dropped connections');
    await sleep(5 * HEARTBEAT_MS);
    expect(normals.map((n) => n.ws.readyState)).toEqual([WebSocket.OPEN, WebSocket.OPEN, WebSocket.OPEN]);
  });

  it('counts any frame as a sign of life, so a client that keeps talking is kept without pongs', async () => {
    t = await startTestServer({ heartbeatIntervalMs: HEARTBEAT_MS });
    const server = t;
    const chatty = await connectSilent(server.url);
    let nonce = 0;
    const pongs: unknown[] = [];
    chatty.ws.on('message', (data: Buffer) => pongs.push(data));
    const talker = setInterval(() => {
      chatty.ws.send(packr.pack({ type: 'ping', nonce: ++nonce }));
    }, HEARTBEAT_MS / 4);
    try {
      await sleep(10 * HEARTBEAT_MS);
      expect(chatty.ws.readyState).toBe(WebSocket.OPEN);
      expect(chatty.pings()).toBeGreaterThanOrEqual(3);
      expect(pongs.length).toBeGreaterThan(0);
    } finally {
      clearInterval(talker);
    }
    // Once it falls silent it is dropped like any other.
    expect(await Promise.race([chatty.closed, sleep(3000).then(() => 'still open')])).toBe(1006);
  });
});

describe('heartbeat sweep and backpressure', () => {
  it('leaves a connection paused by backpressure to the slow-consumer rule instead of dropping it', async () => {
    const warnings: string[] = [];
    const logger = pino(
      { level: 'warn' },
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          for (const line of chunk.toString('utf8').split('\n')) if (line) warnings.push((JSON.parse(line) as { msg: string }).msg);
          callback();
        },
      }),
    );
    t = await startTestServer(
      {
        heartbeatIntervalMs: HEARTBEAT_MS,
        outboundHighWaterBytes: 16_384,
        connectionInFlightBytes: 65_536,
        slowConsumerTimeoutMs: 10 * HEARTBEAT_MS,
        maxIdBytes: 8192,
      },
      { logger },
    );
    // Never reads, so never answers a ping either; it only sends.
    const ws = new WebSocket(t.url, 'seqgate.v1');
    sockets.push(ws);
    ws.on('error', () => undefined);
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    await once(ws, 'open');
    ws.pause();
    const id = 'i'.repeat(4000);
    let seq = 0;
    let sending = true;
    const sender = (async () => {
      while (sending && ws.readyState === WebSocket.OPEN) {
        while (ws.bufferedAmount < 8 * 1024 * 1024) {
          seq++;
          ws.send(packr.pack({ type: 'put', puts: [{ id: `${seq}-${id}`, stream: 'paused', epoch: 1, seq, key: 'd', state: { seq } }] }));
        }
        await sleep(2);
      }
    })();
    try {
      // Silent for many sweeps once the server stops reading from it, yet not dropped: the
      // slow-consumer rule closes it, with 1008 rather than the heartbeat's 1006.
      await until(() => warnings.some((m) => /slow consumer/i.test(m)), 'the server closes the slow consumer', 15_000);
      expect(ws.readyState).toBe(WebSocket.OPEN);
      ws.resume();
      expect(await closed).toBe(1008);
    } finally {
      sending = false;
      await sender;
    }
  });
});

describe('protocol ping', () => {
  for (const format of ['msgpack', 'json'] as const) {
    it(`over ${format}: is answered with a pong carrying the nonce while earlier puts are still committing`, async () => {
      const { store, hold, release } = holdableStore();
      t = await startTestServer({ heartbeatIntervalMs: 30_000 }, { store });
      const c = await connectTestClient(t.url, format);
      hold();
      const p1 = put({ stream: 'pending', seq: 1 });
      const p2 = put({ stream: 'pending', seq: 2 });
      c.send({ type: 'put', puts: [p1] });
      c.send({ type: 'put', puts: [p2] });
      c.send({ type: 'ping', nonce: 'n-1' });
      const pong = await c.waitMessage('pong');
      expect(pong).toEqual({ type: 'pong', nonce: 'n-1' });
      expect(c.results()).toEqual([]);

      // A second ping, still ahead of the held results.
      c.send({ type: 'ping', nonce: 42 });
      await c.waitFor(() => c.messages.filter((m: Msg) => m.type === 'pong').length >= 2);
      expect(c.messages.map((m: Msg) => m.type)).toEqual(['pong', 'pong']);
      expect(c.messages[1]).toEqual({ type: 'pong', nonce: 42 });

      release();
      const results = await c.waitResults(2);
      expect(results.map((r: Msg) => [r.id, r.outcome])).toEqual([
        [p1.id, 'applied'],
        [p2.id, 'applied'],
      ]);
    });

    it(`over ${format}: echoes nonces of any type, and null when there is none`, async () => {
      t = await startTestServer();
      const c = await connectTestClient(t.url, format);
      const nonces: unknown[] = [0, -1, 1.5, 'x'.repeat(300), true, [1, 'two'], { a: { b: [null] } }];
      for (const nonce of nonces) c.send({ type: 'ping', nonce });
      c.send({ type: 'ping' });
      await c.waitFor(() => c.messages.length >= nonces.length + 1);
      const echoed = c.messages.map((m: Msg) => {
        expect(m.type).toBe('pong');
        return m.nonce instanceof Map ? Object.fromEntries(m.nonce) : m.nonce;
      });
      expect(echoed).toEqual([...nonces, null]);
    });
  }

  it('keeps a client whose puts are held longer than two sweeps, as long as it answers pings', async () => {
    const { store, hold, release } = holdableStore();
    t = await startTestServer({ heartbeatIntervalMs: HEARTBEAT_MS }, { store });
    const c = await connectTestClient(t.url);
    hold();
    const p = put({ stream: 'slow-commit', seq: 1 });
    c.send({ type: 'put', puts: [p] });
    await sleep(6 * HEARTBEAT_MS);
    expect(c.ws.readyState).toBe(WebSocket.OPEN);
    release();
    const [r] = await c.waitResults(1);
    expect(r).toMatchObject({ id: p.id, outcome: 'applied' });
  });
});
