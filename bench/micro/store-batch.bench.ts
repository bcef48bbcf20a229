import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { isMain } from '../lib/paths.js';
import { main, runSuite, type MicroOptions, type MicroRow } from './common.js';
import { freshPuts } from './fresh-puts.js';

/**
 * The store: SqliteStore.apply, one transaction (one fsync with synchronous=FULL) per call, with
 * batches of 1, 100 and 1000 fresh puts spread over 100 streams, on a file in the work directory.
 */

export async function runStoreBatchBench(options: MicroOptions): Promise<MicroRow[]> {
  const dir = mkdtempSync(join(options.workDir, 'micro-store-'));
  const store = new SqliteStore({ path: join(dir, 'store.db'), synchronous: 'full', contiguous: false, ackCapPerStream: 1000 });
  try {
    const batch = freshPuts();
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
