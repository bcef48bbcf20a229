import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { CanonicalError, canonicalEncode, decodeMsgpack, nameProblem } from '@seqgate/client/wire';
import { encodeState, StateProblem } from '../packages/client/src/encode.js';
import { canonical as reference } from '../protocol/vectors/reference-canonical.mjs';
import { canonicalEncode as serverEncode } from '../src/protocol/canonical.js';
import { nameProblem as serverNameProblem } from '../src/protocol/messages.js';

/**
 * The wire module is the one canonical encoder (server and client run the same code). It is held
 * against the encoder written from PROTOCOL.md alone (protocol/vectors/reference-canonical.mjs,
 * which also derives the vectors) on random values: same bytes, or both refuse.
 */

const LIMITS = { maxBytes: 1 << 24, maxDepth: 64, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };
const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** What the reference takes: plain objects as Maps, binaries as Buffers. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [k, plain(x)]));
  if (v !== null && typeof v === 'object') return new Map(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

function attempt(f: () => Uint8Array): string {
  try {
    return hex(f());
  } catch (err) {
    if (err instanceof CanonicalError || (err instanceof Error && /map key|duplicate|outside|beyond/.test(err.message))) return 'refused';
    throw err;
  }
}

const edgeNumbers = [
  0,
  -0,
  1,
  -1,
  127,
  128,
  255,
  256,
  -32,
  -33,
  2 ** 31,
  -(2 ** 31) - 1,
  2 ** 32,
  2 ** 53,
  -(2 ** 53),
  2 ** 53 - 1,
  2 ** 53 + 2,
  -(2 ** 53) - 2,
  1.5,
  NaN,
  Infinity,
  -Infinity,
  1e300,
];
const number = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.constantFrom(...edgeNumbers),
  fc.integer({ min: -(2 ** 53), max: 2 ** 53 }).map((n) => n),
);
const bigint = fc.oneof(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }), fc.constantFrom(2n ** 53n, -(2n ** 53n), 2n ** 64n, -(2n ** 63n) - 1n));
const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ unit: 'grapheme', minLength: 20, maxLength: 120 }),
  fc.constantFrom('\ud800', 'a\udc00b', 'x'.repeat(31), 'x'.repeat(32), 'é'.repeat(16), 'é'.repeat(128)),
);
const key = fc.oneof(text, fc.constantFrom<unknown>(2 ** 53, -(2 ** 53), 2 ** 53 + 2, 1.5, 7, 7n, true, null), fc.integer({ min: -300, max: 70_000 }), bigint);

const value = fc.letrec<{ v: unknown }>((tie) => ({
  v: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    number,
    bigint,
    text,
    fc.uint8Array({ maxLength: 40 }),
    fc.array(tie('v'), { maxLength: 5 }),
    fc.dictionary(text, tie('v'), { maxKeys: 5 }),
    fc.array(fc.tuple(key, tie('v')), { maxLength: 5 }).map((entries) => new Map(entries)),
  ),
})).v;

describe('the shared canonical encoder', () => {
  it('writes exactly the bytes of the spec-derived reference encoder, or refuses what it refuses', () => {
    fc.assert(
      fc.property(value, (v) => {
        expect(attempt(() => canonicalEncode(v, LIMITS, 'state'))).toBe(attempt(() => reference(plain(v))));
      }),
      { numRuns: 3000 },
    );
  });

  it('is what the server and the SDK run: the same bytes from both', () => {
    fc.assert(
      fc.property(value, (v) => {
        const wire = attempt(() => canonicalEncode(v, LIMITS, 'state'));
        expect(attempt(() => serverEncode(v, LIMITS, 'state'))).toBe(wire);
        let sdk: string;
        try {
          sdk = hex(encodeState(v, { maxStateBytes: LIMITS.maxBytes, maxStateDepth: LIMITS.maxDepth }, false));
        } catch (err) {
          expect(err).toBeInstanceOf(StateProblem);
          sdk = 'refused';
        }
        expect(sdk).toBe(wire);
      }),
      { numRuns: 1000 },
    );
  });

  it('accepts a state of exactly maxBytes and refuses one byte less, naming the limit', () => {
    fc.assert(
      fc.property(value, (v) => {
        let exact: number;
        try {
          exact = canonicalEncode(v, LIMITS, 'state').length;
        } catch {
          return;
        }
        expect(canonicalEncode(v, { ...LIMITS, maxBytes: exact }, 'state').length).toBe(exact);
        expect(() => canonicalEncode(v, { ...LIMITS, maxBytes: exact - 1 }, 'state')).toThrow(
          expect.objectContaining({ kind: 'limit', limit: 'maxStateBytes' }),
        );
      }),
      { numRuns: 1000 },
    );
  });

  it('accepts integer map keys of magnitude 2^53 as integers, as values are (PROTOCOL.md §6.1)', () => {
    expect(hex(canonicalEncode(new Map([[2 ** 53, 1]]), LIMITS, 'state'))).toBe('81cf002000000000000001');
    expect(hex(encodeState(new Map([[-(2 ** 53), 1]]), { maxStateBytes: 100, maxStateDepth: 4 }, false))).toBe('81d3ffe000000000000001');
    expect(() => canonicalEncode(new Map([[2 ** 53 + 2, 1]]), LIMITS, 'state')).toThrow(CanonicalError);
  });
});

