import { join } from 'node:path';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { FencedError, MemoryOutbox, ServerRollbackError, type EpochChange, type RollbackInfo } from '@seqgate/client';
import { SqliteOutbox } from '@seqgate/client/node';
import { SeqgateServer } from '../../src/server/websocket-server.js';
import { Cleanup } from '../support/cleanup.js';
import { withDb } from '../support/db-checker.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { closedAfterTest, failure, newClient, waitUntil } from './helpers.js';

const cleanup = new Cleanup();
const tempDir = (): string => cleanup.tempDir('seqgate-client-');
const client = closedAfterTest(cleanup, 100);

/** A server on `dbPath`; stop() only closes it, so the file can be copied or reused. */
async function serverOn(dbPath: string): Promise<SeqgateServer> {
  const s = await SeqgateServer.start({ port: 0, dbPath, pruneIntervalMs: 3_600_000 }, { logger: pino({ level: 'silent' }) });
  cleanup.push(() => s.close());
  return s;
}

describe('counter loss', () => {
  it('a client without a record for a stream the server knows takes the server epoch + 1, fencing the old writer', async () => {
    const dir = tempDir();
    const s = await serverOn(join(dir, 'db.sqlite'));
    const old = client(s.url, 'phone-1');
    for (let i = 1; i <= 3; i++) await old.put('profile', { i });
    expect(old.epoch).toBe(1);

    // The app was reinstalled: a new client with an empty outbox writes the same stream.
    const fresh = client(s.url, 'phone-1');
    const epochs: EpochChange[] = [];
    fresh.on('epoch', (e) => epochs.push(e));
    const r = await fresh.put('profile', { i: 'after reinstall' });
    expect(r.ack).toMatchObject({ epoch: 2, seq: 1 });
    expect(epochs).toEqual([{ epoch: 2, previous: null, reason: 'counter-loss', head: { stream: 'phone-1', epoch: 1, seq: 3, prunedThrough: 0 } }]);

    // The old writer is fenced for good.
    const err = await failure(old.put('profile', { i: 'stale writer' }));
    expect(err).toBeInstanceOf(FencedError);
    expect(err.epoch).toBe(2);
    expect(old.state).toBe('stopped');
    withDb(s.config.dbPath, (db) => expect(db.document('profile')?.state).toEqual({ i: 'after reinstall' }));
  });

  it('a client restarted on the same durable outbox keeps its epoch and numbering', async () => {
    const dir = tempDir();
    const s = await serverOn(join(dir, 'db.sqlite'));
    const outboxPath = join(dir, 'outbox.sqlite');
    const first = new SqliteOutbox(outboxPath);
    const a = newClient(s.url, 'sensor-1', { outbox: first });
    await a.put('t', 1);
    await a.put('t', 2);
    await a.close();
    first.close();

    const second = new SqliteOutbox(outboxPath);
    cleanup.push(() => second.close());
    const b = client(s.url, 'sensor-1', { outbox: second });
    const epochs: EpochChange[] = [];
    b.on('epoch', (e) => epochs.push(e));
    const r = await b.put('t', 3);
    expect(r.ack).toMatchObject({ epoch: 1, seq: 3 });
    expect(epochs).toEqual([]);
  });
});

