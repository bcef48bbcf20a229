import { encodeInto, isAscii, utf8Length, writeUtf8Js } from './utf8.js';

/**
 * Canonical MessagePack (PROTOCOL.md §6): one byte sequence per value, whichever transport and
 * encoder carried it. The server encodes every incoming state with this, and the client encodes
 * each state once, at put(), so it measures the state exactly as the server will and every resend
 * carries the same bytes. Written on Uint8Array/DataView only, so it runs in browsers too.
 *
 * - integers (and floats whose value is an integer of magnitude <= 2^53) use the shortest int form;
 * - every other number is a float64 (every NaN the quiet NaN);
 * - strings are UTF-8 in the shortest str form, binaries the shortest bin form;
 * - map entries are sorted by the bytes of their canonical keys; keys are strings or integers
 *   (the same numbers as values: integral, magnitude <= 2^53) and must be unique.
 */

export class CanonicalError extends Error {
  override readonly name = 'CanonicalError';
  constructor(
    /** `type`: not encodable (INVALID_FIELD); `limit`: too large or too deep (LIMIT_EXCEEDED). */
    readonly kind: 'type' | 'limit',
    readonly path: string,
    /** The limit's name for `limit` errors (`bytesLimitName` or `depthLimitName`). */
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
  /** Refuse what JSON cannot carry (binary, bigint, Map, NaN, infinities): the JSON subprotocol. */
  readonly json?: boolean;
}

/** The largest integral number written as an integer, as a value or as a map key (§6.1). */
const MAX_INT_NUMBER = 2 ** 53;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;
const SAFE_MIN = BigInt(Number.MIN_SAFE_INTEGER);
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);
const hasOwn = Object.prototype.hasOwnProperty;

class Writer {
  buf: Uint8Array;
  view: DataView;
  pos = 0;

  constructor(
    size: number,
    public max: number,
    private path: string,
    private limitName: string,
  ) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
  }

  reset(max: number, path: string, limitName: string): void {
    this.pos = 0;
    this.max = max;
    this.path = path;
    this.limitName = limitName;
  }

  /** Checks the limit for `n` more bytes and makes room for them. */
  ensure(n: number): void {
    const need = this.pos + n;
    if (need > this.max) throw new CanonicalError('limit', this.path, this.limitName, `${this.path} exceeds ${this.max} bytes`);
    if (need > this.buf.length) this.grow(need);
  }

  /** Makes room without checking the limit (for a string's worst case before its real length). */
  grow(need: number): void {
    if (need <= this.buf.length) return;
    const next = new Uint8Array(Math.max(need, this.buf.length * 2));
    next.set(this.buf);
    this.buf = next;
    this.view = new DataView(next.buffer);
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
}

function writeNumberInt(w: Writer, v: number): void {
  if (v === 0) return w.byte(0); // also -0
  if (v > 0) {
    if (v < 0x80) return w.byte(v);
    if (v <= 0xff) {
      w.ensure(2);
      w.buf[w.pos] = 0xcc;
      w.buf[w.pos + 1] = v;
      w.pos += 2;
      return;
    }
    if (v <= 0xffff) {
      w.ensure(3);
      w.buf[w.pos] = 0xcd;
      w.view.setUint16(w.pos + 1, v);
      w.pos += 3;
      return;
    }
    if (v <= 0xffffffff) {
      w.ensure(5);
      w.buf[w.pos] = 0xce;
      w.view.setUint32(w.pos + 1, v);
      w.pos += 5;
      return;
    }
    w.ensure(9);
    w.buf[w.pos] = 0xcf;
    w.view.setUint32(w.pos + 1, Math.floor(v / 0x100000000));
    w.view.setUint32(w.pos + 5, v >>> 0);
    w.pos += 9;
    return;
  }
  if (v >= -32) return w.byte(v & 0xff);
  if (v >= -0x80) {
    w.ensure(2);
    w.buf[w.pos] = 0xd0;
    w.view.setInt8(w.pos + 1, v);
    w.pos += 2;
    return;
  }
  if (v >= -0x8000) {
    w.ensure(3);
    w.buf[w.pos] = 0xd1;
    w.view.setInt16(w.pos + 1, v);
    w.pos += 3;
    return;
  }
  if (v >= -0x80000000) {
    w.ensure(5);
    w.buf[w.pos] = 0xd2;
    w.view.setInt32(w.pos + 1, v);
    w.pos += 5;
    return;
  }
  w.ensure(9);
  w.buf[w.pos] = 0xd3;
  w.view.setBigInt64(w.pos + 1, BigInt(v));
  w.pos += 9;
}

function writeBigInt(w: Writer, v: bigint): void {
  if (v >= SAFE_MIN && v <= SAFE_MAX) return writeNumberInt(w, Number(v));
  w.ensure(9);
  if (v > 0n) {
    w.buf[w.pos] = 0xcf;
    w.view.setBigUint64(w.pos + 1, v);
  } else {
    w.buf[w.pos] = 0xd3;
    w.view.setBigInt64(w.pos + 1, v);
  }
  w.pos += 9;
}

