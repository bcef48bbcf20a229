import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../src/config.js';
import { CanonicalError, canonicalEncode, putFingerprint, type CanonicalLimits } from '../src/protocol/canonical.js';
import { decodeFrame, ENVELOPE_DEPTH } from '../src/protocol/codec.js';
import { limitsOf, parseMessage, type Limits } from '../src/protocol/messages.js';
import type { Put } from '../src/store/store.js';

const LIMITS: CanonicalLimits = { maxBytes: 1 << 20, maxDepth: 64, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };
const enc = (v: unknown, limits: CanonicalLimits = LIMITS): string => canonicalEncode(v, limits, 'state').toString('hex');
const hex = (s: string): string => s.replace(/\s+/g, '');

const WIRE_LIMITS: Limits = limitsOf(defaultConfig());
const packr = new Packr({ useRecords: false });

function caught(fn: () => unknown): CanonicalError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CanonicalError);
    return err as CanonicalError;
  }
  throw new Error('expected a CanonicalError, nothing was thrown');
}

/** The validated put a frame carries, decoded exactly as the server does. */
function putFromFrame(data: Buffer, format: 'msgpack' | 'json'): Put {
  const value = decodeFrame(data, format === 'msgpack', format, WIRE_LIMITS.maxStateDepth + ENVELOPE_DEPTH);
  const message = parseMessage(value, WIRE_LIMITS, 'default');
  if (message.type !== 'put') throw new Error('not a put message');
  const parsed = message.puts[0]!;
  if (!parsed.ok) throw new Error(`put rejected: ${JSON.stringify(parsed.result)}`);
  return parsed.put;
}

function viaMsgpack(p: object): Put {
  return putFromFrame(packr.pack({ type: 'put', puts: [p] }), 'msgpack');
}

function viaJson(p: object): Put {
  return putFromFrame(Buffer.from(JSON.stringify({ type: 'put', puts: [p] })), 'json');
}

/** A msgpack put frame whose state is given as raw bytes, to control the wire form of numbers. */
function frameWithRawState(stateBytes: Buffer, fields: Record<string, unknown> = {}): Buffer {
  const p = { id: 1, stream: 's', epoch: 1, seq: 1, key: 'k', ...fields };
  const entries = Object.entries(p);
  return Buffer.concat([
    Buffer.from(hex('82 a4 74797065 a3 707574 a4 70757473 91'), 'hex'),
    Buffer.from([0x80 | (entries.length + 1)]),
    ...entries.map(([k, v]) => Buffer.concat([packr.pack(k), packr.pack(v)])),
    packr.pack('state'),
    stateBytes,
  ]);
}

