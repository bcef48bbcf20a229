import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { withDb } from '../support/db-checker.js';
import { ChildServer, tempDb } from '../support/child-server.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startTestServer, type TestServer } from '../support/test-client.js';
import type { CaseResult, Progress, SubscriberReport } from './fixtures/browser-app.js';
import { appReady, Chromium, serveApp, type AppServer } from './fixtures/chromium.js';
import { newClient, waitUntil } from './helpers.js';

/**
 * IndexedDbOutbox in real headless Chromium (fixtures/chromium.ts): the outbox contract suites in a
 * page, the upgrade of a database an older client left, then a writer whose page is reloaded and
 * whose browser process is killed with SIGKILL mid-stream, and started again on the same profile.
 * Every put recorded before the kill must be applied exactly once, in the same epoch. Last, a page
 * that follows the changefeed through a real server process is reloaded in the middle of a batch,
 * twice: it must resume from the offset it saved, and apply every change exactly once.
 */

const STREAM = 'browser-1';
const TOTAL = 600;

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
let app: AppServer;
let origin = '';
let profile = '';
const open: Chromium[] = [];

beforeAll(async () => {
  // One origin for every browser start: IndexedDB belongs to the origin.
  app = await serveApp();
  origin = app.origin;
  t = await startTestServer();
  // Delayed answers keep a few dozen puts unanswered at any moment, so the kill leaves some behind.
  proxy = await FaultProxy.start(t.url, { delayMs: { min: 10, max: 30 } });
  profile = mkdtempSync(join(tmpdir(), 'seqgate-chromium-'));
}, 60_000);

afterAll(async () => {
  for (const c of open) await c.close();
  await app?.close();
  await proxy?.close();
  await t?.stop();
  if (profile !== '') rmSync(profile, { recursive: true, force: true });
});

async function launch(): Promise<Chromium> {
  const c = await Chromium.launch(profile);
  open.push(c);
  return c;
}

let first: Chromium;

it('IndexedDbOutbox passes the outbox contract suite and the offset and version contract in Chromium', async () => {
  first = await launch();
  const page = await first.page(origin);
  for (const suite of ['outbox', 'offsets'] as const) {
    const results = await page.evaluate((s) => (globalThis as unknown as { runContract: (x: typeof s) => Promise<CaseResult[]> }).runContract(s), suite);
    expect(results.length, suite).toBeGreaterThan(5);
    for (const r of results) expect(r, `${suite}: ${r.name}\n${r.error}`).toMatchObject({ ok: true });
  }
  await page.close();
}, 60_000);

it('IndexedDbOutbox upgrades a database of schema 1 to 2, keeping its stream and entries', async () => {
  first ??= await launch();
  const page = await first.page(origin);
  const upgraded = await page.evaluate(() => (globalThis as unknown as { runUpgrade: () => Promise<{ version: number }> }).runUpgrade());
  expect(upgraded).toEqual({ version: 2 });
  await page.close();
}, 30_000);

