import { decide, type GateInputs, type StoredAck } from '../../src/gate.js';
import { putFingerprint } from '../../src/protocol/canonical.js';
import type { Ack, Put } from '../../src/store/store.js';
import { isMain } from '../lib/paths.js';
import { makeState } from '../lib/workload.js';
import { main, runSuite, sink, type MicroOptions, type MicroRow } from './common.js';

/** The gate: one decide() per put, for each row of the decision table the workload exercises. */

export async function runGateBench(options: MicroOptions): Promise<MicroRow[]> {
  const state = makeState(200);
  const fingerprint = putFingerprint('load-0/k1', state, null);
  const other = putFingerprint('load-0/k1', makeState(200, 1), null);
  const put = (seq: number, fp: Buffer, ifVersion: number | null = null): Put => ({
    tenant: 'default',
    stream: 'load-0',
    epoch: 1,
    seq,
    key: 'load-0/k1',
    state,
    ifVersion,
    fingerprint: fp,
  });
  const ack: Ack = {
    outcome: 'applied',
    stream: 'load-0',
    epoch: 1,
    seq: 90,
    key: 'load-0/k1',
    version: 6,
    deleted: false,
    committedAt: 1_700_000_000_000,
  };
  const stored: StoredAck = { fingerprint, ack };
  const inputs = (storedAck: StoredAck | undefined): GateInputs => ({
    head: { epoch: 1, seq: 100, prunedThrough: 0 },
    storedAck: () => storedAck,
    document: () => ({ version: 7, deleted: false }),
    contiguous: false,
    now: 1_700_000_000_000,
  });
  const withAck = inputs(stored);
  const withoutAck = inputs(undefined);
  const fresh = put(101, fingerprint);
  const retry = put(90, fingerprint);
  const reused = put(90, other);
  const stale = put(95, fingerprint);
  const conflict = put(101, fingerprint, 3);
  for (const [p, i, kind] of [
    [fresh, withoutAck, 'consume'],
    [retry, withAck, 'replay'],
    [reused, withAck, 'reject'],
    [stale, withoutAck, 'reject'],
  ] as const) {
    if (decide(p, i).kind !== kind) throw new Error(`gate bench setup: expected ${kind}`);
  }
  const cases = [
    ['fresh put above the head (apply)', fresh, withoutAck],
    ['retry of an applied put (replay)', retry, withAck],
    ['seq reused with another payload', reused, withAck],
    ['skipped seq (stale)', stale, withoutAck],
    ['ifVersion mismatch (version_conflict)', conflict, withoutAck],
  ] as const;
  return runSuite(
    'gate',
    cases.map(([name, p, i]) => ({
      name,
      fn: () => {
        sink.value = decide(p, i);
      },
    })),
    options,
  );
}

if (isMain(import.meta.url)) await main(runGateBench);
