import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { DEFAULT_TENANT, type Put } from '../../src/store/store.js';
import { isMain } from '../lib/paths.js';
import { main, runSuite, type MicroOptions, type MicroRow } from './common.js';
import { freshPuts } from './fresh-puts.js';

/**
 * The change log's cost on the write path: SqliteStore.apply with the log on and off (the
 * store option `changeLog`), same puts, same batch sizes, two files in the work directory,
 * measured in one run so the ratio is the result. One transaction (one fsync, synchronous=FULL)
 * per call. Then reading the log back: readChanges pages of 1000.
 */

function storeWithPuts(dir: string, name: string, changeLog: boolean): { store: SqliteStore; batch: (n: number) => Put[] } {
  const store = new SqliteStore({ path: join(dir, `${name}.db`), synchronous: 'full', contiguous: false, ackCapPerStream: 1000, changeLog });
  return { store, batch: freshPuts() };
}

export async function runChangefeedBench(options: MicroOptions): Promise<MicroRow[]> {
  const dir = mkdtempSync(join(options.workDir, 'micro-changefeed-'));
  const off = storeWithPuts(dir, 'log-off', false);
  const on = storeWithPuts(dir, 'log-on', true);
  try {
    const apply = async (side: typeof on, n: number): Promise<void> => {
      const results = await side.store.apply(side.batch(n));
      if (results[0]?.kind !== 'ack' || results[0].replay) throw new Error('changefeed bench: a fresh put was not applied');
    };
    const tasks = [1, 100, 1000].flatMap((n) => [
      { name: `apply: batch of ${n}, change log off`, fn: () => apply(off, n), unitsPerOp: n, unit: 'puts' },
      { name: `apply: batch of ${n}, change log on`, fn: () => apply(on, n), unitsPerOp: n, unit: 'puts' },
    ]);
    const rows = await runSuite('change log cost (synchronous=FULL)', tasks, options);
    let after = 0;
    const read = await runSuite(
      'change log read',
      [
        {
          name: 'readChanges: page of 1000',
          fn: async () => {
            const tail = await on.store.changeTail(DEFAULT_TENANT);
            if (after + 1000 > tail) after = 0;
            const page = await on.store.readChanges(DEFAULT_TENANT, { after, prefixes: [''], limit: 1000, maxScan: 10_000 });
            after = page.next;
          },
          unitsPerOp: 1000,
          unit: 'changes',
        },
      ],
      options,
    );
    return [...rows, ...read];
  } finally {
    await on.store.close();
    await off.store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) await main(runChangefeedBench);
