import { once } from 'node:events';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { Packr } from 'msgpackr';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { put, startTestServer, TestClient, type Msg, type TestServer } from './support/test-client.js';

/**
 * A client that sends flat out and never reads. Its socket is paused on the client side, so the
 * kernel stops draining it and the server's writes back to it pile up: the server must stop
 * reading from it, close it with 1008 after slowConsumerTimeoutMs, and keep serving everyone else.
 */

const MiB = 1024 * 1024;
const packr = new Packr({ useRecords: false });
const FLOW = { outboundHighWaterBytes: 16_384, connectionInFlightBytes: 65_536, slowConsumerTimeoutMs: 500 };
// Long ids make every result several KB, so unread results fill the socket buffers quickly.
const LONG_ID = 'i'.repeat(4000);

let t: TestServer | undefined;
const sockets: WebSocket[] = [];
afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  await t?.stop();
  t = undefined;
});

interface LogRecord {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** A pino logger whose records the test can read. */
function capturingLogger(): { logger: pino.Logger; records: LogRecord[] } {
  const records: LogRecord[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) records.push(JSON.parse(line) as LogRecord);
      callback();
    },
  });
  return { logger: pino({ level: 'warn' }, sink), records };
}

function committedSeq(dbPath: string, stream: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT seq FROM streams WHERE name = ?').get(stream) as { seq: number } | undefined;
    return row?.seq ?? 0;
  } finally {
    db.close();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate: () => boolean, what: string, timeoutMs = 15_000, pollMs = 5): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(pollMs);
  }
}

async function openRaw(url: string): Promise<WebSocket> {
  const ws = new WebSocket(url, 'seqgate.v1');
  sockets.push(ws);
  ws.on('error', () => undefined);
  await once(ws, 'open');
  return ws;
}

/** Sends puts on `stream` as fast as the client's own buffer allows until `stop()` or the socket closes. */
function flood(ws: WebSocket, stream: string, maxBuffered: number): { sent: () => number; stop: () => void; done: Promise<void> } {
  let seq = 0;
  let running = true;
  const done = (async () => {
    while (running && ws.readyState === WebSocket.OPEN) {
      while (ws.bufferedAmount < maxBuffered && ws.readyState === WebSocket.OPEN) {
        seq++;
        ws.send(packr.pack({ type: 'put', puts: [{ id: `${seq}-${LONG_ID}`, stream, epoch: 1, seq, key: `${stream}-doc`, state: { seq } }] }));
      }
      await sleep(2);
    }
  })();
  return {
    sent: () => seq,
    stop: () => {
      running = false;
    },
    done,
  };
}

