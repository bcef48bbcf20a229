import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Unpackr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../src/config.js';
import { SeqgateError } from '../src/errors.js';
import { decide, type GateInputs } from '../src/gate.js';
import { CanonicalError, canonicalEncode, putFingerprint } from '../src/protocol/canonical.js';
import { decodeFrame, encodeMessage, ENVELOPE_DEPTH } from '../src/protocol/codec.js';
import { errorMessage, limitsOf, parseMessage, parsePut, wireResult, type Limits } from '../src/protocol/messages.js';
import { DEFAULT_TENANT, type Head, type Put, type PutResult } from '../src/store/store.js';
import { encodePutJson, encodePutMsgpack, encodeState, jsonPutFrame, msgpackPutFrame, StateProblem } from '../packages/client/src/encode.js';

/**
 * protocol/vectors/ against the server's own code: client frames through the server's decoder and
 * parser, canonical vectors through src/protocol/canonical.ts, server frames through msgpackr (as a
 * client decodes them) and back through the server's encoder and result builders.
 */

interface Vector {
  name: string;
  direction: 'client' | 'server';
  hex: string;
  json: string | null;
  decoded: unknown;
  notes: string;
  expect?: { error?: string; field?: string; invalid?: Record<string, unknown> };
  canonical?: string | null;
  rejected?: string;
  canonicalState?: string | null;
  fingerprintInput?: string;
  fingerprint?: string;
}

const load = (file: string): Vector[] => JSON.parse(readFileSync(new URL(`../protocol/vectors/${file}`, import.meta.url), 'utf8')) as Vector[];

const clientVectors = load('client-messages.json');
const serverVectors = load('server-messages.json');
const valueVectors = load('canonical-values.json');
const putVectors = load('canonical-puts.json');

const limits: Limits = limitsOf(defaultConfig());
const frameDepth = limits.maxStateDepth + ENVELOPE_DEPTH;
const unbounded = { maxBytes: 1 << 30, maxDepth: 64, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };

const bytes = (hex: string): Buffer => Buffer.from(hex, 'hex');
const decodeMsgpack = (hex: string): unknown => decodeFrame(bytes(hex), true, 'msgpack', frameDepth);
const decodeJson = (text: string): unknown => decodeFrame(Buffer.from(text, 'utf8'), false, 'json', frameDepth);
const byName = (vectors: Vector[], name: string): Vector => {
  const v = vectors.find((x) => x.name === name);
  if (v === undefined) throw new Error(`no vector ${name}`);
  return v;
};

/** A decoded value as the vectors write its meaning ($bigint, $bin, $float, $map for what JSON lacks). */
function meaning(v: unknown): unknown {
  if (typeof v === 'bigint') return { $bigint: v.toString() };
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return { $float: String(v) };
    return Object.is(v, -0) ? 0 : v; // JSON has no -0
  }
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(meaning);
  if (v instanceof Map) {
    const entries = [...v.entries()];
    if (entries.every(([k]) => typeof k === 'string')) return Object.fromEntries(entries.map(([k, x]) => [k, meaning(x)]));
    return { $map: entries.map(([k, x]) => [meaning(k), meaning(x)]) };
  }
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, meaning(x)]));
  return v;
}

/** The inverse of meaning(): the value a decoder would hand to the canonical encoder. */
function fromMeaning(m: unknown): unknown {
  if (Array.isArray(m)) return m.map(fromMeaning);
  if (m !== null && typeof m === 'object') {
    const o = m as Record<string, unknown>;
    if (typeof o.$bigint === 'string') return BigInt(o.$bigint);
    if (typeof o.$bin === 'string') return bytes(o.$bin);
    if (typeof o.$float === 'string') return Number(o.$float);
    if (Array.isArray(o.$map)) return new Map((o.$map as Array<[unknown, unknown]>).map(([k, x]) => [fromMeaning(k), fromMeaning(x)]));
    return new Map(Object.entries(o).map(([k, x]) => [k, fromMeaning(x)]));
  }
  return m;
}

