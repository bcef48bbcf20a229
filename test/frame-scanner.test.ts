import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import { describe, expect, it, vi } from 'vitest';
import { defaultConfig } from '../src/config.js';
import { canonicalEncode } from '../src/protocol/canonical.js';
import { IncomingFrame } from '../src/protocol/frame.js';
import { indexMsgpack, peekJsonType, scanJsonDepth, scanMsgpack } from '../src/protocol/frame-scanner.js';
import { limitsOf } from '../src/protocol/messages.js';
import { MSGPACK_EXTENSIONS } from './support/msgpack-extensions.js';

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, structuredClone: false, mapsAsObjects: false, moreTypes: false });

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const malformed = { fault: 'malformed' };

/** One sample of every msgpack format the protocol accepts, as raw bytes. */
const VALID_FORMATS: Array<[string, Buffer]> = [
  ['nil', hex('c0')],
  ['false', hex('c2')],
  ['true', hex('c3')],
  ['positive fixint 0', hex('00')],
  ['positive fixint 127', hex('7f')],
  ['negative fixint -32', hex('e0')],
  ['negative fixint -1', hex('ff')],
  ['uint8', hex('cc ff')],
  ['uint16', hex('cd ffff')],
  ['uint32', hex('ce ffffffff')],
  ['uint64', hex('cf ffffffffffffffff')],
  ['int8', hex('d0 80')],
  ['int16', hex('d1 8000')],
  ['int32', hex('d2 80000000')],
  ['int64', hex('d3 8000000000000000')],
  ['float32', hex('ca 3fc00000')],
  ['float64', hex('cb 3ff8000000000000')],
  ['empty fixstr', hex('a0')],
  ['fixstr', hex('a3 616263')],
  ['fixstr of 31 bytes', Buffer.concat([hex('bf'), Buffer.alloc(31, 0x61)])],
  ['str8', Buffer.concat([hex('d9 20'), Buffer.alloc(32, 0x61)])],
  ['str16', Buffer.concat([hex('da 0100'), Buffer.alloc(256, 0x61)])],
  ['str32', Buffer.concat([hex('db 00000003'), Buffer.from('abc')])],
  ['empty bin8', hex('c4 00')],
  ['bin8', hex('c4 03 010203')],
  ['bin16', Buffer.concat([hex('c5 0100'), Buffer.alloc(256, 7)])],
  ['bin32', hex('c6 00000002 0102')],
  ['empty fixarray', hex('90')],
  ['fixarray', hex('92 01 c0')],
  ['array16', hex('dc 0002 01 02')],
  ['array32', hex('dd 00000002 01 02')],
  ['empty fixmap', hex('80')],
  ['fixmap', hex('81 a1 61 01')],
  ['map16', hex('de 0001 a1 61 01')],
  ['map32', hex('df 00000001 a1 61 01')],
  ['map with integer and container keys', hex('82 01 02 91 c0 80')],
];

/** A put message that touches most formats; used for the truncation sweep. */
const SAMPLE_FRAME = Buffer.concat([
  hex('83'),
  hex('a4'),
  Buffer.from('type'),
  hex('a3'),
  Buffer.from('put'),
  hex('a4'),
  Buffer.from('puts'),
  hex('91 87'),
  hex('a2'),
  Buffer.from('id'),
  hex('cd 1234'),
  hex('a6'),
  Buffer.from('stream'),
  hex('d9 21'),
  Buffer.alloc(33, 0x73),
  hex('a5'),
  Buffer.from('epoch'),
  hex('01'),
  hex('a3'),
  Buffer.from('seq'),
  hex('cf 0000000100000000'),
  hex('a3'),
  Buffer.from('key'),
  hex('a1 6b'),
  hex('a9'),
  Buffer.from('ifVersion'),
  hex('c0'),
  hex('a5'),
  Buffer.from('state'),
  hex('dc 0006'),
  hex('cb 3ff8000000000000'),
  hex('c3'),
  hex('e5'),
  hex('c4 02 beef'),
  hex('de 0001 a1 78 df 00000000'),
  hex('dd 00000001 d1 8000'),
  hex('a5'),
  Buffer.from('extra'),
  hex('c2'),
]);

function nestedArrays(depth: number, innermost = hex('c0')): Buffer {
  return Buffer.concat([Buffer.alloc(depth, 0x91), innermost]);
}

function nestedMaps(depth: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < depth; i++) parts.push(hex('81 a1 61'));
  parts.push(hex('c0'));
  return Buffer.concat(parts);
}

