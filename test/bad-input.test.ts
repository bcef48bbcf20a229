import Database from 'better-sqlite3';
import { Packr } from 'msgpackr';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Config } from '../src/config.js';
import { MSGPACK_EXTENSIONS } from './support/msgpack-extensions.js';
import { put, startTestServer, TestClient, type Format, type Msg, type TestServer } from './support/test-client.js';

/**
 * Hostile and malformed input against a live server. For every case: the documented answer, the
 * connection stays usable, nothing reaches the database, and other connections do not notice.
 */

const packr = new Packr({ useRecords: false });
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

interface Snapshot {
  acks: number;
  streams: Array<{ name: string; epoch: number; seq: number }>;
  documents: Array<{ key: string; version: number; deleted: number }>;
}

/** What the database holds, read with raw SQL on a separate read-only connection. */
function snapshot(dbPath: string): Snapshot {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return {
      acks: (db.prepare('SELECT count(*) AS n FROM acks_all').get() as { n: number }).n,
      streams: db.prepare('SELECT name, epoch, seq FROM streams ORDER BY name').all() as Snapshot['streams'],
      documents: db.prepare('SELECT key, version, deleted FROM documents ORDER BY key').all() as Snapshot['documents'],
    };
  } finally {
    db.close();
  }
}

const EMPTY: Snapshot = { acks: 0, streams: [], documents: [] };

let t: TestServer;
const clients: TestClient[] = [];

async function connect(format: Format = 'msgpack'): Promise<TestClient> {
  const c = await TestClient.connect(t.url, format);
  clients.push(c);
  return c;
}

async function startServer(overrides: Partial<Config> = {}): Promise<void> {
  t = await startTestServer(overrides);
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.ws.terminate();
  await t.stop();
});

/**
 * Sends the bad input, returns its answer, and checks the aftermath: nothing written, the same
 * connection then applies put (s, 1, 1, k) -- the seq a bad put would have used -- and a second
 * connection's put is applied too.
 */
async function answerWithoutEffect(format: Format, sendBad: (c: TestClient) => void): Promise<Msg> {
  const c = await connect(format);
  const other = await connect('msgpack');
  sendBad(c);
  await c.waitFor(() => c.messages.length >= 1);
  const answer = c.messages[0];
  expect(snapshot(t.dbPath)).toEqual(EMPTY);

  const follow = put({ stream: 's', epoch: 1, seq: 1, key: 'k', state: { ok: true } });
  c.send({ type: 'put', puts: [follow] });
  const theirs = put({ stream: 'other', epoch: 1, seq: 1, key: 'other-k', state: { theirs: 1 } });
  other.send({ type: 'put', puts: [theirs] });
  await c.waitFor(() => c.results().some((r: Msg) => r.id === follow.id));
  const [theirResult] = await other.waitResults(1);

  expect(c.results().find((r: Msg) => r.id === follow.id)).toMatchObject({
    outcome: 'applied',
    replay: false,
    ack: { stream: 's', epoch: 1, seq: 1, key: 'k', version: 1, deleted: false },
  });
  expect(theirResult).toMatchObject({ id: theirs.id, outcome: 'applied', replay: false, ack: { stream: 'other', seq: 1, version: 1 } });
  // Only the bad frame's answer and the follow-up's result reached this client.
  expect(c.messages).toHaveLength(2);
  expect(snapshot(t.dbPath)).toEqual({
    acks: 2,
    streams: [
      { name: 'other', epoch: 1, seq: 1 },
      { name: 's', epoch: 1, seq: 1 },
    ],
    documents: [
      { key: 'k', version: 1, deleted: 0 },
      { key: 'other-k', version: 1, deleted: 0 },
    ],
  });
  expect(c.ws.readyState).toBe(c.ws.OPEN);
  return answer;
}

function messageError(code: string, details: Record<string, unknown> = {}): Msg {
  return { type: 'error', code, message: expect.any(String), retryable: false, ...details };
}

