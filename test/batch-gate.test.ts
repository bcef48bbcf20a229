import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { planBatch, type BatchReader } from '../src/batch-gate.js';
import { failedBatch, storageUnavailable } from '../src/gate.js';
import { ERRORS } from '../src/errors.js';
import { putFingerprint } from '../src/protocol/canonical.js';
import { acksToEvict, afterForgetting, mayPrune, planPrune } from '../src/retention.js';
import { Committer } from '../src/server/committer.js';
import type { Put, Store } from '../src/store/store.js';

/**
 * The store boundary: every rule lives in pure functions that a store feeds with rows. These
 * tests drive the gate with an in-memory reader, so they hold for any store that reads honestly.
 */

function put(seq: number, key = 'doc', stream = 's', epoch = 1): Put {
  const state = Buffer.from([0x81, 0xa1, 0x76, seq & 0x7f]);
  return { tenant: 't', stream, epoch, seq, key, state, ifVersion: null, fingerprint: putFingerprint(key, state, null) };
}

/** A reader over fixed rows that counts what it was asked. */
function reader(rows: { head?: { epoch: number; seq: number; prunedThrough: number; ackCount: number }; acks?: Array<[number, number]> }) {
  const asked: string[] = [];
  const r: BatchReader<number> = {
    stream: () => {
      asked.push('stream');
      return rows.head && { id: 7, ...rows.head };
    },
    ack: () => {
      asked.push('ack');
      return undefined;
    },
    documentMeta: () => {
      asked.push('documentMeta');
      return undefined;
    },
    document: () => {
      asked.push('document');
      return undefined;
    },
    idempotency: () => undefined,
    oldestAcks: (_id, after, limit) => {
      asked.push('oldestAcks');
      return (rows.acks ?? [])
        .filter(([e, s]) => after === null || e > after.epoch || (e === after.epoch && s > after.seq))
        .slice(0, limit)
        .map(([epoch, seq]) => ({ epoch, seq }));
    },
  };
  return { r, asked };
}

describe('planBatch', () => {
  it('lists every document change once, in batch order, with where it came from; no-ops and conflicts list none', () => {
    const { r } = reader({});
    const plan = planBatch<number>(
      [
        put(1, 'a'),
        { ...put(2, 'a'), ifVersion: 5, fingerprint: Buffer.alloc(16, 9) },
        { op: 'replace', tenant: 't', key: 'b', state: Buffer.from([0xc0]), ifVersion: null },
        { op: 'replace', tenant: 't', key: 'b', state: Buffer.from([0xc0]), ifVersion: null },
        { ...put(3, 'gone'), state: null, fingerprint: putFingerprint('gone', null, null) },
      ],
      r,
      { contiguous: false, ackCapPerStream: 10, now: 5 },
    );
    expect(plan.documents.map((d) => [d.key, d.row.version, d.origin])).toEqual([
      ['a', 1, { kind: 'put', stream: 's', epoch: 1, seq: 1 }],
      ['b', 1, { kind: 'route', op: 'replace' }],
    ]);
    expect(plan.results.map((x) => ('ack' in x ? x.ack.outcome : x.kind))).toEqual(['applied', 'version_conflict', 'written', 'written', 'applied']);
    expect(plan.streams).toHaveLength(1);
    expect(plan.streams[0]).toMatchObject({ id: null, head: { epoch: 1, seq: 3, prunedThrough: 0 }, ackCount: 3 });
    expect(plan.streams[0]!.acks.map((a) => a.ack.seq)).toEqual([1, 2, 3]);
  });

  it("evicts past the cap from stored acks first, then from the batch's own, raising prunedThrough; never the newest", () => {
    const { r } = reader({
      head: { epoch: 1, seq: 2, prunedThrough: 0, ackCount: 2 },
      acks: [
        [1, 1],
        [1, 2],
      ],
    });
    const plan = planBatch<number>([put(3), put(4), put(5)], r, { contiguous: false, ackCapPerStream: 2, now: 1 });
    const s = plan.streams[0]!;
    expect(s).toMatchObject({ id: 7, head: { epoch: 1, seq: 5, prunedThrough: 3 }, ackCount: 2, evictThrough: { epoch: 1, seq: 3 } });
    expect(s.acks.map((a) => a.ack.seq)).toEqual([4, 5]);
  });

  it('with slack, evicts nothing until cap + slack is passed, then down to the cap in one read and one delete', () => {
    expect([acksToEvict(10, 10, 4), acksToEvict(14, 10, 4), acksToEvict(15, 10, 4), acksToEvict(11, 10, 0), acksToEvict(50, 10, 4)]).toEqual([0, 0, 5, 1, 5]);
    const acks = Array.from({ length: 100 }, (_, i): [number, number] => [1, i + 1]);
    const { r, asked } = reader({ head: { epoch: 1, seq: 100, prunedThrough: 0, ackCount: 100 }, acks });
    const plan = planBatch<number>([put(101), put(102)], r, { contiguous: false, ackCapPerStream: 30, ackCapSlack: 70, now: 1 });
    const s = plan.streams[0]!;
    // 101 acks > 30 + 70: the 71 oldest go (1..71), back to the cap; then 102 leaves 31, within the slack.
    expect(s).toMatchObject({ head: { epoch: 1, seq: 102, prunedThrough: 71 }, ackCount: 31, evictThrough: { epoch: 1, seq: 71 } });
    expect(asked.filter((a) => a === 'oldestAcks')).toHaveLength(1);
  });

  it('finds a retry of a put consumed earlier in the same batch without asking the reader, and treats an evicted one as gone', () => {
    const { r, asked } = reader({});
    const plan = planBatch<number>([put(1), put(2), put(2), put(1)], r, { contiguous: false, ackCapPerStream: 1, now: 1 });
    expect(plan.results.map((x) => (x.kind === 'ack' ? `${x.ack.outcome}${x.replay ? '*' : ''}` : 'outcome' in x ? x.outcome : x.kind))).toEqual([
      'applied',
      'applied',
      'applied*',
      'expired',
    ]);
    expect(asked).not.toContain('ack');
  });
});

