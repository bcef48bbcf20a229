import { isUtf8 } from 'node:buffer';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ERRORS, type ErrorCode } from '../../src/errors.js';
import { DbChecker } from '../support/db-checker.js';
import { captureLogs } from '../support/log-capture.js';
import { mulberry32 } from '../support/random.js';
import { startTestServer, TestClient, type Msg, type TestServer } from '../support/test-client.js';
import { CONTROL_TOKEN, FUZZ_TOKEN, runProperty, TOKENS } from './harness.js';
import { Ext, forge, mutate, Raw, type Mutation } from './msgpack-forge.js';

/**
 * Fuzzed frames against a live in-process server: random bytes, valid frames in every encoding
 * and then mutated (bit flips, truncation, inflated or shrunk length headers, inserted, deleted
 * and repeated bytes), deep nesting, huge maps, arrays, strings and binaries up to and past
 * maxFrameBytes, random and mutated JSON text, and frames before authentication.
 *
 * For every case: the server answers a probe sent after the fuzzed frames within PROBE_TIMEOUT_MS
 * (so it neither crashed nor stalled), every answer is a well-formed message with a registered
 * code, a connection is closed only for the documented reasons (1009 frame too large, 4401 not
 * authenticated; 1007 for a text frame that is not UTF-8, from the WebSocket layer), and the
 * server logged no unexpected error. Meanwhile a control client of another tenant writes its own
 * streams and must keep getting answers; at the end its streams must hold exactly what it wrote,
 * and the database file must pass integrity_check and the store's own invariants (raw SQL).
 */

// Huge frames are about size, not encoding variety: msgpackr builds them quickly.
const packr = new Packr({ useRecords: false });

/** How long the server may take to answer the probe after a fuzzed frame. */
const PROBE_TIMEOUT_MS = 10_000;
/** Generous bound on each control put's round trip, and on the time between two of its answers. */
const CONTROL_BOUND_MS = 5_000;

let t: TestServer;
let maxFrameBytes = 0;
const logs = captureLogs();
const errorLogs = logs.errors;

// ---------------------------------------------------------------------------------------------
// The control client: sequential puts on two streams of its own tenant, timed.

const control = {
  running: true,
  seqs: [0, 0],
  answers: 0,
  maxLatencyMs: 0,
  maxGapMs: 0,
  failures: [] as string[],
  done: Promise.resolve() as Promise<void>,
};
const CONTROL_TEXT = 'c'.repeat(200);

