#!/usr/bin/env node
// Regenerates the JSON vector files next to this script: `node protocol/vectors/generate.mjs`.
//
// Deliberately independent of src/: it carries its own msgpack writer (for client frames, which
// other-language clients write in the shortest forms) and its own canonical encoder written from
// PROTOCOL.md, so that test/protocol-vectors.test.ts compares two implementations of the rules.
// Server frames are encoded with msgpackr configured as the server configures it, because those
// vectors show the bytes the server really sends.
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Packr } from 'msgpackr';
import { canonical, float64Bytes, header, intBytes, strBytes } from './reference-canonical.mjs';

const here = dirname(fileURLToPath(import.meta.url));

// ---- tagged values: let a vector say exactly which msgpack encoding a client used ----

class F64 {
  constructor(v) {
    this.v = v;
  }
}
class F32 {
  constructor(v) {
    this.v = Math.fround(v);
  }
}
class Big {
  constructor(v) {
    this.v = v;
  }
}
class Bin {
  constructor(hex) {
    this.bytes = Buffer.from(hex, 'hex');
  }
}
/** A map with explicit entry order and keys of any type. */
class MapOf {
  constructor(entries) {
    this.entries = entries;
  }
}
/** A value whose encoding is given byte for byte (non-shortest forms). */
class Raw {
  constructor(hex, value) {
    this.hex = hex;
    this.value = value;
  }
}

const f64 = (v) => new F64(v);
const f32 = (v) => new F32(v);
const big = (v) => new Big(v);
const bin = (hex) => new Bin(hex);
const mapOf = (...entries) => new MapOf(entries);
const raw = (hex, value) => new Raw(hex, value);

function entriesOf(v) {
  return v instanceof MapOf ? v.entries : Object.entries(v);
}

// ---- plain msgpack writer, shortest forms, entry order kept ----

function pack(v) {
  if (v === null) return Buffer.of(0xc0);
  if (v === true) return Buffer.of(0xc3);
  if (v === false) return Buffer.of(0xc2);
  if (v instanceof Raw) return Buffer.from(v.hex, 'hex');
  if (v instanceof F64) return float64Bytes(v.v);
  if (v instanceof F32) {
    const b = Buffer.alloc(5);
    b[0] = 0xca;
    b.writeFloatBE(v.v, 1);
    return b;
  }
  if (v instanceof Big) return intBytes(v.v);
  if (v instanceof Bin) return Buffer.concat([header(v.bytes.length, 0, -1, 0xc4, 0xc5, 0xc6), v.bytes]);
  if (typeof v === 'number') return Number.isInteger(v) ? intBytes(v) : float64Bytes(v);
  if (typeof v === 'string') return strBytes(v);
  if (Array.isArray(v)) return Buffer.concat([header(v.length, 0x90, 15, null, 0xdc, 0xdd), ...v.map(pack)]);
  const entries = entriesOf(v);
  return Buffer.concat([header(entries.length, 0x80, 15, null, 0xde, 0xdf), ...entries.flatMap(([k, x]) => [pack(k), pack(x)])]);
}

// ---- the value a decoder sees, as plain JS (numbers, bigint, Buffer, Map) ----

function plain(v) {
  if (v instanceof Raw) return plain(v.value);
  if (v instanceof F64 || v instanceof F32) return v.v;
  if (v instanceof Big) return v.v >= BigInt(Number.MIN_SAFE_INTEGER) && v.v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.v) : v.v;
  if (v instanceof Bin) return v.bytes;
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === 'object') return new Map(entriesOf(v).map(([k, x]) => [plain(k), plain(x)]));
  return v;
}

function fingerprintInput(put) {
  const del = put.delete === true;
  return Buffer.concat([
    Buffer.of(0x94),
    strBytes(put.key),
    Buffer.of(del ? 0xc3 : 0xc2),
    del ? Buffer.of(0xc0) : canonical(plain(put.state)),
    put.ifVersion === undefined || put.ifVersion === null ? Buffer.of(0xc0) : intBytes(put.ifVersion),
  ]);
}

const sha16 = (bytes) => createHash('sha256').update(bytes).digest().subarray(0, 16);

// ---- the documented meaning: JSON, with $bigint / $bin / $map / $float for what JSON lacks ----

function meaning(v) {
  v = plain(v);
  return meaningOfPlain(v);
}

function meaningOfPlain(v) {
  if (typeof v === 'bigint') return { $bigint: v.toString() };
  if (typeof v === 'number') return Number.isFinite(v) ? v : { $float: String(v) };
  if (Buffer.isBuffer(v)) return { $bin: v.toString('hex') };
  if (Array.isArray(v)) return v.map(meaningOfPlain);
  if (v instanceof Map) {
    if ([...v.keys()].every((k) => typeof k === 'string')) {
      return Object.fromEntries([...v.entries()].map(([k, x]) => [k, meaningOfPlain(x)]));
    }
    return { $map: [...v.entries()].map(([k, x]) => [meaningOfPlain(k), meaningOfPlain(x)]) };
  }
  return v;
}

