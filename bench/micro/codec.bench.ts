import { defaultConfig } from '../../src/config.js';
import { decodeFrame, encodeMessage, ENVELOPE_DEPTH } from '../../src/protocol/codec.js';
import { scanMsgpack } from '../../src/protocol/frame-scanner.js';
import { parseMessage, wireResult } from '../../src/protocol/messages.js';
import { DEFAULT_TENANT } from '../../src/store/store.js';
import { limitsOf } from '../arms/common.js';
import { isMain } from '../lib/paths.js';
import { makeState, PutEncoder, putFrame } from '../lib/workload.js';
import { main, runSuite, sink, type MicroOptions, type MicroRow } from './common.js';

/** Codec: what every put frame costs before storage — scan, decode, validate; and one reply. */

const limits = limitsOf(defaultConfig());
const depth = limits.maxStateDepth + ENVELOPE_DEPTH;

function frameOf(stateBytes: number): { frame: Buffer; state: Buffer } {
  const state = makeState(stateBytes);
  const frame = putFrame([new PutEncoder('load-0', 1, state, 16).encode(1, 1001)]);
  // The benchmark must measure what the server really receives: check it decodes to this state.
  const msg = parseMessage(decodeFrame(frame, true, 'msgpack', depth), limits, DEFAULT_TENANT);
  const first = msg.type === 'put' ? msg.puts[0] : undefined;
  if (!first?.ok || !first.put.state?.equals(state) || first.put.seq !== 1001) {
    throw new Error('bench put frame does not decode to the intended put');
  }
  return { frame, state };
}

export async function runCodecBench(options: MicroOptions): Promise<MicroRow[]> {
  const small = frameOf(200);
  const large = frameOf(4096);
  const ack = wireResult(1, {
    kind: 'ack',
    replay: false,
    ack: { outcome: 'applied', stream: 'load-0', epoch: 1, seq: 1001, key: 'load-0/k9', version: 63, deleted: false, committedAt: Date.now() },
  });
  return runSuite(
    'codec',
    [
      {
        name: `scan 200 B put frame (${small.frame.length} B)`,
        fn: () => {
          sink.value = scanMsgpack(small.frame, depth);
        },
      },
      {
        name: 'scan + decode 200 B put frame',
        fn: () => {
          sink.value = decodeFrame(small.frame, true, 'msgpack', depth);
        },
      },
      {
        name: 'scan + decode + validate 200 B put frame',
        fn: () => {
          sink.value = parseMessage(decodeFrame(small.frame, true, 'msgpack', depth), limits, DEFAULT_TENANT);
        },
      },
      {
        name: `scan + decode + validate 4 KiB put frame (${large.frame.length} B)`,
        fn: () => {
          sink.value = parseMessage(decodeFrame(large.frame, true, 'msgpack', depth), limits, DEFAULT_TENANT);
        },
      },
      {
        name: 'encode results frame with one ack',
        fn: () => {
          sink.value = encodeMessage({ type: 'results', results: [ack] }, 'msgpack');
        },
      },
    ],
    options,
  );
}

if (isMain(import.meta.url)) await main(runCodecBench);
