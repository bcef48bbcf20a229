import { Unpackr } from 'msgpackr';
import type { Limits } from './types.js';

/**
 * Encoding without Node built-ins (the core client runs in browsers and React Native).
 *
 * States are encoded once, at put(), into the canonical MessagePack form of PROTOCOL.md §6; the
 * outbox keeps those bytes and every resend splices the same bytes into its frame, so a retry can
 * never differ from the first send. Encoding canonically also measures the state exactly as the
 * server will, so a put the server would refuse as too large or malformed is refused here, before
 * it gets a seq (a refused put consumes no seq, which would leave a hole in contiguous mode).
 */

export class StateProblem extends Error {
  constructor(
    readonly code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED',
    readonly limit: 'maxStateBytes' | 'maxStateDepth' | undefined,
    message: string,
  ) {
    super(message);
  }
}

class Writer {
  buf: Uint8Array;
  view: DataView;
  pos = 0;

  constructor(size: number, private readonly max: number) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
  }

  ensure(n: number): void {
    const need = this.pos + n;
    if (need > this.max) throw new StateProblem('LIMIT_EXCEEDED', 'maxStateBytes', `state exceeds ${this.max} bytes in canonical form`);
    if (need <= this.buf.length) return;
    const next = new Uint8Array(Math.max(need, this.buf.length * 2));
    next.set(this.buf.subarray(0, this.pos));
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

  result(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

/** UTF-8 length, counting a lone surrogate as U+FFFD (3 bytes), like the server's decoder. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function writeUtf8(w: Writer, s: string, len: number): void {
  w.ensure(len);
  const b = w.buf;
  let p = w.pos;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      b[p++] = c;
    } else if (c < 0x800) {
      b[p++] = 0xc0 | (c >> 6);
      b[p++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        c = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
        b[p++] = 0xf0 | (c >> 18);
        b[p++] = 0x80 | ((c >> 12) & 0x3f);
        b[p++] = 0x80 | ((c >> 6) & 0x3f);
        b[p++] = 0x80 | (c & 0x3f);
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      b[p++] = 0xe0 | (c >> 12);
      b[p++] = 0x80 | ((c >> 6) & 0x3f);
      b[p++] = 0x80 | (c & 0x3f);
    }
  }
  w.pos = p;
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

function writeString(w: Writer, s: string): void {
  const len = utf8Length(s);
  writeHeader(w, len, 0xa0, 31, 0xd9, 0xda, 0xdb);
  writeUtf8(w, s, len);
}

function writeInt(w: Writer, v: number): void {
  if (Object.is(v, -0)) v = 0;
  if (v >= 0) {
    if (v < 0x80) return w.byte(v);
    if (v <= 0xff) { w.ensure(2); w.buf[w.pos] = 0xcc; w.buf[w.pos + 1] = v; w.pos += 2; return; }
    if (v <= 0xffff) { w.ensure(3); w.buf[w.pos] = 0xcd; w.view.setUint16(w.pos + 1, v); w.pos += 3; return; }
    if (v <= 0xffffffff) { w.ensure(5); w.buf[w.pos] = 0xce; w.view.setUint32(w.pos + 1, v); w.pos += 5; return; }
    w.ensure(9); w.buf[w.pos] = 0xcf; w.view.setBigUint64(w.pos + 1, BigInt(v)); w.pos += 9; return;
  }
  if (v >= -32) return w.byte(v & 0xff);
  if (v >= -0x80) { w.ensure(2); w.buf[w.pos] = 0xd0; w.view.setInt8(w.pos + 1, v); w.pos += 2; return; }
  if (v >= -0x8000) { w.ensure(3); w.buf[w.pos] = 0xd1; w.view.setInt16(w.pos + 1, v); w.pos += 3; return; }
  if (v >= -0x80000000) { w.ensure(5); w.buf[w.pos] = 0xd2; w.view.setInt32(w.pos + 1, v); w.pos += 5; return; }
  w.ensure(9); w.buf[w.pos] = 0xd3; w.view.setBigInt64(w.pos + 1, BigInt(v)); w.pos += 9;
}

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

function writeBigInt(w: Writer, v: bigint): void {
  if (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) return writeInt(w, Number(v));
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

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

function isPlainObject(v: object): v is Record<string, unknown> {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

interface EncodeContext {
  readonly maxDepth: number;
  readonly maxBytes: number;
  /** JSON subprotocol: only values JSON can carry. */
  readonly json: boolean;
}

function invalid(message: string): StateProblem {
  return new StateProblem('INVALID_FIELD', undefined, message);
}

function write(w: Writer, v: unknown, depth: number, ctx: EncodeContext): void {
  switch (typeof v) {
    case 'boolean':
      return w.byte(v ? 0xc3 : 0xc2);
    case 'number':
      if (Number.isInteger(v) && Math.abs(v) <= 2 ** 53) return writeInt(w, v);
      if (ctx.json && !Number.isFinite(v)) throw invalid('state holds NaN or an infinity, which JSON cannot carry');
      w.ensure(9);
      w.buf[w.pos] = 0xcb;
      w.view.setFloat64(w.pos + 1, Number.isNaN(v) ? NaN : v);
      w.pos += 9;
      return;
    case 'bigint':
      if (ctx.json) throw invalid('state holds a bigint, which JSON cannot carry');
      if (v < INT64_MIN || v > UINT64_MAX) throw invalid('state holds an integer outside int64/uint64');
      return writeBigInt(w, v);
    case 'string':
      return writeString(w, v);
    case 'object':
      break;
    default:
      throw invalid(`state holds a ${typeof v}, which MessagePack cannot carry`);
  }
  if (v === null) return w.byte(0xc0);
  if (v instanceof Uint8Array) {
    if (ctx.json) throw invalid('state holds binary data, which JSON cannot carry');
    writeHeader(w, v.length, 0, -1, 0xc4, 0xc5, 0xc6);
    return w.bytes(v);
  }
  if (depth + 1 > ctx.maxDepth) {
    throw new StateProblem('LIMIT_EXCEEDED', 'maxStateDepth', `state nests deeper than ${ctx.maxDepth} levels`);
  }
  if (Array.isArray(v)) {
    writeHeader(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
    for (let i = 0; i < v.length; i++) write(w, v[i], depth + 1, ctx);
    return;
  }
  let entries: Array<[unknown, unknown]>;
  if (v instanceof Map) {
    if (ctx.json) throw invalid('state holds a Map, which JSON cannot carry; use a plain object');
    entries = [...v.entries()];
  } else if (isPlainObject(v)) {
    entries = Object.entries(v);
  } else {
    throw invalid('state holds an object that is not a plain object, array, Map or Uint8Array (a Date, a class instance…)');
  }
  const keyed: Array<{ key: Uint8Array; value: unknown }> = [];
  for (const [k, value] of entries) {
    const kw = new Writer(16, ctx.maxBytes);
    if (typeof k === 'string') writeString(kw, k);
    else if (typeof k === 'number' && Number.isSafeInteger(k)) writeInt(kw, k);
    else if (typeof k === 'bigint') writeBigInt(kw, k);
    else throw invalid('state has a map key that is not a string or an integer');
    keyed.push({ key: kw.result(), value });
  }
  keyed.sort((a, b) => compareBytes(a.key, b.key));
  for (let i = 1; i < keyed.length; i++) {
    if (compareBytes(keyed[i - 1]!.key, keyed[i]!.key) === 0) throw invalid('state has a duplicate map key');
  }
  writeHeader(w, keyed.length, 0x80, 15, null, 0xde, 0xdf);
  for (const { key, value } of keyed) {
    w.bytes(key);
    write(w, value, depth + 1, ctx);
  }
}

/** Canonical MessagePack of a state; throws StateProblem. */
export function encodeState(value: unknown, limits: Pick<Limits, 'maxStateBytes' | 'maxStateDepth'>, json: boolean): Uint8Array {
  const w = new Writer(64, limits.maxStateBytes);
  write(w, value, 0, { maxDepth: limits.maxStateDepth, maxBytes: limits.maxStateBytes, json });
  return w.result();
}

// Names may not hold C0 controls or DEL (PROTOCOL.md §4).
const CONTROL = /[\u0000-\u001f\u007f]/;

/** Why a stream or key name would be refused, or null. */
export function nameProblem(value: unknown, field: string, maxBytes: number): { code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED'; message: string } | null {
  if (typeof value !== 'string') return { code: 'INVALID_FIELD', message: `${field} must be a string` };
  if (value.length === 0) return { code: 'INVALID_FIELD', message: `${field} must not be empty` };
  if (utf8Length(value) > maxBytes) return { code: 'LIMIT_EXCEEDED', message: `${field} exceeds ${maxBytes} UTF-8 bytes` };
  if (CONTROL.test(value)) return { code: 'INVALID_FIELD', message: `${field} must not contain control characters` };
  return null;
}

/** What a put frame needs of an outbox entry. */
export interface WirePut {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly state: Uint8Array | null;
  readonly ifVersion: number | null;
}

const UNBOUNDED = 2 ** 31;

/**
 * One put as a MessagePack map. The correlation id is the seq: unique among the puts of one
 * connection (an epoch changes only between connections), and equal on every resend, so a
 * replayed answer is byte-identical to the first but for its replay flag.
 */
export function encodePutMsgpack(p: WirePut): Uint8Array {
  const w = new Writer(64 + (p.state?.length ?? 0), UNBOUNDED);
  w.byte(0x80 | (p.ifVersion === null ? 6 : 7));
  writeString(w, 'id'); writeInt(w, p.seq);
  writeString(w, 'stream'); writeString(w, p.stream);
  writeString(w, 'epoch'); writeInt(w, p.epoch);
  writeString(w, 'seq'); writeInt(w, p.seq);
  writeString(w, 'key'); writeString(w, p.key);
  if (p.state === null) {
    writeString(w, 'delete');
    w.byte(0xc3);
  } else {
    writeString(w, 'state');
    w.bytes(p.state);
  }
  if (p.ifVersion !== null) {
    writeString(w, 'ifVersion');
    writeInt(w, p.ifVersion);
  }
  return w.result();
}

/** Bytes of a put message around its puts: fixmap, "type", "put", "puts", array header. */
export const MSGPACK_FRAME_OVERHEAD = 1 + 5 + 4 + 5 + 5;

export function msgpackPutFrame(puts: readonly Uint8Array[]): Uint8Array {
  let size = MSGPACK_FRAME_OVERHEAD;
  for (const p of puts) size += p.length;
  const w = new Writer(size, UNBOUNDED);
  w.byte(0x82);
  writeString(w, 'type'); writeString(w, 'put');
  writeString(w, 'puts');
  writeHeader(w, puts.length, 0x90, 15, null, 0xdc, 0xdd);
  for (const p of puts) w.bytes(p);
  return w.result();
}

export function msgpackMessage(message: Record<string, string | number | readonly string[]>): Uint8Array {
  const w = new Writer(128, UNBOUNDED);
  const entries = Object.entries(message);
  writeHeader(w, entries.length, 0x80, 15, null, 0xde, 0xdf);
  for (const [k, v] of entries) {
    writeString(w, k);
    if (typeof v === 'string') writeString(w, v);
    else if (typeof v === 'number') writeInt(w, v);
    else {
      writeHeader(w, v.length, 0x90, 15, null, 0xdc, 0xdd);
      for (const s of v) writeString(w, s);
    }
  }
  return w.result();
}

// The server sends only maps, strings, numbers, booleans and nil; plain objects are enough. It
// writes integers beyond 32 bits (committedAt) as int64/uint64: 'auto' reads them as numbers up to
// 2^53 and as BigInt beyond ('auto' is implemented but missing from msgpackr's types).
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' as 'bigint' });

export function decodeMsgpack(data: Uint8Array): unknown {
  return unpackr.unpack(data);
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