/** JSON text of a message, or null when JSON cannot carry it. */
function jsonOf(v) {
  const ok = (x) => {
    if (x instanceof Raw) return ok(x.value);
    if (x instanceof Big || x instanceof Bin) return false;
    if (x instanceof F64 || x instanceof F32) return Number.isFinite(x.v) && (!Number.isInteger(x.v) || Math.abs(x.v) <= 2 ** 53);
    if (Array.isArray(x)) return x.every(ok);
    if (x instanceof MapOf) return x.entries.every(([k, y]) => typeof k === 'string' && ok(y));
    if (x !== null && typeof x === 'object') return Object.values(x).every(ok);
    return true;
  };
  if (!ok(v)) return null;
  const toJs = (x) => {
    if (x instanceof Raw) return toJs(x.value);
    if (x instanceof F64 || x instanceof F32) return x.v;
    if (Array.isArray(x)) return x.map(toJs);
    if (x !== null && typeof x === 'object') return Object.fromEntries(entriesOf(x).map(([k, y]) => [k, toJs(y)]));
    return x;
  };
  return JSON.stringify(toJs(v));
}

// ---- client frames ----

function clientVector(name, message, notes, extra = {}) {
  return {
    name,
    direction: 'client',
    hex: pack(message).toString('hex'),
    json: extra.json !== undefined ? extra.json : jsonOf(message),
    decoded: meaning(message),
    notes,
    ...withoutJson(extra),
  };
}

function withoutJson(extra) {
  const { json: _json, ...rest } = extra;
  return rest;
}

const clientMessages = [
  clientVector(
    'hello-minimal',
    { type: 'hello' },
    'The smallest hello: no protocol field (1 assumed) and no streams; the welcome carries an empty heads array.',
  ),
  clientVector(
    'hello-with-streams',
    { type: 'hello', protocol: 1, streams: ['sensor-1', 'sensor-2'] },
    'Asks for the heads of two streams; the welcome lists them in this order.',
  ),
  clientVector(
    'hello-with-token',
    { type: 'hello', streams: ['sensor-1'], token: 'tok-3f9a1c2e7b6d4a58' },
    'Authenticates a connection opened without a token (browsers cannot set an Authorization header). Ignored on an open server.',
  ),
  clientVector(
    'put-single',
    {
      type: 'put',
      puts: [{ id: 1, stream: 'sensor-1', epoch: 1, seq: 1, key: 'room/kitchen', state: { temp: 21.5, unit: 'C' } }],
    },
    'One put with an integer correlation id.',
  ),
  clientVector(
    'put-multi',
    {
      type: 'put',
      puts: [
        { id: 'a-7', stream: 'sensor-1', epoch: 1, seq: 2, key: 'room/kitchen', state: { temp: 21.75, unit: 'C' } },
        { id: 'a-8', stream: 'sensor-1', epoch: 1, seq: 3, key: 'room/hall', state: { temp: 19, unit: 'C' } },
        { id: 'b-1', stream: 'sensor-2', epoch: 4, seq: 17, key: 'room/attic', state: [1, 2, 3] },
      ],
    },
    'Three puts in one frame, two streams, string ids; answered by three results in this order (possibly spread over several results frames).',
  ),
  clientVector(
    'put-delete',
    {
      type: 'put',
      puts: [{ id: 2, stream: 'sensor-1', epoch: 1, seq: 4, key: 'room/hall', delete: true }],
    },
    'Deletes a document: delete:true and no state field.',
  ),
  clientVector(
    'put-if-version',
    {
      type: 'put',
      puts: [{ id: 3, stream: 'sensor-1', epoch: 1, seq: 5, key: 'room/kitchen', state: { temp: 22, unit: 'C' }, ifVersion: 2 }],
    },
    'Applies only if the document exists at version 2; otherwise version_conflict (which consumes seq 5).',
  ),
  clientVector(
    'put-if-version-zero',
    {
      type: 'put',
      puts: [{ id: 4, stream: 'sensor-1', epoch: 1, seq: 6, key: 'room/cellar', state: { temp: 12, unit: 'C' }, ifVersion: 0 }],
    },
    'ifVersion 0: applies only if the document does not exist (never written, or deleted).',
  ),
  clientVector(
    'put-if-version-null',
    {
      type: 'put',
      puts: [{ id: 5, stream: 'sensor-1', epoch: 1, seq: 7, key: 'room/cellar', state: null, ifVersion: null }],
    },
    'ifVersion null means no condition. state nil is a value (the document exists with state nil), not a delete.',
  ),
  clientVector(
    'put-msgpack-only-values',
    {
      type: 'put',
      puts: [{ id: 6, stream: 'sensor-3', epoch: 0, seq: 1, key: 'blob', state: mapOf(['raw', bin('00ff10')], ['counter', big(2n ** 63n)], [7, 'seven']) }],
    },
    'A state JSON cannot carry: binary, a uint64 beyond 2^53, an integer map key. Epoch 0 is a valid epoch.',
  ),
  clientVector(
    'put-epoch-entry',
    {
      type: 'put',
      puts: [{ id: 7, stream: 'sensor-1', epoch: 2, seq: 1, key: 'room/kitchen', state: { temp: 20, unit: 'C' } }],
    },
    'A higher epoch than the head: the stream enters epoch 2 (in contiguous mode seq must be 1).',
  ),
  clientVector('ping-with-nonce', { type: 'ping', nonce: 'n-1' }, 'Answered at once by {type:"pong", nonce:"n-1"}.'),
  clientVector('ping-without-nonce', { type: 'ping' }, 'Answered at once by {type:"pong", nonce:null}.'),
];