const OMIT = Symbol('omit');
let badIds = 0;

/** A put for (s, 1, 1, k) with some fields replaced or (OMIT) removed. */
function badPut(over: Record<string, unknown>): Record<string, unknown> {
  const p: Record<string, unknown> = { id: `bad-${++badIds}`, stream: 's', epoch: 1, seq: 1, key: 'k', state: { n: 1 } };
  for (const [k, v] of Object.entries(over)) {
    // defineProperty, so that a '__proto__' field becomes a field and not the prototype.
    if (v === OMIT) delete p[k];
    else Object.defineProperty(p, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return p;
}

interface FieldCase {
  readonly name: string;
  readonly over: Record<string, unknown>;
  readonly code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED';
  readonly field: string;
  readonly limit?: string;
  readonly max?: number;
  /** The id the result carries; default: the put's own id. */
  readonly id?: unknown;
  readonly msgpackOnly?: boolean;
}

const FIELD_CASES: FieldCase[] = [
  { name: 'id missing', over: { id: OMIT }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id null', over: { id: null }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id a boolean', over: { id: true }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id negative', over: { id: -1 }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id fractional', over: { id: 1.5 }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id 2^53', over: { id: 2 ** 53 }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id a map', over: { id: { a: 1 } }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id an array', over: { id: ['x'] }, code: 'INVALID_FIELD', field: 'id', id: null },
  { name: 'id of 129 bytes', over: { id: 'i'.repeat(129) }, code: 'LIMIT_EXCEEDED', field: 'id', limit: 'maxIdBytes', max: 128, id: null },
  { name: 'id of 65 two-byte characters', over: { id: 'é'.repeat(65) }, code: 'LIMIT_EXCEEDED', field: 'id', limit: 'maxIdBytes', max: 128, id: null },

  { name: 'stream missing', over: { stream: OMIT }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream null', over: { stream: null }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream a number', over: { stream: 5 }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream an array', over: { stream: ['s'] }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream empty', over: { stream: '' }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream of 257 bytes', over: { stream: 's'.repeat(257) }, code: 'LIMIT_EXCEEDED', field: 'stream', limit: 'maxStreamBytes', max: 256 },
  { name: 'stream of 129 two-byte characters', over: { stream: 'é'.repeat(129) }, code: 'LIMIT_EXCEEDED', field: 'stream', limit: 'maxStreamBytes', max: 256 },
  { name: 'stream with NUL', over: { stream: 's\u0000t' }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream with a newline', over: { stream: 's\nt' }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream with ESC', over: { stream: '\u001b[31ms' }, code: 'INVALID_FIELD', field: 'stream' },
  { name: 'stream with DEL', over: { stream: 's\u007f' }, code: 'INVALID_FIELD', field: 'stream' },

  { name: 'key missing', over: { key: OMIT }, code: 'INVALID_FIELD', field: 'key' },
  { name: 'key null', over: { key: null }, code: 'INVALID_FIELD', field: 'key' },
  { name: 'key a number', over: { key: 1 }, code: 'INVALID_FIELD', field: 'key' },
  { name: 'key a map', over: { key: { k: 1 } }, code: 'INVALID_FIELD', field: 'key' },
  { name: 'key empty', over: { key: '' }, code: 'INVALID_FIELD', field: 'key' },
  { name: 'key of 257 bytes', over: { key: 'k'.repeat(257) }, code: 'LIMIT_EXCEEDED', field: 'key', limit: 'maxKeyBytes', max: 256 },
  {
    name: 'key of 64 four-byte characters and one more byte',
    over: { key: '😀'.repeat(64) + 'k' },
    code: 'LIMIT_EXCEEDED',
    field: 'key',
    limit: 'maxKeyBytes',
    max: 256,
  },
  { name: 'key with a tab', over: { key: 'k\tk' }, code: 'INVALID_FIELD', field: 'key' },
  { name: 'key with a carriage return', over: { key: 'k\r' }, code: 'INVALID_FIELD', field: 'key' },

  { name: 'epoch missing', over: { epoch: OMIT }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch null', over: { epoch: null }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch -1', over: { epoch: -1 }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch 1.5', over: { epoch: 1.5 }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch a string', over: { epoch: '1' }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch a boolean', over: { epoch: true }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch 2^53', over: { epoch: 2 ** 53 }, code: 'INVALID_FIELD', field: 'epoch' },
  { name: 'epoch a BigInt beyond 2^53', over: { epoch: 2n ** 60n }, code: 'INVALID_FIELD', field: 'epoch', msgpackOnly: true },

  { name: 'seq missing', over: { seq: OMIT }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq null', over: { seq: null }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq 0', over: { seq: 0 }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq -1', over: { seq: -1 }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq 1.5', over: { seq: 1.5 }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq 2^53', over: { seq: 2 ** 53 }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq a string', over: { seq: '1' }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq an array', over: { seq: [1] }, code: 'INVALID_FIELD', field: 'seq' },
  { name: 'seq a BigInt beyond 2^53', over: { seq: 2n ** 60n }, code: 'INVALID_FIELD', field: 'seq', msgpackOnly: true },
  { name: 'seq a negative BigInt', over: { seq: -(2n ** 60n) }, code: 'INVALID_FIELD', field: 'seq', msgpackOnly: true },

  { name: 'state over maxStateBytes', over: { state: 'x'.repeat(65_536) }, code: 'LIMIT_EXCEEDED', field: 'state', limit: 'maxStateBytes', max: 65_536 },
  { name: 'state and delete: true', over: { delete: true }, code: 'INVALID_FIELD', field: 'state' },
  { name: 'neither state nor delete', over: { state: OMIT }, code: 'INVALID_FIELD', field: 'state' },
  { name: 'delete: false without state', over: { state: OMIT, delete: false }, code: 'INVALID_FIELD', field: 'state' },
  { name: 'delete a string', over: { state: OMIT, delete: 'yes' }, code: 'INVALID_FIELD', field: 'delete' },
  { name: 'delete a number', over: { state: OMIT, delete: 1 }, code: 'INVALID_FIELD', field: 'delete' },
  { name: 'delete nil', over: { state: OMIT, delete: null }, code: 'INVALID_FIELD', field: 'delete' },
  { name: 'state with a boolean map key', over: { state: new Map([[true, 1]]) }, code: 'INVALID_FIELD', field: 'state', msgpackOnly: true },
  { name: 'state with a float map key', over: { state: new Map([[1.5, 1]]) }, code: 'INVALID_FIELD', field: 'state', msgpackOnly: true },

  { name: 'ifVersion -1', over: { ifVersion: -1 }, code: 'INVALID_FIELD', field: 'ifVersion' },
  { name: 'ifVersion 1.5', over: { ifVersion: 1.5 }, code: 'INVALID_FIELD', field: 'ifVersion' },
  { name: 'ifVersion a string', over: { ifVersion: '1' }, code: 'INVALID_FIELD', field: 'ifVersion' },
  { name: 'ifVersion 2^53', over: { ifVersion: 2 ** 53 }, code: 'INVALID_FIELD', field: 'ifVersion' },

  { name: 'an unknown field ifversion', over: { ifversion: 0 }, code: 'INVALID_FIELD', field: 'ifversion' },
  { name: 'an unknown field Seq', over: { Seq: 1 }, code: 'INVALID_FIELD', field: 'Seq' },
  { name: 'an unknown field __proto__', over: { ['__proto__']: { seq: 1 } }, code: 'INVALID_FIELD', field: '__proto__' },
];

describe('a put with a bad field', () => {
  beforeEach(() => startServer());

  for (const format of ['msgpack', 'json'] as const) {
    const cases = FIELD_CASES.filter((c) => format === 'msgpack' || !c.msgpackOnly);
    it.each(cases)(`over ${format}: $name is answered invalid naming the field, and nothing is written`, async (tc) => {
      const bad = badPut(tc.over);
      const answer = await answerWithoutEffect(format, (c) => c.send({ type: 'put', puts: [bad] }));
      const error: Record<string, unknown> = { code: tc.code, message: expect.any(String), retryable: false, field: tc.field };
      if (tc.limit !== undefined) Object.assign(error, { limit: tc.limit, max: tc.max });
      expect(answer).toEqual({
        type: 'results',
        results: [{ id: 'id' in tc ? tc.id : bad.id, outcome: 'invalid', error }],
      });
    });
  }

  it('accepts names and ids of exactly the byte limits', async () => {
    const c = await connect();
    const p = put({ id: 'i'.repeat(128), stream: 's'.repeat(256), key: '😀'.repeat(64), seq: 1 });
    c.send({ type: 'put', puts: [p] });
    const [r] = await c.waitResults(1);
    expect(r).toMatchObject({ id: 'i'.repeat(128), outcome: 'applied' });
  });

  it('accepts an empty string id and echoes it', async () => {
    const c = await connect();
    c.send({ type: 'put', puts: [put({ id: '', stream: 'empty-id', seq: 1 })] });
    const [r] = await c.waitResults(1);
    expect(r).toMatchObject({ id: '', outcome: 'applied' });
  });

  it('accepts a state of exactly maxStateBytes in canonical form', async () => {
    const c = await connect();
    // A str32 header is 5 bytes: 65531 characters encode to 65536 bytes.
    c.send({ type: 'put', puts: [put({ stream: 'big', state: 'x'.repeat(65_531) })] });
    const [r] = await c.waitResults(1);
    expect(r).toMatchObject({ outcome: 'applied' });
  });
});

describe('a put that is not a map', () => {
  beforeEach(() => startServer());

  it.each<[string, unknown]>([
    ['an integer', 5],
    ['a string', 'put'],
    ['nil', null],
    ['a boolean', true],
    ['an array', [['s', 1, 1, 'k']]],
    ['a binary', new Uint8Array([1, 2])],
  ])('%s is answered invalid with field put and no id', async (_name, value) => {
    const answer = await answerWithoutEffect('msgpack', (c) => c.send({ type: 'put', puts: [value] }));
    expect(answer).toEqual({
      type: 'results',
      results: [{ id: null, outcome: 'invalid', error: { code: 'INVALID_FIELD', message: expect.any(String), retryable: false, field: 'put' } }],
    });
  });
});

describe('a frame that is not a valid message', () => {
  beforeEach(() => startServer());

  it.each<[string, Buffer]>([
    ['the byte 0xc1', hex('c1')],
    ['a truncated array', hex('92 01')],
    ['a truncated put message', packr.pack({ type: 'put', puts: [put()] }).subarray(0, 20)],
    ['a valid message followed by trailing bytes', Buffer.concat([packr.pack({ type: 'put', puts: [put()] }), hex('c0')])],
    ['two messages in one frame', Buffer.concat([packr.pack({ type: 'ping' }), packr.pack({ type: 'ping' })])],
    ['an empty frame', Buffer.alloc(0)],
    ['text bytes sent as binary', Buffer.from('{"type":"ping"}')],
    ['an array32 claiming 2^32-1 items', hex('dd ffffffff 01 02 03 04 05')],
    ['a str32 claiming 2^32-1 bytes', hex('db ffffffff 61 62 63')],
  ])('undecodable msgpack (%s) gets MALFORMED_FRAME', async (_name, bytes) => {
    const answer = await answerWithoutEffect('msgpack', (c) => c.sendRaw(bytes, true));
    expect(answer).toEqual(messageError('MALFORMED_FRAME'));
  });

  it.each(MSGPACK_EXTENSIONS)('a put whose state holds a msgpack %s gets MALFORMED_FRAME', async (_name, ext) => {
    const frame = Buffer.concat([
      hex('82'),
      packr.pack('type'),
      packr.pack('put'),
      packr.pack('puts'),
      hex('91 86'),
      packr.pack('id'),
      packr.pack(1),
      packr.pack('stream'),
      packr.pack('s'),
      packr.pack('epoch'),
      packr.pack(1),
      packr.pack('seq'),
      packr.pack(1),
      packr.pack('key'),
      packr.pack('k'),
      packr.pack('state'),
      hex('81 a1 78'),
      ext,
    ]);
    const answer = await answerWithoutEffect('msgpack', (c) => c.sendRaw(frame, true));
    expect(answer).toEqual(messageError('MALFORMED_FRAME'));
  });

  it('a Date packed by a stock msgpack encoder gets MALFORMED_FRAME', async () => {
    const frame = packr.pack({ type: 'put', puts: [put({ state: { when: new Date(0) } })] });
    const answer = await answerWithoutEffect('msgpack', (c) => c.sendRaw(frame, true));
    expect(answer).toEqual(messageError('MALFORMED_FRAME'));
  });

  it.each<[string, string]>([
    ['truncated JSON', '{"type":"put","puts":['],
    ['a bare word', 'nope'],
    ['an empty text frame', ''],
    ['JSON followed by garbage', '{"type":"ping"} x'],
    ['single-quoted JSON', "{'type':'ping'}"],
  ])('undecodable JSON (%s) gets MALFORMED_FRAME', async (_name, text) => {
    const answer = await answerWithoutEffect('json', (c) => c.sendRaw(text, false));
    expect(answer).toEqual(messageError('MALFORMED_FRAME'));
  });

  it('a text frame on a msgpack connection gets WRONG_FRAME_TYPE', async () => {
    const answer = await answerWithoutEffect('msgpack', (c) => c.sendRaw(JSON.stringify({ type: 'put', puts: [put()] }), false));
    expect(answer).toEqual(messageError('WRONG_FRAME_TYPE'));
  });

  it('a binary frame on a JSON connection gets WRONG_FRAME_TYPE', async () => {
    const answer = await answerWithoutEffect('json', (c) => c.sendRaw(Buffer.from(JSON.stringify({ type: 'put', puts: [put()] })), true));
    expect(answer).toEqual(messageError('WRONG_FRAME_TYPE'));
  });

  for (const format of ['msgpack', 'json'] as const) {
    it.each<[string, unknown]>([
      ['an array', ['put', [put()]]],
      ['a string', 'put'],
      ['an integer', 5],
      ['nil', null],
      ['a map without type', { puts: [put()] }],
      ['a map whose type is an integer', { type: 1, puts: [put()] }],
      ['a map whose type is nil', { type: null, puts: [put()] }],
    ])(`over ${format}: %s gets INVALID_MESSAGE naming type`, async (_name, value) => {
      const answer = await answerWithoutEffect(format, (c) => c.sendRaw(c.encode(value as object)));
      expect(answer).toEqual(messageError('INVALID_MESSAGE', { field: 'type' }));
    });

    it.each(['putt', 'PUT', '', 'results', 'welcome'])(`over ${format}: type %j gets UNKNOWN_TYPE`, async (type) => {
      const answer = await answerWithoutEffect(format, (c) => c.send({ type, puts: [put()] }));
      expect(answer).toEqual(messageError('UNKNOWN_TYPE', { field: 'type' }));
    });

    it.each<[string, unknown]>([
      ['missing', undefined],
      ['nil', null],
      ['a map', { 0: put() }],
      ['a string', 'puts'],
      ['a single put', put()],
    ])(`over ${format}: puts %s gets INVALID_MESSAGE naming puts`, async (_name, puts) => {
      const message = puts === undefined ? { type: 'put' } : { type: 'put', puts };
      const answer = await answerWithoutEffect(format, (c) => c.send(message));
      expect(answer).toEqual(messageError('INVALID_MESSAGE', { field: 'puts' }));
    });

    it(`over ${format}: a state nested one level deeper than maxStateDepth gets TOO_DEEP for the whole frame`, async () => {
      let state: unknown = 1;
      for (let i = 0; i < 33; i++) state = [state];
      const answer = await answerWithoutEffect(format, (c) => c.send({ type: 'put', puts: [put({ state })] }));
      expect(answer).toEqual(messageError('TOO_DEEP', { limit: 'maxStateDepth', max: 32 }));
    });

    it(`over ${format}: a frame nested a hundred thousand levels gets TOO_DEEP`, async () => {
      const frame =
        format === 'msgpack'
          ? Buffer.concat([hex('82'), packr.pack('type'), packr.pack('put'), packr.pack('puts'), Buffer.alloc(100_000, 0x91), hex('c0')])
          : '{"type":"put","puts":' + '['.repeat(100_000) + ']'.repeat(100_000) + '}';
      const answer = await answerWithoutEffect(format, (c) => c.sendRaw(frame));
      expect(answer).toEqual(messageError('TOO_DEEP', { limit: 'maxStateDepth', max: 32 }));
    });
  }

  it('a state nested exactly maxStateDepth levels is applied', async () => {
    const c = await connect();
    let state: unknown = 1;
    for (let i = 0; i < 32; i++) state = { a: state };
    c.send({ type: 'put', puts: [put({ stream: 'deep', state })] });
    const [r] = await c.waitResults(1);
    expect(r).toMatchObject({ outcome: 'applied' });
  });

  it('an unknown type is not echoed back at length', async () => {
    const c = await connect();
    c.send({ type: 'x'.repeat(100_000) });
    const answer = await c.waitMessage('error');
    expect(answer.code).toBe('UNKNOWN_TYPE');
    expect(c.frames[0]!.length).toBeLessThan(1024);
  });
});

describe('a put message with too many puts', () => {
  beforeEach(() => startServer());

  it('gets TOO_MANY_PUTS with the limit, and none of its puts is processed', async () => {
    const puts = Array.from({ length: 1001 }, (_, i) => put({ stream: 's', seq: i + 1, key: 'k', state: { i } }));
    const answer = await answerWithoutEffect('msgpack', (c) => c.send({ type: 'put', puts }));
    expect(answer).toEqual(messageError('TOO_MANY_PUTS', { limit: 'maxPutsPerFrame', max: 1000 }));
  });

  it('accepts exactly maxPutsPerFrame puts', async () => {
    const c = await connect();
    const puts = Array.from({ length: 1000 }, (_, i) => put({ stream: 'full', seq: i + 1, key: `k${i}` }));
    c.send({ type: 'put', puts });
    const results = await c.waitResults(1000);
    expect(results.every((r: Msg) => r.outcome === 'applied')).toBe(true);
  });
});

describe('a bad hello', () => {
  beforeEach(() => startServer());

  it('naming more than maxHelloStreams streams gets TOO_MANY_STREAMS with the limit', async () => {
    const streams = Array.from({ length: 1001 }, (_, i) => `s${i}`);
    const answer = await answerWithoutEffect('msgpack', (c) => c.send({ type: 'hello', streams }));
    expect(answer).toEqual(messageError('TOO_MANY_STREAMS', { limit: 'maxHelloStreams', max: 1000 }));
  });

  for (const format of ['msgpack', 'json'] as const) {
    it.each<[string, unknown]>([
      ['2', 2],
      ['0', 0],
      ['"1"', '1'],
      ['1.5', 1.5],
      ['[1]', [1]],
    ])(`over ${format}: protocol %s gets UNSUPPORTED_VERSION listing the supported versions`, async (_name, protocol) => {
      const answer = await answerWithoutEffect(format, (c) => c.send({ type: 'hello', protocol, streams: ['s'] }));
      expect(answer).toEqual(messageError('UNSUPPORTED_VERSION', { supported: [1] }));
    });

    it.each<[string, unknown]>([
      ['a string', 's'],
      ['a map', { s: 1 }],
      ['a list holding a number', ['s', 1]],
      ['a list holding an empty name', ['']],
      ['a list holding a name with a control character', ['s\u0001']],
      ['a list holding a name over maxStreamBytes', ['s'.repeat(257)]],
    ])(`over ${format}: streams as %s gets INVALID_MESSAGE naming streams`, async (_name, streams) => {
      const answer = await answerWithoutEffect(format, (c) => c.send({ type: 'hello', streams }));
      expect(answer).toEqual(messageError('INVALID_MESSAGE', { field: 'streams' }));
    });
  }

  it('with a protocol that cannot be turned into a string gets UNSUPPORTED_VERSION and the server keeps running', async () => {
    // {"toString":1} has no callable toString, so String(protocol) throws a TypeError.
    const answer = await answerWithoutEffect('json', (c) => c.sendRaw('{"type":"hello","protocol":{"toString":1,"valueOf":1}}', false));
    expect(answer).toEqual(messageError('UNSUPPORTED_VERSION', { supported: [1] }));
  });
});

describe('a frame over maxFrameBytes', () => {
  beforeEach(() => startServer({ maxFrameBytes: 4096 }));

  /** A valid put frame padded to exactly `size` bytes. */
  function frameOfSize(size: number, fields: Record<string, unknown>): Buffer {
    let pad = size;
    for (;;) {
      const frame = packr.pack({ type: 'put', puts: [put({ ...fields, state: 'p'.repeat(pad) })] });
      if (frame.length === size) return frame;
      pad += size - frame.length;
    }
  }

  it('closes the connection with 1009, writes nothing, and other connections carry on', async () => {
    const c = await connect();
    const other = await connect();
    c.sendRaw(frameOfSize(4097, { stream: 'huge', seq: 1 }), true);
    const closed = await c.closed;
    expect(closed).toEqual({ code: 1009, reason: '' });
    expect(c.messages).toEqual([]);
    expect(snapshot(t.dbPath)).toEqual(EMPTY);

    other.send({ type: 'put', puts: [put({ stream: 'other', seq: 1, key: 'other-k' })] });
    const [r] = await other.waitResults(1);
    expect(r).toMatchObject({ outcome: 'applied' });
    const again = await connect();
    again.send({ type: 'put', puts: [put({ stream: 'huge', seq: 1, key: 'k' })] });
    const [r2] = await again.waitResults(1);
    expect(r2).toMatchObject({ outcome: 'applied', replay: false, ack: { stream: 'huge', seq: 1, version: 1 } });
    expect(snapshot(t.dbPath)).toMatchObject({ acks: 2 });
  });

  it('closes a JSON connection sending an oversized text frame with 1009', async () => {
    const c = await connect('json');
    c.sendRaw(JSON.stringify({ type: 'put', puts: [put({ state: 'p'.repeat(5000) })] }), false);
    expect((await c.closed).code).toBe(1009);
    expect(snapshot(t.dbPath)).toEqual(EMPTY);
  });

  it('accepts a frame of exactly maxFrameBytes', async () => {
    const c = await connect();
    c.sendRaw(frameOfSize(4096, { stream: 'edge', seq: 1 }), true);
    const [r] = await c.waitResults(1);
    expect(r).toMatchObject({ outcome: 'applied' });
  });
});

describe('a put message mixing valid and invalid puts', () => {
  for (const contiguous of [false, true]) {
    describe(contiguous ? 'in contiguous mode' : 'in default mode', () => {
      beforeEach(() => startServer({ contiguous }));

      it('answers each put in order, applies the valid ones, and the invalid one consumes no seq', async () => {
        const c = await connect();
        const first = put({ stream: 'mix', seq: 1, key: 'a' });
        const bad = put({ stream: 'mix', seq: 2, key: '' });
        const sameSeq = put({ stream: 'mix', seq: 2, key: 'b' });
        c.send({ type: 'put', puts: [first, bad, sameSeq] });
        const results = await c.waitResults(3);
        expect(results).toHaveLength(3);
        expect(results[0]).toMatchObject({ id: first.id, outcome: 'applied', replay: false, ack: { seq: 1, key: 'a' } });
        expect(results[1]).toMatchObject({ id: bad.id, outcome: 'invalid', error: { code: 'INVALID_FIELD', field: 'key' } });
        expect(results[2]).toMatchObject({ id: sameSeq.id, outcome: 'applied', replay: false, ack: { seq: 2, key: 'b' } });

        const next = put({ stream: 'mix', seq: 3, key: 'a' });
        c.send({ type: 'put', puts: [next] });
        const [, , , r3] = await c.waitResults(4);
        expect(r3).toMatchObject({ id: next.id, outcome: 'applied', ack: { seq: 3 } });
        expect(snapshot(t.dbPath)).toEqual({
          acks: 3,
          streams: [{ name: 'mix', epoch: 1, seq: 3 }],
          documents: [
            { key: 'a', version: 2, deleted: 0 },
            { key: 'b', version: 1, deleted: 0 },
          ],
        });
      });

      it('applies the put after an invalid one when it takes the next seq', async () => {
        const c = await connect();
        const first = put({ stream: 'mix2', seq: 1, key: 'a' });
        const bad = put({ stream: 'mix2', seq: 2, key: 'a' });
        const after = put({ stream: 'mix2', seq: 2, key: 'a', state: { v: 2 } });
        delete bad.state;
        c.send({ type: 'put', puts: [first, bad] });
        c.send({ type: 'put', puts: [after] });
        const results = await c.waitResults(3);
        expect(results.map((r: Msg) => r.outcome)).toEqual(['applied', 'invalid', 'applied']);
        expect(results[2]).toMatchObject({ id: after.id, ack: { seq: 2, version: 2 } });
      });

      it('a frame of only invalid puts is answered without touching the database', async () => {
        const c = await connect();
        c.send({ type: 'put', puts: [put({ seq: 0 }), put({ key: '' }), 7] });
        const results = await c.waitResults(3);
        expect(results.map((r: Msg) => r.outcome)).toEqual(['invalid', 'invalid', 'invalid']);
        expect(snapshot(t.dbPath)).toEqual(EMPTY);
      });
    });
  }

  it('in contiguous mode, a put skipping the seq an invalid put left free gets a gap', async () => {
    await startServer({ contiguous: true });
    const c = await connect();
    c.send({ type: 'put', puts: [put({ stream: 'gap', seq: 1 }), put({ stream: 'gap', seq: 2, epoch: -1 }), put({ stream: 'gap', seq: 3 })] });
    const results = await c.waitResults(3);
    expect(results.map((r: Msg) => r.outcome)).toEqual(['applied', 'invalid', 'gap']);
    expect(results[2].error).toMatchObject({ code: 'GAP', expected: { epoch: 1, seq: 2 } });
  });
});

describe('errors interleaved with results', () => {
  beforeEach(() => startServer());

  it('keeps answers in the order of the frames that caused them', async () => {
    const c = await connect();
    const p1 = put({ stream: 'ord', seq: 1 });
    const p2 = put({ stream: 'ord', seq: 2 });
    c.send({ type: 'put', puts: [p1] });
    c.sendRaw(hex('c1'), true);
    c.send({ type: 'put', puts: [p2] });
    c.send({ type: 'bogus' });
    await c.waitFor(() => c.results().length >= 2 && c.messages.filter((m: Msg) => m.type === 'error').length >= 2);
    const sequence = c.messages.flatMap((m: Msg) => (m.type === 'results' ? m.results.map((r: Msg) => r.id) : [m.code]));
    expect(sequence).toEqual([p1.id, 'MALFORMED_FRAME', p2.id, 'UNKNOWN_TYPE']);
  });
});