/** Nesting depth as the scanners count it: a scalar is 0, `[]` and `{}` are 1. */
function depthOf(v: unknown): number {
  if (Array.isArray(v)) return 1 + Math.max(0, ...v.map(depthOf));
  if (v instanceof Uint8Array || v === null || typeof v !== 'object') return 0;
  return 1 + Math.max(0, ...Object.values(v).map(depthOf));
}

type Packable = null | boolean | number | string | Uint8Array | Packable[] | { [k: string]: Packable };

const packable = fc.letrec<{ value: Packable }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double(),
    fc.maxSafeInteger(),
    fc.string({ unit: 'binary' }),
    fc.uint8Array({ maxLength: 40 }),
    fc.array(tie('value'), { maxLength: 6 }),
    fc.dictionary(fc.string(), tie('value'), { maxKeys: 6, noNullPrototype: true }),
  ),
})).value;

const jsonValue = fc.jsonValue({ maxDepth: 8 });

describe('scanMsgpack', () => {
  it.each(VALID_FORMATS)('accepts a well-formed %s', (_name, bytes) => {
    // The samples must really be msgpack, or this test would prove nothing.
    expect(() => unpackr.unpack(bytes)).not.toThrow();
    expect(scanMsgpack(bytes, 4)).toBeNull();
  });

  it('accepts the sample frame whole', () => {
    expect(() => unpackr.unpack(SAMPLE_FRAME)).not.toThrow();
    expect(scanMsgpack(SAMPLE_FRAME, 8)).toBeNull();
  });

  it('rejects the sample frame truncated at every byte offset, including the empty frame', () => {
    for (let cut = 0; cut < SAMPLE_FRAME.length; cut++) {
      expect(scanMsgpack(SAMPLE_FRAME.subarray(0, cut), 8), `cut at ${cut}`).toMatchObject(malformed);
    }
  });

  it.each(VALID_FORMATS)('rejects a %s truncated at every byte offset', (_name, bytes) => {
    for (let cut = 0; cut < bytes.length; cut++) {
      expect(scanMsgpack(bytes.subarray(0, cut), 4), `cut at ${cut}`).toMatchObject(malformed);
    }
  });

  it('rejects trailing bytes after a complete value', () => {
    expect(scanMsgpack(Buffer.concat([SAMPLE_FRAME, hex('00')]), 8)).toMatchObject({
      fault: 'malformed',
      reason: expect.stringMatching(/trailing/),
    });
    expect(scanMsgpack(hex('c0 c0'), 4)).toMatchObject(malformed);
    expect(scanMsgpack(hex('90 90'), 4)).toMatchObject(malformed);
    expect(scanMsgpack(hex('81 a1 61 01 01'), 4)).toMatchObject(malformed);
  });

  it('rejects the never-used byte 0xc1 at the root and inside containers', () => {
    expect(scanMsgpack(hex('c1'), 4)).toMatchObject(malformed);
    expect(scanMsgpack(hex('92 01 c1'), 4)).toMatchObject(malformed);
    expect(scanMsgpack(hex('81 c1 01'), 4)).toMatchObject(malformed);
  });

  it.each(MSGPACK_EXTENSIONS)('rejects extension type %s at the root and nested', (_name, ext) => {
    const reason = expect.stringMatching(/extension/);
    expect(scanMsgpack(ext, 4)).toMatchObject({ fault: 'malformed', reason });
    expect(scanMsgpack(Buffer.concat([hex('91'), ext]), 4)).toMatchObject({ fault: 'malformed', reason });
    expect(scanMsgpack(Buffer.concat([hex('81 a1 61'), ext]), 4)).toMatchObject({ fault: 'malformed', reason });
  });

  it('rejects what msgpackr itself encodes as an extension (a Date)', () => {
    const frame = new Packr({ useRecords: false }).pack({ when: new Date(0) });
    expect(scanMsgpack(frame, 4)).toMatchObject(malformed);
  });

  const INFLATED: Array<[string, Buffer]> = [
    ['array32 claiming 2^32-1 items', hex('dd ffffffff 0102030405')],
    ['map32 claiming 2^32-1 entries', hex('df ffffffff 0102030405')],
    ['str32 claiming 2^32-1 bytes', hex('db ffffffff 0102030405')],
    ['bin32 claiming 2^32-1 bytes', hex('c6 ffffffff 0102030405')],
    ['array16 claiming 65535 items', hex('dc ffff 01 02 03')],
    ['map16 claiming 65535 entries', hex('de ffff 01 02 03')],
    ['str16 claiming 65535 bytes', hex('da ffff 61 62')],
    ['bin16 claiming 65535 bytes', hex('c5 ffff 01 02')],
    ['str8 claiming 255 bytes', hex('d9 ff 61 62')],
    ['bin8 claiming 255 bytes', hex('c4 ff 01 02')],
    ['fixarray claiming 15 items', hex('9f 01 02')],
    ['fixmap claiming 15 entries', hex('8f 01 02')],
    ['nested array32 claiming 2^32-1 items', hex('92 01 dd ffffffff 01')],
    ['map with an odd number of items', hex('81 01')],
  ];

  it.each(INFLATED)('rejects an inflated length: %s', (_name, bytes) => {
    expect(scanMsgpack(bytes, 8)).toMatchObject(malformed);
  });

  it('rejects inflated lengths without looping over the claimed count', () => {
    // A scanner that walked 2^32 claimed items would take seconds per frame; the bound is loose.
    const started = performance.now();
    for (let i = 0; i < 1000; i++) {
      for (const [, bytes] of INFLATED) expect(scanMsgpack(bytes, 8)).not.toBeNull();
    }
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it.each([1, 2, 5, 35, 100])('accepts nesting of exactly %i levels and rejects one more', (limit) => {
    expect(scanMsgpack(nestedArrays(limit), limit)).toBeNull();
    expect(scanMsgpack(nestedArrays(limit + 1), limit)).toEqual({ fault: 'too_deep', depth: limit + 1 });
    expect(scanMsgpack(nestedMaps(limit), limit)).toBeNull();
    expect(scanMsgpack(nestedMaps(limit + 1), limit)).toEqual({ fault: 'too_deep', depth: limit + 1 });
    // An empty container counts as a level too.
    expect(scanMsgpack(nestedArrays(limit - 1, hex('90')), limit)).toBeNull();
    expect(scanMsgpack(nestedArrays(limit, hex('80')), limit)).toEqual({ fault: 'too_deep', depth: limit + 1 });
    expect(scanMsgpack(nestedArrays(limit, hex('dc 0000')), limit)).toEqual({ fault: 'too_deep', depth: limit + 1 });
  });

  it('counts depth along the deepest branch, not the number of containers', () => {
    // [[[]], [[]], [[]]]: seven containers, depth 3.
    const wide = hex('93 91 90 91 90 91 90');
    expect(scanMsgpack(wide, 3)).toBeNull();
    expect(scanMsgpack(wide, 2)).toMatchObject({ fault: 'too_deep' });
  });

  it('counts a container used as a map key as a level', () => {
    expect(scanMsgpack(hex('81 91 91 c0 01'), 3)).toBeNull();
    expect(scanMsgpack(hex('81 91 91 c0 01'), 2)).toMatchObject({ fault: 'too_deep' });
  });

  it('rejects a hundred thousand nested arrays without exhausting the stack', () => {
    expect(scanMsgpack(nestedArrays(100_000), 35)).toMatchObject({ fault: 'too_deep' });
  });

  it('accepts any msgpack-able value within its depth and rejects it one level tighter', () => {
    fc.assert(
      fc.property(packable, (value) => {
        const bytes = packr.pack(value);
        const depth = depthOf(value);
        expect(scanMsgpack(bytes, depth)).toBeNull();
        if (depth >= 1) expect(scanMsgpack(bytes, depth - 1)).toMatchObject({ fault: 'too_deep' });
      }),
      { numRuns: 500 },
    );
  });

  it('rejects every truncation of any msgpack-able value', () => {
    fc.assert(
      fc.property(packable, (value) => {
        const bytes = packr.pack(value);
        const depth = depthOf(value);
        for (let cut = 0; cut < bytes.length; cut++) {
          expect(scanMsgpack(bytes.subarray(0, cut), depth), `cut at ${cut} of ${bytes.length}`).toMatchObject(malformed);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('scanJsonDepth', () => {
  it.each([1, 2, 5, 35, 100])('accepts bracket nesting of exactly %i levels and rejects one more', (limit) => {
    expect(scanJsonDepth('['.repeat(limit) + ']'.repeat(limit), limit)).toBeNull();
    expect(scanJsonDepth('['.repeat(limit + 1) + ']'.repeat(limit + 1), limit)).toEqual({ fault: 'too_deep', depth: limit + 1 });
    const objects = '{"a":'.repeat(limit) + '1' + '}'.repeat(limit);
    expect(scanJsonDepth(objects, limit)).toBeNull();
    expect(scanJsonDepth('{"a":' + objects + '}', limit)).toEqual({ fault: 'too_deep', depth: limit + 1 });
  });

  it('accepts scalars at depth zero', () => {
    for (const text of ['1', '"x"', 'null', 'true', '  -1.5e3 ']) expect(scanJsonDepth(text, 0)).toBeNull();
  });

  it('does not count brackets inside strings', () => {
    const text = JSON.stringify({ a: '[[[[[[[[[[{{{{{{{{{{', b: ['{"x":[[[['] });
    expect(scanJsonDepth(text, 2)).toBeNull();
  });

  it('does not end a string at an escaped quote', () => {
    // A scanner that ended the string at \" would count the five brackets after it.
    const text = '{"a":"say \\"[[[[["}';
    expect(JSON.parse(text)).toEqual({ a: 'say "[[[[[' });
    expect(scanJsonDepth(text, 1)).toBeNull();
  });

  it('ends a string after an escaped backslash, so brackets after it count', () => {
    // ["\\",[[]]]: the string holds one backslash, then the nesting goes to depth 3.
    const text = '["\\\\",[[]]]';
    expect(JSON.parse(text)).toEqual(['\\', [[]]]);
    expect(scanJsonDepth(text, 3)).toBeNull();
    expect(scanJsonDepth(text, 2)).toMatchObject({ fault: 'too_deep' });
  });

  it('rejects a hundred thousand nested brackets', () => {
    expect(scanJsonDepth('['.repeat(100_000), 35)).toMatchObject({ fault: 'too_deep' });
  });

  it('accepts any JSON value within its depth and rejects it one level tighter', () => {
    fc.assert(
      fc.property(jsonValue, (value) => {
        const text = JSON.stringify(value);
        const depth = depthOf(value);
        expect(scanJsonDepth(text, depth)).toBeNull();
        if (depth >= 1) expect(scanJsonDepth(text, depth - 1)).toMatchObject({ fault: 'too_deep' });
      }),
      { numRuns: 500 },
    );
  });
});

describe('peekJsonType', () => {
  it('finds the top-level string type as JSON.parse would read it, without parsing the rest', () => {
    const cases: Array<[string, string | undefined]> = [
      ['{"type":"put","puts":[]}', 'put'],
      ['{ "puts" : [ {"type":"ping"} ], "type" : "hello" }', 'hello'],
      ['{"type":"put","type":"ping"}', 'ping'],
      ['{"a":"type","b":{"type":"x"},"type":"p\\u0069ng"}', 'ping'],
      ['{"type":1}', undefined],
      ['{"type":["put"]}', undefined],
      ['{"type":{"k":"put"}}', undefined],
      ['["type","put"]', undefined],
      ['{"x":"\\"type\\"","y":"put"}', undefined],
      ['{}', undefined],
      ['"put"', undefined],
    ];
    for (const [text, type] of cases) {
      expect(peekJsonType(text), text).toBe(type);
      const parsed: unknown = JSON.parse(text);
      const real = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as { type?: unknown }).type : undefined;
      expect(typeof real === 'string' ? real : undefined, text).toBe(type);
    }
  });

  it('agrees with JSON.parse on arbitrary JSON objects', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.oneof(fc.constant('type'), fc.string()), fc.jsonValue()), fc.boolean(), (obj, spaced) => {
        const text = JSON.stringify(obj, null, spaced ? 1 : undefined);
        const real = (JSON.parse(text) as { type?: unknown }).type;
        expect(peekJsonType(text)).toBe(typeof real === 'string' ? real : undefined);
      }),
      { numRuns: 500 },
    );
  });
});

describe('indexMsgpack', () => {
  it('records where each value down to the indexed depth lies and how many values it holds', () => {
    const buf = packr.pack({ type: 'put', puts: [{ id: 1, state: { a: [1, 2, 3], b: 'x' } }, 'p'] });
    const scanned = indexMsgpack(buf, 16, 3);
    if ('fault' in scanned) throw new Error(scanned.fault);
    const { root } = scanned;
    // map, "type", "put", "puts", array, put map, "id", 1, "state", state map (8 values), "p"
    expect(root).toMatchObject({ start: 0, end: buf.length, items: 18 });
    const [, typeValue, , puts] = root.children!;
    expect(unpackr.unpack(buf.subarray(typeValue!.start, typeValue!.end))).toBe('put');
    expect(puts!.children).toHaveLength(2);
    const [put, p] = puts!.children!;
    expect(unpackr.unpack(buf.subarray(put!.start, put!.end))).toEqual(
      new Map<string, unknown>([
        ['id', 1],
        [
          'state',
          new Map<string, unknown>([
            ['a', [1, 2, 3]],
            ['b', 'x'],
          ]),
        ],
      ]),
    );
    const state = put!.children![3]!;
    expect(state.items).toBe(8);
    expect(state.children).toBeUndefined();
    expect(p!.items).toBe(1);
    expect(p!.children).toBeUndefined();
    expect(scanMsgpack(buf, 16)).toBeNull();
  });

  it('gives the same verdict as scanMsgpack on any bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.integer({ min: 1, max: 6 }), (bytes, depth) => {
        const fault = scanMsgpack(bytes, depth);
        const scanned = indexMsgpack(bytes, depth, 3);
        expect('fault' in scanned ? scanned : null).toEqual(fault);
      }),
      { numRuns: 2000 },
    );
  });

  it('counts string and binary payload bytes, so that items + payload never exceeds the canonical size', () => {
    const buf = packr.pack({ type: 'put', puts: [{ key: 'abc', state: { s: 'x'.repeat(300), b: new Uint8Array(70_000) } }] });
    const scanned = indexMsgpack(buf, 16, 3);
    if ('fault' in scanned) throw new Error(scanned.fault);
    const put = scanned.root.children![3]!.children![0]!;
    const [keyName, key, , state] = put.children!;
    expect([keyName!.payload, key!.payload]).toEqual([3, 3]);
    expect(state!.payload).toBe(1 + 300 + 1 + 70_000);
    expect(put.payload).toBe(3 + 3 + 5 + state!.payload);
    const limits = { maxBytes: 1 << 30, maxDepth: 64, bytesLimitName: 'b', depthLimitName: 'd' };
    fc.assert(
      fc.property(fc.jsonValue(), fc.uint8Array({ maxLength: 300 }), (value, bin) => {
        // Wire bytes in any encoding (msgpackr picks its own widths); the bound is on canonical bytes.
        const v = { value, bin };
        const scanned = indexMsgpack(packr.pack(v), 64, 0);
        if ('fault' in scanned) throw new Error(scanned.fault);
        expect(scanned.root.items + scanned.root.payload).toBeLessThanOrEqual(canonicalEncode(v, limits, 'state').length);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('IncomingFrame', () => {
  it('counts payload bytes as sent: a state whose repeated key would collapse under the limit is still refused (PROTOCOL.md appendix)', () => {
    const limits = limitsOf(defaultConfig());
    const half = 'x'.repeat(40_000);
    const frame = Buffer.from(packr.pack({ type: 'put', puts: [{ id: 1, stream: 's', epoch: 1, seq: 1, key: 'k', state: { a: half, b: half } }] }));
    // Rename key "b" to "a": decoding would keep one 40,000-byte string, under maxStateBytes (65,536).
    const at = frame.indexOf(Buffer.from([0xa1, 0x62, 0xda]));
    expect(at).toBeGreaterThan(0);
    frame[at + 1] = 0x61;
    const message = IncomingFrame.open(frame, true, 'msgpack', limits).message(limits, 'default');
    expect(message).toMatchObject({ type: 'put', puts: [{ ok: false, id: 1, result: { error: { code: 'LIMIT_EXCEEDED', field: 'state' } } }] });
  });

  it('refuses a put whose state is one long string by its payload, without decoding that string', () => {
    const limits = limitsOf(defaultConfig());
    const big = 's'.repeat(1024 * 1024 - 200);
    const frame = packr.pack({ type: 'put', puts: [{ id: 1, stream: 'big', epoch: 1, seq: 1, key: 'big', state: big }] });
    const unpack = vi.spyOn(Unpackr.prototype, 'unpack');
    try {
      const message = IncomingFrame.open(frame, true, 'msgpack', limits).message(limits, 'default');
      expect(message).toMatchObject({
        type: 'put',
        puts: [{ ok: false, id: 1, result: { outcome: 'invalid', error: { code: 'LIMIT_EXCEEDED', field: 'state', limit: 'maxStateBytes' } } }],
      });
      const decoded = unpack.mock.calls.map(([bytes]) => (bytes as Uint8Array).length);
      expect(Math.max(...decoded), 'largest span handed to the decoder, bytes').toBeLessThan(64);
    } finally {
      unpack.mockRestore();
    }
  });
});
