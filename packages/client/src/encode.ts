import { CanonicalError, canonicalEncode, MessageWriter } from './wire/canonical.js';
import { decodeMsgpack } from './wire/decode.js';
import { utf8Length } from './wire/utf8.js';
import type { Limits } from './types.js';

/**
 * The client's frames. States are encoded once, at put(), into the canonical form of PROTOCOL.md §6
 * (the wire module's encoder, the same code the server runs); the outbox keeps those bytes and
 * every resend splices the same bytes into its frame, so a retry can never differ from the first
 * send. Encoding canonically also measures the state exactly as the server will, so a put the
 * server would refuse as too large or malformed is refused here, before it gets a seq (a refused
 * put consumes no seq, which would leave a hole in contiguous mode).
 */

export class StateProblem extends Error {
  override readonly name = 'StateProblem';
  constructor(
    readonly code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED',
    readonly limit: 'maxStateBytes' | 'maxStateDepth' | undefined,
    message: string,
  ) {
    super(message);
  }
}

/** Canonical MessagePack of a state, in its own buffer (it is stored); throws StateProblem. */
export function encodeState(value: unknown, limits: Pick<Limits, 'maxStateBytes' | 'maxStateDepth'>, json: boolean): Uint8Array {
  try {
    return canonicalEncode(
      value,
      {
        maxBytes: limits.maxStateBytes,
        maxDepth: limits.maxStateDepth,
        bytesLimitName: 'maxStateBytes',
        depthLimitName: 'maxStateDepth',
        json,
      },
      'state',
    );
  } catch (err) {
    if (!(err instanceof CanonicalError)) throw err;
    if (err.kind === 'limit') throw new StateProblem('LIMIT_EXCEEDED', err.limit === 'maxStateDepth' ? 'maxStateDepth' : 'maxStateBytes', err.message);
    throw new StateProblem('INVALID_FIELD', undefined, err.message);
  }
}

export { decodeMsgpack, utf8Length };
export { nameProblem } from './wire/names.js';

/** What a put frame needs of an outbox entry. */
export interface WirePut {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly state: Uint8Array | null;
  readonly ifVersion: number | null;
}

/**
 * One put as a MessagePack map. The correlation id is the seq: unique among the puts of one
 * connection (an epoch changes only between connections), and equal on every resend, so a
 * replayed answer is byte-identical to the first but for its replay flag.
 */
export function encodePutMsgpack(p: WirePut): Uint8Array {
  const w = new MessageWriter()
    .map(p.ifVersion === null ? 6 : 7)
    .str('id')
    .int(p.seq)
    .str('stream')
    .str(p.stream)
    .str('epoch')
    .int(p.epoch)
    .str('seq')
    .int(p.seq)
    .str('key')
    .str(p.key);
  if (p.state === null) w.str('delete').bool(true);
  else w.str('state').raw(p.state);
  if (p.ifVersion !== null) w.str('ifVersion').int(p.ifVersion);
  return w.finish();
}

/** Bytes of a put message around its puts: fixmap, "type", "put", "puts", array header. */
export const MSGPACK_FRAME_OVERHEAD = 1 + 5 + 4 + 5 + 5;

export function msgpackPutFrame(puts: readonly Uint8Array[]): Uint8Array {
  const w = new MessageWriter().map(2).str('type').str('put').str('puts').array(puts.length);
  for (const p of puts) w.raw(p);
  return w.finish();
}

export function msgpackMessage(message: Record<string, string | number | readonly string[]>): Uint8Array {
  const entries = Object.entries(message);
  const w = new MessageWriter().map(entries.length);
  for (const [k, v] of entries) {
    w.str(k);
    if (typeof v === 'string') w.str(v);
    else if (typeof v === 'number') w.int(v);
    else {
      w.array(v.length);
      for (const s of v) w.str(s);
    }
  }
  return w.finish();
}

/** One put as JSON text; the state is decoded from its canonical bytes (JSON states only). */
export function encodePutJson(p: WirePut): string {
  const head = `{"id":${p.seq},"stream":${JSON.stringify(p.stream)},"epoch":${p.epoch},"seq":${p.seq},"key":${JSON.stringify(p.key)},`;
  const body = p.state === null ? '"delete":true' : `"state":${JSON.stringify(decodeMsgpack(p.state))}`;
  return head + body + (p.ifVersion === null ? '}' : `,"ifVersion":${p.ifVersion}}`);
}

export const JSON_FRAME_OVERHEAD = '{"type":"put","puts":[]}'.length;

export function jsonPutFrame(puts: readonly string[]): string {
  return `{"type":"put","puts":[${puts.join(',')}]}`;
}