// Frames and puts a server must refuse; `expect` is the answer.
const changefeedMessages = [
  clientVector(
    'subscribe-from-start',
    { type: 'subscribe', id: 'feed-1', prefix: 'room/', from: '-1' },
    'Changefeed (PROTOCOL.md §16): every change of keys under room/ from the start of the log, then live ones.',
  ),
  clientVector(
    'subscribe-resume',
    { type: 'subscribe', id: 7, from: '0000000000000042_6f1c2a0e' },
    'Resumes after a reconnect from the last `next` processed; no prefix means every readable key.',
  ),
  clientVector('unsubscribe', { type: 'unsubscribe', id: 'feed-1' }, 'Ends a subscription; answered with unsubscribed.'),
];

const rejected = [
  {
    name: 'subscribe-offset-not-a-string',
    direction: 'client',
    hex: pack({ type: 'subscribe', id: 1, from: -1 }).toString('hex'),
    json: '{"type":"subscribe","id":1,"from":-1}',
    decoded: { type: 'subscribe', id: 1, from: -1 },
    expect: { error: 'INVALID_OFFSET', field: 'from' },
    notes: 'from is a string: "-1", "now" or an offset the server sent.',
  },
  {
    name: 'subscribe-without-id',
    direction: 'client',
    hex: pack({ type: 'subscribe', from: 'now' }).toString('hex'),
    json: '{"type":"subscribe","from":"now"}',
    decoded: { type: 'subscribe', from: 'now' },
    expect: { error: 'INVALID_MESSAGE', field: 'id' },
    notes: 'Every subscription is named by an id.',
  },
  {
    name: 'frame-extension-type',
    direction: 'client',
    hex: '82a474797065a470696e67a56e6f6e6365d6ff00000000',
    json: null,
    decoded: null,
    expect: { error: 'MALFORMED_FRAME' },
    notes: 'A msgpack timestamp (extension type -1) as the nonce: the whole frame is refused.',
  },
  {
    name: 'frame-trailing-bytes',
    direction: 'client',
    hex: pack({ type: 'ping' }).toString('hex') + 'c0',
    json: null,
    decoded: null,
    expect: { error: 'MALFORMED_FRAME' },
    notes: 'One message per frame: a second value after the first is refused.',
  },
  {
    name: 'frame-truncated',
    direction: 'client',
    hex: pack({ type: 'ping', nonce: 'abc' }).toString('hex').slice(0, -2),
    json: null,
    decoded: null,
    expect: { error: 'MALFORMED_FRAME' },
    notes: 'The last byte of the nonce string is missing.',
  },
  {
    name: 'frame-not-a-map',
    direction: 'client',
    hex: pack(['put']).toString('hex'),
    json: '["put"]',
    decoded: ['put'],
    expect: { error: 'INVALID_MESSAGE', field: 'type' },
    notes: 'A message is a map.',
  },
  {
    name: 'frame-unknown-type',
    direction: 'client',
    hex: pack({ type: 'publish' }).toString('hex'),
    json: '{"type":"publish"}',
    decoded: { type: 'publish' },
    expect: { error: 'UNKNOWN_TYPE', field: 'type' },
    notes: 'An unknown message type refuses the frame.',
  },
  {
    name: 'hello-unsupported-version',
    direction: 'client',
    hex: pack({ type: 'hello', protocol: 2 }).toString('hex'),
    json: '{"type":"hello","protocol":2}',
    decoded: { type: 'hello', protocol: 2 },
    expect: { error: 'UNSUPPORTED_VERSION' },
    notes: 'This server speaks protocol 1 only; the error lists supported:[1].',
  },
  ...[
    ['put-seq-zero', { id: 10, stream: 's', epoch: 1, seq: 0, key: 'k', state: 1 }, { code: 'INVALID_FIELD', field: 'seq' }, 'seq starts at 1.'],
    ['put-negative-epoch', { id: 11, stream: 's', epoch: -1, seq: 1, key: 'k', state: 1 }, { code: 'INVALID_FIELD', field: 'epoch' }, 'epoch is >= 0.'],
    ['put-fractional-seq', { id: 12, stream: 's', epoch: 1, seq: 1.5, key: 'k', state: 1 }, { code: 'INVALID_FIELD', field: 'seq' }, 'seq is an integer.'],
    [
      'put-state-and-delete',
      { id: 13, stream: 's', epoch: 1, seq: 1, key: 'k', state: 1, delete: true },
      { code: 'INVALID_FIELD', field: 'state' },
      'Exactly one of state and delete:true.',
    ],
    [
      'put-neither-state-nor-delete',
      { id: 14, stream: 's', epoch: 1, seq: 1, key: 'k' },
      { code: 'INVALID_FIELD', field: 'state' },
      'A put without delete:true needs a state (which may be nil).',
    ],
    [
      'put-unknown-field',
      { id: 15, stream: 's', epoch: 1, seq: 1, key: 'k', state: 1, ttl: 60 },
      { code: 'INVALID_FIELD', field: 'ttl' },
      'Unknown put fields are refused, so a typo never passes silently.',
    ],
    [
      'put-control-character',
      { id: 16, stream: 's', epoch: 1, seq: 1, key: 'a\nb', state: 1 },
      { code: 'INVALID_FIELD', field: 'key' },
      'No U+0000-U+001F or U+007F in stream or key.',
    ],
    [
      'put-empty-stream',
      { id: 17, stream: '', epoch: 1, seq: 1, key: 'k', state: 1 },
      { code: 'INVALID_FIELD', field: 'stream' },
      'stream and key are non-empty.',
    ],
    [
      'put-key-too-long',
      { id: 18, stream: 's', epoch: 1, seq: 1, key: 'é'.repeat(129), state: 1 },
      { code: 'LIMIT_EXCEEDED', field: 'key', limit: 'maxKeyBytes', max: 256 },
      '129 characters but 258 UTF-8 bytes: limits count bytes.',
    ],
    [
      'put-missing-id',
      { stream: 's', epoch: 1, seq: 1, key: 'k', state: 1 },
      { code: 'INVALID_FIELD', field: 'id', id: null },
      'Without a valid id the result carries id null.',
    ],
    [
      'put-bool-map-key',
      { id: 19, stream: 's', epoch: 1, seq: 1, key: 'k', state: mapOf([true, 1]) },
      { code: 'INVALID_FIELD', field: 'state' },
      'Map keys in a state are strings or integers.',
    ],
  ].map(([name, p, expectInvalid, notes]) => ({
    ...clientVector(name, { type: 'put', puts: [p] }, notes),
    expect: { invalid: expectInvalid },
  })),
];

