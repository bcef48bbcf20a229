/**
 * A MessagePack writer for fuzzing: it picks among every valid encoding of each value (fixint or
 * uint16 for 5, float64 for an integral number, str8 or str32 for a short string...), can emit
 * what the protocol forbids (extension types, the byte 0xc1, raw bytes), and records where each
 * length header sits so that a mutation can inflate or shrink exactly that length.
 */

/** An extension value (fixext or ext 8/16/32): the server must refuse the frame. */
export class Ext {
  constructor(
    readonly type: number,
    readonly data: Uint8Array,
  ) {}
}

/** Bytes spliced in as they are, e.g. 0xc1 or a lone header byte. */
export class Raw {
  constructor(readonly bytes: Uint8Array) {}
}

export type HeaderForm = 'fix4' | 'fix5' | 'u8' | 'u16' | 'u32';

export interface HeaderSite {
  readonly offset: number;
  readonly form: HeaderForm;
  readonly kind: 'str' | 'bin' | 'array' | 'map' | 'ext';
}

export interface Forged {
  readonly bytes: Buffer;
  readonly headers: readonly HeaderSite[];
}

class Out {
  private buf = Buffer.alloc(256);
  length = 0;
  readonly headers: HeaderSite[] = [];

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  byte(b: number): void {
    this.room(1);
    this.buf[this.length++] = b & 0xff;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  u16(v: number): void {
    this.room(2);
    this.buf.writeUInt16BE(v, this.length);
    this.length += 2;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32BE(v >>> 0, this.length);
    this.length += 4;
  }
  result(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }
}

type Pick = () => number;

function choose<T>(pick: Pick, options: readonly T[]): T {
  // Biased towards the first (shortest) form, as real encoders are.
  const r = pick();
  return r < 0.6 ? options[0]! : options[Math.floor(pick() * options.length)]!;
}

function writeLength(out: Out, kind: HeaderSite['kind'], n: number, pick: Pick): void {
  const forms: Array<{ form: HeaderForm; code: number; max: number }> = [];
  if (kind === 'str') {
    forms.push(
      { form: 'fix5', code: 0xa0, max: 31 },
      { form: 'u8', code: 0xd9, max: 0xff },
      { form: 'u16', code: 0xda, max: 0xffff },
      { form: 'u32', code: 0xdb, max: 0xffffffff },
    );
  } else if (kind === 'bin') {
    forms.push({ form: 'u8', code: 0xc4, max: 0xff }, { form: 'u16', code: 0xc5, max: 0xffff }, { form: 'u32', code: 0xc6, max: 0xffffffff });
  } else if (kind === 'array') {
    forms.push({ form: 'fix4', code: 0x90, max: 15 }, { form: 'u16', code: 0xdc, max: 0xffff }, { form: 'u32', code: 0xdd, max: 0xffffffff });
  } else if (kind === 'map') {
    forms.push({ form: 'fix4', code: 0x80, max: 15 }, { form: 'u16', code: 0xde, max: 0xffff }, { form: 'u32', code: 0xdf, max: 0xffffffff });
  }
  const f = choose(
    pick,
    forms.filter((x) => n <= x.max),
  );
  out.headers.push({ offset: out.length, form: f.form, kind });
  if (f.form === 'fix4' || f.form === 'fix5') out.byte(f.code | n);
  else {
    out.byte(f.code);
    if (f.form === 'u8') out.byte(n);
    else if (f.form === 'u16') out.u16(n);
    else out.u32(n);
  }
}

function writeInt(out: Out, v: number, pick: Pick): void {
  const forms: Array<() => void> = [];
  if (v >= 0 && v <= 0x7f) forms.push(() => out.byte(v));
  if (v >= -32 && v < 0) forms.push(() => out.byte(v & 0xff));
  if (v >= 0 && v <= 0xff)
    forms.push(() => {
      out.byte(0xcc);
      out.byte(v);
    });
  if (v >= 0 && v <= 0xffff)
    forms.push(() => {
      out.byte(0xcd);
      out.u16(v);
    });
  if (v >= 0 && v <= 0xffffffff)
    forms.push(() => {
      out.byte(0xce);
      out.u32(v);
    });
  if (v >= -0x80 && v <= 0x7f)
    forms.push(() => {
      out.byte(0xd0);
      out.byte(v & 0xff);
    });
  if (v >= -0x8000 && v <= 0x7fff)
    forms.push(() => {
      out.byte(0xd1);
      out.u16(v & 0xffff);
    });
  if (v >= -0x80000000 && v <= 0x7fffffff)
    forms.push(() => {
      out.byte(0xd2);
      out.u32(v | 0);
    });
  if (v >= 0)
    forms.push(() => {
      out.byte(0xcf);
      out.bytes(bigBytes(BigInt(v), false));
    });
  forms.push(() => {
    out.byte(0xd3);
    out.bytes(bigBytes(BigInt(v), true));
  });
  // An integral float is a valid integer on the wire (PROTOCOL.md §2.2).
  forms.push(() => writeFloat64(out, v));
  choose(pick, forms)();
}

function bigBytes(v: bigint, signed: boolean): Uint8Array {
  const b = Buffer.alloc(8);
  if (signed) b.writeBigInt64BE(BigInt.asIntN(64, v));
  else b.writeBigUInt64BE(BigInt.asUintN(64, v));
  return b;
}

function writeFloat64(out: Out, v: number): void {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(v);
  out.byte(0xcb);
  out.bytes(b);
}

function writeValue(out: Out, v: unknown, pick: Pick): void {
  if (v === null || v === undefined) return out.byte(0xc0);
  if (typeof v === 'boolean') return out.byte(v ? 0xc3 : 0xc2);
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) return writeInt(out, v, pick);
    if (Math.fround(v) === v || Number.isNaN(v)) {
      if (pick() < 0.5) {
        const b = Buffer.alloc(4);
        b.writeFloatBE(v);
        out.byte(0xca);
        return out.bytes(b);
      }
    }
    return writeFloat64(out, v);
  }
  if (typeof v === 'bigint') {
    if (v >= 0n) {
      out.byte(0xcf);
      return out.bytes(bigBytes(v, false));
    }
    out.byte(0xd3);
    return out.bytes(bigBytes(v, true));
  }
  if (typeof v === 'string') {
    const b = Buffer.from(v, 'utf8');
    writeLength(out, 'str', b.length, pick);
    return out.bytes(b);
  }
  if (v instanceof Raw) return out.bytes(v.bytes);
  if (v instanceof Ext) {
    const fixed: Record<number, number> = { 1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8 };
    const code = fixed[v.data.length];
    if (code !== undefined && pick() < 0.7) {
      out.byte(code);
    } else {
      out.headers.push({ offset: out.length, form: v.data.length <= 0xff ? 'u8' : v.data.length <= 0xffff ? 'u16' : 'u32', kind: 'ext' });
      if (v.data.length <= 0xff) {
        out.byte(0xc7);
        out.byte(v.data.length);
      } else if (v.data.length <= 0xffff) {
        out.byte(0xc8);
        out.u16(v.data.length);
      } else {
        out.byte(0xc9);
        out.u32(v.data.length);
      }
    }
    out.byte(v.type);
    return out.bytes(v.data);
  }
  if (v instanceof Uint8Array) {
    writeLength(out, 'bin', v.length, pick);
    return out.bytes(v);
  }
  if (Array.isArray(v)) {
    writeLength(out, 'array', v.length, pick);
    for (const item of v) writeValue(out, item, pick);
    return;
  }
  const entries: Array<[unknown, unknown]> = v instanceof Map ? [...v.entries()] : Object.entries(v as object);
  writeLength(out, 'map', entries.length, pick);
  for (const [k, item] of entries) {
    writeValue(out, k, pick);
    writeValue(out, item, pick);
  }
}