describe('the wire module MessagePack decoder', () => {
  const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false, variableMapSize: true });
  const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' as 'bigint' });
  const jsonish = fc.letrec<{ v: unknown }>((tie) => ({
    v: fc.oneof(
      { depthSize: 'small' },
      fc.constant(null),
      fc.boolean(),
      number,
      text,
      fc.uint8Array({ maxLength: 300 }),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
      // msgpackr renames a `__proto__` key to `__proto_`; this decoder keeps it as an own property
      // (tested below), so that one key is left out of the comparison.
      fc.array(tie('v'), { maxLength: 20 }),
      fc.dictionary(
        text.filter((k) => k !== '__proto__'),
        tie('v'),
        { maxKeys: 20 },
      ),
    ),
  })).v;

  it('reads what msgpackr writes exactly as msgpackr reads it', () => {
    fc.assert(
      fc.property(jsonish, (v) => {
        const bytes = packr.pack(v);
        expect(decodeMsgpack(bytes)).toEqual(unpackr.unpack(bytes));
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses truncated input, trailing bytes and extension types, and never sets a prototype', () => {
    const bytes = packr.pack({ a: [1, 2, 'three'] });
    for (let n = 0; n < bytes.length; n++) expect(() => decodeMsgpack(bytes.subarray(0, n))).toThrow();
    expect(() => decodeMsgpack(Uint8Array.of(0x01, 0x02))).toThrow(/trailing/);
    expect(() => decodeMsgpack(Uint8Array.of(0xd4, 0x01, 0x00))).toThrow(/not part of the protocol/);
    const evil = decodeMsgpack(Uint8Array.of(0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa1, 0x78, 0x01)) as Record<string, unknown>;
    expect(Object.getPrototypeOf(evil)).toBe(Object.prototype);
    expect(Object.keys(evil)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });
});

describe('name rules', () => {
  it('are the same for the server and the client', () => {
    fc.assert(
      fc.property(fc.oneof(text, fc.constantFrom('', 'a\u0000', 'a\u007f', 'é'.repeat(128), 'x'.repeat(256), 'x'.repeat(257))), (name) => {
        const client = nameProblem(name, 'key', 256);
        expect(serverNameProblem(name, 'key', 256)).toBe(client === null ? null : client.message);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('wire constants', () => {
  it('list exactly the server registry codes a WebSocket client can meet, with the same scope, retryability and close code', async () => {
    const { ERRORS } = await import('../src/errors.js');
    const { WIRE_ERRORS, CLOSE_CODES } = await import('@seqgate/client/wire');
    const server = Object.entries(ERRORS)
      .filter(([, spec]) => spec.scope !== 'http')
      .map(([code, spec]) => [code, { scope: spec.scope, retryable: spec.retryable }] as const);
    expect(Object.fromEntries(server)).toEqual(WIRE_ERRORS);
    const closes = Object.entries(ERRORS)
      .filter(([, spec]) => spec.scope === 'close')
      .map(([code, spec]) => [code, (spec as { closeCode: number }).closeCode] as const);
    expect(Object.fromEntries(closes)).toEqual(CLOSE_CODES);
  });
});