// ---- canonical form and fingerprints ----

function valueVector(name, value, notes, extra = {}) {
  let canon;
  try {
    canon = canonical(plain(value)).toString('hex');
  } catch {
    canon = null;
  }
  return {
    name,
    direction: 'client',
    hex: pack(value).toString('hex'),
    json: extra.json !== undefined ? extra.json : jsonOf(value),
    decoded: meaning(value),
    canonical: canon,
    notes,
    ...withoutJson(extra),
  };
}

const canonicalValues = [
  valueVector(
    'map-keys-sorted',
    mapOf(['unit', 'C'], ['temp', 21.5], ['id', 7]),
    'Entries sorted by the bytes of their encoded keys: "id" (a2…) < "temp" (a4…) < "unit" (a4 75… > a4 74…).',
  ),
  valueVector(
    'shorter-string-key-first',
    mapOf(['aa', 1], ['b', 2]),
    'The header byte comes first, so the 1-byte key "b" (a1 62) sorts before "aa" (a2 61 61).',
  ),
  valueVector(
    'integer-and-string-keys',
    mapOf(['b', 1], [10, 2], ['a', 3], [-1, 4], [200, 5]),
    'Byte order, not numeric order: 10 (0a) < "a" (a1 61) < "b" < 200 (cc c8) < -1 (ff).',
  ),
  valueVector(
    'integral-floats-become-integers',
    [f64(2), f32(-3), f64(-0), f64(2 ** 53), f64(-(2 ** 53)), f64(300)],
    'Floats with an integral value of magnitude <= 2^53 are written as the shortest integer; -0.0 becomes 0.',
  ),
  valueVector(
    'other-floats-stay-float64',
    [f32(1.1), f32(0.5), f64(0.1), f64(2 ** 53 + 2), f64(1e300)],
    'float32 1.1 widens to float64 1.100000023841858 (the same value); floats beyond 2^53 stay float64 even when integral.',
  ),
  valueVector(
    'non-shortest-integers',
    [raw('cd0005', 5), raw('d3ffffffffffffffff', -1), raw('cf000000000000012c', 300), raw('d000', 0), raw('d1ff80', -128)],
    'Any integer encoding is accepted; the canonical form is the shortest: unsigned forms for n >= 0, signed forms for n < 0.',
  ),
  valueVector(
    'integer-boundaries',
    [127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649],
    'Where each integer form starts and ends.',
  ),
  valueVector(
    'big-integers',
    [big(2n ** 64n - 1n), big(2n ** 63n), big(-(2n ** 63n)), big(2n ** 53n + 1n)],
    'Integers beyond 2^53 keep the shortest 64-bit form; JSON cannot carry them.',
  ),
  valueVector(
    'non-shortest-string-and-containers',
    raw(
      'de0002d90161dc0001c3d90162c0',
      new MapOf([
        ['a', [true]],
        ['b', null],
      ]),
    ),
    'map16, str8 and array16 headers for small sizes become fixmap, fixstr and fixarray.',
  ),
  valueVector('binary', mapOf(['b', bin('')], ['a', bin('00ff')]), 'Binary uses bin8 at least (there is no fixbin).'),
  valueVector(
    'nan-and-infinity',
    [f64(NaN), raw('cbfff8000000000001', NaN), f32(Infinity), f64(-Infinity)],
    'Every NaN becomes 7ff8000000000000; infinities keep their sign. JSON cannot carry these.',
  ),
  valueVector('scalar-state', 'just a string', 'A state may be any value, not only a map.'),
  valueVector('nested', { z: [{ y: 1, x: [] }, {}], a: { c: null, b: false } }, 'Sorting applies at every level.'),
  valueVector('rejected-bool-key', mapOf([true, 1]), 'Map keys must be strings or integers: the put is invalid (INVALID_FIELD, field state).', {
    rejected: 'INVALID_FIELD',
  }),
  valueVector('rejected-float-key', mapOf([f64(1.5), 1]), 'A non-integral float key is refused too.', { rejected: 'INVALID_FIELD' }),
  valueVector(
    'keys-at-2^53',
    mapOf([big(2n ** 53n), 'int'], [f64(-(2 ** 53)), 'float']),
    'Keys follow the number rules of values: the integer 2^53 is an integer key, and so is the float -2^53 (integral, magnitude <= 2^53). Decoders that read int64 as a double cannot tell the two apart, so both are accepted.',
  ),
  valueVector(
    'rejected-float-key-beyond-2^53',
    mapOf([f64(2 ** 53 + 2), 1]),
    'An integral float key of magnitude > 2^53 stays a float, and float keys are refused.',
    { rejected: 'INVALID_FIELD' },
  ),
];