/** Encodes `value`, choosing each encoding form with `pick` (a seeded generator). */
export function forge(value: unknown, pick: Pick): Forged {
  const out = new Out();
  writeValue(out, value, pick);
  return { bytes: out.result(), headers: out.headers };
}

export type Mutation =
  | { readonly op: 'flip'; readonly at: number; readonly bit: number }
  | { readonly op: 'set'; readonly at: number; readonly byte: number }
  | { readonly op: 'truncate'; readonly at: number }
  | { readonly op: 'insert'; readonly at: number; readonly bytes: Uint8Array }
  | { readonly op: 'delete'; readonly at: number; readonly length: number }
  | { readonly op: 'trailing'; readonly bytes: Uint8Array }
  | { readonly op: 'repeat'; readonly at: number; readonly length: number; readonly times: number }
  /** Rewrites the length of the n-th recorded header (modulo the count) to `length`, within its form. */
  | { readonly op: 'length'; readonly site: number; readonly length: number };

const FORM_MAX: Record<HeaderForm, number> = { fix4: 15, fix5: 31, u8: 0xff, u16: 0xffff, u32: 0xffffffff };

/**
 * Applies the mutations in order. Length rewrites come first, while the recorded header offsets
 * still hold; positions are taken modulo the current length, so every mutation applies somewhere.
 */
export function mutate(forged: Forged, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(forged.bytes);
  const ordered = [...mutations.filter((m) => m.op === 'length'), ...mutations.filter((m) => m.op !== 'length')];
  for (const m of ordered) {
    switch (m.op) {
      case 'length': {
        if (forged.headers.length === 0) break;
        const site = forged.headers[m.site % forged.headers.length]!;
        const n = m.length % (FORM_MAX[site.form] + 1);
        const o = site.offset;
        if (site.form === 'fix4') b[o] = (b[o]! & 0xf0) | n;
        else if (site.form === 'fix5') b[o] = (b[o]! & 0xe0) | n;
        else if (site.form === 'u8') b[o + 1] = n;
        else if (site.form === 'u16') b.writeUInt16BE(n, o + 1);
        else b.writeUInt32BE(n >>> 0, o + 1);
        break;
      }
      case 'flip':
        if (b.length > 0) {
          const at = m.at % b.length;
          b[at] = b[at]! ^ (1 << (m.bit & 7));
        }
        break;
      case 'set':
        if (b.length > 0) b[m.at % b.length] = m.byte & 0xff;
        break;
      case 'truncate':
        b = b.subarray(0, b.length === 0 ? 0 : m.at % b.length);
        break;
      case 'insert': {
        const at = m.at % (b.length + 1);
        b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
        break;
      }
      case 'delete': {
        if (b.length === 0) break;
        const at = m.at % b.length;
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.length)]);
        break;
      }
      case 'trailing':
        b = Buffer.concat([b, m.bytes]);
        break;
      case 'repeat': {
        if (b.length === 0) break;
        const at = m.at % b.length;
        const slice = b.subarray(at, at + m.length);
        b = Buffer.concat([b.subarray(0, at), ...Array.from({ length: m.times }, () => slice), b.subarray(at)]);
        break;
      }
    }
  }
  return b;
}
