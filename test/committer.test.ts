import { describe, expect, it } from 'vitest';
import { Committer, type BatchInfo } from '../src/server/committer.js';
import type { DocResult, Put, PutResult, Store, Write } from '../src/store/store.js';

/** Batch formation: what joins one batch, with and without a wait to fill it. */

function put(seq: number): Put {
  return { tenant: 't', stream: 's', epoch: 1, seq, key: 'k', state: null, ifVersion: null, fingerprint: Buffer.alloc(16) };
}

/** A store that answers every write at once and records the batch sizes it was given. */
function recordingStore(sizes: number[]): Store {
  return {
    async apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>> {
      sizes.push(batch.length);
      return batch.map(() => ({ kind: 'rejected', outcome: 'stale', code: 'STALE', head: { epoch: 0, seq: 0, prunedThrough: 0 } }));
    },
  } as unknown as Store;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('Committer batch formation', () => {
  it('without a wait, commits what arrived in one event-loop turn; a put 10 ms later gets its own batch', async () => {
    const sizes: number[] = [];
    const c = new Committer(recordingStore(sizes), 100);
    const first = [c.submit([put(1)]), c.submit([put(2)])];
    await sleep(10);
    await Promise.all([...first, c.submit([put(3)])]);
    expect(sizes).toEqual([2, 1]);
  });

  it('with batchWaitMs, an idle committer lets the first put wait for later ones to share its batch', async () => {
    const sizes: number[] = [];
    const batches: BatchInfo[] = [];
    const c = new Committer(recordingStore(sizes), 100, (b) => batches.push(b), undefined, 60);
    const started = performance.now();
    const a = c.submit([put(1)]);
    await sleep(10);
    const b = c.submit([put(2)]);
    await Promise.all([a, b]);
    expect(sizes).toEqual([2]);
    // It waited (about 60 ms), and no longer than the wait plus timer slack.
    expect(performance.now() - started).toBeGreaterThanOrEqual(50);
    expect(batches[0]).toMatchObject({ puts: 2, submissions: 2 });
  });

  it('with batchWaitMs, a full batch does not wait', async () => {
    const sizes: number[] = [];
    const c = new Committer(recordingStore(sizes), 3, undefined, undefined, 10_000);
    const started = performance.now();
    await Promise.all([c.submit([put(1)]), c.submit([put(2), put(3)])]);
    expect(sizes).toEqual([3]);
    expect(performance.now() - started).toBeLessThan(5000);
  });
});

/**
 * A store that says when a batch committed (Store.apply's `committed`) and settles it later, by
 * hand: the committer may hand over the next batch at once, and must still deliver in order.
 */
function pipelinedStore(): {
  store: Store;
  calls: Array<{ size: number; committed: () => void; settle: () => void; fail: () => void }>;
} {
  const calls: Array<{ size: number; committed: () => void; settle: () => void; fail: () => void }> = [];
  const store = {
    apply(batch: readonly Write[], committed?: () => void): Promise<Array<PutResult | DocResult>> {
      return new Promise((resolve, reject) => {
        calls.push({
          size: batch.length,
          committed: () => committed?.(),
          settle: () =>
            resolve(batch.map((w) => ({ kind: 'rejected', outcome: 'stale', code: 'STALE', head: { epoch: 0, seq: (w as Put).seq, prunedThrough: 0 } }))),
          fail: () => reject(new Error('disk on fire')),
        });
      });
    },
  } as unknown as Store;
  return { store, calls };
}

describe('Committer with a store that reports commits before they are durable', () => {
  it('hands the next batch over only once the previous one committed, and not before', async () => {
    const { store, calls } = pipelinedStore();
    const c = new Committer(store, 100);
    const first = c.submit([put(1)]);
    await sleep(5);
    const second = c.submit([put(2)]);
    await sleep(10);
    expect(
      calls.map((x) => x.size),
      'the second batch waits while the first has not committed',
    ).toEqual([1]);
    calls[0]!.committed();
    await sleep(10);
    expect(
      calls.map((x) => x.size),
      'committed: the next batch goes to the store',
    ).toEqual([1, 1]);
    expect(c.inFlight, 'both batches count as in flight until answered').toBe(2);
    calls[1]!.settle();
    calls[0]!.settle();
    expect((await first).map((r) => (r as { head: { seq: number } }).head.seq)).toEqual([1]);
    expect((await second).map((r) => (r as { head: { seq: number } }).head.seq)).toEqual([2]);
    await c.idle();
    expect(c.inFlight).toBe(0);
  });

  it('with pipelineMinPuts, a small next batch waits for the previous sync, and one that gathers enough goes at once', async () => {
    const { store, calls } = pipelinedStore();
    const c = new Committer(store, 100, undefined, undefined, 0, 3);
    const first = c.submit([put(1)]);
    await sleep(5);
    calls[0]!.committed();
    const small = c.submit([put(2)]);
    await sleep(10);
    expect(
      calls.map((x) => x.size),
      'one put behind a batch waiting for its sync: it waits too',
    ).toEqual([1]);
    const more = c.submit([put(3), put(4)]);
    await sleep(10);
    expect(
      calls.map((x) => x.size),
      'three puts gathered: they commit while the first batch still waits for its sync',
    ).toEqual([1, 3]);
    calls[1]!.committed();
    const last = c.submit([put(5)]);
    await sleep(10);
    expect(calls).toHaveLength(2);
    calls[0]!.settle();
    await sleep(10);
    expect(calls, "the sync the held put waited for is the second batch's, not the first").toHaveLength(2);
    calls[1]!.settle();
    await sleep(10);
    expect(
      calls.map((x) => x.size),
      'the sync ended: the held put commits',
    ).toEqual([1, 3, 1]);
    calls[2]!.committed();
    calls[2]!.settle();
    const seqs = async (p: Promise<Array<PutResult | DocResult>>) => (await p).map((r) => (r as { head: { seq: number } }).head.seq);
    expect([await seqs(first), await seqs(small), await seqs(more), await seqs(last)]).toEqual([[1], [2], [3, 4], [5]]);
    await c.idle();
    expect(c.inFlight).toBe(0);
  });

  it('with pipelineMinPuts, a store that never reports the commit early still gets every batch', async () => {
    const sizes: number[] = [];
    const c = new Committer(recordingStore(sizes), 100, undefined, undefined, 0, 1000);
    await c.submit([put(1)]);
    await Promise.all([c.submit([put(2)]), c.submit([put(3)])]);
    await c.submit([put(4)]);
    expect(sizes).toEqual([1, 2, 1]);
    await c.idle();
  });

  it('delivers results in the order the batches went to the store, even when a later one settles first', async () => {
    const { store, calls } = pipelinedStore();
    const c = new Committer(store, 100);
    const order: string[] = [];
    const first = c.submit([put(1)]).then(() => order.push('first'));
    await sleep(5);
    calls[0]!.committed();
    const second = c.submit([put(2)]).then(() => order.push('second'));
    await sleep(10);
    expect(calls).toHaveLength(2);
    // The later batch fails at once (its answers are ready) while the earlier one waits for its sync.
    calls[1]!.fail();
    await sleep(10);
    expect(order, 'nothing delivered before the earlier batch').toEqual([]);
    calls[0]!.settle();
    await Promise.all([first, second]);
    expect(order).toEqual(['first', 'second']);
  });
});