function putVector(name, put, notes, extra = {}) {
  const message = { type: 'put', puts: [put] };
  const input = fingerprintInput(put);
  return {
    name,
    direction: 'client',
    hex: pack(message).toString('hex'),
    json: extra.json !== undefined ? extra.json : jsonOf(message),
    decoded: meaning(message),
    canonicalState: put.delete === true ? null : canonical(plain(put.state)).toString('hex'),
    fingerprintInput: input.toString('hex'),
    fingerprint: sha16(input).toString('hex'),
    notes,
  };
}

const thermostat = { id: 1, stream: 'sensor-1', epoch: 1, seq: 1, key: 'thermostat' };
const canonicalPuts = [
  putVector(
    'fingerprint-msgpack-and-json-agree',
    { ...thermostat, state: mapOf(['unit', 'C'], ['target', f64(21)], ['current', f32(20.5)], ['modes', ['heat', raw('cd0001', 1)]]) },
    'The msgpack frame sends keys unsorted, 21 as float64, 20.5 as float32 and 1 as uint16; the JSON text sends other key orders and plain numbers. Both give the same canonical state and fingerprint, so a retry may switch transports.',
    {
      json: '{"puts":[{"state":{"modes":["heat",1],"current":20.5,"target":21,"unit":"C"},"key":"thermostat","seq":1,"epoch":1,"stream":"sensor-1","id":1}],"type":"put"}',
    },
  ),
  putVector(
    'fingerprint-ignores-stream-epoch-seq-and-id',
    { id: 'other', stream: 'sensor-9', epoch: 3, seq: 99, key: 'thermostat', state: { current: 20.5, modes: ['heat', 1], target: 21, unit: 'C' } },
    'Same key and state as the previous vector in another stream and seq: the fingerprint is the same, it covers only key, delete, state and ifVersion.',
  ),
  putVector(
    'fingerprint-with-if-version',
    { ...thermostat, state: { current: 20.5, modes: ['heat', 1], target: 21, unit: 'C' }, ifVersion: 4 },
    'Adding ifVersion changes the fingerprint: a retry must repeat the condition exactly.',
  ),
  putVector(
    'fingerprint-if-version-zero',
    { ...thermostat, state: { current: 20.5, modes: ['heat', 1], target: 21, unit: 'C' }, ifVersion: 0 },
    'ifVersion 0 is hashed as the integer 0, unlike an absent ifVersion (nil).',
  ),
  putVector('fingerprint-delete', { ...thermostat, delete: true }, 'A delete hashes [key, true, nil, nil].'),
  putVector('fingerprint-nil-state', { ...thermostat, state: null }, 'A nil state hashes [key, false, nil, nil]: not the same as a delete.'),
  putVector(
    'fingerprint-msgpack-only',
    { ...thermostat, state: mapOf([2, bin('cafe')], [1, big(2n ** 60n)]) },
    'Integer keys, binary and a uint64: no JSON form exists.',
  ),
];