describe('canonical integers', () => {
  it.each<[number, string]>([
    [0, '00'],
    [1, '01'],
    [127, '7f'],
    [128, 'cc80'],
    [255, 'ccff'],
    [256, 'cd0100'],
    [65535, 'cdffff'],
    [65536, 'ce00010000'],
    [2 ** 32 - 1, 'ceffffffff'],
    [2 ** 32, 'cf0000000100000000'],
    [2 ** 53 - 1, 'cf001fffffffffffff'],
    [2 ** 53, 'cf0020000000000000'],
    [-1, 'ff'],
    [-32, 'e0'],
    [-33, 'd0df'],
    [-128, 'd080'],
    [-129, 'd1ff7f'],
    [-32768, 'd18000'],
    [-32769, 'd2ffff7fff'],
    [-(2 ** 31), 'd280000000'],
    [-(2 ** 31) - 1, 'd3ffffffff7fffffff'],
    [-(2 ** 53), 'd3ffe0000000000000'],
  ])('encodes %d in its shortest int form %s', (value, expected) => {
    expect(enc(value)).toBe(expected);
  });

  it.each<[bigint, string]>([
    [0n, '00'],
    [200n, 'ccc8'],
    [-33n, 'd0df'],
    [2n ** 53n, 'cf0020000000000000'],
    [2n ** 53n + 1n, 'cf0020000000000001'],
    [2n ** 63n - 1n, 'cf7fffffffffffffff'],
    [2n ** 63n, 'cf8000000000000000'],
    [2n ** 64n - 1n, 'cfffffffffffffffff'],
    [-(2n ** 53n) - 1n, 'd3ffdfffffffffffff'],
    [-(2n ** 63n), 'd38000000000000000'],
  ])('encodes the BigInt %s as %s', (value, expected) => {
    expect(enc(value)).toBe(expected);
  });

  it('encodes a BigInt and a number of the same value identically', () => {
    for (const n of [0, 1, 127, 128, -33, 2 ** 32, 2 ** 53 - 1, 2 ** 53, -(2 ** 53)]) {
      expect(enc(BigInt(n)), String(n)).toBe(enc(n));
    }
  });

  it('rejects BigInts outside int64 and uint64 as a type error', () => {
    expect(caught(() => enc(2n ** 64n))).toMatchObject({ kind: 'type' });
    expect(caught(() => enc(-(2n ** 63n) - 1n))).toMatchObject({ kind: 'type' });
  });

  it('encodes -0 as the integer 0', () => {
    expect(enc(-0)).toBe('00');
    expect(enc({ a: -0 })).toBe(enc({ a: 0 }));
  });

  it('encodes an integral float sent as float64 or float32 on the wire like the int', () => {
    const asInt = viaMsgpack({ id: 1, stream: 's', epoch: 1, seq: 1, key: 'k', state: { n: 3 } });
    const asFloat64 = putFromFrame(frameWithRawState(Buffer.from(hex('81 a1 6e cb 4008000000000000'), 'hex')), 'msgpack');
    const asFloat32 = putFromFrame(frameWithRawState(Buffer.from(hex('81 a1 6e ca 40400000'), 'hex')), 'msgpack');
    const asUint64 = putFromFrame(frameWithRawState(Buffer.from(hex('81 a1 6e cf 0000000000000003'), 'hex')), 'msgpack');
    expect(asInt.state!.toString('hex')).toBe(hex('81 a1 6e 03'));
    expect(asFloat64.state).toEqual(asInt.state);
    expect(asFloat32.state).toEqual(asInt.state);
    expect(asUint64.state).toEqual(asInt.state);
    expect(asFloat64.fingerprint).toEqual(asInt.fingerprint);
  });
});

describe('canonical floats', () => {
  it.each<[number, string]>([
    [1.5, 'cb3ff8000000000000'],
    [-0.1, 'cbbfb999999999999a'],
    [2 ** 53 + 2, 'cb4340000000000001'],
    [2 ** 60, 'cb43b0000000000000'],
    [-(2 ** 60), 'cbc3b0000000000000'],
    [Number.MAX_VALUE, 'cb7fefffffffffffff'],
    [Number.MIN_VALUE, 'cb0000000000000001'],
    [Infinity, 'cb7ff0000000000000'],
    [-Infinity, 'cbfff0000000000000'],
  ])('encodes %d as float64 %s', (value, expected) => {
    expect(enc(value)).toBe(expected);
  });

  it('encodes every NaN as the same float64', () => {
    expect(enc(NaN)).toBe('cb7ff8000000000000');
    const otherNaN = new DataView(new ArrayBuffer(8));
    otherNaN.setUint32(0, 0x7ff00000);
    otherNaN.setUint32(4, 1);
    expect(enc(otherNaN.getFloat64(0))).toBe('cb7ff8000000000000');
  });

  it('encodes a non-integral float32 from the wire as the float64 of the same value', () => {
    const p = putFromFrame(frameWithRawState(Buffer.from(hex('ca 3fc00000'), 'hex')), 'msgpack');
    expect(p.state!.toString('hex')).toBe('cb3ff8000000000000');
  });
});