/** A server message's meaning as the server holds it: only `$bin` (a change's state) becomes bytes. */
function withBins(m: unknown): unknown {
  if (Array.isArray(m)) return m.map(withBins);
  if (m !== null && typeof m === 'object') {
    const o = m as Record<string, unknown>;
    if (typeof o.$bin === 'string') return bytes(o.$bin);
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, withBins(x)]));
  }
  return m;
}

function expectFrameRefused(decode: () => unknown, code: string, field: string | undefined): void {
  let caught: unknown;
  try {
    parseMessage(decode(), limits, DEFAULT_TENANT);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(SeqgateError);
  expect((caught as SeqgateError).code).toBe(code);
  if (field !== undefined) expect((caught as SeqgateError).details.field).toBe(field);
}

describe('client vectors', () => {
  const decodable = clientVectors.filter((v) => v.decoded !== null);

  it('covers hello, single, multi, delete and ifVersion puts, ping, and refused frames and puts', () => {
    const names = clientVectors.map((v) => v.name);
    for (const n of [
      'hello-minimal',
      'hello-with-streams',
      'put-single',
      'put-multi',
      'put-delete',
      'put-if-version',
      'ping-with-nonce',
      'ping-without-nonce',
    ]) {
      expect(names).toContain(n);
    }
    expect(clientVectors.every((v) => v.direction === 'client')).toBe(true);
    expect(clientVectors.filter((v) => v.expect?.error !== undefined).length).toBeGreaterThan(0);
    expect(clientVectors.filter((v) => v.expect?.invalid !== undefined).length).toBeGreaterThan(0);
  });

  it.each(decodable.map((v) => [v.name, v] as const))('%s decodes with the server decoder to its documented meaning', (_name, v) => {
    expect(meaning(decodeMsgpack(v.hex))).toEqual(v.decoded);
    if (v.json !== null) expect(meaning(decodeJson(v.json))).toEqual(v.decoded);
  });

  it.each(clientVectors.filter((v) => v.expect === undefined).map((v) => [v.name, v] as const))(
    '%s is accepted as the message and puts it documents, from MessagePack and from JSON',
    (_name, v) => {
      const decoded = v.decoded as Record<string, unknown>;
      for (const value of [decodeMsgpack(v.hex), ...(v.json !== null ? [decodeJson(v.json)] : [])]) {
        const message = parseMessage(value, limits, DEFAULT_TENANT);
        expect(message.type).toBe(decoded.type);
        if (message.type === 'hello') {
          expect(message.streams).toEqual(decoded.streams ?? []);
          expect(message.token).toEqual(decoded.token);
        }
        if (message.type === 'ping') expect(meaning(message.nonce)).toEqual(decoded.nonce ?? null);
        if (message.type !== 'put') continue;
        const puts = decoded.puts as Array<Record<string, unknown>>;
        expect(message.puts).toHaveLength(puts.length);
        message.puts.forEach((parsed, i) => {
          const p = puts[i]!;
          if (!parsed.ok) throw new Error(`put ${i} of ${v.name} refused: ${JSON.stringify(parsed.result)}`);
          expect(parsed.id).toEqual(p.id);
          expect(parsed.put).toMatchObject({ stream: p.stream, epoch: p.epoch, seq: p.seq, key: p.key, ifVersion: p.ifVersion ?? null });
          const expectedState = p.delete === true ? null : canonicalEncode(fromMeaning(p.state), unbounded, 'state');
          expect(parsed.put.state).toEqual(expectedState);
        });
      }
    },
  );

  it.each(clientVectors.filter((v) => v.expect?.error !== undefined).map((v) => [v.name, v] as const))(
    '%s is refused as a whole frame with the documented code',
    (_name, v) => {
      expectFrameRefused(() => decodeMsgpack(v.hex), v.expect!.error!, v.expect!.field);
      if (v.json !== null) expectFrameRefused(() => decodeJson(v.json!), v.expect!.error!, v.expect!.field);
    },
  );

  it.each(clientVectors.filter((v) => v.expect?.invalid !== undefined).map((v) => [v.name, v] as const))(
    '%s is answered invalid with the documented code, field and limit',
    (_name, v) => {
      const { id: expectedId, ...error } = v.expect!.invalid as Record<string, unknown>;
      const decodedPut = (v.decoded as { puts: Array<{ id?: unknown }> }).puts[0]!;
      for (const value of [decodeMsgpack(v.hex), ...(v.json !== null ? [decodeJson(v.json)] : [])]) {
        const message = parseMessage(value, limits, DEFAULT_TENANT);
        if (message.type !== 'put') throw new Error('not a put message');
        const [parsed] = message.puts;
        if (parsed === undefined || parsed.ok) throw new Error(`${v.name} was accepted`);
        expect(parsed.result.outcome).toBe('invalid');
        expect(parsed.result.id).toEqual(expectedId === undefined ? decodedPut.id : expectedId);
        if (!('error' in parsed.result)) throw new Error('no error');
        expect(parsed.result.error).toMatchObject({ ...error, retryable: false });
      }
    },
  );
});

describe('canonical form', () => {
  it('covers sorting, integer and float normalisation, boundaries and refused keys', () => {
    expect(valueVectors.filter((v) => v.canonical === null).length).toBeGreaterThan(0);
    expect(valueVectors.filter((v) => v.canonical !== null && v.hex !== v.canonical).length).toBeGreaterThan(5);
  });

  it.each(valueVectors.filter((v) => v.canonical !== null).map((v) => [v.name, v] as const))(
    '%s: the server canonical encoder writes exactly the documented bytes',
    (_name, v) => {
      expect(canonicalEncode(decodeMsgpack(v.hex), unbounded, 'state').toString('hex')).toBe(v.canonical);
      expect(canonicalEncode(fromMeaning(v.decoded), unbounded, 'state').toString('hex')).toBe(v.canonical);
      if (v.json !== null) expect(canonicalEncode(JSON.parse(v.json), unbounded, 'state').toString('hex')).toBe(v.canonical);
      // Canonical bytes are a fixed point: decoding and re-encoding them changes nothing.
      expect(canonicalEncode(decodeMsgpack(v.canonical!), unbounded, 'state').toString('hex')).toBe(v.canonical);
    },
  );

  it.each(valueVectors.filter((v) => v.canonical === null).map((v) => [v.name, v] as const))(
    '%s: a state the canonical form cannot hold makes the put invalid',
    (_name, v) => {
      expect(() => canonicalEncode(decodeMsgpack(v.hex), unbounded, 'state')).toThrow(CanonicalError);
      const state = decodeMsgpack(v.hex);
      const parsed = parsePut(
        new Map<string, unknown>([
          ['id', 1],
          ['stream', 's'],
          ['epoch', 1],
          ['seq', 1],
          ['key', 'k'],
          ['state', state],
        ]),
        limits,
        DEFAULT_TENANT,
      );
      expect(parsed.ok).toBe(false);
      if (parsed.ok || !('error' in parsed.result)) throw new Error('accepted');
      expect(parsed.result.error).toMatchObject({ code: v.rejected, field: 'state' });
    },
  );
});

describe('fingerprints', () => {
  it.each(putVectors.map((v) => [v.name, v] as const))(
    '%s: the server computes the documented canonical state and fingerprint, from MessagePack and from JSON',
    (_name, v) => {
      // The documented input really hashes to the documented fingerprint.
      expect(createHash('sha256').update(bytes(v.fingerprintInput!)).digest().subarray(0, 16).toString('hex')).toBe(v.fingerprint);
      for (const value of [decodeMsgpack(v.hex), ...(v.json !== null ? [decodeJson(v.json)] : [])]) {
        const message = parseMessage(value, limits, DEFAULT_TENANT);
        if (message.type !== 'put' || message.puts[0] === undefined || !message.puts[0].ok) throw new Error('refused');
        const { put } = message.puts[0];
        expect(put.state === null ? null : put.state.toString('hex')).toBe(v.canonicalState);
        expect(put.fingerprint.toString('hex')).toBe(v.fingerprint);
        expect(putFingerprint(put.key, put.state, put.ifVersion).toString('hex')).toBe(v.fingerprint);
      }
    },
  );

  it('gives the same fingerprint to a put sent as unsorted MessagePack with floats and as reordered JSON', () => {
    const v = byName(putVectors, 'fingerprint-msgpack-and-json-agree');
    expect(v.json).not.toBeNull();
    expect(v.hex).toContain('cb4035000000000000'); // 21 travels as float64 in the MessagePack frame
    expect(v.hex).toContain('ca41a40000'); // 20.5 travels as float32
    const fromMsgpack = parseMessage(decodeMsgpack(v.hex), limits, DEFAULT_TENANT);
    const fromJson = parseMessage(decodeJson(v.json!), limits, DEFAULT_TENANT);
    if (fromMsgpack.type !== 'put' || fromJson.type !== 'put') throw new Error('not puts');
    const [a] = fromMsgpack.puts;
    const [b] = fromJson.puts;
    if (!a?.ok || !b?.ok) throw new Error('refused');
    expect(a.put.fingerprint).toEqual(b.put.fingerprint);
    expect(a.put.state).toEqual(b.put.state);
  });

  it('covers only key, delete, state and ifVersion', () => {
    const fp = (name: string): string => byName(putVectors, name).fingerprint!;
    expect(fp('fingerprint-ignores-stream-epoch-seq-and-id')).toBe(fp('fingerprint-msgpack-and-json-agree'));
    const distinct = [
      'fingerprint-msgpack-and-json-agree',
      'fingerprint-with-if-version',
      'fingerprint-if-version-zero',
      'fingerprint-delete',
      'fingerprint-nil-state',
    ];
    expect(new Set(distinct.map(fp)).size).toBe(distinct.length);
  });
});

describe('server vectors', () => {
  const clientUnpackr = new Unpackr({ useRecords: false, int64AsType: 'auto' as 'bigint' });

  it('covers the welcome, a result of every outcome, replays, pong and every message-scope error', () => {
    expect(serverVectors.every((v) => v.direction === 'server')).toBe(true);
    const outcomes = new Set(serverVectors.flatMap((v) => ((v.decoded as { results?: Array<{ outcome: string }> }).results ?? []).map((r) => r.outcome)));
    expect([...outcomes].sort()).toEqual([
      'applied',
      'error',
      'expired',
      'fenced',
      'forbidden',
      'gap',
      'invalid',
      'sequence_reused',
      'stale',
      'version_conflict',
    ]);
    const types = new Set(serverVectors.map((v) => (v.decoded as { type: string }).type));
    expect([...types].sort()).toEqual(['changes', 'error', 'pong', 'results', 'subscribed', 'unsubscribed', 'welcome']);
    const codes = new Set(serverVectors.map((v) => (v.decoded as { code?: string }).code).filter((c) => c !== undefined));
    for (const c of [
      'MALFORMED_FRAME',
      'WRONG_FRAME_TYPE',
      'TOO_DEEP',
      'INVALID_MESSAGE',
      'UNKNOWN_TYPE',
      'TOO_MANY_PUTS',
      'TOO_MANY_STREAMS',
      'UNSUPPORTED_VERSION',
      'UNAUTHORIZED',
      'FORBIDDEN',
    ]) {
      expect(codes).toContain(c);
    }
  });

  it.each(serverVectors.map((v) => [v.name, v] as const))('%s decodes to its meaning and is exactly what the server encoder writes for it', (_name, v) => {
    expect(meaning(clientUnpackr.unpack(bytes(v.hex)))).toEqual(v.decoded);
    // Only a changefeed message with a state (a bin) has no JSON form.
    if (v.json !== null) {
      expect(JSON.parse(v.json)).toEqual(v.decoded);
      expect(encodeMessage(v.decoded as object, 'json')).toBe(v.json);
    }
    expect((encodeMessage(withBins(v.decoded) as object, 'msgpack') as Buffer).toString('hex')).toBe(v.hex);
  });

  // Each result vector, rebuilt from the situation its notes describe: the gate decides, wireResult
  // shapes. Messages are human text and not part of the contract, so they are left out.
  const now = 1764270000000;
  const noStoredAck = (): undefined => undefined;
  function gatePut(fields: Partial<Put> & { state?: Buffer | null }): Put {
    const base = { tenant: DEFAULT_TENANT, stream: 'sensor-1', epoch: 1, seq: 1, key: 'room/kitchen', state: Buffer.of(0x01), ifVersion: null, ...fields };
    return { ...base, fingerprint: putFingerprint(base.key, base.state, base.ifVersion) };
  }
  function run(put: Put, head: Head, extra: Partial<GateInputs> = {}): PutResult {
    const d = decide(put, { head, storedAck: noStoredAck, document: () => undefined, contiguous: false, now, ...extra });
    if (d.kind === 'replay') return { kind: 'ack', ack: d.ack, replay: true };
    if (d.kind === 'reject') return { kind: 'rejected', ...d.rejection };
    return { kind: 'ack', ack: d.ack, replay: false };
  }
  const fresh: Head = { epoch: 0, seq: 0, prunedThrough: 0 };
  const first = run(gatePut({}), fresh);
  const firstAck = first.kind === 'ack' ? first.ack : undefined;

  const rebuilt: Record<string, () => unknown> = {
    'results-applied': () => wireResult(1, first),
    'results-applied-replay': () =>
      wireResult(
        1,
        run(
          gatePut({}),
          { epoch: 1, seq: 1, prunedThrough: 0 },
          {
            storedAck: () => ({ fingerprint: gatePut({}).fingerprint, ack: firstAck! }),
          },
        ),
      ),
    'results-applied-delete': () =>
      wireResult(
        2,
        run(
          gatePut({ seq: 4, key: 'room/hall', state: null }),
          { epoch: 1, seq: 3, prunedThrough: 0 },
          {
            document: () => ({ version: 1, deleted: false }),
          },
        ),
      ),
    'results-applied-delete-missing': () => wireResult(2, run(gatePut({ seq: 4, key: 'room/hall', state: null }), { epoch: 1, seq: 3, prunedThrough: 0 })),
    'results-version-conflict': () =>
      wireResult(
        3,
        run(
          gatePut({ seq: 5, ifVersion: 2 }),
          { epoch: 1, seq: 4, prunedThrough: 0 },
          {
            document: () => ({ version: 3, deleted: false }),
          },
        ),
      ),
    'results-version-conflict-missing': () => wireResult(4, run(gatePut({ seq: 6, key: 'room/cellar', ifVersion: 5 }), { epoch: 1, seq: 5, prunedThrough: 0 })),
    'results-sequence-reused': () =>
      wireResult(
        9,
        run(
          gatePut({ state: Buffer.of(0x02) }),
          { epoch: 1, seq: 1, prunedThrough: 0 },
          {
            storedAck: () => ({ fingerprint: gatePut({}).fingerprint, ack: firstAck! }),
          },
        ),
      ),
    'results-fenced': () => wireResult(9, run(gatePut({ seq: 50 }), { epoch: 2, seq: 3, prunedThrough: 0 })),
    'results-stale': () => wireResult(9, run(gatePut({ seq: 40 }), { epoch: 1, seq: 43, prunedThrough: 0 })),
    'results-expired': () => wireResult(9, run(gatePut({ seq: 150 }), { epoch: 1, seq: 1200, prunedThrough: 200 })),
    'results-gap': () => wireResult(9, run(gatePut({ seq: 45 }), { epoch: 1, seq: 43, prunedThrough: 0 }, { contiguous: true })),
    'results-error': () => wireResult(1, { kind: 'rejected', outcome: 'error', code: 'STORAGE_UNAVAILABLE', message: 'batch not committed' }),
    'results-invalid-field': () => invalidResultOf('put-seq-zero'),
    'results-invalid-limit': () => invalidResultOf('put-key-too-long'),
    'results-invalid-no-id': () => invalidResultOf('put-missing-id'),
  };
  function invalidResultOf(name: string): unknown {
    const message = parseMessage(decodeMsgpack(byName(clientVectors, name).hex), limits, DEFAULT_TENANT);
    if (message.type !== 'put' || message.puts[0] === undefined || message.puts[0].ok) throw new Error(`${name} accepted`);
    return message.puts[0].result;
  }

  const refusal = (decode: () => unknown): object => {
    try {
      parseMessage(decode(), limits, DEFAULT_TENANT);
    } catch (err) {
      if (err instanceof SeqgateError) return errorMessage(err);
      throw err;
    }
    throw new Error('frame accepted');
  };
  const nested = (levels: number): unknown => (levels === 0 ? 1 : [nested(levels - 1)]);
  const rebuiltErrors: Record<string, () => object> = {
    'error-malformed-frame': () => refusal(() => decodeMsgpack(byName(clientVectors, 'frame-extension-type').hex)),
    'error-wrong-frame-type': () => refusal(() => decodeFrame(Buffer.from('{"type":"ping"}'), false, 'msgpack', frameDepth)),
    'error-too-deep': () => refusal(() => decodeJson(JSON.stringify({ type: 'ping', nonce: nested(frameDepth) }))),
    'error-invalid-message': () => refusal(() => decodeJson('{"type":"put","puts":{}}')),
    'error-nonce-too-large': () => refusal(() => decodeJson(JSON.stringify({ type: 'ping', nonce: 'n'.repeat(limits.maxNonceBytes) }))),
    'error-unknown-type': () => refusal(() => decodeMsgpack(byName(clientVectors, 'frame-unknown-type').hex)),
    'error-too-many-puts': () => refusal(() => decodeJson(JSON.stringify({ type: 'put', puts: new Array(limits.maxPutsPerFrame + 1).fill({}) }))),
    'error-too-many-streams': () => refusal(() => decodeJson(JSON.stringify({ type: 'hello', streams: new Array(limits.maxHelloStreams + 1).fill('s') }))),
    'error-unsupported-version': () => refusal(() => decodeMsgpack(byName(clientVectors, 'hello-unsupported-version').hex)),
  };
  const withoutMessage = (o: unknown): unknown => {
    if (Array.isArray(o)) return o.map(withoutMessage);
    if (o !== null && typeof o === 'object') {
      return Object.fromEntries(
        Object.entries(o)
          .filter(([k]) => k !== 'message')
          .map(([k, x]) => [k, withoutMessage(x)]),
      );
    }
    return o;
  };

  it.each(Object.keys(rebuilt))('%s is the result the gate and the server result builder produce', (name) => {
    const v = byName(serverVectors, name);
    const [result] = (v.decoded as { results: unknown[] }).results;
    // The JSON round trip drops undefined fields, exactly as the wire encoders do.
    expect(withoutMessage(JSON.parse(JSON.stringify(rebuilt[name]!())))).toEqual(withoutMessage(result));
    // Field order matters for byte-identical replays; the vector keeps the server's order.
    expect(Object.keys(JSON.parse(JSON.stringify(rebuilt[name]!())))).toEqual(Object.keys(result as object));
  });

  it.each(Object.keys(rebuiltErrors))('%s is the error message the server builds for that frame', (name) => {
    const v = byName(serverVectors, name);
    expect(withoutMessage(rebuiltErrors[name]!())).toEqual(withoutMessage(v.decoded));
  });

  // results-forbidden is built inside the connection, not by a pure function; the conformance
  // suite checks it on the wire instead.
  it('holds every result-bearing server vector to a rebuilt one, except the coalesced and forbidden examples', () => {
    const withResults = serverVectors.filter((v) => (v.decoded as { type: string }).type === 'results').map((v) => v.name);
    expect(withResults.filter((n) => !(n in rebuilt)).sort()).toEqual(['results-coalesced', 'results-forbidden']);
  });
});

// PROTOCOL.md's appendix lists behaviour the reference server has but a careful spec would not
// promise. These tests pin each item, so that fixing one in src/ points at the appendix entry to drop.
describe('reference server quirks listed in the PROTOCOL.md appendix', () => {
  const state = (hex: string): string => canonicalEncode(decodeMsgpack(hex), unbounded, 'state').toString('hex');

  it('1: replaces invalid UTF-8 in a string with U+FFFD instead of refusing it', () => {
    expect(decodeMsgpack('a3ff6162')).toBe('\ufffdab');
  });

  it('2: keeps the last of repeated map keys, also when they collide only after normalisation', () => {
    expect(state('82a16101a16102')).toBe('81a16102');
    expect(state('8201a178cb3ff0000000000000a179')).toBe('8101a179');
  });

  it('3: a state one level too deep exceeds the frame limit first, reported as TOO_DEEP naming maxStateDepth', () => {
    const deep = {
      type: 'put',
      puts: [
        { id: 1, stream: 's', epoch: 1, seq: 1, key: 'k', state: JSON.parse('['.repeat(limits.maxStateDepth + 1) + ']'.repeat(limits.maxStateDepth + 1)) },
      ],
    };
    let caught: unknown;
    try {
      decodeJson(JSON.stringify(deep));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(SeqgateError);
    expect((caught as SeqgateError).code).toBe('TOO_DEEP');
    expect((caught as SeqgateError).details).toEqual({ limit: 'maxStateDepth', max: limits.maxStateDepth });
  });

  it('integer state keys of magnitude 2^53 are accepted like their neighbours', () => {
    expect(state('81cf002000000000000001')).toBe('81cf002000000000000001');
    expect(state('81d3ffe000000000000001')).toBe('81d3ffe000000000000001');
    expect(state('81cf001fffffffffffff01')).toBe('81cf001fffffffffffff01');
  });

  it('6: ignores unknown message-level fields but refuses unknown put fields', () => {
    const message = parseMessage(
      decodeJson('{"type":"put","extra":1,"puts":[{"id":1,"stream":"s","epoch":1,"seq":1,"key":"k","state":1,"extra":1}]}'),
      limits,
      DEFAULT_TENANT,
    );
    if (message.type !== 'put') throw new Error('not a put');
    expect(message.puts[0]).toMatchObject({ ok: false, result: { outcome: 'invalid', error: { field: 'extra' } } });
  });
});

// The client SDK carries its own canonical encoder (it runs in browsers, without the server's
// code); a retry it sends must fingerprint exactly as the server computes it.
describe('the client SDK encoder against the vectors', () => {
  const sdkLimits = { maxStateBytes: 1 << 30, maxStateDepth: 64 };
  const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

  it.each(valueVectors.filter((v) => v.canonical !== null).map((v) => [v.name, v] as const))(
    '%s: the SDK writes the documented canonical bytes',
    (_name, v) => {
      expect(hex(encodeState(fromMeaning(v.decoded), sdkLimits, false))).toBe(v.canonical);
      if (v.json !== null) expect(hex(encodeState(JSON.parse(v.json), sdkLimits, true))).toBe(v.canonical);
    },
  );

  it.each(valueVectors.filter((v) => v.canonical === null).map((v) => [v.name, v] as const))('%s: the SDK refuses the state as the server does', (_name, v) => {
    let caught: unknown;
    try {
      encodeState(fromMeaning(v.decoded), sdkLimits, false);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(StateProblem);
    expect((caught as StateProblem).code).toBe(v.rejected);
  });

  it.each(putVectors.map((v) => [v.name, v] as const))('%s: a put the SDK frames gets the documented fingerprint from the server', (_name, v) => {
    const p = (v.decoded as { puts: Array<Record<string, unknown>> }).puts[0]!;
    const wire = {
      stream: p.stream as string,
      epoch: p.epoch as number,
      seq: p.seq as number,
      key: p.key as string,
      state: p.delete === true ? null : encodeState(fromMeaning(p.state), sdkLimits, false),
      ifVersion: (p.ifVersion as number | undefined) ?? null,
    };
    const frames: Array<() => unknown> = [() => decodeFrame(Buffer.from(msgpackPutFrame([encodePutMsgpack(wire)])), true, 'msgpack', frameDepth)];
    if (v.json !== null) frames.push(() => decodeJson(jsonPutFrame([encodePutJson(wire)])));
    for (const frame of frames) {
      const message = parseMessage(frame(), limits, DEFAULT_TENANT);
      if (message.type !== 'put' || !message.puts[0]?.ok) throw new Error(`refused: ${JSON.stringify(message)}`);
      expect(message.puts[0].put.fingerprint.toString('hex')).toBe(v.fingerprint);
    }
  });
});