// ---- server frames: encoded as the server encodes them ----

const serverPackr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false });
// The server writes integers beyond 32 bits as int64/uint64, never float64 (see PROTOCOL.md).
function widen(v) {
  if (typeof v === 'number') return Number.isInteger(v) && (v > 0xffffffff || v < -0x80000000) ? BigInt(v) : v;
  if (Array.isArray(v)) return v.map(widen);
  if (v instanceof Uint8Array) return v;
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, widen(x)]));
  return v;
}
/** A server message holding a bin (a change's state): JSON cannot carry it, `decoded` writes it as $bin. */
function serverVectorBinary(name, message, decoded, notes) {
  return { name, direction: 'server', hex: serverPackr.pack(widen(message)).toString('hex'), json: null, decoded, notes };
}
function serverVector(name, message, notes) {
  return { name, direction: 'server', hex: serverPackr.pack(widen(message)).toString('hex'), json: JSON.stringify(message), decoded: message, notes };
}

const committedAt = 1764270000000;
const ack = (fields) => ({ stream: 'sensor-1', epoch: 1, seq: 1, key: 'room/kitchen', version: 1, deleted: false, ...fields, committedAt });
const err = (code, message, retryable, details = {}) => ({ code, message, retryable, ...details });

const serverMessages = [
  serverVector(
    'welcome',
    {
      type: 'welcome',
      protocol: 1,
      server: 'seqgate/0.1.0',
      incarnation: '6f1c2a0e-3b7d-4c55-9a1e-2d0b8f4e7c31',
      contiguous: false,
      limits: {
        maxFrameBytes: 1048576,
        maxPutsPerFrame: 1000,
        maxStateBytes: 65536,
        maxStateDepth: 32,
        maxKeyBytes: 256,
        maxStreamBytes: 256,
        maxIdBytes: 128,
        maxHelloStreams: 1000,
        maxNonceBytes: 1024,
      },
      heads: [
        { stream: 'sensor-1', epoch: 1, seq: 42, prunedThrough: 0 },
        { stream: 'sensor-2', epoch: 0, seq: 0, prunedThrough: 0 },
      ],
    },
    'Answer to hello-with-streams: sensor-2 was never written (epoch 0, seq 0). The next put of sensor-1 in epoch 1 uses seq 43.',
  ),
  serverVector(
    'results-applied',
    { type: 'results', results: [{ id: 1, outcome: 'applied', replay: false, ack: ack({}) }] },
    'committedAt is milliseconds since the Unix epoch, an integer: above 2^32-1 the server writes it as int64 (d3) or uint64 (cf), never as a float. JavaScript msgpackr users: int64AsType "auto" keeps it a number.',
  ),
  serverVector(
    'results-applied-replay',
    { type: 'results', results: [{ id: 1, outcome: 'applied', replay: true, ack: ack({}) }] },
    "A retry of put-single: the stored ack, byte for byte, with replay:true. The id is the retry's own id.",
  ),
  serverVector(
    'results-applied-delete',
    { type: 'results', results: [{ id: 2, outcome: 'applied', replay: false, ack: ack({ seq: 4, key: 'room/hall', version: 2, deleted: true }) }] },
    'A delete of an existing document bumps its version.',
  ),
  serverVector(
    'results-applied-delete-missing',
    { type: 'results', results: [{ id: 2, outcome: 'applied', replay: false, ack: ack({ seq: 4, key: 'room/hall', version: 0, deleted: true }) }] },
    'Deleting a document that never existed (or is already deleted) applies without changing the version.',
  ),
  serverVector(
    'results-version-conflict',
    { type: 'results', results: [{ id: 3, outcome: 'version_conflict', replay: false, ack: ack({ seq: 5, version: 3, ifVersion: 2 }) }] },
    'The document is at version 3, the put asked for 2. The seq is consumed; a retry gets this ack with replay:true. version_conflict acks carry ifVersion, applied acks never do.',
  ),
  serverVector(
    'results-version-conflict-missing',
    {
      type: 'results',
      results: [{ id: 4, outcome: 'version_conflict', replay: false, ack: ack({ seq: 6, key: 'room/cellar', version: 0, deleted: true, ifVersion: 5 }) }],
    },
    'ifVersion 5 on a document that does not exist: deleted:true means "does not exist now" (never written or deleted).',
  ),
  serverVector(
    'results-sequence-reused',
    {
      type: 'results',
      results: [{ id: 9, outcome: 'sequence_reused', error: err('SEQUENCE_REUSED', 'seq already used by a put with a different payload', false) }],
    },
    'An ack is stored for this (stream, epoch, seq) with another fingerprint.',
  ),
  serverVector(
    'results-fenced',
    { type: 'results', results: [{ id: 9, outcome: 'fenced', error: err('FENCED', 'epoch is fenced; the stream is at epoch 2', false, { epoch: 2 }) }] },
    "The put's epoch is below the stream's (2).",
  ),
  serverVector(
    'results-stale',
    {
      type: 'results',
      results: [
        {
          id: 9,
          outcome: 'stale',
          error: err('STALE', 'seq is at or below the head and was never applied', false, { head: { epoch: 1, seq: 43 }, prunedThrough: 0 }),
        },
      ],
    },
    'seq at or below the head, never applied (a later seq passed it), its answer still determinable.',
  ),
  serverVector(
    'results-expired',
    {
      type: 'results',
      results: [
        {
          id: 9,
          outcome: 'expired',
          error: err('EXPIRED', 'seq is at or below the pruned-through mark', false, { head: { epoch: 1, seq: 1200 }, prunedThrough: 200 }),
        },
      ],
    },
    'seq <= prunedThrough: whether it was applied can no longer be told.',
  ),
  serverVector(
    'results-gap',
    { type: 'results', results: [{ id: 9, outcome: 'gap', error: err('GAP', 'expected seq 44', false, { expected: { epoch: 1, seq: 44 } }) }] },
    'Contiguous mode only.',
  ),
  serverVector(
    'results-invalid-field',
    { type: 'results', results: [{ id: 10, outcome: 'invalid', error: err('INVALID_FIELD', 'seq must be a safe integer >= 1', false, { field: 'seq' }) }] },
    'Answer to put-seq-zero.',
  ),
  serverVector(
    'results-invalid-limit',
    {
      type: 'results',
      results: [
        { id: 18, outcome: 'invalid', error: err('LIMIT_EXCEEDED', 'key exceeds 256 UTF-8 bytes', false, { field: 'key', limit: 'maxKeyBytes', max: 256 }) },
      ],
    },
    'Answer to put-key-too-long: limit names the welcome.limits field, max its value.',
  ),
  serverVector(
    'results-invalid-no-id',
    {
      type: 'results',
      results: [{ id: null, outcome: 'invalid', error: err('INVALID_FIELD', 'id must be a string or a safe integer >= 0', false, { field: 'id' }) }],
    },
    "Answer to put-missing-id: id null. The result still sits at the put's position.",
  ),
  serverVector(
    'results-forbidden',
    { type: 'results', results: [{ id: 1, outcome: 'forbidden', error: err('FORBIDDEN', 'token may not write this stream or document', false) }] },
    "The token's grant does not cover the stream or the key; nothing was consumed.",
  ),
  serverVector(
    'results-error',
    { type: 'results', results: [{ id: 1, outcome: 'error', error: err('STORAGE_UNAVAILABLE', 'batch not committed: SQLITE_IOERR: disk I/O error', true) }] },
    'The batch failed to commit; nothing was applied or consumed. Retry the same put.',
  ),
  serverVector(
    'results-coalesced',
    {
      type: 'results',
      results: [
        { id: 'a-7', outcome: 'applied', replay: false, ack: ack({ seq: 2, version: 2 }) },
        { id: 'a-8', outcome: 'applied', replay: false, ack: ack({ seq: 3, key: 'room/hall', version: 1 }) },
        { id: 'b-1', outcome: 'gap', error: err('GAP', 'expected seq 1', false, { expected: { epoch: 4, seq: 1 } }) },
        { id: 10, outcome: 'invalid', error: err('INVALID_FIELD', 'seq must be a safe integer >= 1', false, { field: 'seq' }) },
      ],
    },
    'Results of two put messages (put-multi, then put-seq-zero) coalesced into one frame, in put order.',
  ),
  serverVector('pong', { type: 'pong', nonce: 'n-1' }, 'Answer to ping-with-nonce; may arrive before results of earlier puts.'),
  serverVector('pong-null-nonce', { type: 'pong', nonce: null }, 'Answer to ping-without-nonce.'),
  serverVector(
    'error-malformed-frame',
    { type: 'error', code: 'MALFORMED_FRAME', message: 'undecodable msgpack: msgpack extension types are not accepted', retryable: false },
    'Answer to frame-extension-type; no put of the frame was processed.',
  ),
  serverVector(
    'error-wrong-frame-type',
    { type: 'error', code: 'WRONG_FRAME_TYPE', message: 'text frame on a msgpack connection; send binary frames', retryable: false },
    'A text frame on a seqgate.v1 connection.',
  ),
  serverVector(
    'error-too-deep',
    { type: 'error', code: 'TOO_DEEP', message: 'frame nests deeper than 35 levels', retryable: false, limit: 'maxStateDepth', max: 32 },
    'The frame limit is maxStateDepth + 3 (the put envelope adds three levels); limit names the welcome.limits field, max its value.',
  ),
  serverVector(
    'error-invalid-message',
    { type: 'error', code: 'INVALID_MESSAGE', message: 'puts must be an array', retryable: false, field: 'puts' },
    'A put message whose puts is not an array.',
  ),
  serverVector(
    'error-nonce-too-large',
    { type: 'error', code: 'INVALID_MESSAGE', message: 'nonce exceeds 1024 bytes', retryable: false, field: 'nonce', limit: 'maxNonceBytes', max: 1024 },
    'A ping whose nonce is over maxNonceBytes in canonical form; it is not echoed.',
  ),
  serverVector(
    'error-unknown-type',
    { type: 'error', code: 'UNKNOWN_TYPE', message: 'unknown message type "publish"', retryable: false, field: 'type' },
    'Answer to frame-unknown-type.',
  ),
  serverVector(
    'error-too-many-puts',
    { type: 'error', code: 'TOO_MANY_PUTS', message: '1001 puts exceed maxPutsPerFrame 1000', retryable: false, limit: 'maxPutsPerFrame', max: 1000 },
    'None of the puts was processed; split the frame.',
  ),
  serverVector(
    'error-too-many-streams',
    { type: 'error', code: 'TOO_MANY_STREAMS', message: '1001 streams exceed maxHelloStreams 1000', retryable: false, limit: 'maxHelloStreams', max: 1000 },
    'A hello naming too many streams.',
  ),
  serverVector(
    'error-unsupported-version',
    { type: 'error', code: 'UNSUPPORTED_VERSION', message: 'protocol 2 is not supported; this server speaks 1', retryable: false, supported: [1] },
    'Answer to hello-unsupported-version.',
  ),
  serverVector(
    'error-unauthorized',
    { type: 'error', code: 'UNAUTHORIZED', message: 'send a hello with a valid token (or a bearer token on the upgrade) first', retryable: false },
    'On a server with tokens, a connection opened without one sent something other than a ping or a hello with a valid token; close 4401 follows.',
  ),
  serverVector(
    'error-forbidden-hello',
    { type: 'error', code: 'FORBIDDEN', message: 'token may not read stream sensor-9', retryable: false, stream: 'sensor-9' },
    'A hello naming a stream the token may not read; no welcome follows for it.',
  ),
  serverVector(
    'error-hello-storage',
    { type: 'error', code: 'STORAGE_UNAVAILABLE', message: 'heads unavailable: SQLITE_BUSY: database is locked', retryable: true },
    'A hello whose heads could not be read; send the hello again.',
  ),
];

