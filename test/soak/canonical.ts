import { createHash } from 'node:crypto';

/**
 * The canonical MessagePack form and put fingerprint of PROTOCOL.md §6, written from the text
 * for the values the soak sends (nil, booleans, integers, strings, binaries, arrays, maps with
 * string keys). It shares no code with src/: the checker compares the database's stored states
 * and fingerprints with these bytes, so a server that stored something else than it was sent
 * cannot hide behind an encoder both sides have in common.
 */

export type Value = null | boolean | number | string | Buffer | readonly Value[] | { readonly [key: string]: Value };

function header(small: number, smallMax: number, codes: readonly [number, number, number], length: number): Buffer {
  if (length <= smallMax) return Buffer.from([small | length]);
  if (length <= 0xffff) {
    const b = Buffer.alloc(3);
    b[0] = codes[1];
    b.writeUInt16BE(length, 1);
    return b;
  }
  const b = Buffer.alloc(5);
  b[0] = codes[2];
  b.writeUInt32BE(length, 1);
  return b;
}

function integer(n: number): Buffer {
  if (n >= 0) {
    if (n <= 0x7f) return Buffer.from([n]);
    if (n <= 0xff) return Buffer.from([0xcc, n]);
    if (n <= 0xffff) {
      const b = Buffer.alloc(3);
      b[0] = 0xcd;
      b.writeUInt16BE(n, 1);
      return b;
    }
    if (n <= 0xffffffff) {
      const b = Buffer.alloc(5);
      b[0] = 0xce;
      b.writeUInt32BE(n, 1);
      return b;
    }
    const b = Buffer.alloc(9);
    b[0] = 0xcf;
    b.writeBigUInt64BE(BigInt(n), 1);
    return b;
  }
  if (n >= -32) return Buffer.from([n & 0xff]);
  if (n >= -0x80) {
    const b = Buffer.alloc(2);
    b[0] = 0xd0;
    b.writeInt8(n, 1);
    return b;
  }
  if (n >= -0x8000) {
    const b = Buffer.alloc(3);
    b[0] = 0xd1;
    b.writeInt16BE(n, 1);
    return b;
  }
  if (n >= -0x80000000) {
    const b = Buffer.alloc(5);
    b[0] = 0xd2;
    b.writeInt32BE(n, 1);
    return b;
  }
  const b = Buffer.alloc(9);
  b[0] = 0xd3;
  b.writeBigInt64BE(BigInt(n), 1);
  return b;
}

function str(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  const n = bytes.length;
  let head: Buffer;
  if (n <= 31) head = Buffer.from([0xa0 | n]);
  else if (n <= 0xff) head = Buffer.from([0xd9, n]);
  else head = header(0, -1, [0, 0xda, 0xdb], n);
  return Buffer.concat([head, bytes]);
}

function bin(b: Buffer): Buffer {
  const n = b.length;
  const head = n <= 0xff ? Buffer.from([0xc4, n]) : header(0, -1, [0, 0xc5, 0xc6], n);
  return Buffer.concat([head, b]);
}

export function canonical(value: Value): Buffer {
  if (value === null) return Buffer.from([0xc0]);
  if (value === false) return Buffer.from([0xc2]);
  if (value === true) return Buffer.from([0xc3]);
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new Error(`the soak's canonical encoder covers integers only, not ${value}`);
    return integer(value);
  }
  if (typeof value === 'string') return str(value);
  if (Buffer.isBuffer(value)) return bin(value);
  if (Array.isArray(value)) {
    const items = (value as readonly Value[]).map(canonical);
    return Buffer.concat([header(0x90, 15, [0, 0xdc, 0xdd], items.length), ...items]);
  }
  const entries = Object.entries(value as Record<string, Value>).map(([k, v]) => [str(k), canonical(v)] as const);
  // memcmp order of the encoded keys, a proper prefix first (§6.2).
  entries.sort((a, b) => Buffer.compare(a[0], b[0]));
  return Buffer.concat([header(0x80, 15, [0, 0xde, 0xdf], entries.length), ...entries.flat()]);
}

/** First 16 bytes of SHA-256 over canonical [key, delete, state, ifVersion] (§6.4). */
export function fingerprint(key: string, deleted: boolean, state: Value | undefined, ifVersion: number | null): Buffer {
  const input = Buffer.concat([
    Buffer.from([0x94]),
    str(key),
    Buffer.from([deleted ? 0xc3 : 0xc2]),
    deleted ? Buffer.from([0xc0]) : canonical(state ?? null),
    ifVersion === null ? Buffer.from([0xc0]) : integer(ifVersion),
  ]);
  return createHash('sha256').update(input).digest().subarray(0, 16);
}