it('a page reloaded and a browser killed mid-stream lose no recorded put, apply none twice, and stay in one epoch', async () => {
  const args = { url: proxy.url, stream: STREAM, total: TOTAL, batch: 3, intervalMs: 15 };
  const start = (page: Page): Promise<Progress> =>
    page.evaluate((a) => (globalThis as unknown as { startWriter: (x: typeof a) => Promise<Progress> }).startWriter(a), args);

  first ??= await launch();
  let page = await first.page(origin);
  await start(page);
  const beforeReload = await until(page, (p) => p.recordedThrough >= 100, 'the first readings');
  await page.reload();
  await appReady(page);
  const afterReload = await start(page);
  const beforeKill = await until(page, (p) => p.recordedThrough >= afterReload.start + 150, 'readings after the reload');
  await first.kill();

  const second = await launch();
  page = await second.page(origin);
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

it('a page following the changefeed through a server process, reloaded twice mid-batch, resumes from its saved offset and applies every change once', async () => {
  const dir = tempDb('seqgate-browser-feed-');
  const server = new ChildServer({ dbPath: dir.dbPath });
  const browser = await launch();
  try {
    const { url } = await server.start();
    const writer = newClient(url, 'feed-writer');
    // What the page must apply, in commit order: `${key}@${version}` of every write under feed/.
    const expected: string[] = [];
    const versions = new Map<string, number>();
    const write = (n: number): Promise<unknown> => {
      const key = `feed/k${n % 4}`;
      const version = (versions.get(key) ?? 0) + 1;
      versions.set(key, version);
      expected.push(`${key}@${version}`);
      return writer.put(key, { n });
    };

    const effects: Array<{ change: string; offset: string }> = [];
    const skips: string[] = [];
    const batches: Array<{ offsets: string[]; next: string }> = [];
    const errors: string[] = [];
    // When set, the first effect it accepts is never answered: the page is stuck inside its handler.
    let holdIf: ((r: Extract<SubscriberReport, { kind: 'effect' }>) => boolean) | undefined;
    let held: { change: string; index: number; batch: { offsets: string[]; next: string }; savedBefore: string | null } | undefined;
    const page = await browser.page(origin, (p) =>
      p.exposeFunction('seqgateReport', (r: SubscriberReport): Promise<void> | void => {
        if (r.kind === 'batch') batches.push({ offsets: r.offsets, next: r.next });
        else if (r.kind === 'skip') skips.push(`${r.key}@${r.version}`);
        else if (r.kind === 'error') errors.push(r.message);
        else if (holdIf?.(r) === true) {
          holdIf = undefined;
          // The handler of a batch starts only after the previous batch's offset is saved.
          held = { change: `${r.key}@${r.version}`, index: r.index, batch: batches.at(-1)!, savedBefore: batches.at(-2)?.next ?? null };
          return new Promise<void>(() => undefined);
        } else effects.push({ change: `${r.key}@${r.version}`, offset: r.offset });
      }),
    );
    const subscribe = (): Promise<{ saved: string | null }> =>
      page.evaluate((a) => (globalThis as unknown as { startSubscriber: (x: typeof a) => Promise<{ saved: string | null }> }).startSubscriber(a), {
        url,
        prefix: 'feed/',
        stream: 'feed-reader',
        outbox: 'seqgate-feed',
      });
    const reloadWhileHeld = async (what: string): Promise<{ held: NonNullable<typeof held>; saved: string | null; skipsBefore: number }> => {
      await waitUntil(() => held !== undefined, 10_000, what);
      const h = held!;
      held = undefined;
      const skipsBefore = skips.length;
      await page.reload();
      await appReady(page);
      const { saved } = await subscribe();
      return { held: h, saved, skipsBefore };
    };

    // Catch-up: 20 changes committed before the page subscribes arrive as one batch; the page is
    // reloaded while its handler is on the 4th, the three before it applied and marked.
    await Promise.all(Array.from({ length: 20 }, (_, i) => write(i + 1)));
    await writer.put('other/x', { n: 0 });
    holdIf = (r) => r.index === 3;
    expect(await subscribe()).toEqual({ saved: null });
    const first = await reloadWhileHeld('the 4th change of the catch-up batch');
    await waitUntil(() => effects.length >= 20, 10_000, 'the rest of the catch-up');

    // Live: bursts of 4 puts, one commit each, while the page tails; it is reloaded in the middle
    // of a batch after 10 live changes, and the writer goes on writing through the reload.
    holdIf = (r) => r.index >= 1 && effects.length >= 30;
    const live = (async () => {
      for (let burst = 0; burst < 10; burst++) {
        await Promise.all(Array.from({ length: 4 }, (_, i) => write(21 + burst * 4 + i)));
        await new Promise((r) => setTimeout(r, 40));
      }
    })();
    const second = await reloadWhileHeld('a live batch of at least 2 changes');
    await live;
    await waitUntil(() => effects.length >= expected.length, 15_000, 'every live change');
    await new Promise((r) => setTimeout(r, 200));
    await writer.close();

    console.log(
      `chromium subscription reloads: ${JSON.stringify({
        changes: expected.length,
        batches: batches.length,
        reloads: [first, second].map((x) => ({ heldAt: x.held.index, batchSize: x.held.batch.offsets.length, resumedFrom: x.saved })),
        skipped: skips.length,
      })}`,
    );
    expect(errors).toEqual([]);
    // Every change under feed/ applied exactly once, in offset order, none from outside it.
    expect(effects.map((e) => e.change)).toEqual(expected);
    expect(effects.map((e) => e.offset)).toEqual(effects.map((e) => e.offset).sort());
    expect(new Set(effects.map((e) => e.offset)).size).toBe(effects.length);
    for (const r of [first, second]) {
      // The reloaded page resumed from the offset saved after the last batch it finished...
      expect(r.saved).toBe(r.held.savedBefore);
      // ...so the interrupted batch came again, and the consumer skipped exactly its changes
      // applied before the reload; the one cut off was applied after it, once.
      const appliedBefore = r.held.batch.offsets.slice(0, r.held.index);
      expect(r.held.index).toBeGreaterThan(0);
      expect(skips.slice(r.skipsBefore, r.skipsBefore + appliedBefore.length)).toEqual(appliedBefore.map((o) => effects.find((e) => e.offset === o)!.change));
      expect(effects.filter((e) => e.change === r.held.change)).toHaveLength(1);
    }
    expect(first.saved).toBeNull();
    expect(second.saved).not.toBeNull();
    expect(skips).toHaveLength(first.held.index + second.held.index);
  } finally {
    await browser.close();
    await server.dispose();
    dir.remove();
  }
}, 60_000);