const kitchenState = canonical(new Map([['temp', 21.5]]));
const changeOffset = (n) => `${String(n).padStart(16, '0')}_6f1c2a0e`;
const changefeedServerMessages = [
  serverVector('subscribed', { type: 'subscribed', id: 'feed-1', offset: changeOffset(0) }, 'Answer to subscribe-from-start: the position it starts after.'),
  serverVectorBinary(
    'changes',
    {
      type: 'changes',
      id: 'feed-1',
      changes: [
        {
          offset: changeOffset(7),
          key: 'room/kitchen',
          version: 3,
          deleted: false,
          state: kitchenState,
          origin: { stream: 'sensor-1', epoch: 1, seq: 42 },
          committedAt,
        },
        { offset: changeOffset(9), key: 'room/hall', version: 2, deleted: true, state: null, origin: { route: 'DELETE /v1/docs/{key}' }, committedAt },
      ],
      next: changeOffset(9),
      upToDate: true,
    },
    {
      type: 'changes',
      id: 'feed-1',
      changes: [
        {
          offset: changeOffset(7),
          key: 'room/kitchen',
          version: 3,
          deleted: false,
          state: { $bin: kitchenState.toString('hex') },
          origin: { stream: 'sensor-1', epoch: 1, seq: 42 },
          committedAt,
        },
        { offset: changeOffset(9), key: 'room/hall', version: 2, deleted: true, state: null, origin: { route: 'DELETE /v1/docs/{key}' }, committedAt },
      ],
      next: changeOffset(9),
      upToDate: true,
    },
    'Two changes under msgpack: a put (state is a bin holding the canonical bytes of {"temp":21.5}) and an HTTP delete. Under the JSON subprotocol the state is the JSON value {"temp":21.5}.',
  ),
  serverVector(
    'changes-caught-up',
    { type: 'changes', id: 7, changes: [], next: changeOffset(42), upToDate: true },
    'A subscription that reached the end of the log says so once, with the offset to save.',
  ),
  serverVector('unsubscribed', { type: 'unsubscribed', id: 'feed-1' }, 'Nothing more of this id follows.'),
  serverVector(
    'error-offset-expired',
    {
      type: 'error',
      code: 'OFFSET_EXPIRED',
      message: 'changes after this offset were removed by retention; restart from a snapshot',
      retryable: false,
      earliest: changeOffset(120),
      id: 7,
    },
    'The subscription has ended; restart from GET /v1/changes/snapshot (PROTOCOL.md §16.5).',
  ),
];

function write(file, vectors) {
  writeFileSync(join(here, file), JSON.stringify(vectors, null, 2) + '\n');
}

write('client-messages.json', [...clientMessages, ...changefeedMessages, ...rejected]);
write('server-messages.json', [...serverMessages, ...changefeedServerMessages]);
write('canonical-values.json', canonicalValues);
write('canonical-puts.json', canonicalPuts);
