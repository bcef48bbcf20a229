import WebSocket from 'ws';
import { mulberry32 } from '../test/support/random.js';
import { Histogram } from './lib/histogram.js';
import type { FromGenerator, GeneratorConfig, GeneratorResult, ToGenerator } from './lib/ipc.js';
import { clientUnpackr, helloFrame, KEYS_PER_STREAM, loadStreamName, makeState, PutEncoder, putFrame } from './lib/workload.js';

/**
 * Load generator, one process of its own (forked by bench/run.ts, talking over IPC). Each
 * connection owns one stream and sends puts in seq order after learning its head from a hello.
 *
 * closed mode: each connection keeps `window` frames in flight and sends the next as soon as one
 *   is fully answered; latency counts from the actual send. This finds peak throughput.
 * open mode: frames leave on a fixed schedule (rate split evenly over connections, phases
 *   staggered) whatever the answers do; latency counts from the scheduled time, so a stalled
 *   server shows up as latency instead of silently slowing the sender (no coordinated omission).
 *   A frame that finds the in-flight cap full waits, and its wait is part of its latency.
 * idle mode: connect, say hello, hold the connection until told to close.
 */

interface Frame {
  readonly ids: number[];
  readonly dup: boolean[];
  readonly bufs: Buffer[];
  /** Latency origin, performance.now() ms. */
  readonly t0: number;
  got: number;
}

interface Sent {
  readonly id: number;
  readonly buf: Buffer;
}

const RECENT = 64;

class Conn {
  readonly fifo: Array<Frame | undefined> = [];
  fifoHead = 0;
  nextSeq = 1;
  readonly recent: Sent[] = [];
  recentPos = 0;
  nextDue = 0;
  capped = false;
  closedByUs = false;
  private welcomeWaiter: ((seq: number) => void) | undefined;

  constructor(
    readonly ws: WebSocket,
    readonly stream: string,
    readonly encoder: PutEncoder | undefined,
  ) {}

  get inFlight(): number {
    return this.fifo.length - this.fifoHead;
  }

  front(): Frame | undefined {
    return this.fifo[this.fifoHead];
  }

  popFront(): void {
    this.fifo[this.fifoHead++] = undefined;
    if (this.fifoHead > 1024 && this.fifoHead * 2 > this.fifo.length) {
      this.fifo.splice(0, this.fifoHead);
      this.fifoHead = 0;
    }
  }

  remember(id: number, buf: Buffer): void {
    if (this.recent.length < RECENT) this.recent.push({ id, buf });
    else {
      this.recent[this.recentPos] = { id, buf };
      this.recentPos = (this.recentPos + 1) % RECENT;
    }
  }

  waitWelcome(timeoutMs: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no welcome')), timeoutMs);
      this.welcomeWaiter = (seq) => {
        clearTimeout(timer);
        resolve(seq);
      };
    });
  }

  welcomed(seq: number): void {
    const w = this.welcomeWaiter;
    this.welcomeWaiter = undefined;
    w?.(seq);
  }
}

let cfg: GeneratorConfig;
const conns: Conn[] = [];
const latency = new Histogram();
const sendLag = new Histogram();
const errorKinds: Record<string, number> = {};
let errors = 0;
let acked = 0;
let replays = 0;
let sent = 0;
let dupsSent = 0;
let capped = 0;
let unexpectedCloses = 0;
let nextId = 1;
let sending = false;
let closing = false;
let tWarm = Infinity;
let tMeasure = Infinity;
let tEnd = Infinity;
let measuredMs = 0;
let cpuAtMeasure: NodeJS.CpuUsage | undefined;
let cpuMs = 0;
let random = Math.random;
let frameIntervalMs = 0;
let connectMs = 0;

function send(message: FromGenerator): void {
  process.send?.(message);
}

function error(kind: string, count = 1): void {
  errors += count;
  errorKinds[kind] = (errorKinds[kind] ?? 0) + count;
}

function inWindow(t: number): boolean {
  return t >= tMeasure && t < tEnd;
}

function sendFrame(conn: Conn, t0: number): void {
  const n = cfg.putsPerFrame;
  const ids: number[] = [];
  const dup: boolean[] = [];
  const bufs: Buffer[] = [];
  const counted = inWindow(t0);
  for (let k = 0; k < n; k++) {
    if (cfg.dupShare > 0 && conn.recent.length > 0 && random() < cfg.dupShare) {
      const again = conn.recent[Math.floor(random() * conn.recent.length)]!;
      ids.push(again.id);
      bufs.push(again.buf);
      dup.push(true);
      if (counted) dupsSent++;
    } else {
      const id = nextId++;
      ids.push(id);
      bufs.push(conn.encoder!.encode(id, conn.nextSeq++));
      dup.push(false);
    }
  }
  if (counted) sent += n;
  conn.fifo.push({ ids, dup, bufs, t0, got: 0 });
  conn.ws.send(putFrame(bufs));
  if (cfg.mode === 'open') {
    const now = performance.now();
    if (counted) sendLag.record((now - t0) * 1000);
  }
}