async function controlLoop(): Promise<void> {
  const c = await TestClient.connect(t.url, 'msgpack', { headers: { authorization: `Bearer ${CONTROL_TOKEN}` } });
  let last = Date.now();
  try {
    for (let i = 0; control.running; i++) {
      const s = i % 2;
      const seq = control.seqs[s]! + 1;
      const id = `ctl-${s}-${seq}`;
      const started = Date.now();
      c.send({ type: 'put', puts: [{ id, stream: `ctl-${s}`, epoch: 1, seq, key: `ctl-doc-${s}`, state: { seq, text: CONTROL_TEXT } }] });
      try {
        await c.waitFor(() => c.results().some((r: Msg) => r.id === id), 30_000);
      } catch {
        control.failures.push(`no answer to ${id} within 30 s`);
        return;
      }
      const r = c.results().find((x: Msg) => x.id === id);
      if (r.outcome !== 'applied' || r.replay !== false || r.ack.version !== seq) {
        control.failures.push(`${id}: ${JSON.stringify(r)}`);
        return;
      }
      control.seqs[s] = seq;
      const now = Date.now();
      control.answers++;
      control.maxLatencyMs = Math.max(control.maxLatencyMs, now - started);
      control.maxGapMs = Math.max(control.maxGapMs, now - last);
      last = now;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  } finally {
    c.ws.terminate();
  }
}

// ---------------------------------------------------------------------------------------------
// Fuzz connections and the per-case exchange.

type LinkKind = 'msgpack' | 'json' | 'unauth';

class Link {
  private client: TestClient | undefined;
  /** The last frames sent on this link's current connection, for failure messages. */
  readonly history: string[] = [];
  constructor(readonly kind: LinkKind) {}

  async get(): Promise<TestClient> {
    if (this.client !== undefined && this.client.ws.readyState === WebSocket.OPEN) return this.client;
    this.client?.ws.terminate();
    this.history.length = 0;
    const headers: Record<string, string> = this.kind === 'unauth' ? {} : { authorization: `Bearer ${FUZZ_TOKEN}` };
    this.client = await TestClient.connect(t.url, this.kind === 'json' ? 'json' : 'msgpack', { headers });
    return this.client;
  }

  dispose(): void {
    this.client?.ws.terminate();
  }
}

interface Frame {
  readonly data: Buffer | string;
  readonly binary: boolean;
}

interface Expect {
  /** Checks specific to the generator, on the answers to this case (probe answer excluded). */
  readonly answers?: (answers: Msg[], closed: { code: number } | undefined) => void;
}

type Counters = Record<string, number>;

function bump(counters: Counters, name: string, by = 1): void {
  counters[name] = (counters[name] ?? 0) + by;
}

const OUTCOMES = new Set(['applied', 'version_conflict', 'sequence_reused', 'fenced', 'stale', 'expired', 'gap', 'invalid', 'forbidden', 'error']);
// Codes that arrive in error messages although their scope is another (PROTOCOL.md appendix 4).
const ERROR_MESSAGE_EXTRAS = new Set(['UNAUTHORIZED', 'FORBIDDEN', 'STORAGE_UNAVAILABLE']);

/** Why `m` is not a well-formed server message, or null. */
function malformedAnswer(m: Msg): string | null {
  switch (m?.type) {
    case 'welcome':
      return Array.isArray(m.heads) && m.protocol === 1 ? null : 'welcome without heads or protocol 1';
    case 'pong':
      return 'nonce' in m ? null : 'pong without nonce';
    case 'error': {
      const spec = ERRORS[m.code as ErrorCode];
      if (spec === undefined) return `error with unregistered code ${m.code}`;
      if (spec.scope !== 'message' && !ERROR_MESSAGE_EXTRAS.has(m.code)) return `error message with ${spec.scope}-scope code ${m.code}`;
      if (typeof m.message !== 'string' || m.retryable !== spec.retryable) return `error ${m.code} with a bad message or retryable`;
      return null;
    }
    case 'results': {
      if (!Array.isArray(m.results) || m.results.length === 0) return 'results without results';
      for (const r of m.results) {
        if (!OUTCOMES.has(r.outcome)) return `unknown outcome ${r.outcome}`;
        if (r.outcome === 'applied' || r.outcome === 'version_conflict') {
          if (typeof r.replay !== 'boolean' || typeof r.ack?.version !== 'number' || typeof r.ack?.committedAt !== 'number')
            return 'stored outcome without a full ack';
        } else {
          const spec = ERRORS[r.error?.code as ErrorCode];
          if (spec === undefined || spec.scope !== 'put' || r.error.retryable !== spec.retryable) return `result with bad error ${JSON.stringify(r.error)}`;
        }
      }
      return null;
    }
    default:
      return `unexpected message type ${String(m?.type)}`;
  }
}

let probes = 0;

/**
 * Exceptions nobody caught while the fuzz runs. The server shares this process, so one of its
 * uncaught exceptions lands here; the real server process would exit on it. A case that causes
 * one fails at once instead of waiting for the probe to time out.
 */
const uncaught: Error[] = [];
const uncaughtWaiters: Array<() => void> = [];
function onUncaught(err: Error): void {
  uncaught.push(err);
  for (const w of uncaughtWaiters.splice(0)) w();
}

function describeFrames(frames: readonly Frame[]): string {
  return frames
    .map((f) => {
      const b = typeof f.data === 'string' ? Buffer.from(f.data, 'utf8') : f.data;
      return `${f.binary ? 'binary' : 'text'} ${b.length} bytes: ${b.subarray(0, 48).toString('hex')}${b.length > 48 ? '…' : ''}`;
    })
    .join('; ');
}

/**
 * Sends the frames and a probe on `link`, waits for the probe's answer or a close, and checks
 * everything the server sent in between. Throws (failing the case) on any violation.
 */
async function exchange(link: Link, frames: readonly Frame[], counters: Counters, expectation: Expect = {}): Promise<void> {
  const c = await link.get();
  const from = c.messages.length;
  const logsBefore = errorLogs.length;
  for (const f of frames) c.sendRaw(f.data, f.binary);
  link.history.push(describeFrames(frames));
  if (link.history.length > 6) link.history.shift();
  bump(counters, 'framesSent', frames.length);
  const nonce = `probe-${++probes}`;
  if (link.kind === 'unauth') c.send({ type: 'ping', nonce });
  else c.send({ type: 'hello', streams: [nonce] });
  const isProbe = (m: Msg): boolean =>
    link.kind === 'unauth' ? m.type === 'pong' && m.nonce === nonce : m.type === 'welcome' && m.heads?.[0]?.stream === nonce;
  const uncaughtBefore = uncaught.length;
  const threw = new Promise<void>((resolve) => uncaughtWaiters.push(resolve));
  try {
    await Promise.race([
      c.waitFor(() => c.messages.slice(from).some(isProbe) || c.ws.readyState === WebSocket.CLOSED || uncaught.length > uncaughtBefore, PROBE_TIMEOUT_MS),
      threw,
    ]);
  } catch {
    link.dispose();
    throw new Error(
      `the server answered neither the probe nor with a close within ${PROBE_TIMEOUT_MS} ms after ${describeFrames(frames)}; ` +
        `the connection's last frames: ${link.history.join(' | ')}; its last answers: ${JSON.stringify(c.messages.slice(-4)).slice(0, 1500)}`,
    );
  }
  if (uncaught.length > uncaughtBefore) {
    link.dispose();
    const err = uncaught[uncaught.length - 1]!;
    throw new Error(`the server threw an uncaught exception, which would end the server process: ${err.stack ?? err.message}\nafter ${describeFrames(frames)}`);
  }
  const closed = c.ws.readyState === WebSocket.CLOSED ? await c.closed : undefined;
  const oversize = frames.some((f) => (typeof f.data === 'string' ? Buffer.byteLength(f.data) : f.data.length) > maxFrameBytes);
  const badText = frames.some((f) => !f.binary && typeof f.data !== 'string' && !isUtf8(f.data));
  if (closed !== undefined) {
    bump(counters, `close${closed.code}`);
    const allowed = [...(oversize ? [1009] : []), ...(link.kind === 'unauth' ? [4401] : []), ...(badText ? [1007] : [])];
    if (!allowed.includes(closed.code)) {
      throw new Error(`connection closed with ${closed.code} "${closed.reason}" (allowed: ${allowed.join(', ') || 'none'}) after ${describeFrames(frames)}`);
    }
  } else if (oversize) {
    throw new Error(`a frame over maxFrameBytes (${maxFrameBytes}) did not close the connection: ${describeFrames(frames)}`);
  }
  const answers = c.messages.slice(from).filter((m: Msg) => !isProbe(m));
  for (const m of answers) {
    const problem = malformedAnswer(m);
    if (problem !== null) throw new Error(`${problem}: ${JSON.stringify(m).slice(0, 500)} after ${describeFrames(frames)}`);
    bump(counters, m.type === 'error' ? `error:${m.code}` : m.type);
    if (m.type === 'results') for (const r of m.results) bump(counters, `outcome:${r.outcome}`);
  }
  if (errorLogs.length > logsBefore) {
    throw new Error(`the server logged an error: ${JSON.stringify(errorLogs.slice(logsBefore)).slice(0, 1000)} after ${describeFrames(frames)}`);
  }
  expectation.answers?.(answers, closed);
}

// ---------------------------------------------------------------------------------------------
// Arbitraries.

const FUZZ_STREAMS = ['fz-a', 'fz-b', 'fz-c'];
const nameArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...FUZZ_STREAMS) },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
);
const keyArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom('fk-1', 'fk-2', 'fk-3') }, { weight: 1, arbitrary: fc.string({ maxLength: 12 }) });

const scalarArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(null) },
  { weight: 3, arbitrary: fc.boolean() },
  { weight: 6, arbitrary: fc.integer() },
  { weight: 2, arbitrary: fc.maxSafeInteger() },
  { weight: 3, arbitrary: fc.double() },
  { weight: 2, arbitrary: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }) },
  { weight: 6, arbitrary: fc.string({ maxLength: 24 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 24 }) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: -128, max: 127 }), fc.uint8Array({ maxLength: 20 })).map(([type, data]) => new Ext(type & 0xff, data)) },
  { weight: 1, arbitrary: fc.constantFrom(new Raw(Uint8Array.of(0xc1)), new Raw(Uint8Array.of(0xc0, 0xc0)), new Raw(Uint8Array.of(0xdf))) },
);
const mapKeyArb = fc.oneof(
  { weight: 6, arbitrary: fc.string({ maxLength: 8 }) },
  { weight: 2, arbitrary: fc.integer({ min: -300, max: 300 }) },
  { weight: 1, arbitrary: fc.oneof(fc.double(), fc.boolean(), fc.constant(null), fc.uint8Array({ maxLength: 4 })) },
);
const { value: valueArb } = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: 4 },
    { weight: 5, arbitrary: scalarArb },
    { weight: 1, arbitrary: fc.array(tie('value'), { maxLength: 6 }) },
    { weight: 1, arbitrary: fc.array(fc.tuple(mapKeyArb, tie('value')), { maxLength: 6 }).map((e) => new Map(e)) },
  ),
}));

function sometimes<T>(valid: fc.Arbitrary<T>, other: fc.Arbitrary<unknown> = valueArb): fc.Arbitrary<unknown> {
  return fc.oneof({ weight: 8, arbitrary: valid }, { weight: 1, arbitrary: other });
}