describe('a client that never reads its results', () => {
  it('is read from no more, then closed with 1008, while another client is served and the heap stays bounded', async () => {
    const { logger, records } = capturingLogger();
    t = await startTestServer({ ...FLOW, maxIdBytes: 8192 }, { logger });
    const server = t;

    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    const heapSampler = setInterval(() => {
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    }, 10);

    const bad = await openRaw(server.url);
    const badClosed = new Promise<{ code: number; reason: string }>((resolve) => {
      bad.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    bad.pause();
    const f = flood(bad, 'flood', 16 * MiB);

    // The well-behaved client sends one put at a time, throughout, and times each answer.
    const good = await TestClient.connect(server.url);
    sockets.push(good.ws);
    let goodSeq = 0;
    let goodRunning = true;
    const latencies: number[] = [];
    const goodLoop = (async () => {
      while (goodRunning) {
        const p = put({ stream: 'good', seq: ++goodSeq, key: 'good-doc', state: { n: goodSeq } });
        const started = Date.now();
        good.send({ type: 'put', puts: [p] });
        await good.waitFor(() => good.results().some((r: Msg) => r.id === p.id), 2000);
        latencies.push(Date.now() - started);
        await sleep(10);
      }
    })();

    try {
      // The server decides to close only while it holds more unsent answers than the bound, and it
      // stops reading as soon as it crosses the bound: from here on, nothing more may be read.
      await until(() => records.some((r) => /slow consumer/i.test(r.msg)), 'the server closes the slow consumer');
      const committedAtDecision = committedSeq(server.dbPath, 'flood');
      await sleep(300);
      // The client still has megabytes of puts it cannot deliver, and none more was committed.
      expect(bad.bufferedAmount).toBeGreaterThan(1 * MiB);
      expect(committedSeq(server.dbPath, 'flood')).toBe(committedAtDecision);
      expect(committedAtDecision).toBeGreaterThan(0);
      expect(committedAtDecision).toBeLessThan(f.sent());

      // Read again, to see the close frame that waits behind the unread results.
      bad.resume();
      const closed = await badClosed;
      expect(closed).toEqual({ code: 1008, reason: 'SLOW_CONSUMER' });
      f.stop();
      await f.done;

      // The good client kept being answered through the flood and the close.
      const goodBefore = latencies.length;
      await until(() => latencies.length >= goodBefore + 5, 'the good client gets more answers');
    } finally {
      goodRunning = false;
      clearInterval(heapSampler);
    }
    await goodLoop;
    expect(latencies.length).toBeGreaterThanOrEqual(10);
    expect(Math.max(...latencies)).toBeLessThan(2000);
    expect(good.results().every((r: Msg) => r.outcome === 'applied')).toBe(true);
    expect(committedSeq(server.dbPath, 'good')).toBe(goodSeq);
    expect(heapPeak - heapBefore).toBeLessThan(100 * MiB);
    await until(() => server.server.connectionCount === 1, 'the server forgets the closed connection');
  });

  it('has no further frame processed once the server has decided to close it with 1008', async () => {
    const { logger, records } = capturingLogger();
    t = await startTestServer({ ...FLOW, maxIdBytes: 8192 }, { logger });
    const server = t;
    const bad = await openRaw(server.url);
    const badClosed = new Promise<number>((resolve) => bad.on('close', (code) => resolve(code)));
    bad.pause();
    const f = flood(bad, 'late', 16 * MiB);
    await until(() => records.some((r) => /slow consumer/i.test(r.msg)), 'the server closes the slow consumer');
    f.stop();
    await f.done;
    // Puts read before the close decision may still be committing.
    await sleep(200);
    const committedAtClose = committedSeq(server.dbPath, 'late');

    // The client turns out to be slow rather than dead: it reads again before the connection is
    // torn down. Its results drain, but the puts still queued behind them must not be read: the
    // server has sent its close frame and could never answer them.
    bad.resume();
    expect(await badClosed).toBe(1008);
    await sleep(300);
    expect(committedSeq(server.dbPath, 'late')).toBe(committedAtClose);
  });

  it('is not closed when it resumes reading within slowConsumerTimeoutMs, and every put is answered', async () => {
    const slowConsumerTimeoutMs = 4000;
    t = await startTestServer({ ...FLOW, slowConsumerTimeoutMs, maxIdBytes: 8192 });
    const server = t;
    const ws = await openRaw(server.url);
    const results: Msg[] = [];
    ws.on('message', (data: Buffer) => {
      const m = packr.unpack(data) as Msg;
      if (m.type === 'results') results.push(...m.results);
    });
    let closedCode: number | undefined;
    ws.on('close', (code) => {
      closedCode = code;
    });

    ws.pause();
    const pausedAt = Date.now();
    const f = flood(ws, 'burst', 8 * MiB);
    // Wait until the server has stopped reading: commits stop while the client still has puts queued.
    let last = -1;
    await until(
      () => {
        const now = committedSeq(server.dbPath, 'burst');
        const stable = now > 0 && now === last;
        last = now;
        return stable;
      },
      'the server stops reading',
      10_000,
      150,
    );
    f.stop();
    await f.done;
    const sent = f.sent();
    expect(last).toBeLessThan(sent);
    expect(Date.now() - pausedAt).toBeLessThan(slowConsumerTimeoutMs);
    ws.resume();

    await until(() => results.length >= sent, `all ${sent} puts are answered`, 60_000);
    expect(results).toHaveLength(sent);
    expect(results.every((r) => r.outcome === 'applied')).toBe(true);
    expect(results.map((r) => Number(String(r.id).split('-')[0]))).toEqual(Array.from({ length: sent }, (_, i) => i + 1));
    expect(committedSeq(server.dbPath, 'burst')).toBe(sent);
    // Past the time the slow-consumer timer would have fired had reading again not cancelled it.
    await sleep(slowConsumerTimeoutMs + 500);
    expect(closedCode).toBeUndefined();
    expect(ws.readyState).toBe(WebSocket.OPEN);
  });
});
