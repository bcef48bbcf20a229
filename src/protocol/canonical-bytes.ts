import { isUtf8 } from 'node:buffer';

/**
 * Whether received msgpack bytes are already canonical (PROTOCOL.md §6), checked without decoding
 * them. The SDK sends every state in canonical form, so the server can usually hash and store the
 * bytes it received instead of decoding the state and encoding it again, which was about a fifth
 * of the server's busy time at 100 connections × 64 puts in flight (issue 13, lever (c)).
 *
 * The answer must never be "yes" where canonicalEncode(decode(bytes)) would give other bytes or
 * refuse the value: a "no" only costs the slow path, a wrong "yes" would store a state the server
 * would otherwise have stored differently (or refused). So every rule of §6 is checked as the
 * encoder applies it, on the decoded value's terms:
 * - integers in the shortest form for their value, unsigned forms for values >= 0 (an int64 that
 *   decodes to a BigInt is written back as the same uint64/int64, so those are covered too);
 * - float64 only for a number the encoder writes as a float (not integral, or beyond ±2^53), NaN
 *   only as the quiet NaN; float32 never (it decodes to a number the encoder writes otherwise);
 * - strings well-formed UTF-8 (anything else decodes to U+FFFD and encodes differently), with
 *   the shortest header; binaries with the shortest header;
 * - arrays and maps with the shortest header, no deeper than the limit; map keys strings or
 *   integers, in strictly increasing order of their bytes (which also rules out duplicates, which
 *   decoding would collapse);
 * - nothing larger than the byte limit.
 * Extension types and the never-used byte 0xc1 are not canonical (the frame scanner refuses them
 * before this runs). test/canonical-bytes.test.ts compares this against the slow path for random
 * and edge-case values.
 */

/** Whether `buf[start, end)` is one msgpack value in canonical form within the limits. */
export function isCanonicalMsgpack(buf: Uint8Array, start: number, end: number, maxBytes: number, maxDepth: number): boolean {
  if (end - start > maxBytes || end <= start) return false;
  src = buf;
  limit = end;
  depthLimit = maxDepth;
  view = undefined;
  try {
    return valueEnd(start, 0) === end;
  } finally {
    // The frame is not kept alive by this module between calls.
    src = EMPTY;
    view = undefined;
  }
}

const EMPTY = new Uint8Array(0);
const MAX_INT_NUMBER = 2 ** 53;
// The state of one check (the check is synchronous and never re-entered).
let src: Uint8Array = EMPTY;
let limit = 0;
let depthLimit = 0;
let view: DataView | undefined;

function u16(p: number): number {
  return (src[p]! << 8) | src[p + 1]!;
}

function u32(p: number): number {
  return src[p]! * 0x1000000 + ((src[p + 1]! << 16) | (src[p + 2]! << 8) | src[p + 3]!);
}

