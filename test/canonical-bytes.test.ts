import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { Unpackr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../src/config.js';
import { CanonicalError, canonicalEncode, putFingerprint, type CanonicalLimits } from '../src/protocol/canonical.js';
import { isCanonicalMsgpack } from '../src/protocol/canonical-bytes.js';
import { IncomingFrame } from '../src/protocol/frame.js';
import { limitsOf, parseMessage, type Limits } from '../src/protocol/messages.js';

/**
 * The receipt fast path (issue 13, lever (c)): a put whose state bytes are already canonical is
 * stored and fingerprinted from those bytes without decoding them. It is only correct if
 * "already canonical" means exactly "canonicalEncode(decode(bytes)) gives these bytes back", so
 * these properties compare the byte check against that slow path for msgpack written in every
 * form msgpack allows (shortest and longer headers, signed and unsigned integers, float32,
 * NaN payloads, unsorted and duplicate map keys, invalid UTF-8, non-string keys), and the whole
 * frame reader against the old one (decode the frame whole, then parseMessage).
 */

// The server's decoder settings (src/protocol/frame.ts).
const unpackr = new Unpackr({ useRecords: false, structuredClone: false, mapsAsObjects: false, int64AsType: 'auto' as 'bigint', moreTypes: false });
const WIRE: Limits = limitsOf(defaultConfig());
const RUNS = 2000;

// ---- a msgpack writer that may choose any valid form ----

const cat = (...parts: Uint8Array[]): Buffer => Buffer.concat(parts);
const u8 = (...bytes: number[]): Buffer => Buffer.from(bytes);
function be(n: bigint, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let i = bytes - 1; i >= 0; i--) {
    out[i] = Number(n & 0xffn);
    n >>= 8n;
  }
  return out;
}

/** A choice of form: mostly the shortest (so canonical values are common), sometimes any other valid one. */
const formPick = fc.nat(9);
function choose<T>(valid: T[], pick: number): T {
  return pick < 6 ? valid[0]! : valid[pick % valid.length]!;
}

type IntForm = 'fixpos' | 'fixneg' | 0xcc | 0xcd | 0xce | 0xcf | 0xd0 | 0xd1 | 0xd2 | 0xd3;
const INT_FORMS: Array<[IntForm, bigint, bigint]> = [
  ['fixpos', 0n, 127n],
  ['fixneg', -32n, -1n],
  [0xcc, 0n, 255n],
  [0xcd, 0n, 65535n],
  [0xce, 0n, 2n ** 32n - 1n],
  [0xcf, 0n, 2n ** 64n - 1n],
  [0xd0, -128n, 127n],
  [0xd1, -32768n, 32767n],
  [0xd2, -(2n ** 31n), 2n ** 31n - 1n],
  [0xd3, -(2n ** 63n), 2n ** 63n - 1n],
];
function writeInt(v: bigint, pick: number): Buffer {
  const form = choose(
    INT_FORMS.filter(([, lo, hi]) => v >= lo && v <= hi).map(([f]) => f),
    pick,
  );
  if (form === 'fixpos') return u8(Number(v));
  if (form === 'fixneg') return u8(Number(v) & 0xff);
  const size = { 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8 }[form];
  return cat(u8(form), be(BigInt.asUintN(size * 8, v), size));
}

const EDGES = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 1, 2 ** 63, 2 ** 64 - 1];
const intValue = fc.oneof(
  fc.bigInt({ min: -40n, max: 300n }),
  fc.integer().map(BigInt),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
  fc.constantFrom(...EDGES.flatMap((e) => [BigInt(e), -BigInt(e), -BigInt(e) - 1n])).filter((v) => v >= -(2n ** 63n) && v < 2n ** 64n),
);
const int = fc.tuple(intValue, formPick).map(([v, pick]) => writeInt(v, pick));

const float = fc.oneof(
  fc.tuple(fc.double(), fc.boolean()).map(([v, f32]) => {
    const out = Buffer.alloc(f32 ? 5 : 9);
    out[0] = f32 ? 0xca : 0xcb;
    if (f32) out.writeFloatBE(Math.fround(v), 1);
    else out.writeDoubleBE(v, 1);
    return out;
  }),
  // NaNs with other payloads, -0, integral floats at the ±2^53 edge.
  fc
    .constantFrom(
      'cb7ff8000000000000',
      'cb7ff8000000000001',
      'cbfff8000000000000',
      'cb7ff0000000000001',
      'ca7fc00000',
      'cb8000000000000000',
      'cb4340000000000000',
      'cbc340000000000000',
      'cb4340000000000001',
    )
    .map((h) => Buffer.from(h, 'hex')),
);

