import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { putFingerprint } from '../../src/protocol/canonical.js';
import { FileIdentity } from '../../src/store/file-identity.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { DEFAULT_TENANT, type Put } from '../../src/store/store.js';
import { isMain } from '../lib/paths.js';
import { makeState } from '../lib/workload.js';
import { main, runSuite, type MicroOptions, type MicroRow } from './common.js';

/**
 * What the database file identity check (src/store/file-identity.ts) costs, beside what it guards:
 * the check alone (one stat each of the file and its -wal), and the smallest commit it runs in,
 * a batch of one put, with synchronous=NORMAL (no fsync: the cheapest commit there is) and FULL.
 * Every apply includes the check, so "check / apply" is the share of a commit it takes.
 */

export async function runFileIdentityBench(options: MicroOptions): Promise<MicroRow[]> {
  const dir = mkdtempSync(join(options.workDir, 'micro-identity-'));
  const stores = {
    normal: new SqliteStore({ path: join(dir, 'normal.db'), synchronous: 'normal', contiguous: false, ackCapPerStream: 1000 }),
    full: new SqliteStore({ path: join(dir, 'full.db'), synchronous: 'full', contiguous: false, ackCapPerStream: 1000 }),
  };
  try {
    const path = join(dir, 'normal.db');
    const identity = new FileIdentity([path, `${path}-wal`]);
    if (identity.paths.length !== 2) throw new Error(`identity bench: expected 3 guarded files, found ${identity.paths.join(', ')}`);
    const state = makeState(200);
    const fingerprint = putFingerprint('k', state, null);
    const seqs = { normal: 0, full: 0 };
    const apply = async (which: 'normal' | 'full'): Promise<void> => {
      const put: Put = { tenant: DEFAULT_TENANT, stream: 's', epoch: 1, seq: ++seqs[which], key: 'k', state, ifVersion: null, fingerprint };
      const [r] = await stores[which].apply([put]);
      if (r?.kind !== 'ack' || r.replay) throw new Error('identity bench: a fresh put was not applied');
    };
    return await runSuite(
      'database file identity',
      [
        {
          name: 'check: stat the file and its -wal',
          fn: () => {
            if (identity.check() !== undefined) throw new Error('identity bench: files reported lost');
          },
        },
        { name: 'apply: batch of 1, synchronous=NORMAL (check included)', fn: () => apply('normal'), unitsPerOp: 1, unit: 'puts' },
        { name: 'apply: batch of 1, synchronous=FULL (check included)', fn: () => apply('full'), unitsPerOp: 1, unit: 'puts' },
      ],
      options,
    );
  } finally {
    await stores.normal.close();
    await stores.full.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (isMain(import.meta.url)) {
  await main(async (options) => {
    const rows = await runFileIdentityBench(options);
    const check = rows[0]!.meanUs;
    for (const r of rows.slice(1)) console.log(`check / ${r.task}: ${((check / r.meanUs) * 100).toFixed(1)} %`);
    return rows;
  });
}
