import { readUtf8 } from './utf8.js';

/**
 * A small MessagePack decoder for what a server sends and what a client stores: maps become plain
 * objects (keys as strings; a `__proto__` key is an own property, never the prototype), integers
 * beyond ±2^53 BigInt, binaries Uint8Array. Extension types are refused (PROTOCOL.md §2.2). It
 * saves a web app the weight of a general decoder with native add-ons.
 */

export class DecodeError extends Error {
  override readonly name = 'DecodeError';
}

const MAX_DEPTH = 512;

class Reader {
  pos = 0;
  readonly view: DataView;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  need(n: number): number {
    const at = this.pos;
    if (at + n > this.buf.length) throw new DecodeError('truncated MessagePack');
    this.pos = at + n;
    return at;
  }
}

function readLen(r: Reader, size: 1 | 2 | 4): number {
  const at = r.need(size);
  return size === 1 ? r.buf[at]! : size === 2 ? r.view.getUint16(at) : r.view.getUint32(at);
}

function str(r: Reader, n: number): string {
  const at = r.need(n);
  return readUtf8(r.buf, at, at + n);
}

function bin(r: Reader, n: number): Uint8Array {
  const at = r.need(n);
  return r.buf.slice(at, at + n);
}

function arr(r: Reader, n: number, depth: number): unknown[] {
  if (n > r.buf.length - r.pos) throw new DecodeError('truncated MessagePack');
  const out = new Array<unknown>(n);
  for (let i = 0; i < n; i++) out[i] = value(r, depth + 1);
  return out;
}

function map(r: Reader, n: number, depth: number): Record<string, unknown> {
  if (n * 2 > r.buf.length - r.pos) throw new DecodeError('truncated MessagePack');
  const out: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const k = value(r, depth + 1);
    const key = typeof k === 'string' ? k : typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean' || k === null ? String(k) : undefined;
    if (key === undefined) throw new DecodeError('map key that is not a string, number, boolean or nil');
    const v = value(r, depth + 1);
    if (key === '__proto__') Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
    else out[key] = v;
  }
  return out;
}

function int64(big: bigint): number | bigint {
  return big >= -(2n ** 53n) && big <= 2n ** 53n ? Number(big) : big;
}

function value(r: Reader, depth: number): unknown {
  if (depth > MAX_DEPTH) throw new DecodeError('MessagePack nests too deep');
  const at = r.need(1);
  const b = r.buf[at]!;
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if (b >= 0xa0 && b <= 0xbf) return str(r, b & 0x1f);
  if (b >= 0x90 && b <= 0x9f) return arr(r, b & 0x0f, depth);
  if (b >= 0x80 && b <= 0x8f) return map(r, b & 0x0f, depth);
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return bin(r, readLen(r, 1));
    case 0xc5:
      return bin(r, readLen(r, 2));
    case 0xc6:
      return bin(r, readLen(r, 4));
    case 0xca:
      return r.view.getFloat32(r.need(4));
    case 0xcb:
      return r.view.getFloat64(r.need(8));
    case 0xcc:
      return r.buf[r.need(1)]!;
    case 0xcd:
      return r.view.getUint16(r.need(2));
    case 0xce:
      return r.view.getUint32(r.need(4));
    case 0xcf:
      return int64(r.view.getBigUint64(r.need(8)));
    case 0xd0:
      return r.view.getInt8(r.need(1));
    case 0xd1:
      return r.view.getInt16(r.need(2));
    case 0xd2:
      return r.view.getInt32(r.need(4));
    case 0xd3:
      return int64(r.view.getBigInt64(r.need(8)));
    case 0xd9:
      return str(r, readLen(r, 1));
    case 0xda:
      return str(r, readLen(r, 2));
    case 0xdb:
      return str(r, readLen(r, 4));
    case 0xdc:
      return arr(r, readLen(r, 2), depth);
    case 0xdd:
      return arr(r, readLen(r, 4), depth);
    case 0xde:
      return map(r, readLen(r, 2), depth);
    case 0xdf:
      return map(r, readLen(r, 4), depth);
    default:
      throw new DecodeError(`MessagePack type 0x${b.toString(16)} is not part of the protocol`);
  }
}

/** Decodes exactly one MessagePack value; throws DecodeError on anything else. */
export function decodeMsgpack(bytes: Uint8Array): unknown {
  const r = new Reader(bytes);
  const v = value(r, 0);
  if (r.pos !== bytes.length) throw new DecodeError('trailing bytes after the MessagePack value');
  return v;
}