const putArb = fc
  .record({
    id: sometimes(fc.oneof(fc.nat(), fc.string({ maxLength: 10 }))),
    stream: sometimes(nameArb),
    epoch: sometimes(fc.integer({ min: 0, max: 3 })),
    seq: sometimes(fc.integer({ min: 1, max: 60 })),
    key: sometimes(keyArb),
    body: fc.oneof(
      { weight: 8, arbitrary: valueArb.map((state) => [['state', state]] as Array<[string, unknown]>) },
      { weight: 2, arbitrary: fc.constant([['delete', true]] as Array<[string, unknown]>) },
      { weight: 1, arbitrary: valueArb.map((d) => [['delete', d]] as Array<[string, unknown]>) },
      { weight: 1, arbitrary: fc.constant([] as Array<[string, unknown]>) },
    ),
    ifVersion: fc.option(sometimes(fc.integer({ min: 0, max: 4 })), { nil: undefined, freq: 3 }),
    extra: fc.option(fc.tuple(fc.oneof(fc.string({ maxLength: 6 }), valueArb), valueArb), { nil: undefined, freq: 8 }),
    asMap: fc.boolean(),
  })
  .map(({ body, extra, asMap, ifVersion, ...fields }) => {
    const entries: Array<[unknown, unknown]> = [...Object.entries(fields), ...body];
    if (ifVersion !== undefined) entries.push(['ifVersion', ifVersion]);
    if (extra !== undefined) entries.push(extra);
    return asMap ? new Map(entries) : Object.fromEntries(entries.map(([k, v]) => [String(k), v]));
  });

const messageArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 8, arbitrary: fc.array(putArb, { maxLength: 5 }).map((puts) => ({ type: 'put', puts })) },
  {
    weight: 2,
    arbitrary: fc.record(
      {
        type: fc.constant('hello'),
        streams: sometimes(fc.array(nameArb, { maxLength: 4 })),
        protocol: sometimes(fc.constant(1)),
      },
      { requiredKeys: ['type'] },
    ),
  },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('ping'), nonce: valueArb }, { requiredKeys: ['type'] }) },
  { weight: 1, arbitrary: fc.record({ type: fc.oneof(fc.string({ maxLength: 10 }), valueArb), puts: valueArb }, { requiredKeys: ['type'] }) },
  { weight: 1, arbitrary: valueArb },
);

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('set' as const), at: fc.nat(), byte: fc.nat(255) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('trailing' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }) },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant('repeat' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 32 }), times: fc.integer({ min: 1, max: 64 }) }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('length' as const),
      site: fc.nat(),
      length: fc.oneof(fc.nat(40), fc.constantFrom(0xff, 0xffff, 0x7fffffff, 0xffffffff), fc.nat()),
    }),
  },
);

// ---------------------------------------------------------------------------------------------

beforeAll(async () => {
  process.on('uncaughtException', onUncaught);
  t = await startTestServer({ tokens: TOKENS }, { logger: logs.logger });
  maxFrameBytes = t.server.limits.maxFrameBytes;
  control.done = controlLoop();
});

afterAll(async () => {
  process.off('uncaughtException', onUncaught);
  control.running = false;
  await control.done;
  await t?.stop();
});