function header(len: number, forms: Array<[number, number, number]>, pick: number): Buffer {
  const [op, bytes] = choose(
    forms.filter(([, , max]) => len <= max).map(([o, b]) => [o, b] as const),
    pick,
  );
  return bytes === 0 ? u8(op | len) : cat(u8(op), be(BigInt(len), bytes));
}
const STR_FORMS: Array<[number, number, number]> = [
  [0xa0, 0, 31],
  [0xd9, 1, 255],
  [0xda, 2, 65535],
  [0xdb, 4, 2 ** 32 - 1],
];
const BIN_FORMS: Array<[number, number, number]> = [
  [0xc4, 1, 255],
  [0xc5, 2, 65535],
  [0xc6, 4, 2 ** 32 - 1],
];
const ARRAY_FORMS: Array<[number, number, number]> = [
  [0x90, 0, 15],
  [0xdc, 2, 65535],
  [0xdd, 4, 2 ** 32 - 1],
];
const MAP_FORMS: Array<[number, number, number]> = [
  [0x80, 0, 15],
  [0xde, 2, 65535],
  [0xdf, 4, 2 ** 32 - 1],
];

const stringBytes = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 12 }).map((s) => Buffer.from(s, 'utf8')) },
  { weight: 2, arbitrary: fc.array(fc.integer({ min: 0, max: 0x10ffff }), { maxLength: 8 }).map((cps) => Buffer.from(String.fromCodePoint(...cps), 'utf8')) },
  { weight: 1, arbitrary: fc.string({ minLength: 28, maxLength: 300 }).map((s) => Buffer.from(s, 'utf8')) },
  // Not UTF-8 at all: overlong forms, surrogates, stray continuation bytes, truncated sequences.
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 8 }).map((b) => Buffer.from(b)) },
  { weight: 1, arbitrary: fc.constantFrom('c080', 'eda080', 'f4908080', 'e282', '80', 'f09f9880').map((h) => Buffer.from(h, 'hex')) },
);
const str = fc.tuple(stringBytes, formPick).map(([b, pick]) => cat(header(b.length, STR_FORMS, pick), b));
const bin = fc.tuple(fc.uint8Array({ maxLength: 300 }), formPick).map(([b, pick]) => cat(header(b.length, BIN_FORMS, pick), b));
const scalar = fc.oneof(int, float, str, bin, fc.constantFrom(u8(0xc0), u8(0xc2), u8(0xc3)));
const key = fc.oneof({ weight: 6, arbitrary: str }, { weight: 3, arbitrary: int }, { weight: 1, arbitrary: scalar });

const { value } = fc.letrec<{ value: Buffer; array: Buffer; map: Buffer }>((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, scalar, tie('array'), tie('map')),
  array: fc
    .tuple(fc.oneof(fc.array(tie('value'), { maxLength: 5 }), fc.array(scalar, { minLength: 14, maxLength: 18 })), formPick)
    .map(([items, pick]) => cat(header(items.length, ARRAY_FORMS, pick), ...items)),
  map: fc
    .tuple(
      fc.oneof(fc.array(fc.tuple(key, tie('value')), { maxLength: 5 }), fc.array(fc.tuple(key, scalar), { minLength: 14, maxLength: 18 })),
      fc.nat(3),
      formPick,
    )
    .map(([entries, order, pick]) => {
      // Mostly in canonical key order, so that canonical maps are common; sometimes as generated.
      if (order > 0) entries.sort(([a], [b]) => Buffer.compare(a, b));
      return cat(header(entries.length, MAP_FORMS, pick), ...entries.flat());
    }),
}));

/** What the server stored before the fast path: the decoded value encoded again, or a refusal. */
function slowPath(bytes: Buffer, limits: CanonicalLimits): Buffer | 'refused' {
  try {
    return canonicalEncode(unpackr.unpack(bytes), limits, 'state');
  } catch (err) {
    if (err instanceof CanonicalError) return 'refused';
    throw err;
  }
}

function limits(maxBytes: number, maxDepth: number): CanonicalLimits {
  return { maxBytes, maxDepth, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };
}

