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