function refill(conn: Conn): void {
  while (sending && conn.inFlight < cfg.window && conn.ws.readyState === WebSocket.OPEN) {
    sendFrame(conn, performance.now());
  }
}

/** Sends every frame whose time has come, as far as the in-flight cap allows. */
function pump(conn: Conn, now: number): void {
  for (let guard = 0; guard < 100_000 && sending && conn.nextDue <= now && conn.nextDue < tEnd; guard++) {
    if (conn.inFlight >= cfg.window || conn.ws.readyState !== WebSocket.OPEN) {
      if (!conn.capped) capped++;
      conn.capped = true;
      return;
    }
    conn.capped = false;
    sendFrame(conn, conn.nextDue);
    conn.nextDue += frameIntervalMs;
  }
}

function tick(): void {
  if (!sending) return;
  const now = performance.now();
  for (const conn of conns) pump(conn, now);
  setTimeout(tick, 1);
}

function onResult(conn: Conn, r: { id?: unknown; outcome?: unknown; replay?: unknown; error?: { code?: unknown } }, now: number): void {
  const f = conn.front();
  if (f === undefined) {
    error('result for no outstanding put');
    return;
  }
  const i = f.got++;
  if (r.id !== f.ids[i]) error('result id out of order');
  if (r.outcome === 'applied' || r.outcome === 'version_conflict') {
    if (inWindow(now)) {
      acked++;
      if (r.replay === true) replays++;
      latency.record((now - f.t0) * 1000);
    }
    if (f.dup[i]) {
      if (cfg.expectReplay && r.replay !== true) error('retry not answered as a replay');
    } else {
      if (r.replay === true) error('fresh put answered as a replay');
      // Kept only to resend as a retry: with no retries, holding 64 sent frames per connection
      // keeps every frame alive for seconds, and the generator's GC pauses then show as latency.
      if (cfg.dupShare > 0) conn.remember(f.ids[i]!, f.bufs[i]!);
    }
  } else {
    error(`outcome ${String(r.outcome)} ${String(r.error?.code ?? '')}`.trim());
  }
  if (f.got >= f.ids.length) conn.popFront();
}

function onMessage(conn: Conn, data: Buffer): void {
  const now = performance.now();
  let msg: { type?: unknown; results?: unknown; heads?: unknown; code?: unknown };
  try {
    msg = clientUnpackr.unpack(data) as typeof msg;
  } catch {
    error('undecodable server frame');
    return;
  }
  switch (msg.type) {
    case 'results':
      for (const r of msg.results as object[]) onResult(conn, r, now);
      break;
    case 'error': {
      const f = conn.front();
      const lost = f === undefined ? 1 : f.ids.length - f.got;
      error(`frame error ${String(msg.code)}`, lost);
      if (f !== undefined) conn.popFront();
      break;
    }
    case 'welcome': {
      const heads = msg.heads as Array<{ stream: string; epoch: number; seq: number }>;
      const h = heads.find((x) => x.stream === conn.stream);
      if (h !== undefined && h.epoch > 1) error('stream already at a later epoch');
      conn.welcomed(h?.seq ?? 0);
      return;
    }
    case 'pong':
      return;
    default:
      error(`unexpected message ${String(msg.type)}`);
      return;
  }
  if (!sending) return;
  if (cfg.mode === 'closed') refill(conn);
  else pump(conn, now);
}

async function connectOne(index: number, state: Buffer | undefined): Promise<Conn> {
  const stream = loadStreamName(cfg.connectionOffset + index);
  const ws = new WebSocket(cfg.url, 'seqgate.v1', { perMessageDeflate: false, handshakeTimeout: 15_000 });
  const encoder = state === undefined ? undefined : new PutEncoder(stream, 1, state, KEYS_PER_STREAM);
  const conn = new Conn(ws, stream, encoder);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  ws.on('error', () => undefined);
  ws.on('message', (data: Buffer) => onMessage(conn, data));
  ws.on('close', (code) => {
    if (!conn.closedByUs && !closing) {
      unexpectedCloses++;
      error(`connection closed by server (${code})`);
    }
  });
  const welcome = conn.waitWelcome(30_000);
  ws.send(helloFrame([stream]));
  conn.nextSeq = (await welcome) + 1;
  return conn;
}