function writeHeader(w: Writer, len: number, fix: number, fixMax: number, op8: number | null, op16: number, op32: number): void {
  if (len <= fixMax) return w.byte(fix | len);
  if (op8 !== null && len <= 0xff) {
    w.ensure(2);
    w.buf[w.pos] = op8;
    w.buf[w.pos + 1] = len;
    w.pos += 2;
    return;
  }
  if (len <= 0xffff) {
    w.ensure(3);
    w.buf[w.pos] = op16;
    w.view.setUint16(w.pos + 1, len);
    w.pos += 3;
    return;
  }
  w.ensure(5);
  w.buf[w.pos] = op32;
  w.view.setUint32(w.pos + 1, len);
  w.pos += 5;
}

function headerSize(n: number): number {
  return n <= 31 ? 1 : n <= 0xff ? 2 : n <= 0xffff ? 3 : 5;
}

function writeString(w: Writer, s: string): void {
  const units = s.length;
  if (units < 32 || encodeInto === undefined) {
    // Short strings: measure, then one header and a plain loop (cheaper than any native call).
    const n = utf8Length(s);
    if (n === units && n <= 31) {
      w.ensure(1 + n);
      const b = w.buf;
      let p = w.pos;
      b[p++] = 0xa0 | n;
      for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
      w.pos = p;
      return;
    }
    writeHeader(w, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
    w.ensure(n);
    w.pos = writeUtf8Js(w.buf, w.pos, s);
    return;
  }
  // Long strings: the platform encoder writes after the shortest header the string could have
  // (it has at least `units` bytes); a longer one moves the bytes up (non-ASCII text only).
  if (w.pos + units > w.max) {
    w.ensure(units); // throws the limit error: the string alone is too long
  }
  const start = w.pos;
  const h = headerSize(units);
  w.grow(start + h + units);
  let r = encodeInto(s, w.buf.subarray(start + h));
  if (r.read < units) {
    w.grow(start + h + units * 3);
    r = encodeInto(s, w.buf.subarray(start + h));
  }
  const n = r.written;
  const real = headerSize(n);
  if (start + real + n > w.max) w.ensure(real + n); // throws
  if (real !== h) {
    w.grow(start + real + n);
    w.buf.copyWithin(start + real, start + h, start + h + n);
  }
  writeHeader(w, n, 0xa0, 31, 0xd9, 0xda, 0xdb);
  w.pos = start + real + n;
}

/**
 * A string whose UTF-16 units are the canonical bytes of a map key (each unit < 256), so that
 * comparing two with < orders keys exactly as comparing their encoded bytes would. ASCII string
 * keys, the common case, need no buffer at all.
 */
function keySortString(k: string | number | bigint, limits: CanonicalLimits, path: string): string {
  if (typeof k === 'string' && isAscii(k)) {
    const n = k.length;
    if (n <= 31) return String.fromCharCode(0xa0 | n) + k;
    if (n <= 0xff) return String.fromCharCode(0xd9, n) + k;
    if (n <= 0xffff) return String.fromCharCode(0xda, n >> 8, n & 0xff) + k;
    return String.fromCharCode(0xdb, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff) + k;
  }
  // One writer for every key: a key is encoded whole before the next one (no user code runs).
  const kw = keyWriter;
  kw.reset(limits.maxBytes, path, limits.bytesLimitName);
  if (typeof k === 'string') writeString(kw, k);
  else if (typeof k === 'number') writeNumberInt(kw, k);
  else writeBigInt(kw, k);
  let out = '';
  for (let i = 0; i < kw.pos; i++) out += String.fromCharCode(kw.buf[i]!);
  return out;
}

const keyWriter = new Writer(64, 0, '', '');

function isPlainObject(v: object): v is Record<string, unknown> {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function typeError(path: string, message: string): CanonicalError {
  return new CanonicalError('type', path, undefined, `${path} ${message}`);
}

interface Entry {
  sort: string;
  key: string | number | bigint;
  value: unknown;
}

function write(w: Writer, v: unknown, depth: number, limits: CanonicalLimits, path: string): void {
  switch (typeof v) {
    case 'boolean':
      return w.byte(v ? 0xc3 : 0xc2);
    case 'number':
      if (Number.isInteger(v) && Math.abs(v) <= MAX_INT_NUMBER) return writeNumberInt(w, v);
      if (limits.json === true && !Number.isFinite(v)) throw typeError(path, 'holds NaN or an infinity, which JSON cannot carry');
      w.ensure(9);
      w.buf[w.pos] = 0xcb;
      w.view.setFloat64(w.pos + 1, Number.isNaN(v) ? NaN : v);
      w.pos += 9;
      return;
    case 'bigint':
      if (limits.json === true) throw typeError(path, 'holds a bigint, which JSON cannot carry');
      if (v < INT64_MIN || v > UINT64_MAX) throw typeError(path, 'is an integer outside int64/uint64');
      return writeBigInt(w, v);
    case 'string':
      return writeString(w, v);
    case 'object':
      break;
    default:
      throw typeError(path, `holds a ${typeof v}, which msgpack cannot carry`);
  }
  if (v === null) return w.byte(0xc0);
  if (v instanceof Uint8Array) {
    if (limits.json === true) throw typeError(path, 'holds binary data, which JSON cannot carry');
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
  let map: Map<unknown, unknown> | undefined;
  let obj: Record<string, unknown> | undefined;
  if (v instanceof Map) {
    if (limits.json === true) throw typeError(path, 'holds a Map, which JSON cannot carry; use a plain object');
    map = v;
  } else if (isPlainObject(v)) {
    obj = v;
  } else {
    throw typeError(path, 'holds an unsupported object (not a plain object, array, Map or Uint8Array)');
  }
  // Every entry takes at least two bytes (a key and a value): a map that cannot fit is refused
  // before its keys are encoded and sorted, which for a million-key map takes most of a second.
  const room = (w.max - w.pos - 1) / 2;
  const tooMany = (): CanonicalError => new CanonicalError('limit', path, limits.bytesLimitName, `${path} exceeds ${w.max} bytes`);
  if (map !== undefined && map.size > room) throw tooMany();
  const keyed: Entry[] = map !== undefined ? new Array(map.size) : [];
  let sorted = true;
  let i = 0;
  const each = (k: unknown, value: unknown): void => {
    if (i >= room) throw tooMany();
    if (typeof k === 'number') {
      if (!Number.isInteger(k) || Math.abs(k) > MAX_INT_NUMBER) throw typeError(path, 'has a map key that is not a string or an integer');
    } else if (typeof k === 'bigint') {
      if (k < INT64_MIN || k > UINT64_MAX) throw typeError(path, 'has a map key outside int64/uint64');
    } else if (typeof k !== 'string') {
      throw typeError(path, 'has a map key that is not a string or an integer');
    }
    const sort = keySortString(k, limits, path);
    if (i > 0 && !(keyed[i - 1]!.sort < sort)) sorted = false;
    keyed[i++] = { sort, key: k, value };
  };
  if (map !== undefined) for (const [k, value] of map) each(k, value);
  else for (const k in obj) if (hasOwn.call(obj, k)) each(k, obj![k]);
  if (!sorted) {
    keyed.sort((a, b) => (a.sort < b.sort ? -1 : a.sort > b.sort ? 1 : 0));
    for (let j = 1; j < keyed.length; j++) {
      if (keyed[j - 1]!.sort === keyed[j]!.sort) throw typeError(path, 'has a duplicate map key');
    }
  }
  writeHeader(w, keyed.length, 0x80, 15, null, 0xde, 0xdf);
  for (const { key, value } of keyed) {
    if (typeof key === 'string') writeString(w, key);
    else if (typeof key === 'number') writeNumberInt(w, key);
    else writeBigInt(w, key);
    write(w, value, depth + 1, limits, path);
  }
}

/**
 * Canonical MessagePack bytes of `value`, in a buffer of their own; throws CanonicalError naming
 * `path` and the limit. The server wraps them without copying
 * (Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength)).
 */
export function canonicalEncode(value: unknown, limits: CanonicalLimits, path: string): Uint8Array {
  // One scratch writer serves every call (encoding is synchronous); the result is an exact copy.
  // A getter that encodes again while this runs gets a writer of its own.
  let w = scratch;
  if (w === undefined) w = new Writer(SCRATCH_BYTES, limits.maxBytes, path, limits.bytesLimitName);
  else {
    scratch = undefined;
    w.reset(limits.maxBytes, path, limits.bytesLimitName);
  }
  try {
    write(w, value, 0, limits, path);
    return w.buf.slice(0, w.pos);
  } finally {
    // A writer grown far past the usual size is dropped rather than kept alive.
    if (w.buf.length <= SCRATCH_KEEP_BYTES) scratch = w;
  }
}

const SCRATCH_BYTES = 4096;
const SCRATCH_KEEP_BYTES = 256 * 1024;
let scratch: Writer | undefined = new Writer(SCRATCH_BYTES, 0, '', '');

// ---- message framing (the client's own frames; the server's replies use its own encoder) ----

/** A growable byte writer for whole messages, without a size limit. */
export class MessageWriter {
  private readonly w = new Writer(128, 2 ** 32, 'message', '');

  map(entries: number): this {
    writeHeader(this.w, entries, 0x80, 15, null, 0xde, 0xdf);
    return this;
  }
  array(items: number): this {
    writeHeader(this.w, items, 0x90, 15, null, 0xdc, 0xdd);
    return this;
  }
  str(s: string): this {
    writeString(this.w, s);
    return this;
  }
  int(v: number): this {
    writeNumberInt(this.w, v);
    return this;
  }
  bool(v: boolean): this {
    this.w.byte(v ? 0xc3 : 0xc2);
    return this;
  }
  raw(bytes: Uint8Array): this {
    this.w.bytes(bytes);
    return this;
  }
  /** A copy of the bytes written (the writer's buffer is reused no further). */
  finish(): Uint8Array {
    return this.w.buf.slice(0, this.w.pos);
  }
}
