import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { put, startTestServer, TestClient, type TestServer } from './support/test-client.js';

let t: TestServer;
beforeEach(async () => { t = await startTestServer(); });
afterEach(async () => { await t.stop(); });

describe('WebSocket ingestion', () => {
  it('answers a hello with protocol version, incarnation, limits and the named heads', async () => {
    const c = await TestClient.connect(t.url);
    c.send({ type: 'hello', streams: ['a', 'b'] });
    const w = await c.waitMessage('welcome');
    expect(w.protocol).toBe(1);
    expect(w.incarnation).toBe(t.server.store.incarnation);
    expect(w.limits.maxPutsPerFrame).toBe(1000);
    expect(w.heads).toEqual([
      { stream: 'a', epoch: 0, seq: 0, prunedThrough: 0 },
      { stream: 'b', epoch: 0, seq: 0, prunedThrough: 0 },
    ]);
    await c.close();
  });

  it('answers pipelined puts exactly once each, in the order they were sent', async () => {
    const c = await TestClient.connect(t.url);
    const ids: number[] = [];
    for (let i = 1; i <= 50; i++) {
      const p = put({ stream: 'order', seq: i, key: `k${i % 3}` });
      ids.push(p.id as number);
      c.send({ type: 'put', puts: [p] });
    }
    const results = await c.waitResults(50);
    expect(results.map((r: { id: number }) => r.id)).toEqual(ids);
    expect(results.every((r: { outcome: string }) => r.outcome === 'applied')).toBe(true);
    await c.close();
  });
});
