import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { putFingerprint } from '../../src/protocol/canonical.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { DEFAULT_TENANT, type Put } from '../../src/store/store.js';
import { isMain } from '../lib/paths.js';
import { KEYS_PER_STREAM, loadStreamName, makeState } from '../lib/workload.js';
import { main, runSuite, type MicroOptions, type MicroRow } from './common.js';

/**
 * The store: SqliteStore.apply, one transaction (one fsync with synchronous=FULL) per call, with
 * batches of 1, 100 and 1000 fresh puts spread over 100 streams, on a file in the work directory.
 */

const STREAMS = 100;

export async function runStoreBatchBench(options: MicroOptions): Promise<MicroRow[]> {
  const dir = mkdtempSync(join(options.workDir, 'micro-store-'));
  const store = new SqliteStore({ path: join(dir, 'store.db'), synchronous: 'full', contiguous: false, ackCapPerStream: 1000 });
  try {
    const state = makeState(200);
    const streams = Array.from({ length: STREAMS }, (_, s) => loadStreamName(s));
    const keys = streams.map((name) => Array.from({ length: KEYS_PER_STREAM }, (_, k) => `${name}/k${k}`));
    const fingerprints = keys.map((ks) => ks.map((k) => putFingerprint(k, state, null)));
    const seqs = new Array<number>(STREAMS).fill(0);
    let cursor = 0;
    const batch = (n: number): Put[] => {
      const puts: Put[] = [];
      for (let i = 0; i < n; i++) {
        const s = cursor++ % STREAMS;
        const seq = ++seqs[s]!;
        const k = seq % KEYS_PER_STREAM;
        puts.push({
          tenant: DEFAULT_TENANT,
          stream: streams[s]!,
          epoch: 1,
          seq,
          key: keys[s]![k]!,
          state,
          ifVersion: null,
          fingerprint: fingerprints[s]![k]!,
        });
      }
      return puts;
    };
    const apply = async (n: number): Promise<void> => {
      const results = await store.apply(batch(n));
      if (results[0]?.kind !== 'ack' || results[0].replay) throw new Error('store bench: a fresh put was not applied');
    };
    return await runSuite(
      'store batch (synchronous=FULL)',
      [1, 100, 1000].map((n) => ({
        name: `apply: batch of ${n}`,
        fn: () => apply(n),
        unitsPerOp: n,
        unit: 'puts',
      })),
      options,
    );
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await main(runStoreBatchBench);
