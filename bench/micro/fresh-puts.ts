import { putFingerprint } from '../../src/protocol/canonical.js';
import { DEFAULT_TENANT, type Put } from '../../src/store/store.js';
import { KEYS_PER_STREAM, loadStreamName, makeState } from '../lib/workload.js';

/**
 * The store suites' workload: fresh puts of one 200-byte state, spread round-robin over 100
 * streams and each stream's keys, fingerprints computed once up front so that only the store's
 * work is measured. Each call to the returned function hands out the next `n` puts; a store that
 * is given all of them sees every put applied, never a replay.
 */

const STREAMS = 100;

export function freshPuts(): (n: number) => Put[] {
  const state = makeState(200);
  const streams = Array.from({ length: STREAMS }, (_, s) => loadStreamName(s));
  const keys = streams.map((name) => Array.from({ length: KEYS_PER_STREAM }, (_, k) => `${name}/k${k}`));
  const fingerprints = keys.map((ks) => ks.map((k) => putFingerprint(k, state, null)));
  const seqs = new Array<number>(STREAMS).fill(0);
  let cursor = 0;
  return (n) => {
    const puts: Put[] = [];
    for (let i = 0; i < n; i++) {
      const s = cursor++ % STREAMS;
      const seq = ++seqs[s]!;
      const k = seq % KEYS_PER_STREAM;
      puts.push({ tenant: DEFAULT_TENANT, stream: streams[s]!, epoch: 1, seq, key: keys[s]![k]!, state, ifVersion: null, fingerprint: fingerprints[s]![k]! });
    }
    return puts;
  };
}