describe('retention rules', () => {
  it("never prunes the head's own ack, and raises prunedThrough only for the current epoch", () => {
    const head = { epoch: 2, seq: 9, prunedThrough: 3 };
    expect(mayPrune({ epoch: 2, seq: 9 }, head)).toBe(false);
    expect(mayPrune({ epoch: 1, seq: 9 }, head)).toBe(true);
    expect(afterForgetting(head, { epoch: 1, seq: 8 })).toBe(head);
    expect(afterForgetting(head, { epoch: 2, seq: 2 })).toBe(head);
    expect(afterForgetting(head, { epoch: 2, seq: 5 })).toEqual({ epoch: 2, seq: 9, prunedThrough: 5 });
    const plan = planPrune([
      { streamId: 'a', epoch: 2, seq: 4, head },
      { streamId: 'a', epoch: 2, seq: 9, head },
      { streamId: 'a', epoch: 2, seq: 6, head },
    ]);
    expect(plan.deletes.map((d) => d.seq)).toEqual([4, 6]);
    expect(plan.streams).toEqual([{ streamId: 'a', prunedThrough: 6, removed: 2 }]);
  });
});

describe('a failed batch', () => {
  it('is answered from the error registry, one retryable STORAGE_UNAVAILABLE per write, with the cause', () => {
    const answers = failedBatch(3, new Error('disk I/O error'));
    expect(answers).toHaveLength(3);
    for (const a of answers)
      expect(a).toEqual({ kind: 'rejected', outcome: 'error', code: 'STORAGE_UNAVAILABLE', message: 'batch not committed: disk I/O error' });
    expect(ERRORS[answers[0]!.code].retryable).toBe(true);
    const typed = storageUnavailable(new Error('x'));
    expect(typed).toMatchObject({ name: 'SeqgateError', code: 'STORAGE_UNAVAILABLE', retryable: true });
    expect((typed.cause as Error).message).toBe('x');
  });

  it('is logged by the committer at warn with its cause, and every write of it is answered', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(JSON.parse(String(chunk)));
        done();
      },
    });
    const log = pino({ level: 'info' }, sink);
    const store = { apply: () => Promise.reject(storageUnavailable(new Error('SQLITE_FULL: database or disk is full'))) } as unknown as Store;
    const committer = new Committer(store, 100, undefined, log);
    const results = await committer.submit([put(1), put(2)]);
    expect(results.map((x) => (x.kind === 'rejected' ? x.code : x.kind))).toEqual(['STORAGE_UNAVAILABLE', 'STORAGE_UNAVAILABLE']);
    await new Promise((resolve) => setImmediate(resolve));
    const warn = lines.find((l) => l['level'] === 40);
    expect(warn).toBeDefined();
    expect(JSON.stringify(warn)).toContain('SQLITE_FULL: database or disk is full');
    expect(warn!['writes']).toBe(2);
  });
});