describe('fuzzed frames against a live server', () => {
  it('random bytes on a msgpack connection, and as text frames, never crash the server, stall it or close the connection', async () => {
    const link = new Link('msgpack');
    const counters: Counters = {};
    await runProperty(
      fc.asyncProperty(fc.uint8Array({ maxLength: 512 }), fc.nat(9), async (bytes, textChance) => {
        await exchange(link, [{ data: Buffer.from(bytes), binary: textChance !== 0 }], counters);
      }),
      { fileUrl: import.meta.url, name: 'random bytes on a msgpack connection', numRuns: 300, counters },
    );
    link.dispose();
  }, 120_000);

  it('valid messages in every msgpack encoding, mutated by bit flips, truncation, inflated lengths and spliced bytes, are answered with documented codes', async () => {
    const link = new Link('msgpack');
    const counters: Counters = {};
    await runProperty(
      fc.asyncProperty(
        messageArb,
        fc.integer(),
        fc.oneof({ weight: 1, arbitrary: fc.constant([] as Mutation[]) }, { weight: 3, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) }),
        fc.nat(19),
        async (message, formSeed, mutations, textChance) => {
          const bytes = mutate(forge(message, mulberry32(formSeed)), mutations);
          await exchange(link, [{ data: bytes, binary: textChance !== 0 }], counters);
        },
      ),
      { fileUrl: import.meta.url, name: 'mutated msgpack frames', numRuns: 800, counters },
    );
    link.dispose();
  }, 120_000);

  it('nesting at, just past and far past the frame depth limit is refused with TOO_DEEP exactly when too deep, over either subprotocol', async () => {
    const links = { msgpack: new Link('msgpack'), json: new Link('json') };
    const counters: Counters = {};
    const limit = t.server.limits.maxStateDepth + 3;
    let deepSeq = 0;
    await runProperty(
      fc.asyncProperty(
        fc.oneof(fc.integer({ min: 1, max: limit + 4 }), fc.constantFrom(1000, 100_000)),
        fc.constantFrom('array', 'map', 'mixed'),
        fc.constantFrom('bare', 'state', 'nonce', 'unknown-field'),
        fc.constantFrom('msgpack' as const, 'json' as const),
        async (depth, container, where, format) => {
          const envelope = { bare: 0, state: 3, nonce: 1, 'unknown-field': 1 }[where];
          const seq = ++deepSeq;
          const frame = nestedFrame(depth, container, where, format, seq);
          const tooDeep = depth + envelope > limit;
          await exchange(links[format], [frame], counters, {
            answers: (answers) => {
              if (tooDeep) {
                expect(answers).toEqual([
                  { type: 'error', code: 'TOO_DEEP', message: expect.any(String), retryable: false, limit: 'maxStateDepth', max: limit - 3 },
                ]);
              } else {
                expect(answers.some((m: Msg) => m.code === 'TOO_DEEP')).toBe(false);
                if (where === 'state') {
                  expect(answers).toHaveLength(1);
                  expect(answers[0].results[0]).toMatchObject({ outcome: 'applied', ack: { stream: 'fz-deep', seq } });
                }
              }
            },
          });
        },
      ),
      { fileUrl: import.meta.url, name: 'deep nesting', numRuns: 80, counters },
    );
    links.msgpack.dispose();
    links.json.dispose();
  }, 120_000);

  it('huge maps, arrays, strings, binaries and put lists up to maxFrameBytes are answered, and one byte more closes only that connection with 1009', async () => {
    const links = { msgpack: new Link('msgpack'), json: new Link('json') };
    const counters: Counters = {};
    let hugeSeq = 0;
    await runProperty(
      fc.asyncProperty(
        fc.constantFrom('string', 'binary', 'map', 'array', 'puts', 'streams'),
        fc.constantFrom('nonce', 'state', 'unknown-field', 'id'),
        fc.constantFrom(-300_000, -1000, -1, 0, 1, 1000),
        fc.constantFrom('msgpack' as const, 'json' as const),
        async (kind, where, delta, format) => {
          const target = maxFrameBytes + delta;
          const frame = hugeFrame(kind, where, format, target, ++hugeSeq);
          const size = typeof frame.data === 'string' ? Buffer.byteLength(frame.data) : frame.data.length;
          bump(counters, 'hugeBytes', size);
          const started = performance.now();
          await exchange(links[format], [frame], counters, {
            answers: (_answers, closed) => {
              if (size > maxFrameBytes) expect(closed?.code).toBe(1009);
              else expect(closed).toBeUndefined();
            },
          });
          const ms = Math.round(performance.now() - started);
          counters[`maxMs:${kind}/${where}/${format}`] = Math.max(counters[`maxMs:${kind}/${where}/${format}`] ?? 0, ms);
        },
      ),
      { fileUrl: import.meta.url, name: 'huge frames up to and past the limit', numRuns: 36, counters },
    );
    links.msgpack.dispose();
    links.json.dispose();
  }, 180_000);

  it('random JSON, mutated JSON messages, odd JSON texts and non-UTF-8 or binary frames on a JSON connection are answered with documented codes', async () => {
    const link = new Link('json');
    const counters: Counters = {};
    await runProperty(
      fc.asyncProperty(jsonFrameArb, async (frame) => {
        await exchange(link, [frame], counters);
      }),
      { fileUrl: import.meta.url, name: 'JSON text frames', numRuns: 300, counters },
    );
    link.dispose();
  }, 120_000);

  it('frames before authentication get documented answers or a 4401 close, and never write anything', async () => {
    const link = new Link('unauth');
    const counters: Counters = {};
    const before = fuzzTenantFootprint();
    await runProperty(
      fc.asyncProperty(messageArb, fc.integer(), fc.array(mutationArb, { maxLength: 2 }), async (message, formSeed, mutations) => {
        const bytes = mutate(forge(message, mulberry32(formSeed)), mutations);
        await exchange(link, [{ data: bytes, binary: true }], counters, {
          answers: (answers) => {
            for (const m of answers) expect(['error', 'pong']).toContain(m.type);
          },
        });
      }),
      { fileUrl: import.meta.url, name: 'frames before authentication', numRuns: 200, counters },
    );
    link.dispose();
    expect(fuzzTenantFootprint()).toEqual(before);
  }, 120_000);

  it('leaves the database sound, the control streams holding exactly what the control client wrote, and the control client answered throughout', async () => {
    control.running = false;
    await control.done;
    expect(control.failures).toEqual([]);
    expect(control.answers).toBeGreaterThanOrEqual(20);
    expect(control.maxLatencyMs, 'slowest control put').toBeLessThan(CONTROL_BOUND_MS);
    expect(control.maxGapMs, 'longest time between two control answers').toBeLessThan(CONTROL_BOUND_MS);
    process.stdout.write(`[fuzz] control client: ${control.answers} puts, slowest ${control.maxLatencyMs} ms, longest gap ${control.maxGapMs} ms\n`);

    const health = await fetch(`${t.url.replace(/^ws:/, 'http:')}/healthz`);
    expect(health.status).toBe(200);

    const db = new DbChecker(t.dbPath);
    try {
      expect(db.integrityCheck()).toEqual(['ok']);
      expect(db.streams('control')).toEqual(['ctl-0', 'ctl-1']);
      for (const s of [0, 1]) {
        const n = control.seqs[s]!;
        expect(db.head(`ctl-${s}`, 'control')).toMatchObject({ epoch: 1, seq: n, prunedThrough: 0, ackCount: n });
        expect(db.countAcks(`ctl-${s}`, 'control')).toBe(n);
        expect(db.document(`ctl-doc-${s}`, 'control')).toMatchObject({ version: n, deleted: false, state: { seq: n, text: CONTROL_TEXT } });
        for (const seq of [1, Math.ceil(n / 2), n]) {
          expect(db.ack(`ctl-${s}`, 1, seq, 'control')).toMatchObject({ outcome: 'applied', key: `ctl-doc-${s}`, version: seq });
        }
      }
      expect(db.documentKeys('control')).toEqual(['ctl-doc-0', 'ctl-doc-1']);
    } finally {
      db.close();
    }
    expect(storeInvariantViolations(t.dbPath)).toEqual([]);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------------
// Frame builders.

/** A value nested `depth` levels deep (the innermost container empty), as msgpack or JSON. */
function nestedValue(depth: number, container: string, format: 'msgpack' | 'json'): Buffer | string {
  const kindAt = (i: number): 'array' | 'map' => (container === 'mixed' ? (i % 2 === 0 ? 'array' : 'map') : (container as 'array' | 'map'));
  if (format === 'json') {
    const open: string[] = [];
    const close: string[] = [];
    for (let i = 0; i < depth - 1; i++) {
      const map = kindAt(i) === 'map';
      open.push(map ? '{"a":' : '[');
      close.push(map ? '}' : ']');
    }
    return open.join('') + (kindAt(depth - 1) === 'map' ? '{}' : '[]') + close.reverse().join('');
  }
  const parts: Buffer[] = [];
  for (let i = 0; i < depth - 1; i++) parts.push(kindAt(i) === 'map' ? Buffer.from([0x81, 0xa1, 0x61]) : Buffer.from([0x91]));
  parts.push(Buffer.from([kindAt(depth - 1) === 'map' ? 0x80 : 0x90]));
  return Buffer.concat(parts);
}

function nestedFrame(depth: number, container: string, where: string, format: 'msgpack' | 'json', seq: number): Frame {
  const inner = nestedValue(depth, container, format);
  if (format === 'json') {
    const v = inner as string;
    const text =
      where === 'bare'
        ? v
        : where === 'state'
          ? `{"type":"put","puts":[{"id":${seq},"stream":"fz-deep","epoch":1,"seq":${seq},"key":"fk-deep","state":${v}}]}`
          : where === 'nonce'
            ? `{"type":"ping","nonce":${v}}`
            : `{"type":"hello","extra":${v}}`;
    return { data: text, binary: false };
  }
  const raw = new Raw(inner as Buffer);
  const message =
    where === 'bare'
      ? raw
      : where === 'state'
        ? { type: 'put', puts: [{ id: seq, stream: 'fz-deep', epoch: 1, seq, key: 'fk-deep', state: raw }] }
        : where === 'nonce'
          ? { type: 'ping', nonce: raw }
          : { type: 'hello', extra: raw };
  return { data: forge(message, () => 0).bytes, binary: true };
}

/**
 * A frame of exactly `target` bytes (or as close as the encoding allows) whose bulk is one huge
 * value of the given kind, placed where `where` says.
 */
function hugeFrame(kind: string, where: string, format: 'msgpack' | 'json', target: number, seq: number): Frame {
  const build = (fill: number): Buffer | string => {
    const n = Math.max(0, fill);
    let bulk: unknown;
    switch (kind) {
      case 'string':
        bulk = 'x'.repeat(n);
        break;
      case 'binary':
        bulk = format === 'msgpack' ? new Uint8Array(n) : 'b'.repeat(n);
        break;
      case 'map': {
        const m = new Map<string, number>();
        for (let i = 0; i < Math.floor(n / 8); i++) m.set(`k${i}`, i % 100);
        bulk = format === 'msgpack' ? m : Object.fromEntries(m);
        break;
      }
      case 'array':
        bulk = Array.from({ length: Math.floor(n / 2) }, (_, i) => i % 100);
        break;
      case 'puts': {
        // Up to maxPutsPerFrame puts (one more gets TOO_MANY_PUTS), each padded evenly.
        const count = n > 0 && seq % 2 === 0 ? 1001 : 1000;
        const pad = Math.max(0, Math.floor(n / count) - 60);
        bulk = Array.from({ length: count }, (_, i) => ({
          id: i,
          stream: `fz-huge-${seq}`,
          epoch: 1,
          seq: i + 1,
          key: `fk-h${i % 4}`,
          state: 'p'.repeat(pad),
        }));
        break;
      }
      default: {
        const count = seq % 2 === 0 ? 1001 : 1000;
        const len = Math.min(256, Math.max(1, Math.floor(n / count) - 3));
        bulk = Array.from({ length: count }, (_, i) => `${i}-`.padEnd(len, 's'));
      }
    }
    let message: unknown;
    if (kind === 'puts') message = { type: 'put', puts: bulk };
    else if (kind === 'streams') message = { type: 'hello', streams: bulk };
    else if (where === 'nonce') message = { type: 'ping', nonce: bulk };
    else if (where === 'state') message = { type: 'put', puts: [{ id: seq, stream: 'fz-huge', epoch: 1, seq, key: 'fk-huge', state: bulk }] };
    else if (where === 'id') message = { type: 'put', puts: [{ id: bulk, stream: 'fz-huge', epoch: 1, seq, key: 'fk-huge', state: 1 }] };
    else message = { type: 'hello', extra: bulk };
    return format === 'json' ? JSON.stringify(message) : packr.pack(message);
  };
  const size = (d: Buffer | string): number => (typeof d === 'string' ? Buffer.byteLength(d) : d.length);
  let fill = target;
  let data = build(fill);
  // Headers grow at size thresholds, so a few corrections land on the exact size where possible.
  for (let i = 0; i < 6 && size(data) !== target; i++) {
    const per = kind === 'map' ? 8 : kind === 'array' ? 2 : 1;
    fill += (target - size(data)) * per;
    data = build(fill);
  }
  return { data, binary: format === 'msgpack' };
}

// ---------------------------------------------------------------------------------------------
// JSON frames.

const jsonPutArb = fc.record(
  {
    id: sometimes(fc.oneof(fc.nat(), fc.string({ maxLength: 10 })), fc.jsonValue({ maxDepth: 2 })),
    stream: sometimes(nameArb, fc.jsonValue({ maxDepth: 1 })),
    epoch: sometimes(fc.integer({ min: 0, max: 3 }), fc.jsonValue({ maxDepth: 1 })),
    seq: sometimes(fc.integer({ min: 1, max: 60 }), fc.jsonValue({ maxDepth: 1 })),
    key: sometimes(keyArb, fc.jsonValue({ maxDepth: 1 })),
    state: fc.jsonValue({ maxDepth: 3 }),
  },
  { requiredKeys: [] },
);

const jsonMessageArb = fc.oneof(
  { weight: 6, arbitrary: fc.array(jsonPutArb, { maxLength: 4 }).map((puts) => ({ type: 'put', puts })) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('hello'), streams: fc.array(nameArb, { maxLength: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ type: fc.constant('ping'), nonce: fc.jsonValue({ maxDepth: 2 }) }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
);

const textEditArb: fc.Arbitrary<TextEdit> = fc.oneof(
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 8 }) }),
  fc.record({
    op: fc.constant('insert' as const),
    at: fc.nat(),
    text: fc.oneof(fc.string({ maxLength: 4 }), fc.constantFrom('"', '{', '[', ']', '}', ',', ':', '\\', '\\u', '1e999', '-', '\ud800', '\u0000')),
  }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
);

type TextEdit =
  | { readonly op: 'delete'; readonly at: number; readonly length: number }
  | { readonly op: 'insert'; readonly at: number; readonly text: string }
  | { readonly op: 'truncate'; readonly at: number };

function editText(text: string, edits: readonly TextEdit[]): string {
  let s = text;
  for (const e of edits) {
    const at = e.at % (s.length + 1);
    if (e.op === 'delete') s = s.slice(0, at) + s.slice(at + e.length);
    else if (e.op === 'insert') s = s.slice(0, at) + e.text + s.slice(at);
    else s = s.slice(0, at);
  }
  return s;
}

const ODD_JSON = [
  '',
  ' ',
  'null',
  '[]',
  '{}',
  '"str"',
  '{"type":"put"}',
  '{"type":"put","puts":[',
  '\ufeff{"type":"ping"}',
  '{"type":"ping","type":"put","puts":[]}',
  '{"type":"ping","nonce":"\\ud800"}',
  '{"type":"ping","nonce":"\\udc00\\ud800"}',
  '{"type":"put","puts":[{"id":1,"stream":"fz-a","epoch":1e400,"seq":1,"key":"k","state":1}]}',
  '{"type":"put","puts":[{"id":1,"stream":"fz-a","epoch":1,"seq":1.0000000000000002,"key":"k","state":-0}]}',
  '{"type":"put","puts":[{"id":1,"stream":"fz-\\u0000","epoch":1,"seq":1,"key":"k","state":1}]}',
  '{"type":"put","puts":[{"id":1,"stream":"fz-a","epoch":1,"seq":9007199254740993,"key":"k","state":1}]}',
  '{"__proto__":{"type":"ping"}}',
  '{"type":{"toString":1}}',
  '{"type":"hello","streams":["a","a","a"]}',
  '1e999999',
  '-',
  '"\\u',
  '["[[[[',
  `"${'['.repeat(50_000)}"`,
  `{"type":"ping","nonce":"${'{'.repeat(50_000)}"}`,
  `{"type":"ping","nonce":"\\\\","x":${'['.repeat(40)}${']'.repeat(40)}}`,
  `{"type":"ping","nonce":"\\"${'['.repeat(40)}"}`,
  ']]]]]]]]]]',
  '}}}}{{{{',
  '{"type":"put","puts":{"length":1}}',
  '{"type":"hello","protocol":null}',
];

const jsonFrameArb: fc.Arbitrary<Frame> = fc.oneof(
  { weight: 3, arbitrary: fc.json({ maxDepth: 4 }).map((text) => ({ data: text, binary: false })) },
  {
    weight: 6,
    arbitrary: fc
      .tuple(jsonMessageArb, fc.array(textEditArb, { maxLength: 3 }))
      .map(([message, edits]) => ({ data: editText(JSON.stringify(message), edits), binary: false })),
  },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }).map((text) => ({ data: text, binary: false })) },
  { weight: 2, arbitrary: fc.constantFrom(...ODD_JSON).map((text) => ({ data: text, binary: false })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }).map((bytes) => ({ data: Buffer.from(bytes), binary: false })) },
  { weight: 1, arbitrary: fc.json({ maxDepth: 2 }).map((text) => ({ data: Buffer.from(text), binary: true })) },
);

