import { Unpackr } from 'msgpackr';
import { afterEach, expect, it } from 'vitest';
import { withDb } from '../support/db-checker.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { startTestServer, type TestServer } from '../support/test-client.js';
import { newClient } from './helpers.js';

const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' as 'bigint' });
let t: TestServer | undefined;
let proxy: FaultProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  await t?.stop();
});

it('sends the same put 10 times under network timeouts: exactly one write, and the same answer every time', async () => {
  t = await startTestServer();
  proxy = await FaultProxy.start(t.url);
  const answers: Buffer[] = [];
  const sends: Array<Record<string, unknown>> = [];
  // Every put reaches the server; on the first nine connections its answer is held back (the
  // connection stalls), so the client times out, reconnects and sends the put again.
  proxy.onFrame = (f) => {
    if (f.opcode !== 2) return undefined;
    const msg = unpackr.unpack(f.payload) as { type: string; puts?: Array<Record<string, unknown>> };
    if (f.direction === 'toServer' && msg.type === 'put') sends.push(...msg.puts!);
    if (f.direction === 'toClient' && msg.type === 'results') {
      answers.push(Buffer.from(f.payload));
      if (f.connection.id < 10) return 'stall';
    }
    return undefined;
  };
  const c = newClient(proxy.url, 'classic', { putTimeoutMs: 600, pingIntervalMs: 60_000 });

  const result = await c.put('doc', { reading: 42, unit: 'kPa' });

  // Ten sends of one put: same stream, epoch, seq and payload each time.
  expect(sends).toHaveLength(10);
  expect(new Set(sends.map((p) => JSON.stringify(p))).size).toBe(1);
  expect(c.stats).toMatchObject({ sent: 10, resent: 9, timeouts: 9, applied: 1, replayed: 1 });

  // Exactly one write.
  withDb(t.dbPath, (db) => {
    expect(db.document('doc')).toMatchObject({ version: 1, state: { reading: 42, unit: 'kPa' } });
    expect(db.countAcks('classic')).toBe(1);
    expect(db.head('classic')).toMatchObject({ epoch: 1, seq: 1 });
  });

  // Ten answers, the first one fresh, the nine others replays of it.
  expect(answers).toHaveLength(10);
  const decoded = answers.map((a) => (unpackr.unpack(a) as { results: Array<{ replay: boolean; ack: unknown }> }).results);
  expect(decoded.every((r) => r.length === 1)).toBe(true);
  expect(decoded.map((r) => r[0]!.replay)).toEqual([false, true, true, true, true, true, true, true, true, true]);
  for (const r of decoded) expect(r[0]!.ack).toEqual(decoded[0]![0]!.ack);
  expect(result.ack).toEqual(decoded[0]![0]!.ack);
  expect(result.replay).toBe(true);

  // Byte for byte: the replays are identical, and the first differs only in its replay flag.
  for (const a of answers.slice(2)) expect(a.equals(answers[1]!)).toBe(true);
  expect(answers[0]!.length).toBe(answers[1]!.length);
  const differing = [...answers[0]!.keys()].filter((i) => answers[0]![i] !== answers[1]![i]);
  expect(differing).toHaveLength(1);
  expect([answers[0]![differing[0]!], answers[1]![differing[0]!]]).toEqual([0xc2, 0xc3]);

  await c.close();
});
