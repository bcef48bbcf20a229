import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { withDb } from '../support/db-checker.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startTestServer, type TestServer } from '../support/test-client.js';

/**
 * IndexedDbOutbox in real headless Chromium (Debian's chromium, driven over CDP by playwright-core):
 * the outbox contract suite in a page, then a writer whose page is reloaded and whose browser
 * process is killed with SIGKILL mid-stream, and started again on the same profile. Every put
 * recorded before the kill must be applied exactly once, in the same epoch.
 */

const CHROMIUM = process.env.SEQGATE_CHROMIUM ?? '/usr/bin/chromium';
const APP = fileURLToPath(new URL('./fixtures/browser-app.ts', import.meta.url));
const STREAM = 'browser-1';
const TOTAL = 600;

class Chromium {
  readonly exited: Promise<void>;
  private constructor(
    private readonly proc: ChildProcess,
    readonly browser: Browser,
  ) {
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
  }

  static async launch(profile: string): Promise<Chromium> {
    const proc = spawn(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--no-first-run',
        `--user-data-dir=${profile}`,
        '--remote-debugging-port=0',
        'about:blank',
      ],
      { detached: true, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const endpoint = await new Promise<string>((resolve, reject) => {
      let err = '';
      const timer = setTimeout(() => reject(new Error(`chromium did not start: ${err}`)), 20_000);
      proc.stderr!.on('data', (d: Buffer) => {
        err += d.toString('utf8');
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
        if (m !== null) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      proc.once('exit', (code) => reject(new Error(`chromium exited (${code}): ${err}`)));
    });
    return new Chromium(proc, await chromium.connectOverCDP(endpoint));
  }

  async page(url: string): Promise<Page> {
    const page = await this.browser.contexts()[0]!.newPage();
    await page.goto(url);
    return page;
  }

  /** SIGKILL to the browser and every process it started (its process group). */
  async kill(): Promise<void> {
    process.kill(-this.proc.pid!, 'SIGKILL');
    await this.exited;
  }

  async close(): Promise<void> {
    await this.browser.close().catch(() => undefined);
    try {
      process.kill(-this.proc.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
    await this.exited;
  }
}

interface Progress {
  start: number;
  pendingAtStart: number;
  recordedThrough: number;
  answered: number;
  recovered: number;
  replayed: number;
  errors: string[];
  epochs: Array<{ epoch: number; reason: string }>;
  epoch: number | null;
  firstAnswerMs: number | null;
  done: boolean;
  doneMs: number | null;
}

const progress = (page: Page): Promise<Progress> => page.evaluate(() => (globalThis as unknown as { __progress: Progress }).__progress);

async function until(page: Page, predicate: (p: Progress) => boolean, what: string, timeoutMs = 20_000): Promise<Progress> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await progress(page);
    if (predicate(p)) return p;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let t: TestServer;
let proxy: FaultProxy;
let http: Server;
let origin = '';
let profile = '';
const open: Chromium[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)`);
  const bundle = await build({ entryPoints: [APP], bundle: true, format: 'esm', platform: 'browser', target: 'es2020', write: false, logLevel: 'silent' });
  const js = bundle.outputFiles[0]!.text;
  http = createServer((req, res) => {
    if (req.url === '/app.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(js);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>seqgate</title><script type="module" src="/app.js"></script>');
    }
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  // One origin for every browser start: IndexedDB belongs to the origin.
  origin = `http://127.0.0.1:${(http.address() as AddressInfo).port}/`;
  t = await startTestServer();
  // Delayed answers keep a few dozen puts unanswered at any moment, so the kill leaves some behind.
  proxy = await FaultProxy.start(t.url, { delayMs: { min: 10, max: 30 } });
  profile = mkdtempSync(join(tmpdir(), 'seqgate-chromium-'));
}, 60_000);

afterAll(async () => {
  for (const c of open) await c.close();
  await new Promise((resolve) => http?.close(resolve));
  await proxy?.close();
  await t?.stop();
  if (profile !== '') rmSync(profile, { recursive: true, force: true });
});

async function launch(): Promise<Chromium> {
  const c = await Chromium.launch(profile);
  open.push(c);
  return c;
}

async function ready(page: Page): Promise<void> {
  await page.waitForFunction(() => typeof (globalThis as unknown as { startWriter?: unknown }).startWriter === 'function');
}

let first: Chromium;

it('IndexedDbOutbox passes the outbox contract suite in Chromium', async () => {
  first = await launch();
  const page = await first.page(origin);
  await ready(page);
  const results = await page.evaluate(() =>
    (globalThis as unknown as { runContract: () => Promise<Array<{ name: string; ok: boolean; error?: string }>> }).runContract(),
  );
  expect(results.length).toBeGreaterThan(5);
  for (const r of results) expect(r, r.error).toMatchObject({ ok: true });
  await page.close();
}, 60_000);

it('a page reloaded and a browser killed mid-stream lose no recorded put, apply none twice, and stay in one epoch', async () => {
  const args = { url: proxy.url, stream: STREAM, total: TOTAL, batch: 3, intervalMs: 15 };
  const start = (page: Page): Promise<Progress> =>
    page.evaluate((a) => (globalThis as unknown as { startWriter: (x: typeof a) => Promise<Progress> }).startWriter(a), args);

  first ??= await launch();
  let page = await first.page(origin);
  await ready(page);
  await start(page);
  const beforeReload = await until(page, (p) => p.recordedThrough >= 100, 'the first readings');
  await page.reload();
  await ready(page);
  const afterReload = await start(page);
  const beforeKill = await until(page, (p) => p.recordedThrough >= afterReload.start + 150, 'readings after the reload');
  await first.kill();

  const second = await launch();
  page = await second.page(origin);
  await ready(page);
  const afterKill = await start(page);
  const end = await until(page, (p) => p.done, 'the last reading', 40_000);
  await second.close();

  const figures = {
    reload: { recordedBefore: beforeReload.recordedThrough, resumedAt: afterReload.start, unansweredLoaded: afterReload.pendingAtStart },
    kill: { recordedBefore: beforeKill.recordedThrough, resumedAt: afterKill.start, unansweredLoaded: afterKill.pendingAtStart },
    final: {
      answered: end.answered,
      recovered: end.recovered,
      replayed: end.replayed,
      firstAnswerMs: Math.round(end.firstAnswerMs ?? -1),
      doneMs: Math.round(end.doneMs ?? -1),
    },
  };
  console.log(`chromium reload/kill figures: ${JSON.stringify(figures)}`);

  // Nothing recorded was forgotten: each start resumed at or after what it had seen recorded.
  expect(afterReload.start).toBeGreaterThanOrEqual(beforeReload.recordedThrough);
  expect(afterKill.start).toBeGreaterThanOrEqual(beforeKill.recordedThrough);
  // Both interruptions left recorded puts unanswered, which the next page loaded and resent.
  expect(afterReload.pendingAtStart).toBeGreaterThan(0);
  expect(afterKill.pendingAtStart).toBeGreaterThan(0);
  expect(end.errors).toEqual([]);
  // One epoch throughout: no start took the outbox for a counter loss.
  expect(end.epoch).toBe(1);
  expect(end.epochs).toEqual([]);
  expect(end.recordedThrough).toBe(TOTAL);
  withDb(t.dbPath, (db) => {
    expect(db.head(STREAM)).toMatchObject({ epoch: 1, seq: TOTAL });
    expect(db.countAcks(STREAM)).toBe(TOTAL);
    for (let i = 1; i <= TOTAL; i++) expect(db.ack(STREAM, 1, i)?.key).toBe(`${STREAM}/k${i % 5}`);
    for (let k = 0; k < 5; k++) {
      const readings = Array.from({ length: TOTAL }, (_, i) => i + 1).filter((i) => i % 5 === k);
      const doc = db.document(`${STREAM}/k${k}`);
      expect(doc?.version).toBe(readings.length);
      expect((doc?.state as { reading: number }).reading).toBe(readings.at(-1));
    }
  });
}, 90_000);
