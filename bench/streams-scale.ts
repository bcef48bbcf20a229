import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canonicalEncode, putFingerprint } from '../src/protocol/canonical.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import type { Put } from '../src/store/store.js';

/**
 * Scale check: many streams cost disk, not memory. Writes one put to each of N streams through
 * the SQLite store (batches of 5000, synchronous=normal to measure the store rather than fsync),
 * then shows that a retry of an early stream still replays and reports the process RSS.
 * Run: npm run bench:streams -- [N]   (default 1,000,000)
 */
const total = Number(process.argv[2] ?? 1_000_000);
const dir = mkdtempSync(join(tmpdir(), 'seqgate-scale-'));
const store = new SqliteStore({ path: join(dir, 'scale.db'), synchronous: 'normal', contiguous: false, ackCapPerStream: 1000 });
const limits = { maxBytes: 65536, maxDepth: 32, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };
const state = canonicalEncode({ reading: 21.5, unit: 'C' }, limits, 'state');
const put = (i: number): Put => ({
  tenant: 'default',
  stream: `device-${i}`,
  epoch: 1,
  seq: 1,
  key: `doc-${i}`,
  state,
  ifVersion: null,
  fingerprint: putFingerprint(`doc-${i}`, state, null),
});

const started = performance.now();
const batchSize = 5000;
for (let i = 0; i < total; i += batchSize) {
  const batch: Put[] = [];
  for (let j = i; j < Math.min(total, i + batchSize); j++) batch.push(put(j));
  const results = await store.apply(batch);
  if (results.some((r) => r.kind !== 'ack' || r.replay)) throw new Error(`batch at ${i} was not applied`);
}
const seconds = (performance.now() - started) / 1000;
const [retry] = await store.apply([put(17)]);
if (retry?.kind !== 'ack' || !retry.replay) throw new Error('a retry of an early stream did not replay');
const rss = process.memoryUsage().rss / 2 ** 20;
console.log(
  `${total} streams written in ${seconds.toFixed(1)} s (${Math.round(total / seconds)} puts/s); ` +
    `retry of stream 17 replayed; process RSS ${rss.toFixed(0)} MiB; node ${process.version}`,
);
await store.close();
rmSync(dir, { recursive: true, force: true });
