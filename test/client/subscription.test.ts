import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { IdempotentConsumer, SubscriptionOffsetError, type Change } from '@seqgate/client';
import { SqliteOutbox } from '@seqgate/client/node';
import { startTestServer, type TestServer } from '../support/test-client.js';
import { newClient, waitUntil } from './helpers.js';

/**
 * The client SDK's changefeed side: subscribe(prefix, { from }) resumes from the offset kept in the
 * SQLite outbox after the app restarts, and IdempotentConsumer applies each (key, version) once.
 */

let t: TestServer | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await t?.stop();
  t = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function outboxPath(): string {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-sub-'));
  dirs.push(dir);
  return join(dir, 'outbox.db');
}

describe('SeqgateClient.subscribe', () => {
  it('resumes after a restart from the offset kept in the SQLite outbox, with exactly the changes after it', async () => {
    t = await startTestServer();
    const path = outboxPath();
    const writer = newClient(t.url, 'writer');
    for (let i = 1; i <= 3; i++) await writer.put(`room/${i}`, { n: i });
    await writer.put('other/1', { n: 0 });

    // First run of the app: reads everything under room/, then stops.
    let outbox = new SqliteOutbox(path);
    let reader = newClient(t.url, 'reader', { outbox });
    const first: Change[] = [];
    let sub = await reader.subscribe('room/', {
      onChanges: (changes) => {
        first.push(...changes);
      },
    });
    await sub.upToDate;
    await sub.close();
    await reader.close();
    outbox.close();
    expect(first.map((c) => [c.key, c.version, c.state])).toEqual([
      ['room/1', 1, { n: 1 }],
      ['room/2', 1, { n: 2 }],
      ['room/3', 1, { n: 3 }],
    ]);

    await writer.put('room/2', { n: 22 });
    await writer.put('room/4', { n: 4 });

    // The app restarts: a new outbox on the same file, a new client, the same subscription.
    outbox = new SqliteOutbox(path);
    reader = newClient(t.url, 'reader', { outbox });
    const second: Change[] = [];
    sub = await reader.subscribe('room/', {
      onChanges: (changes) => {
        second.push(...changes);
      },
    });
    await waitUntil(() => second.length >= 2, 5000, 'the changes after the saved offset');
    await sub.upToDate;
    expect(second.map((c) => [c.key, c.version, c.state])).toEqual([
      ['room/2', 2, { n: 22 }],
      ['room/4', 1, { n: 4 }],
    ]);
    expect(sub.offset).toBe(second[1]!.offset);
    await sub.close();
    await reader.close();
    await writer.close();
    outbox.close();
  });

  it('keeps following across a server restart on the same database', async () => {
    t = await startTestServer();
    const { dbPath } = t;
    const writer = newClient(t.url, 'w');
    await writer.put('k/1', 1);
    const got: Change[] = [];
    const sub = await writer.subscribe('k/', {
      onChanges: (changes) => {
        got.push(...changes);
      },
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    });
    await waitUntil(() => got.length === 1, 5000, 'the first change');
    const port = Number(new URL(t.url).port);
    await t.server.close();
    t = await startTestServer({ port, dbPath });
    await writer.put('k/2', 2);
    await waitUntil(() => got.length === 2, 10_000, 'the change after the restart');
    expect(got.map((c) => c.key)).toEqual(['k/1', 'k/2']);
    await sub.close();
    await writer.close();
  });

  it('reports an offset from another database as final, instead of skipping or repeating changes', async () => {
    t = await startTestServer();
    const client = newClient(t.url, 'c');
    const errors: Error[] = [];
    const sub = await client.subscribe('', { from: '0000000000000003_deadbeef', onChanges: () => undefined, onError: (e) => errors.push(e) });
    await waitUntil(() => errors.length === 1, 5000, 'the offset error');
    expect(errors[0]).toBeInstanceOf(SubscriptionOffsetError);
    expect((errors[0] as SubscriptionOffsetError).code).toBe('OFFSET_UNKNOWN');
    await sub.close();
    await client.close();
  });
});

describe('IdempotentConsumer', () => {
  it('applies each (key, version) at most once, even when the log is read again from the start, and survives a restart', async () => {
    t = await startTestServer();
    const path = outboxPath();
    const writer = newClient(t.url, 'w', { WebSocket });
    await writer.put('a', 1);
    await writer.put('b', 1);
    await writer.put('a', 2);
    const effects: string[] = [];
    const readAll = async (): Promise<void> => {
      const outbox = new SqliteOutbox(path);
      const consumer = new IdempotentConsumer(outbox);
      const reader = newClient(t!.url, 'r');
      // from -1 every time, with a memory offset store: every change is delivered again.
      const sub = await reader.subscribe('', {
        onChanges: async (changes) => {
          for (const c of changes)
            await consumer.apply(c, () => {
              effects.push(`${c.key}@${c.version}`);
            });
        },
      });
      await sub.upToDate;
      await sub.close();
      await reader.close();
      outbox.close();
    };
    await readAll();
    await readAll();
    expect(effects).toEqual(['a@1', 'b@1', 'a@2']);
    await writer.put('b', 2);
    await readAll();
    expect(effects).toEqual(['a@1', 'b@1', 'a@2', 'b@2']);
    await writer.close();
  });
});
