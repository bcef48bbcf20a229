import { Packr, Unpackr } from 'msgpackr';
import { SeqgateError } from '../errors.js';
import { scanJsonDepth, scanMsgpack } from './frame-scanner.js';
import { ENVELOPE_DEPTH, type WireFormat } from '@seqgate/client/wire';

/**
 * Frames on the wire. Binary frames carry msgpack (the default subprotocol); text frames carry
 * the same messages as JSON under the JSON subprotocol. Every incoming frame is scanned for
 * structure and depth before it is decoded.
 */

// The protocol's names and numbers live in the wire module shared with the client.
export { ENVELOPE_DEPTH, PROTOCOL_VERSION, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, type WireFormat } from '@seqgate/client/wire';

// One explicitly configured unpacker: no records or structured clone (CVE-2023-52079 came through
// those), maps as Map so that integer keys survive, int64 beyond 2^53 as BigInt.
const unpackr = new Unpackr({
  useRecords: false,
  structuredClone: false,
  mapsAsObjects: false,
  // 'auto' (numbers up to 2^53, BigInt beyond) is implemented but missing from msgpackr's types.
  int64AsType: 'auto' as 'bigint',
  moreTypes: false,
});

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false });

/** Decodes one frame into a plain value; throws SeqgateError with a message-scope code. */
export function decodeFrame(data: Buffer, isBinary: boolean, format: WireFormat, maxDepth: number): unknown {
  if (format === 'msgpack') {
    if (!isBinary) throw new SeqgateError('WRONG_FRAME_TYPE', 'text frame on a msgpack connection; send binary frames');
    const fault = scanMsgpack(data, maxDepth);
    if (fault?.fault === 'too_deep')
      throw new SeqgateError('TOO_DEEP', `frame nests deeper than ${maxDepth} levels`, { limit: 'maxStateDepth', max: maxDepth - ENVELOPE_DEPTH });
    if (fault) throw new SeqgateError('MALFORMED_FRAME', `undecodable msgpack: ${fault.reason}`);
    try {
      return unpackr.unpack(data);
    } catch (err) {
      throw new SeqgateError('MALFORMED_FRAME', `undecodable msgpack: ${(err as Error).message}`, {}, { cause: err });
    }
  }
  if (isBinary) throw new SeqgateError('WRONG_FRAME_TYPE', 'binary frame on a JSON connection; send text frames');
  const text = data.toString('utf8');
  const fault = scanJsonDepth(text, maxDepth);
  if (fault) throw new SeqgateError('TOO_DEEP', `frame nests deeper than ${maxDepth} levels`, { limit: 'maxStateDepth', max: maxDepth - ENVELOPE_DEPTH });
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SeqgateError('MALFORMED_FRAME', `undecodable JSON: ${(err as Error).message}`, {}, { cause: err });
  }
}

/** Encodes an outgoing message. Outgoing messages hold only JSON-compatible values. */
export function encodeMessage(message: object, format: WireFormat): Buffer | string {
  return format === 'msgpack' ? packr.pack(widenIntegers(message)) : JSON.stringify(message);
}

/**
 * msgpackr writes integers beyond 32 bits (commit times, large seqs) as float64; typed decoders in
 * other languages expect an int there. BigInt makes msgpackr write int64/uint64 instead.
 * Only the containers on the way to such a number are copied.
 */
function widenIntegers<T>(value: T): T {
  if (typeof value === 'number') {
    // Beyond 2^53 an integral number is only a float's value (1e20): it stays a float64.
    return (Number.isSafeInteger(value) && (value > 0xffffffff || value < -0x80000000) ? BigInt(value) : value) as T;
  }
  if (typeof value !== 'object' || value === null || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) {
    let out: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const w = widenIntegers(value[i]);
      if (w !== value[i]) (out ??= value.slice())[i] = w;
    }
    return (out ?? value) as T;
  }
  let out: Record<string, unknown> | undefined;
  for (const k in value) {
    const v = (value as Record<string, unknown>)[k];
    const w = widenIntegers(v);
    if (w !== v) (out ??= { ...(value as Record<string, unknown>) })[k] = w;
  }
  return (out ?? value) as T;
}

/** Reads a field of a decoded map, whichever form the decoder produced. */
export function field(map: unknown, name: string): unknown {
  if (map instanceof Map) return map.get(name);
  if (typeof map === 'object' && map !== null && !Array.isArray(map) && !(map instanceof Uint8Array)) {
    return Object.hasOwn(map, name) ? (map as Record<string, unknown>)[name] : undefined;
  }
  return undefined;
}

export function isMap(v: unknown): boolean {
  if (v instanceof Map) return true;
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

export function fieldNames(map: unknown): unknown[] {
  return map instanceof Map ? [...map.keys()] : Object.keys(map as object);
}