describe('server rollback', () => {
  /** A client writing through a proxy to a first server; `swap` prepares the server it moves to. */
  async function scenario(policy: 'reject' | 'resend', swap: (first: SeqgateServer, dir: string) => Promise<SeqgateServer>) {
    const dir = tempDir();
    const first = await serverOn(join(dir, 'db.sqlite'));
    const proxy = await FaultProxy.start(first.url);
    cleanup.push(() => proxy.close());
    const c = client(proxy.url, 'meter-1', { onRollback: policy, outbox: new MemoryOutbox() });
    const rollbacks: RollbackInfo[] = [];
    c.on('rollback', (r) => rollbacks.push(r));
    const epochs: EpochChange[] = [];
    c.on('epoch', (e) => epochs.push(e));
    const second = await swap(first, dir);
    return { c, proxy, first, second, rollbacks, epochs };
  }

  it('a replaced database (new incarnation) rejects unanswered puts with ServerRollbackError and moves to a new epoch', async () => {
    // The operator replaces the database with a new one; the client reconnects to it.
    const { c, proxy, first, second, rollbacks, epochs } = await scenario('reject', (_, dir) => serverOn(join(dir, 'other.sqlite')));
    for (let i = 1; i <= 5; i++) await c.put(`k${i}`, i);

    proxy.stallAll();
    proxy.cutAll();
    const pending = [failure(c.put('k6', 6)), failure(c.put('k7', 7))];
    proxy.setTarget(second.url);
    proxy.resumeAll();

    const errors = await Promise.all(pending);
    for (const e of errors) expect(e).toBeInstanceOf(ServerRollbackError);
    expect(rollbacks).toHaveLength(1);
    expect(rollbacks[0]).toMatchObject({
      reason: 'incarnation',
      stream: 'meter-1',
      incarnation: second.store.incarnation,
      lastAcked: { epoch: 1, seq: 5 },
      head: { epoch: 0, seq: 0 },
      pending: 2,
      policy: 'reject',
      epoch: 2,
    });
    expect(rollbacks[0]!.previousIncarnation).toBe(first.store.incarnation);
    expect(errors[0].rollback).toEqual(rollbacks[0]);
    expect(epochs.at(-1)).toMatchObject({ epoch: 2, previous: 1, reason: 'rollback' });

    const r = await c.put('k8', 8);
    expect(r.ack).toMatchObject({ epoch: 2, seq: 1 });
    withDb(second.config.dbPath, (db) => {
      expect(db.documentKeys()).toEqual(['k8']);
      expect(db.head('meter-1')).toMatchObject({ epoch: 2, seq: 1 });
    });
  });

  async function restoreOlderCopy(policy: 'reject' | 'resend') {
    let copyPath = '';
    const s = await scenario(policy, async (first, dir) => {
      copyPath = join(dir, 'copy.sqlite');
      return first;
    });
    // The client writes, the operator takes a backup, the client writes more, the server dies and
    // comes back on the backup; meanwhile the client queued two more puts.
    for (let i = 1; i <= 3; i++) await s.c.put(`k${i}`, i);
    // The operator's backup, taken here...
    const src = new Database(s.first.config.dbPath, { readonly: true });
    await src.backup(copyPath);
    src.close();
    // ...misses these acked puts.
    for (let i = 4; i <= 6; i++) await s.c.put(`k${i}`, i);
    const incarnation = s.first.store.incarnation;

    s.proxy.stallAll();
    s.proxy.cutAll();
    await s.first.close();
    const pending = [s.c.put('k7', 7), s.c.put('k8', 8)].map((p) =>
      p.then(
        (v) => ({ ok: true as const, v }),
        (e: Error) => ({ ok: false as const, e }),
      ),
    );
    const restored = await serverOn(copyPath);
    expect(restored.store.incarnation).toBe(incarnation);
    s.proxy.setTarget(restored.url);
    s.proxy.resumeAll();
    return { ...s, restored, pending: await Promise.all(pending) };
  }

  it('a database restored from an older copy (head behind the last ack) is surfaced, and unanswered puts rejected by default', async () => {
    const { c, restored, pending, rollbacks } = await restoreOlderCopy('reject');
    expect(rollbacks).toHaveLength(1);
    expect(rollbacks[0]).toMatchObject({
      reason: 'head-behind',
      lastAcked: { epoch: 1, seq: 6 },
      head: { epoch: 1, seq: 3 },
      pending: 2,
      policy: 'reject',
      epoch: 2,
    });
    expect(rollbacks[0]!.previousIncarnation).toBe(rollbacks[0]!.incarnation);
    for (const p of pending) {
      expect(p.ok).toBe(false);
      expect((p as { e: Error }).e).toBeInstanceOf(ServerRollbackError);
    }
    const r = await c.put('k9', 9);
    expect(r.ack).toMatchObject({ epoch: 2, seq: 1 });
    withDb(restored.config.dbPath, (db) => {
      expect(db.documentKeys()).toEqual(['k1', 'k2', 'k3', 'k9']);
    });
  });

  it('with onRollback "resend", a restored database gets the unanswered puts resent unchanged', async () => {
    const { restored, pending, rollbacks } = await restoreOlderCopy('resend');
    expect(rollbacks).toHaveLength(1);
    expect(rollbacks[0]).toMatchObject({ reason: 'head-behind', policy: 'resend', epoch: 1 });
    expect(pending.map((p) => (p.ok ? p.v.ack.seq : -1))).toEqual([7, 8]);
    withDb(restored.config.dbPath, (db) => {
      // The acked puts 4-6 are lost with the old database; 7 and 8 went in at their own positions.
      expect(db.documentKeys()).toEqual(['k1', 'k2', 'k3', 'k7', 'k8']);
      expect(db.head('meter-1')).toMatchObject({ epoch: 1, seq: 8 });
      expect(db.ack('meter-1', 1, 5)).toBeUndefined();
    });
  });

  it('reports the rollback once: the next reconnect to the same server is quiet', async () => {
    const { c, proxy, rollbacks } = await restoreOlderCopy('reject');
    await c.put('k10', 10);
    proxy.cutAll();
    await waitUntil(() => c.state !== 'connected', 5000);
    await c.put('k11', 11);
    expect(rollbacks).toHaveLength(1);
  });
});