describe('isCanonicalMsgpack', () => {
  it('says yes exactly when decoding and encoding again gives the same bytes', () => {
    let canonical = 0;
    let other = 0;
    fc.assert(
      fc.property(value, fc.uint8Array({ maxLength: 3 }), fc.uint8Array({ maxLength: 3 }), (bytes, before, after) => {
        const slow = slowPath(bytes, limits(1 << 20, 64));
        const expected = slow !== 'refused' && slow.equals(bytes);
        // The value sits inside a larger buffer, as a state inside a frame does.
        const frame = cat(before, bytes, after);
        expect(isCanonicalMsgpack(frame, before.length, before.length + bytes.length, 1 << 20, 64)).toBe(expected);
        if (expected) canonical++;
        else other++;
      }),
      { numRuns: RUNS },
    );
    // Both answers were exercised, not one of them alone.
    expect(canonical).toBeGreaterThan(RUNS / 10);
    expect(other).toBeGreaterThan(RUNS / 10);
  });

  it('says no wherever the byte and depth limits refuse the value', () => {
    fc.assert(
      fc.property(value, fc.integer({ min: -2, max: 1 }), fc.nat(4), (bytes, slack, maxDepth) => {
        const maxBytes = Math.max(0, bytes.length + slack);
        const slow = slowPath(bytes, limits(maxBytes, maxDepth));
        expect(isCanonicalMsgpack(bytes, 0, bytes.length, maxBytes, maxDepth)).toBe(slow !== 'refused' && slow.equals(bytes));
      }),
      { numRuns: RUNS },
    );
  });

  it('says yes for whatever the canonical encoder writes', () => {
    const json = fc.jsonValue({ maxDepth: 4 });
    fc.assert(
      fc.property(json, (v) => {
        const bytes = canonicalEncode(v, limits(1 << 20, 64), 'state');
        expect(isCanonicalMsgpack(bytes, 0, bytes.length, 1 << 20, 64)).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });

  it('handles the 16- and 32-bit forms at their thresholds', () => {
    const cases: Array<[unknown, boolean]> = [
      ['x'.repeat(70_000), true],
      [Buffer.alloc(70_000, 1), true],
      [Array.from({ length: 70_000 }, () => 0), true],
      [new Map(Array.from({ length: 70_000 }, (_, i) => [i, 0])), true],
    ];
    for (const [v, want] of cases) {
      const bytes = canonicalEncode(v, limits(1 << 20, 64), 'state');
      expect(isCanonicalMsgpack(bytes, 0, bytes.length, 1 << 20, 64)).toBe(want);
      // The same value with one byte of trailing content is not one value.
      expect(isCanonicalMsgpack(cat(bytes, u8(0)), 0, bytes.length + 1, 1 << 20, 64)).toBe(false);
    }
  });
});

// ---- the whole frame reader ----

function put(fields: Array<[string, Buffer]>): Buffer {
  return cat(u8(0x80 | fields.length), ...fields.flatMap(([k, v]) => [canonicalEncode(k, limits(1e9, 8), 'k'), v]));
}
const enc = (v: unknown): Buffer => canonicalEncode(v, limits(1e9, 8), 'v');

/** The frame reader before the fast path: the frame decoded whole, then validated. */
function oldReader(frame: Buffer): unknown {
  try {
    return parseMessage(unpackr.unpack(frame), WIRE, 'tenant-a');
  } catch (err) {
    return { threw: (err as Error).message };
  }
}
function newReader(frame: Buffer): unknown {
  try {
    return IncomingFrame.open(frame, true, 'msgpack', WIRE).message(WIRE, 'tenant-a');
  } catch (err) {
    return { threw: (err as Error).message };
  }
}

describe('the frame reader with the fast path', () => {
  it('answers every put exactly as decoding the frame whole did: stored state, fingerprint, refusals', () => {
    const wellFormed = fc.record(
      {
        id: fc.nat(1000).map(enc),
        stream: fc.constantFrom('s1', 'dev/ö', 'a'.repeat(40)).map(enc),
        epoch: fc.nat(300).map(enc),
        seq: fc.tuple(fc.bigInt({ min: 1n, max: 2n ** 40n }), formPick).map(([v, pick]) => writeInt(v, pick)),
        key: fc.constantFrom('k', 'dev/k1', 'ключ').map(enc),
        state: fc.oneof(value, fc.jsonValue({ maxDepth: 3 }).map(enc)),
        ifVersion: fc.oneof(fc.nat(1000), fc.constant(null)).map(enc),
      },
      { requiredKeys: ['id', 'stream', 'epoch', 'seq', 'key', 'state'] },
    );
    const anyFields = fc.record(
      {
        id: fc.oneof(fc.nat(1000), fc.string({ maxLength: 6 })).map(enc),
        stream: fc.oneof(fc.constantFrom('s1', 'dev/ö', 'a'.repeat(40)), fc.string({ maxLength: 6 })).map(enc),
        epoch: fc.oneof(fc.nat(300), fc.integer({ min: -2, max: 2 })).map(enc),
        seq: fc.tuple(intValue, formPick).map(([v, pick]) => writeInt(v, pick)),
        key: fc.oneof(fc.constantFrom('k', 'dev/k1', 'ключ'), fc.string({ maxLength: 6 })).map(enc),
        state: fc.oneof(value, fc.jsonValue({ maxDepth: 3 }).map(enc)),
        delete: fc.constantFrom(u8(0xc3), u8(0xc2), u8(0xc0)),
        ifVersion: fc.oneof(fc.nat(1000), fc.constant(null)).map(enc),
        extra: fc.constantFrom(u8(0xc0), enc('x')),
      },
      { requiredKeys: ['id', 'stream', 'epoch', 'seq', 'key'] },
    );
    const fieldSet = fc.oneof({ weight: 3, arbitrary: wellFormed }, { weight: 1, arbitrary: anyFields });
    let applied = 0;
    let fast = 0;
    fc.assert(
      fc.property(fc.array(fieldSet, { minLength: 1, maxLength: 3 }), fc.boolean(), (puts, duplicateState) => {
        const encoded = puts.map((p) => {
          const fields = Object.entries(p) as Array<[string, Buffer]>;
          // A repeated field: decoding keeps the last one; so must the fast path.
          if (duplicateState && p.state !== undefined) fields.push(['state', enc({ again: 1 })]);
          return put(fields);
        });
        const frame = cat(u8(0x82), enc('type'), enc('put'), enc('puts'), u8(0x90 | encoded.length), ...encoded);
        const got = newReader(frame);
        expect(got).toEqual(oldReader(frame));
        for (const p of (got as { puts?: Array<{ ok: boolean; put?: { state: Buffer | null } }> }).puts ?? []) {
          if (!p.ok) continue;
          applied++;
          // Stored as received: the fast path's case (the slow path gives the same bytes, checked above).
          if (p.put!.state !== null && frame.includes(p.put!.state)) fast++;
        }
      }),
      { numRuns: RUNS },
    );
    expect(applied).toBeGreaterThan(RUNS / 5);
    expect(fast).toBeGreaterThan(RUNS / 10);
  });
});

// ---- the fingerprint, hashed once ----

/** The fingerprint as it was computed before (five updates); the single-buffer one must match it. */
function referenceFingerprint(key: string, state: Buffer | null, ifVersion: number | null): Buffer {
  const unbounded = limits(2 ** 31, 1024);
  const hash = createHash('sha256');
  hash.update(Uint8Array.of(0x94));
  hash.update(canonicalEncode(key, unbounded, 'key'));
  hash.update(Uint8Array.of(state === null ? 0xc3 : 0xc2));
  hash.update(state ?? Uint8Array.of(0xc0));
  hash.update(ifVersion === null ? Uint8Array.of(0xc0) : canonicalEncode(ifVersion, unbounded, 'ifVersion'));
  return hash.digest().subarray(0, 16);
}

describe('putFingerprint', () => {
  it('equals the five-update digest for any key, state and ifVersion, small or larger than its scratch buffer', () => {
    const state = fc.oneof(
      fc.constant(null),
      fc.uint8Array({ maxLength: 400 }).map((b) => Buffer.from(b)),
      fc.integer({ min: 16 * 1024 - 80, max: 40_000 }).map((n) => Buffer.alloc(n, 7)),
    );
    const key = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.constantFrom('', 'ö', 'a'.repeat(31), 'a'.repeat(32), 'k'.repeat(6000)),
    );
    const ifVersion = fc.oneof(fc.constant(null), fc.nat(200), fc.constantFrom(127, 128, 65536, 2 ** 32, Number.MAX_SAFE_INTEGER));
    fc.assert(
      fc.property(key, state, ifVersion, (k, s, v) => {
        expect(putFingerprint(k, s, v).equals(referenceFingerprint(k, s, v))).toBe(true);
      }),
      { numRuns: RUNS },
    );
  });
});
