import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { withDb } from '../support/db-checker.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startTestServer, type TestServer } from '../support/test-client.js';

/**
 * The device is a real process (examples/device-simulator.ts, compiled on the fly) writing through
 * the SQLite outbox. It is killed with SIGKILL twice while readings are in flight, and restarted on
 * the same outbox file each time.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TSC = join(ROOT, 'node_modules/.bin/tsc');
const BUILD_CONFIG = join(ROOT, 'test/client/fixtures/tsconfig.device.json');
// Compiled per run into its own folder under node_modules (so that `ws` and `msgpackr` resolve),
// so that parallel runs never load each other's half-written files.
let build = '';
const device = (): string => join(build, 'examples/device-simulator.js');

const COUNT = 600;
const KEYS = 5;
const STREAM = 'crash-dev';

interface Line {
  event: string;
  [field: string]: unknown;
}

class Device {
  readonly lines: Line[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;
  private stderr = '';
  private waiters: Array<() => void> = [];

  constructor(url: string, outbox: string) {
    this.child = spawn(
      process.execPath,
      [device(), '--url', url, '--stream', STREAM, '--count', String(COUNT), '--rate', '300', '--keys', String(KEYS), '--outbox', outbox, '--output', 'json'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let buf = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      let nl;
      while ((nl = buf.indexOf('\n')) !== -1) {
        this.lines.push(JSON.parse(buf.slice(0, nl)) as Line);
        buf = buf.slice(nl + 1);
        for (const w of this.waiters.splice(0)) w();
      }
    });
    this.child.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString('utf8');
    });
    this.exited = new Promise((resolve) =>
      this.child.on('exit', (code, signal) => {
        resolve({ code, signal });
        for (const w of this.waiters.splice(0)) w();
      }),
    );
  }

  async waitFor(predicate: (line: Line) => boolean, timeoutMs = 20_000): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.lines.find(predicate);
      if (found !== undefined) return found;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`device exited before the expected line; stderr: ${this.stderr}; lines: ${JSON.stringify(this.lines.slice(-5))}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; last lines: ${JSON.stringify(this.lines.slice(-5))}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  kill(): void {
    this.child.kill('SIGKILL');
  }

  get errors(): string {
    return this.stderr;
  }
}

let t: TestServer;
let proxy: FaultProxy;
let dir: string;
beforeAll(async () => {
  mkdirSync(join(ROOT, 'node_modules/.cache'), { recursive: true });
  build = mkdtempSync(join(ROOT, 'node_modules/.cache/seqgate-device-'));
  execFileSync(TSC, ['-p', BUILD_CONFIG, '--outDir', build], { stdio: 'inherit' });
  t = await startTestServer({ ackCapPerStream: 10_000 });
  // Delay keeps a few dozen readings unanswered at any moment, so each kill leaves some behind.
  proxy = await FaultProxy.start(t.url, { delayMs: { min: 10, max: 30 } });
  dir = mkdtempSync(join(tmpdir(), 'seqgate-device-'));
});
afterAll(async () => {
  await proxy?.close();
  await t?.stop();
  rmSync(dir, { recursive: true, force: true });
  if (build !== '') rmSync(build, { recursive: true, force: true });
});

it('a device killed with SIGKILL mid-stream and restarted on its SQLite outbox finishes without loss or duplicates', async () => {
  const outbox = join(dir, 'device-outbox.sqlite');
  const readies: Line[] = [];

  let checkpoint = 0;
  for (let run = 1; run <= 2; run++) {
    const d = new Device(proxy.url, outbox);
    readies.push(await d.waitFor((l) => l.event === 'ready'));
    await d.waitFor((l) => l.event === 'progress' && (l.reading as number) >= checkpoint + 150);
    d.kill();
    expect(await d.exited).toEqual({ code: null, signal: 'SIGKILL' });
    checkpoint = d.lines.filter((l) => l.event === 'progress').at(-1)!.reading as number;
  }

  const last = new Device(proxy.url, outbox);
  readies.push(await last.waitFor((l) => l.event === 'ready'));
  const exit = await last.exited;
  expect(exit, last.errors).toEqual({ code: 0, signal: null });
  const done = last.lines.find((l) => l.event === 'done')!;
  expect(done).toMatchObject({ lastReading: COUNT, rejected: 0, drained: true, left: 0 });

  // Each restart resumed after the checkpoint it had recorded, with readings left unanswered.
  expect(readies[0]).toMatchObject({ checkpoint: 0, unanswered: 0 });
  for (const r of readies.slice(1)) {
    expect(r.checkpoint as number).toBeGreaterThan(0);
    expect(r.unanswered as number).toBeGreaterThan(0);
  }
  expect(readies[2]!.checkpoint as number).toBeGreaterThan(readies[1]!.checkpoint as number);

  withDb(t.dbPath, (db) => {
    // One epoch throughout (the outbox kept its counter), reading i at seq i, each exactly once.
    expect(db.head(STREAM)).toMatchObject({ epoch: 1, seq: COUNT });
    expect(db.countAcks(STREAM)).toBe(COUNT);
    for (let i = 1; i <= COUNT; i++) expect(db.ack(STREAM, 1, i)?.key).toBe(`${STREAM}/sensor-${i % KEYS}`);
    for (let k = 0; k < KEYS; k++) {
      const readings = Array.from({ length: COUNT }, (_, i) => i + 1).filter((i) => i % KEYS === k);
      const doc = db.document(`${STREAM}/sensor-${k}`);
      expect(doc?.version).toBe(readings.length);
      expect((doc?.state as { reading: number }).reading).toBe(readings.at(-1));
    }
  });
}, 60_000);