describe('canonical strings, binaries and containers', () => {
  it.each<[number, string]>([
    [0, 'a0'],
    [31, 'bf'],
    [32, 'd920'],
    [255, 'd9ff'],
    [256, 'da0100'],
    [65535, 'daffff'],
    [65536, 'db00010000'],
  ])('gives a string of %i UTF-8 bytes the header %s', (length, header) => {
    expect(enc('x'.repeat(length))).toBe(header + '78'.repeat(length));
  });

  it('measures strings in UTF-8 bytes, not UTF-16 units', () => {
    expect(enc('é')).toBe('a2c3a9');
    expect(enc('😀')).toBe('a4f09f9880');
    expect(enc('é'.repeat(16))).toBe('d920' + 'c3a9'.repeat(16));
  });

  it.each<[number, string]>([
    [0, 'c400'],
    [1, 'c401'],
    [255, 'c4ff'],
    [256, 'c50100'],
    [65535, 'c5ffff'],
    [65536, 'c600010000'],
  ])('gives a binary of %i bytes the header %s and keeps its bytes', (length, header) => {
    const bytes = Uint8Array.from({ length }, (_, i) => (i * 7 + 3) & 0xff);
    expect(enc(bytes)).toBe(header + Buffer.from(bytes).toString('hex'));
  });

  it('keeps a binary distinct from a string and from an array of its bytes', () => {
    expect(enc(Buffer.from('ab'))).toBe('c4026162');
    expect(enc('ab')).toBe('a26162');
    expect(enc([0x61, 0x62])).toBe('926162');
  });

  it('round-trips a binary through a msgpack put unchanged', () => {
    const bytes = Uint8Array.from({ length: 300 }, (_, i) => 255 - (i & 0xff));
    const p = viaMsgpack({ id: 1, stream: 's', epoch: 1, seq: 1, key: 'k', state: { blob: bytes } });
    expect(p.state!.toString('hex')).toBe(hex('81 a4 626c6f62 c5 012c') + Buffer.from(bytes).toString('hex'));
  });

  it.each<[number, string]>([
    [0, '90'],
    [15, '9f'],
    [16, 'dc0010'],
    [65535, 'dcffff'],
    [65536, 'dd00010000'],
  ])('gives an array of %i items the header %s', (length, header) => {
    expect(enc(new Array(length).fill(null)).slice(0, header.length)).toBe(header);
    expect(enc(new Array(length).fill(null)).length).toBe(header.length + 2 * length);
  });

  it.each<[number, string]>([
    [0, '80'],
    [15, '8f'],
    [16, 'de0010'],
    [65536, 'df00010000'],
  ])('gives a map of %i entries the header %s', (size, header) => {
    const m = new Map<number, null>();
    for (let i = 0; i < size; i++) m.set(i, null);
    expect(enc(m).slice(0, header.length)).toBe(header);
  });

  it('encodes nil, booleans and nested containers', () => {
    expect(enc(null)).toBe('c0');
    expect(enc(true)).toBe('c3');
    expect(enc(false)).toBe('c2');
    expect(enc([[], {}, [null]])).toBe('93908091c0');
  });

  it('rejects values msgpack cannot carry as type errors', () => {
    for (const v of [
      undefined,
      () => 1,
      Symbol('s'),
      new Date(0),
      new (class Point {
        x = 1;
      })(),
      new Set([1]),
      [undefined],
    ]) {
      expect(caught(() => enc(v))).toMatchObject({ kind: 'type', limit: undefined });
    }
  });
});