/** The end of the canonical value at `p` (of nesting `depth`, 0 for the state itself), or -1. */
function valueEnd(p: number, depth: number): number {
  if (p >= limit) return -1;
  const b = src[p]!;
  if (b <= 0x7f || b >= 0xe0) return p + 1;
  if (b <= 0x8f) return mapEnd(p + 1, b & 0x0f, depth);
  if (b <= 0x9f) return arrayEnd(p + 1, b & 0x0f, depth);
  if (b <= 0xbf) return stringEnd(p + 1, b & 0x1f);
  switch (b) {
    case 0xc0:
    case 0xc2:
    case 0xc3:
      return p + 1;
    case 0xc4:
      // bin 8 is the shortest binary form for 0..255 bytes (there is no fixbin).
      return p + 2 <= limit ? bytesEnd(p + 2, src[p + 1]!) : -1;
    case 0xc5:
      return p + 3 <= limit && u16(p + 1) > 0xff ? bytesEnd(p + 3, u16(p + 1)) : -1;
    case 0xc6:
      return p + 5 <= limit && u32(p + 1) > 0xffff ? bytesEnd(p + 5, u32(p + 1)) : -1;
    case 0xcb:
      return p + 9 <= limit && canonicalFloat(p + 1) ? p + 9 : -1;
    case 0xcc:
      return p + 2 <= limit && src[p + 1]! >= 0x80 ? p + 2 : -1;
    case 0xcd:
      return p + 3 <= limit && u16(p + 1) > 0xff ? p + 3 : -1;
    case 0xce:
      return p + 5 <= limit && u32(p + 1) > 0xffff ? p + 5 : -1;
    case 0xcf:
      return p + 9 <= limit && u32(p + 1) > 0 ? p + 9 : -1;
    // Signed forms only for negative values below the next shorter form's range.
    case 0xd0: // -128..-33
      return p + 2 <= limit && src[p + 1]! >= 0x80 && src[p + 1]! <= 0xdf ? p + 2 : -1;
    case 0xd1: // -32768..-129
      return p + 3 <= limit && u16(p + 1) >= 0x8000 && u16(p + 1) <= 0xff7f ? p + 3 : -1;
    case 0xd2: // -2^31..-32769
      return p + 5 <= limit && u32(p + 1) >= 0x80000000 && u32(p + 1) <= 0xffff7fff ? p + 5 : -1;
    case 0xd3: {
      // -2^63..-2^31-1: negative, and not within int32's range.
      if (p + 9 > limit) return -1;
      const hi = u32(p + 1);
      return hi >= 0x80000000 && !(hi === 0xffffffff && u32(p + 5) >= 0x80000000) ? p + 9 : -1;
    }
    case 0xd9:
      return p + 2 <= limit && src[p + 1]! > 31 ? stringEnd(p + 2, src[p + 1]!) : -1;
    case 0xda:
      return p + 3 <= limit && u16(p + 1) > 0xff ? stringEnd(p + 3, u16(p + 1)) : -1;
    case 0xdb:
      return p + 5 <= limit && u32(p + 1) > 0xffff ? stringEnd(p + 5, u32(p + 1)) : -1;
    case 0xdc:
      return p + 3 <= limit && u16(p + 1) > 15 ? arrayEnd(p + 3, u16(p + 1), depth) : -1;
    case 0xdd:
      return p + 5 <= limit && u32(p + 1) > 0xffff ? arrayEnd(p + 5, u32(p + 1), depth) : -1;
    case 0xde:
      return p + 3 <= limit && u16(p + 1) > 15 ? mapEnd(p + 3, u16(p + 1), depth) : -1;
    case 0xdf:
      return p + 5 <= limit && u32(p + 1) > 0xffff ? mapEnd(p + 5, u32(p + 1), depth) : -1;
    default:
      // float32 (0xca: decoded to a number the encoder writes as float64 or an integer), 0xc1,
      // extension types.
      return -1;
  }
}

function canonicalFloat(p: number): boolean {
  view ??= new DataView(src.buffer, src.byteOffset, src.byteLength);
  const v = view.getFloat64(p);
  if (Number.isNaN(v)) return view.getUint32(p) === 0x7ff80000 && view.getUint32(p + 4) === 0;
  // An integral value within ±2^53 (-0 included) is written as an integer.
  return !(Number.isInteger(v) && Math.abs(v) <= MAX_INT_NUMBER);
}

function bytesEnd(p: number, n: number): number {
  return p + n <= limit ? p + n : -1;
}

function stringEnd(p: number, n: number): number {
  const end = p + n;
  if (end > limit) return -1;
  for (let i = p; i < end; i++) {
    if (src[i]! >= 0x80) return isUtf8(src.subarray(i, end)) ? end : -1;
  }
  return end;
}

function arrayEnd(p: number, n: number, depth: number): number {
  if (depth + 1 > depthLimit || p + n > limit) return -1;
  for (let i = 0; i < n && p !== -1; i++) p = valueEnd(p, depth + 1);
  return p;
}

function mapEnd(p: number, n: number, depth: number): number {
  if (depth + 1 > depthLimit || p + 2 * n > limit) return -1;
  let prevStart = -1;
  let prevEnd = -1;
  for (let i = 0; i < n; i++) {
    if (!isKeyType(src[p]!)) return -1;
    const keyEnd = valueEnd(p, depth + 1);
    if (keyEnd === -1) return -1;
    if (prevStart !== -1 && compareBytes(prevStart, prevEnd, p, keyEnd) >= 0) return -1;
    prevStart = p;
    prevEnd = keyEnd;
    p = valueEnd(keyEnd, depth + 1);
    if (p === -1) return -1;
  }
  return p;
}

/** Strings and integers: the only map keys §6 allows (p < limit is checked by the caller's count). */
function isKeyType(b: number): boolean {
  return b <= 0x7f || b >= 0xe0 || (b >= 0xa0 && b <= 0xbf) || (b >= 0xcc && b <= 0xcf) || (b >= 0xd0 && b <= 0xd3) || (b >= 0xd9 && b <= 0xdb);
}

/** Byte order of two spans, a proper prefix first: the order the encoder sorts keys in. */
function compareBytes(a: number, aEnd: number, b: number, bEnd: number): number {
  const n = Math.min(aEnd - a, bEnd - b);
  for (let i = 0; i < n; i++) {
    const d = src[a + i]! - src[b + i]!;
    if (d !== 0) return d;
  }
  return aEnd - a - (bEnd - b);
}

/**
 * A state whose received bytes were found canonical: put in place of the decoded state, so that
 * validation takes the bytes as they are instead of encoding the value again.
 */
export class CanonicalState {
  constructor(readonly bytes: Buffer) {}
}
