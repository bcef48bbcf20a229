import { afterEach, describe, expect, it } from 'vitest';
import { withDb } from '../support/db-checker.js';
import { FaultProxy, type FrameInfo } from '../support/fault-proxy.js';
import { put, startTestServer, TestClient, type TestServer } from '../support/test-client.js';

let t: TestServer;
let proxy: FaultProxy;
afterEach(async () => {
  await proxy?.close();
  await t?.stop();
});

describe('fault proxy', () => {
  it('forwards WebSocket frames both ways unchanged and shows each one with its unmasked payload', async () => {
    t = await startTestServer();
    proxy = await FaultProxy.start(t.url);
    const seen: FrameInfo[] = [];
    proxy.onFrame = (f) => {
      seen.push(f);
      return undefined;
    };
    const c = await TestClient.connect(proxy.url);
    c.send({ type: 'hello', streams: ['s'] });
    await c.waitMessage('welcome');
    for (let i = 1; i <= 20; i++) c.send({ type: 'put', puts: [put({ stream: 'p', seq: i })] });
    const results = await c.waitResults(20);
    expect(results.map((r: { outcome: string }) => r.outcome)).toEqual(Array(20).fill('applied'));
    const toServer = seen.filter((f) => f.direction === 'toServer' && f.opcode === 2);
    expect(toServer[0]!.payload.equals(Buffer.from(c.encode({ type: 'hello', streams: ['s'] }) as Buffer))).toBe(true);
    expect(seen.filter((f) => f.direction === 'toClient' && f.opcode === 2).map((f) => f.payload.toString('hex'))).toEqual(
      c.frames.map((f) => f.toString('hex')),
    );
    await c.close();
  });

  it('cuts after the server sent an answer and before it reaches the client; the put is committed', async () => {
    t = await startTestServer();
    proxy = await FaultProxy.start(t.url, { cutToClient: 1 });
    const c = await TestClient.connect(proxy.url);
    c.send({ type: 'put', puts: [put({ stream: 'cut', seq: 1 })] });
    await c.closed;
    expect(c.messages).toEqual([]);
    expect(proxy.stats.cuts).toBe(1);
    withDb(t.dbPath, (db) => expect(db.head('cut')).toMatchObject({ epoch: 1, seq: 1 }));
  });

  it('stalls a connection: nothing is delivered until resumed, and the order is kept under delays', async () => {
    t = await startTestServer();
    proxy = await FaultProxy.start(t.url, { delayMs: { min: 0, max: 15 } });
    const c = await TestClient.connect(proxy.url);
    proxy.stallAll();
    for (let i = 1; i <= 10; i++) c.send({ type: 'put', puts: [put({ stream: 'st', seq: i })] });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(c.messages).toEqual([]);
    withDb(t.dbPath, (db) => expect(db.head('st')).toBeUndefined());
    proxy.resumeAll();
    const results = await c.waitResults(10);
    expect(results.map((r: { ack: { seq: number } }) => r.ack.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await c.close();
  });
});
