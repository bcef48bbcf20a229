import { afterEach, expect, it } from 'vitest';
import type { PutResult, SeqgateClient } from '@seqgate/client';
import { withDb } from '../support/db-checker.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startTestServer, type TestServer } from '../support/test-client.js';
import { newClient } from './helpers.js';

let t: TestServer | undefined;
let proxy: FaultProxy | undefined;
const clients: SeqgateClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close({ timeoutMs: 100 });
  await proxy?.close();
  await t?.stop();
});

const CLIENTS = 3;
const PUTS = 1000;
const KEYS = 7;

const keyOf = (stream: string, i: number): string => `${stream}/k${i % KEYS}`;
const stateOf = (stream: string, i: number): Record<string, unknown> => ({ stream, i, reading: (i * 37) % 101 });

it('3 clients x 1000 puts under sustained drops, cuts before answers, stalls and delays: every put applied exactly once', async () => {
  t = await startTestServer({ ackCapPerStream: 10_000 });
  proxy = await FaultProxy.start(t.url, {
    cut: 0.01,
    cutToClient: 0.03,
    truncate: 0.01,
    stall: 0.004,
    duplicate: 0.01,
    reorder: 0.01,
    delayMs: { min: 0, max: 4 },
  });

  const settledTimes = new Map<string, number>();
  const eventTimes = new Map<string, number>();
  const results: PutResult[][] = [];
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, n) => {
      const stream = `fleet-${n}`;
      const c = newClient(proxy!.url, stream, {
        window: 8,
        putTimeoutMs: 800,
        pingIntervalMs: 300,
        pongTimeoutMs: 800,
        connectTimeoutMs: 1500,
        reconnect: { initialDelayMs: 10, maxDelayMs: 200 },
      });
      clients.push(c);
      c.on('result', (s) => {
        const id = `${s.put.stream}:${s.put.seq}`;
        eventTimes.set(id, (eventTimes.get(id) ?? 0) + 1);
      });
      const promises: Array<Promise<PutResult>> = [];
      for (let i = 1; i <= PUTS; i++) {
        const p = c.put(keyOf(stream, i), stateOf(stream, i));
        const id = `${stream}:${i}`;
        promises.push(p.finally(() => settledTimes.set(id, (settledTimes.get(id) ?? 0) + 1)));
        // Puts arrive over time, so faults keep hitting a live pipeline rather than one burst.
        if (i % 5 === 0) await new Promise((resolve) => setTimeout(resolve, 2));
      }
      results[n] = await Promise.all(promises);
    }),
  );

  // Every promise settled exactly once, every settlement was reported once, each as applied.
  expect(settledTimes.size).toBe(CLIENTS * PUTS);
  expect([...settledTimes.values()].every((v) => v === 1)).toBe(true);
  expect(eventTimes.size).toBe(CLIENTS * PUTS);
  expect([...eventTimes.values()].every((v) => v === 1)).toBe(true);
  for (let n = 0; n < CLIENTS; n++) {
    expect(results[n]!.map((r) => r.ack.seq)).toEqual(Array.from({ length: PUTS }, (_, i) => i + 1));
    expect(results[n]!.every((r) => r.outcome === 'applied')).toBe(true);
  }

  withDb(t.dbPath, (db) => {
    for (let n = 0; n < CLIENTS; n++) {
      const stream = `fleet-${n}`;
      const epoch = clients[n]!.epoch!;
      expect(db.head(stream)).toMatchObject({ epoch, seq: PUTS });
      // One ack per put, each for the put's own key: no put consumed two positions.
      expect(db.countAcks(stream)).toBe(PUTS);
      for (let i = 1; i <= PUTS; i++) expect(db.ack(stream, epoch, i)?.key).toBe(keyOf(stream, i));
      for (let k = 0; k < KEYS; k++) {
        const writes = Array.from({ length: PUTS }, (_, i) => i + 1).filter((i) => i % KEYS === k);
        const doc = db.document(`${stream}/k${k}`);
        // The version counts applications: a put applied twice would show as one too many.
        expect(doc?.version).toBe(writes.length);
        expect(doc?.state).toEqual(stateOf(stream, writes[writes.length - 1]!));
      }
    }
  });

  // The faults did hit: answers were lost after commit and came back as replays.
  const stats = clients.map((c) => c.stats);
  // Cuts are drawn per frame, so their count follows how many frames the clients happened to send
  // (20 seen in one clean run, with batching); a handful is enough to show the faults hit.
  expect(proxy.stats.cuts).toBeGreaterThan(5);
  expect(stats.reduce((s, x) => s + x.replayed, 0)).toBeGreaterThan(0);
  expect(stats.reduce((s, x) => s + x.connections, 0)).toBeGreaterThan(CLIENTS + 20);
}, 90_000);