// ---------------------------------------------------------------------------------------------
// Checks of the whole file.

function fuzzTenantFootprint(): { streams: number; documents: number; acks: number } {
  const db = new Database(t.dbPath, { readonly: true, fileMustExist: true });
  try {
    const one = (sql: string): number => (db.prepare(sql).get('fuzz') as { n: number }).n;
    return {
      streams: one('SELECT count(*) AS n FROM streams WHERE tenant = ?'),
      documents: one('SELECT count(*) AS n FROM documents WHERE tenant = ?'),
      acks: one('SELECT count(*) AS n FROM acks_all JOIN streams ON streams.id = acks_all.stream_id WHERE streams.tenant = ?'),
    };
  } finally {
    db.close();
  }
}

/**
 * The store's invariants, read with raw SQL: every ack at or below its stream's head, the head's
 * own ack present, ack_count equal to the rows, no ack without a stream or stored twice, versions at least 1.
 */
function storeInvariantViolations(dbPath: string): string[] {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const rows = (sql: string): unknown[] => db.prepare(sql).all();
    const out: string[] = [];
    const check = (what: string, sql: string): void => {
      const found = rows(sql);
      if (found.length > 0) out.push(`${what}: ${JSON.stringify(found.slice(0, 5))}`);
    };
    check(
      'acks above their head',
      'SELECT s.tenant, s.name, a.epoch, a.seq FROM acks_all a JOIN streams s ON s.id = a.stream_id WHERE (a.epoch, a.seq) > (s.epoch, s.seq)',
    );
    check(
      'heads without their own ack',
      'SELECT s.tenant, s.name FROM streams s WHERE NOT EXISTS (SELECT 1 FROM acks_all a WHERE a.stream_id = s.id AND a.epoch = s.epoch AND a.seq = s.seq)',
    );
    check(
      'ack_count differing from the rows',
      'SELECT s.tenant, s.name, s.ack_count, (SELECT count(*) FROM acks_all a WHERE a.stream_id = s.id) AS n FROM streams s WHERE s.ack_count != (SELECT count(*) FROM acks_all a WHERE a.stream_id = s.id)',
    );
    check('acks of no stream', 'SELECT a.stream_id FROM acks_all a WHERE NOT EXISTS (SELECT 1 FROM streams s WHERE s.id = a.stream_id)');
    check('pruned-through above the head', 'SELECT tenant, name FROM streams WHERE pruned_through > seq');
    check('documents below version 1', 'SELECT tenant, key FROM documents WHERE version < 1');
    check('acks stored twice (in recent_acks and acks)', 'SELECT stream_id, epoch, seq FROM acks_all GROUP BY stream_id, epoch, seq HAVING count(*) > 1');
    check('fingerprints not 16 bytes', 'SELECT stream_id, epoch, seq FROM acks_all WHERE length(fingerprint) != 16');
    return out;
  } finally {
    db.close();
  }
}
