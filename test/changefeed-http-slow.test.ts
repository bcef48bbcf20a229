import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { ChildServer, parseLines } from './support/child-server.js';
import { rssBytes, rssSampler } from './support/process-stats.js';
import { put, TestClient } from './support/test-client.js';

/**
 * Live HTTP readers of /v1/changes under the slow-consumer rule, against the real server as a
 * child process: readers on raw sockets that never read are cut off once their unsent bytes stay
 * over the outbound high-water mark, are logged and counted, and hold bounded server memory,
 * while a reader that reads gets every change.
 */

const HIGH_WATER = 256 * 1024;
const STUCK_READERS = 10;
const BATCHES = 50;
const PER_BATCH = 80;
const STATE_BYTES = 8_000;

let dir: string;
let server: ChildServer;
const sockets: Socket[] = [];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'seqgate-changes-slow-'));
  server = new ChildServer({
    dbPath: join(dir, 'seqgate.db'),
    args: ['--outbound-high-water-bytes', String(HIGH_WATER), '--slow-consumer-timeout-ms', '1000', '--changes-sse-max-ms', '120000'],
  });
  await server.start();
});

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await server.dispose();
  rmSync(dir, { recursive: true, force: true });
});

function httpRequest(path: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n`;
}

async function openSocket(): Promise<Socket> {
  const s = connect(server.port);
  sockets.push(s);
  await new Promise((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  return s;
}

/** Changes received by an SSE reader: every `event: data` holds a JSON array of changes. */
function countChanges(text: string): number {
  let n = 0;
  const events = text.split('\n\n');
  // The last piece may be an event still arriving.
  for (const event of events.slice(0, -1)) {
    const m = /^event: data\ndata: (.*)$/s.exec(event);
    if (m) n += (JSON.parse(m[1]!) as unknown[]).length;
  }
  return n;
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${server.url.replace(/^ws:/, 'http:')}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

it('closes live SSE readers that never read, with bounded memory, while a reader that reads gets every change', async () => {
  const pid = server.runs[0]!.pid;
  // Readers that never read: the request goes out, then nothing is read from the socket again.
  const stuck: Array<{ socket: Socket; ended: Promise<void>; bytes: () => number }> = [];
  for (let i = 0; i < STUCK_READERS; i++) {
    const socket = await openSocket();
    socket.pause();
    let bytes = 0;
    socket.on('data', (d: Buffer) => (bytes += d.length));
    const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.write(httpRequest('/v1/changes?offset=now&live=sse'));
    stuck.push({ socket, ended, bytes: () => bytes });
  }
  // A reader that reads everything, as it comes.
  const abort = new AbortController();
  const res = await fetch(`${server.url.replace(/^ws:/, 'http:')}/v1/changes?offset=now&live=sse`, { signal: abort.signal });
  expect(res.status).toBe(200);
  let received = '';
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of res.body!) received += decoder.decode(chunk as Uint8Array, { stream: true });
  })().catch(() => undefined);
  await new Promise((r) => setTimeout(r, 300));

  const baseline = rssBytes(pid);
  const sampler = rssSampler(pid);
  const writer = await TestClient.connect(server.url);
  const big = 'x'.repeat(STATE_BYTES);
  let seq = 0;
  for (let b = 0; b < BATCHES; b++) {
    const before = writer.results().length;
    writer.send({ type: 'put', puts: Array.from({ length: PER_BATCH }, () => put({ seq: ++seq, key: `k/${seq % 50}`, state: big })) });
    await writer.waitResults(before + PER_BATCH);
  }
  writer.ws.terminate();
  const total = BATCHES * PER_BATCH;
  const deadline = Date.now() + 60_000;
  while (countChanges(received) < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(countChanges(received)).toBe(total);

  // Every stuck reader was cut off by the rule: logged, counted, and its response closed.
  while ((await metric('seqgate_slow_consumers_total{transport="http"}')) < STUCK_READERS && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  sampler.stop();
  expect(await metric('seqgate_slow_consumers_total{transport="http"}')).toBe(STUCK_READERS);
  expect(parseLines(server.runs[0]!.stdout).filter((l) => l.msg === 'closing slow changefeed reader')).toHaveLength(STUCK_READERS);
  for (const s of stuck) s.socket.resume();
  await Promise.all(stuck.map((s) => s.ended));
  // What they got before the end is what the kernel held: far from all of it (~total × STATE_BYTES).
  for (const s of stuck) expect(s.bytes()).toBeLessThan((total * STATE_BYTES) / 2);

  // Unbounded, each stuck reader would hold all it was sent that the kernel could not take: with
  // the mark at 1 GB this run's growth was 444 MB (of 10 × 32 MB sent). Bounded, each holds about
  // one mark plus the page being written, and the peak is the writes' and reads' own churn: 114 MB,
  // the same with 16 MB sent. The limit sits between, at 60 % of what was sent to stuck readers.
  const growth = sampler.peak() - baseline;
  expect(growth).toBeLessThan(STUCK_READERS * total * STATE_BYTES * 0.6);

  // The reader that reads is still served after all that.
  const after = countChanges(received);
  const w2 = await TestClient.connect(server.url);
  w2.send({ type: 'put', puts: [put({ seq: ++seq, key: 'k/last', state: 'last' })] });
  await w2.waitResults(1);
  w2.ws.terminate();
  while (countChanges(received) === after && Date.now() < deadline + 10_000) await new Promise((r) => setTimeout(r, 50));
  expect(countChanges(received)).toBe(after + 1);
  abort.abort();
  await reading;
  console.log(
    `stuck readers: server RSS peak growth ${(growth / 1048576).toFixed(1)} MiB; bytes each got before the end: ${stuck.map((s) => s.bytes()).join(', ')}`,
  );
}, 120_000);