describe('canonical map keys', () => {
  it('sorts entries by the bytes of their canonical keys, whatever the insertion order', () => {
    expect(enc({ b: 1, a: 2 })).toBe(hex('82 a161 02 a162 01'));
    expect(enc({ a: 2, b: 1 })).toBe(hex('82 a161 02 a162 01'));
    // Shorter strings sort first (the header byte holds the length), and integers before strings.
    expect(enc({ aa: 1, b: 2 })).toBe(hex('82 a162 02 a26161 01'));
    expect(
      enc(
        new Map<unknown, number>([
          ['a', 1],
          [200, 2],
          [-1, 3],
          [5, 4],
        ]),
      ),
    ).toBe(hex('84 05 04 a161 01 cc c8 02 ff 03'));
  });

  it('gives the same bytes for any order of the same entries, in plain objects and Maps', () => {
    const key = fc.oneof(fc.string({ maxLength: 6 }), fc.integer({ min: -300, max: 70_000 }));
    const value = fc.oneof(fc.integer(), fc.string(), fc.double(), fc.constant(null), fc.array(fc.integer(), { maxLength: 3 }));
    const entries = fc.uniqueArray(fc.tuple(key, value), { selector: ([k]) => k, maxLength: 12 });
    fc.assert(
      fc.property(
        entries.chain((e) => fc.tuple(fc.constant(e), fc.shuffledSubarray(e, { minLength: e.length, maxLength: e.length }))),
        ([original, shuffled]) => {
          const a = canonicalEncode(new Map(original), LIMITS, 'state');
          const b = canonicalEncode(new Map(shuffled), LIMITS, 'state');
          expect(b.equals(a)).toBe(true);
          const stringKeyed = original.filter(([k]) => typeof k === 'string');
          const shuffledStringKeyed = shuffled.filter(([k]) => typeof k === 'string');
          const c = canonicalEncode(Object.fromEntries(stringKeyed), LIMITS, 'state');
          const d = canonicalEncode(new Map(shuffledStringKeyed), LIMITS, 'state');
          expect(d.equals(c)).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('rejects two keys that encode to the same bytes', () => {
    expect(
      caught(() =>
        enc(
          new Map<unknown, number>([
            [1, 1],
            [1n, 2],
          ]),
        ),
      ),
    ).toMatchObject({ kind: 'type' });
    expect(
      caught(() =>
        enc({
          x: new Map<unknown, number>([
            [2 ** 40, 1],
            [2n ** 40n, 2],
          ]),
        }),
      ),
    ).toMatchObject({ kind: 'type' });
  });

  it.each<[string, unknown]>([
    ['boolean', true],
    ['null', null],
    ['float', 1.5],
    ['unsafe integer', 2 ** 60],
    ['binary', new Uint8Array([1])],
    ['array', [1]],
    ['map', new Map()],
  ])('rejects a %s map key', (_name, key) => {
    expect(caught(() => enc(new Map([[key, 1]])))).toMatchObject({ kind: 'type', limit: undefined });
  });

  it('rejects a boolean map key arriving in a msgpack frame as an invalid state', () => {
    const data = frameWithRawState(Buffer.from(hex('81 c3 01'), 'hex'));
    const value = decodeFrame(data, true, 'msgpack', 40);
    const message = parseMessage(value, WIRE_LIMITS, 'default');
    expect(message.type === 'put' && message.puts[0]).toMatchObject({
      ok: false,
      result: { outcome: 'invalid', error: { code: 'INVALID_FIELD', field: 'state' } },
    });
  });
});

describe('canonical limits', () => {
  const small = (maxBytes: number, maxDepth: number): CanonicalLimits => ({
    maxBytes,
    maxDepth,
    bytesLimitName: 'maxStateBytes',
    depthLimitName: 'maxStateDepth',
  });

  it('accepts an encoding of exactly maxBytes and names maxStateBytes one byte over', () => {
    // 'x' * 29 encodes to 30 bytes.
    expect(canonicalEncode('x'.repeat(29), small(30, 4), 'state')).toHaveLength(30);
    const err = caught(() => canonicalEncode('x'.repeat(30), small(30, 4), 'state'));
    expect(err).toMatchObject({ kind: 'limit', limit: 'maxStateBytes', path: 'state' });
    expect(err.message).toMatch(/30/);
  });

  it('counts map keys and headers towards maxBytes', () => {
    const value = { ['k'.repeat(20)]: 'v'.repeat(20) };
    const exact = canonicalEncode(value, LIMITS, 'state').length;
    expect(canonicalEncode(value, small(exact, 4), 'state')).toHaveLength(exact);
    expect(caught(() => canonicalEncode(value, small(exact - 1, 4), 'state'))).toMatchObject({ kind: 'limit', limit: 'maxStateBytes' });
  });

  it('stops at maxBytes without building a huge encoding first', () => {
    const huge = new Array(100_000).fill('y'.repeat(100));
    expect(caught(() => canonicalEncode(huge, small(1024, 4), 'state'))).toMatchObject({ kind: 'limit', limit: 'maxStateBytes' });
  });

  it('accepts nesting of exactly maxDepth and names maxStateDepth one level deeper', () => {
    const nest = (depth: number, inner: unknown): unknown => (depth === 0 ? inner : [nest(depth - 1, inner)]);
    const nestMap = (depth: number): unknown => (depth === 0 ? 1 : { a: nestMap(depth - 1) });
    expect(() => canonicalEncode(nest(5, 1), small(1024, 5), 'state')).not.toThrow();
    expect(() => canonicalEncode(nest(4, []), small(1024, 5), 'state')).not.toThrow();
    expect(() => canonicalEncode(nestMap(5), small(1024, 5), 'state')).not.toThrow();
    for (const tooDeep of [nest(6, 1), nest(5, []), nest(5, {}), nestMap(6)]) {
      expect(caught(() => canonicalEncode(tooDeep, small(1024, 5), 'state'))).toMatchObject({ kind: 'limit', limit: 'maxStateDepth' });
    }
  });

  it('treats a binary as a scalar for depth', () => {
    expect(() => canonicalEncode(new Uint8Array(10), small(1024, 0), 'state')).not.toThrow();
  });
});

describe('put fingerprint', () => {
  const base = { id: 7, stream: 'fp', epoch: 3, seq: 9, key: 'doc', ifVersion: 2 };
  const state = {
    name: 'Zoë 😀',
    n: 42,
    big: 2 ** 40,
    neg: -129,
    ratio: 0.25,
    flag: true,
    none: null,
    list: [1, 'two', [3.5, { deep: [] }]],
    nested: { z: 1, a: { y: [false] } },
  };

  it('is the same for a put decoded from msgpack (Maps) and from JSON (objects)', () => {
    const m = viaMsgpack({ ...base, state });
    const j = viaJson({ ...base, state });
    expect(m.state).toEqual(j.state);
    expect(m.fingerprint).toEqual(j.fingerprint);
    expect(m.fingerprint).toHaveLength(16);
    const md = viaMsgpack({ ...base, delete: true });
    const jd = viaJson({ ...base, delete: true });
    expect(md.fingerprint).toEqual(jd.fingerprint);
  });

  it('is the same whatever order the state keys were sent in', () => {
    const reordered = {
      nested: { a: { y: [false] }, z: 1 },
      list: state.list,
      none: null,
      flag: true,
      ratio: 0.25,
      neg: -129,
      big: 2 ** 40,
      n: 42,
      name: state.name,
    };
    expect(viaJson({ ...base, state: reordered }).fingerprint).toEqual(viaMsgpack({ ...base, state }).fingerprint);
  });

  it('ignores the id, stream, epoch and seq, which address the ack rather than its body', () => {
    const a = viaMsgpack({ ...base, state });
    const b = viaJson({ ...base, id: 'other', stream: 'elsewhere', epoch: 4, seq: 1, state });
    expect(b.fingerprint).toEqual(a.fingerprint);
  });

  it('differs when the key, state, ifVersion or delete differ', () => {
    const variants: Array<[string, object]> = [
      ['base', { ...base, state }],
      ['other key', { ...base, key: 'doc2', state }],
      ['other state value', { ...base, state: { ...state, n: 43 } }],
      ['other float', { ...base, state: { ...state, ratio: 0.5 } }],
      ['string instead of int', { ...base, state: { ...state, n: '42' } }],
      ['extra state field', { ...base, state: { ...state, more: 1 } }],
      ['no ifVersion', { ...base, ifVersion: undefined, state }],
      ['ifVersion 0', { ...base, ifVersion: 0, state }],
      ['ifVersion 3', { ...base, ifVersion: 3, state }],
      ['delete', { ...base, state: undefined, delete: true }],
      ['delete without ifVersion', { ...base, ifVersion: undefined, state: undefined, delete: true }],
      ['null state', { ...base, state: null }],
      ['empty state', { ...base, state: {} }],
      ['empty array state', { ...base, state: [] }],
    ];
    const seen = new Map<string, string>();
    for (const [name, p] of variants) {
      const clean = Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined));
      const fp = viaJson(clean).fingerprint.toString('hex');
      expect(viaMsgpack(clean).fingerprint.toString('hex'), name).toBe(fp);
      expect(seen.get(fp), `${name} collides`).toBeUndefined();
      seen.set(fp, name);
    }
  });

  it('distinguishes a deleted document from a state of nil', () => {
    const nilState = canonicalEncode(null, LIMITS, 'state');
    expect(putFingerprint('k', null, null)).not.toEqual(putFingerprint('k', nilState, null));
  });

  it('treats an explicit null ifVersion like an absent one', () => {
    expect(viaJson({ ...base, ifVersion: null, state }).fingerprint).toEqual(viaJson({ ...base, ifVersion: undefined, state }).fingerprint);
  });
});