async function connectAll(): Promise<{ failures: number; firstError?: string; ms: number }> {
  const started = performance.now();
  const state = cfg.mode === 'idle' ? undefined : makeState(cfg.stateBytes, 0);
  let next = 0;
  let failures = 0;
  let firstError: string | undefined;
  const worker = async (): Promise<void> => {
    while (next < cfg.connections) {
      const index = next++;
      try {
        conns.push(await connectOne(index, state));
      } catch (err) {
        failures++;
        firstError ??= (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(cfg.connectConcurrency, cfg.connections) }, worker));
  return { failures, ms: performance.now() - started, ...(firstError !== undefined ? { firstError } : {}) };
}

function begin(): void {
  sending = true;
  if (cfg.mode === 'closed') {
    for (const conn of conns) refill(conn);
  } else {
    const perConnRate = cfg.rate / conns.length;
    frameIntervalMs = (1000 * cfg.putsPerFrame) / perConnRate;
    conns.forEach((conn, i) => {
      conn.nextDue = tWarm + (frameIntervalMs * i) / conns.length;
    });
    tick();
  }
}

function unanswered(): number {
  let n = 0;
  for (const conn of conns) {
    for (let i = conn.fifoHead; i < conn.fifo.length; i++) {
      const f = conn.fifo[i];
      if (f !== undefined) n += f.ids.length - f.got;
    }
  }
  return n;
}

async function finish(): Promise<void> {
  // The 1 ms tick may not have fired for frames due just before the end of the window.
  if (cfg.mode === 'open') for (const conn of conns) pump(conn, tEnd);
  sending = false;
  const now = performance.now();
  measuredMs = now - tMeasure;
  if (cpuAtMeasure !== undefined) {
    const d = process.cpuUsage(cpuAtMeasure);
    cpuMs = (d.user + d.system) / 1000;
  }
  if (cfg.mode === 'open') {
    // Frames scheduled inside the window that never left: the target rate was not kept.
    let behind = 0;
    for (const conn of conns) {
      if (conn.nextDue < tEnd) behind += Math.floor((tEnd - conn.nextDue) / frameIntervalMs) + 1;
    }
    if (behind > 0) error('open loop: scheduled frames never sent (cap full)', behind);
  }
  const drainUntil = performance.now() + cfg.drainMs;
  while (unanswered() > 0 && performance.now() < drainUntil) await new Promise((r) => setTimeout(r, 20));
  const result: GeneratorResult = {
    connected: conns.length,
    connectFailures: cfg.connections - conns.length,
    connectMs,
    measuredMs,
    acked,
    replays,
    sent,
    dupsSent,
    errors,
    errorKinds,
    unanswered: unanswered(),
    latency: latency.toJSON(),
    sendLag: sendLag.toJSON(),
    capped,
    cpuMs,
    unexpectedCloses,
  };
  send({ type: 'result', result });
}

async function closeAll(): Promise<void> {
  closing = true;
  for (const conn of conns) {
    conn.closedByUs = true;
    conn.ws.close();
  }
  const deadline = performance.now() + 3000;
  while (conns.some((c) => c.ws.readyState !== WebSocket.CLOSED) && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  for (const conn of conns) conn.ws.terminate();
  process.exit(0);
}

process.on('uncaughtException', (err) => {
  send({ type: 'fatal', message: err.stack ?? err.message });
  process.exit(1);
});
process.on('disconnect', () => process.exit(2));

process.on('message', (raw: ToGenerator) => {
  switch (raw.type) {
    case 'config': {
      cfg = raw.config;
      random = mulberry32(cfg.seed);
      // Whatever happens, this process does not outlive its run by more than two minutes.
      setTimeout(() => process.exit(3), cfg.warmupMs + cfg.measureMs + cfg.drainMs + 180_000).unref();
      void connectAll().then(({ failures, firstError, ms }) => {
        connectMs = ms;
        send({ type: 'ready', connected: conns.length, failures, connectMs: ms, ...(firstError !== undefined ? { firstError } : {}) });
      });
      return;
    }
    case 'start': {
      const delay = raw.at - Date.now();
      tWarm = performance.now() + delay;
      tMeasure = tWarm + cfg.warmupMs;
      tEnd = tMeasure + cfg.measureMs;
      setTimeout(begin, Math.max(0, delay));
      setTimeout(
        () => {
          cpuAtMeasure = process.cpuUsage();
        },
        Math.max(0, tMeasure - performance.now()),
      );
      setTimeout(() => void finish(), Math.max(0, tEnd - performance.now()));
      return;
    }
    case 'close':
      void closeAll();
      return;
  }
});
