import { createHash } from 'node:crypto';

/**
 * Canonical msgpack: one byte sequence per value, whichever transport carried it, so that a put
 * sent as msgpack and retried as JSON has the same fingerprint. PROTOCOL.md ("Canonical form")
 * states these rules for implementers in other languages:
 * - integers (msgpack ints, and floats whose value is an integer of magnitude <= 2^53) use the
 *   shortest int form;
 * - every other number is a float64;
 * - strings are UTF-8 in the shortest str form, binaries the shortest bin form;
 * - map entries are sorted by the bytes of their canonical keys; keys are strings or integers and
 *   must be unique.
 * States are stored in this form too, so what the server returns equals what was sent as a value.
 */

export class CanonicalError extends Error {
  constructor(
    readonly kind: 'type' | 'limit',
    readonly path: string,
    readonly limit: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

export interface CanonicalLimits {
  /** Largest canonical encoding, in bytes. */
  readonly maxBytes: number;
  /** Deepest nesting of arrays and maps; a scalar has depth 0, `{}` depth 1. */
  readonly maxDepth: number;
  readonly bytesLimitName: string;
  readonly depthLimitName: string;
}

class Writer {
  buf: Buffer;
  pos = 0;
  constructor(
    size: number,
    private readonly max: number,
    private readonly path: string,
    private readonly limitName: string,
  ) {
    this.buf = Buffer.allocUnsafe(size);
  }
  ensure(n: number): void {
    const need = this.pos + n;
    if (need > this.max) {
      throw new CanonicalError('limit', this.path, this.limitName, `${this.path} exceeds ${this.max} bytes`);
    }
    if (need > this.buf.length) {
      const next = Buffer.allocUnsafe(Math.min(Math.max(need, this.buf.length * 2), this.max));
      this.buf.copy(next, 0, 0, this.pos);
      this.buf = next;
    }
  }
  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }
  bytes(src: Uint8Array): void {
    this.ensure(src.length);
    this.buf.set(src, this.pos);
    this.pos += src.length;
  }
  result(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

function writeInt(w: Writer, v: number | bigint): void {
  if (typeof v === 'bigint') {
    if (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) {
      writeInt(w, Number(v));
      return;
    }
    w.ensure(9);
    if (v > 0n) {
      w.buf[w.pos] = 0xcf;
      w.buf.writeBigUInt64BE(v, w.pos + 1);
    } else {
      w.buf[w.pos] = 0xd3;
      w.buf.writeBigInt64BE(v, w.pos + 1);
    }
    w.pos += 9;
    return;
  }
  if (Object.is(v, -0)) v = 0;
  if (v >= 0) {
    if (v < 0x80) return w.byte(v);
    if (v <= 0xff) { w.ensure(2); w.buf[w.pos] = 0xcc; w.buf[w.pos + 1] = v; w.pos += 2; return; }
    if (v <= 0xffff) { w.ensure(3); w.buf[w.pos] = 0xcd; w.buf.writeUInt16BE(v, w.pos + 1); w.pos += 3; return; }
    if (v <= 0xffffffff) { w.ensure(5); w.buf[w.pos] = 0xce; w.buf.writeUInt32BE(v, w.pos + 1); w.pos += 5; return; }
    w.ensure(9); w.buf[w.pos] = 0xcf; w.buf.writeBigUInt64BE(BigInt(v), w.pos + 1); w.pos += 9; return;
  }
  if (v >= -32) return w.byte(v & 0xff);
  if (v >= -0x80) { w.ensure(2); w.buf[w.pos] = 0xd0; w.buf.writeInt8(v, w.pos + 1); w.pos += 2; return; }
  if (v >= -0x8000) { w.ensure(3); w.buf[w.pos] = 0xd1; w.buf.writeInt16BE(v, w.pos + 1); w.pos += 3; return; }
  if (v >= -0x80000000) { w.ensure(5); w.buf[w.pos] = 0xd2; w.buf.writeInt32BE(v, w.pos + 1); w.pos += 5; return; }
  w.ensure(9); w.buf[w.pos] = 0xd3; w.buf.writeBigInt64BE(BigInt(v), w.pos + 1); w.pos += 9;
}

function writeHeader(w: Writer, len: number, fix: number, fixMax: number, op8: number | null, op16: number, op32: number): void {
  if (len <= fixMax) return w.byte(fix | len);
  if (op8 !== null && len <= 0xff) { w.ensure(2); w.buf[w.pos] = op8; w.buf[w.pos + 1] = len; w.pos += 2; return; }
  if (len <= 0xffff) { w.ensure(3); w.buf[w.pos] = op16; w.buf.writeUInt16BE(len, w.pos + 1); w.pos += 3; return; }
  w.ensure(5); w.buf[w.pos] = op32; w.buf.writeUInt32BE(len, w.pos + 1); w.pos += 5;
}

function writeString(w: Writer, s: string): void {
  const n = Buffer.byteLength(s, 'utf8');
  writeHeader(w, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
  w.ensure(n);
  if (n === s.length && n < 64) {
    // Short ASCII: a plain loop beats the native call's fixed cost.
    const buf = w.buf;
    for (let i = 0, p = w.pos; i < n; i++, p++) buf[p] = s.charCodeAt(i);
  } else {
    w.buf.write(s, w.pos, n, 'utf8');
  }
  w.pos += n;
}

/**
 * A string whose UTF-16 code units are the canonical bytes of a map key (each unit < 256), so
 * that comparing two of them with < orders keys exactly as comparing their encoded bytes would.
 * ASCII string keys, the common case, need no buffer at all.
 */
function keySortString(k: string | number | bigint, limits: CanonicalLimits, path: string): string {
  if (typeof k === 'string' && Buffer.byteLength(k, 'utf8') === k.length) {
    const n = k.length;
    if (n <= 31) return String.fromCharCode(0xa0 | n) + k;
    if (n <= 0xff) return String.fromCharCode(0xd9, n) + k;
    if (n <= 0xffff) return String.fromCharCode(0xda, n >> 8, n & 0xff) + k;
    return String.fromCharCode(0xdb, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff) + k;
  }
  const kw = new Writer(16, limits.maxBytes, path, limits.bytesLimitName);
  if (typeof k === 'string') writeString(kw, k);
  else writeInt(kw, k);
  return kw.result().toString('latin1');
}

function isPlainObject(v: object): v is Record<string, unknown> {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function write(w: Writer, v: unknown, depth: number, limits: CanonicalLimits, path: string): void {
  switch (typeof v) {
    case 'boolean':
      return w.byte(v ? 0xc3 : 0xc2);
    case 'number':
      if (Number.isInteger(v) && Math.abs(v) <= 2 ** 53) return writeInt(w, v);
      w.ensure(9);
      w.buf[w.pos] = 0xcb;
      w.buf.writeDoubleBE(Number.isNaN(v) ? NaN : v, w.pos + 1);
      w.pos += 9;
      return;
    case 'bigint':
      if (v < INT64_MIN || v > UINT64_MAX) throw new CanonicalError('type', path, undefined, `${path} is an integer outside int64/uint64`);
      return writeInt(w, v);
    case 'string':
      return writeString(w, v);
    case 'object':
      break;
    default:
      throw new CanonicalError('type', path, undefined, `${path} holds a ${typeof v}, which msgpack cannot carry`);
  }
  if (v === null) return w.byte(0xc0);
  if (v instanceof Uint8Array) {
    writeHeader(w, v.length, 0, -1, 0xc4, 0xc5, 0xc6);
    return w.bytes(v);
  }
  if (depth + 1 > limits.maxDepth) {
    throw new CanonicalError('limit', path, limits.depthLimitName, `${path} nests deeper than ${limits.maxDepth}`);
  }
  if (Array.isArray(v)) {
    writeHeader(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
    for (let i = 0; i < v.length; i++) write(w, v[i], depth + 1, limits, path);
    return;
  }
  let entries: Map<unknown, unknown> | Record<string, unknown>;
  let size: number;
  if (v instanceof Map) {
    entries = v;
    size = v.size;
  } else if (isPlainObject(v)) {
    entries = v;
    size = -1;
  } else {
    throw new CanonicalError('type', path, undefined, `${path} holds an unsupported object`);
  }
  // Every entry takes at least two bytes (a key and a value): a map that cannot fit is refused
  // before its keys are encoded and sorted, which for a million-key map takes most of a second.
  const room = (limits.maxBytes - w.pos - 1) / 2;
  const tooMany = (): CanonicalError => new CanonicalError('limit', path, limits.bytesLimitName, `${path} exceeds ${limits.maxBytes} bytes`);
  if (size > room) throw tooMany();
  const keyed: Array<{ sort: string; key: string | number | bigint; value: unknown }> = size >= 0 ? new Array(size) : [];
  let sorted = true;
  let i = 0;
  const each = (k: unknown, value: unknown): void => {
    if (i >= room) throw tooMany();
    if (typeof k !== 'string' && !(typeof k === 'number' && Number.isInteger(k) && Math.abs(k) <= 2 ** 53) && typeof k !== 'bigint') {
      throw new CanonicalError('type', path, undefined, `${path} has a map key that is not a string or an integer`);
    }
    if (typeof k === 'bigint' && (k < INT64_MIN || k > UINT64_MAX)) {
      throw new CanonicalError('type', path, undefined, `${path} has a map key outside int64/uint64`);
    }
    const sort = keySortString(k, limits, path);
    if (i > 0 && !(keyed[i - 1]!.sort < sort)) sorted = false;
    keyed[i++] = { sort, key: k, value };
  };
  if (entries instanceof Map) for (const [k, value] of entries) each(k, value);
  else for (const k in entries) if (Object.hasOwn(entries, k)) each(k, entries[k]);
  if (!sorted) {
    keyed.sort((a, b) => (a.sort < b.sort ? -1 : a.sort > b.sort ? 1 : 0));
    for (let i = 1; i < keyed.length; i++) {
      if (keyed[i - 1]!.sort === keyed[i]!.sort) {
        throw new CanonicalError('type', path, undefined, `${path} has a duplicate map key`);
      }
    }
  }
  writeHeader(w, keyed.length, 0x80, 15, null, 0xde, 0xdf);
  for (const { key, value } of keyed) {
    if (typeof key === 'string') writeString(w, key);
    else writeInt(w, key);
    write(w, value, depth + 1, limits, path);
  }
}

/** Canonical msgpack bytes of `value`; throws CanonicalError naming `path` and the limit. */
export function canonicalEncode(value: unknown, limits: CanonicalLimits, path: string): Buffer {
  const w = new Writer(1024, limits.maxBytes, path, limits.bytesLimitName);
  write(w, value, 0, limits, path);
  return Buffer.from(w.result());
}

const UNBOUNDED: CanonicalLimits = {
  maxBytes: 2 ** 31,
  maxDepth: 1024,
  bytesLimitName: '',
  depthLimitName: '',
};

/**
 * Fingerprint of a put's payload: the first 16 bytes of SHA-256 over the canonical msgpack array
 * [key, delete, state (nil when deleting), ifVersion (nil when absent)].
 * Stream, epoch and seq are not part of it: they address the ack, the fingerprint checks its body.
 */
export function putFingerprint(key: string, state: Buffer | null, ifVersion: number | null): Buffer {
  const hash = createHash('sha256');
  hash.update(Uint8Array.of(0x94));
  hash.update(canonicalEncode(key, UNBOUNDED, 'key'));
  hash.update(Uint8Array.of(state === null ? 0xc3 : 0xc2));
  hash.update(state ?? Uint8Array.of(0xc0));
  hash.update(ifVersion === null ? Uint8Array.of(0xc0) : canonicalEncode(ifVersion, UNBOUNDED, 'ifVersion'));
  return hash.digest().subarray(0, 16);
}
