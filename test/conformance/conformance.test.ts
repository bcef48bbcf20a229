import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ackBytesOf, ConformanceClient, decodeMsgpack, specErrors, vector, type ConnectOptions, type Msg } from './client.js';
import { ServerProcess, tempDir, type TempDir } from './server-process.js';

/**
 * The real server, started as a child process from dist/ (`npm run build` first), driven by a
 * client that knows only protocol/PROTOCOL.md and protocol/vectors/. Every outcome of the gate,
 * replays byte for byte, both subprotocols, frame-level errors, authentication, connection limits,
 * heartbeats and an orderly shutdown are reached through the wire alone.
 */

const SPEC_ERRORS = specErrors();

/** Checks an error object against the spec's error table: code known there, same retryable flag. */
function expectError(error: Msg, code: string, scope: 'put' | 'message' | 'close'): void {
  expect(error, `expected ${code}`).toBeDefined();
  expect(error.code).toBe(code);
  const spec = SPEC_ERRORS.get(code);
  expect(spec, `${code} is not in PROTOCOL.md §10`).toBeDefined();
  expect(error.retryable).toBe(spec!.retryable);
  expect(typeof error.message).toBe('string');
  // FORBIDDEN and STORAGE_UNAVAILABLE are put-scope codes also used to refuse a hello (§3.6).
  if (!(scope === 'message' && spec!.scope === 'put')) expect(spec!.scope).toBe(scope);
}

function nested(levels: number): unknown {
  let v: unknown = 0;
  for (let i = 0; i < levels; i++) v = [v];
  return v;
}

/** Starts a server for one describe block and closes its clients and the process afterwards. */
function serverFixture(args: readonly string[] | ((dir: TempDir) => readonly string[])): {
  readonly server: () => ServerProcess;
  readonly dir: () => TempDir;
  connect: (options?: ConnectOptions, query?: string) => Promise<ConformanceClient>;
} {
  let dir: TempDir | undefined;
  let server: ServerProcess | undefined;
  const clients: ConformanceClient[] = [];
  beforeAll(async () => {
    dir = tempDir();
    server = await ServerProcess.start(dir.dbPath, typeof args === 'function' ? args(dir) : args);
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await server?.stop();
    dir?.remove();
  });
  return {
    server: () => server!,
    dir: () => dir!,
    async connect(options = {}, query = '') {
      const c = await ConformanceClient.connect(server!.url + query, options);
      clients.push(c);
      return c;
    },
  };
}

let ids = 0;
/** A put with a fresh integer id; stream and seq are always given by the test; `undefined` drops a field. */
function put(fields: Record<string, unknown> & { stream: string; seq: number }): Record<string, unknown> {
  const all: Record<string, unknown> = { id: ++ids, epoch: 1, key: `${fields.stream}-doc`, state: { n: fields.seq }, ...fields };
  return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== undefined));
}

describe('conformance suite independence', () => {
  it('imports nothing from src/: it knows the server only through the spec, the vectors and the wire', () => {
    for (const file of ['client.ts', 'server-process.ts', 'conformance.test.ts']) {
      const source = readFileSync(new URL(file, import.meta.url), 'utf8');
      const imports = [...source.matchAll(/^import .* from '([^']+)';$/gm)].map((m) => m[1]!);
      expect(
        imports.filter((i) => !/^(node:|ws$|msgpackr$|vitest$|\.\/)/.test(i)),
        file,
      ).toEqual([]);
    }
  });
});

describe('conformance: a server with --ack-cap-per-stream 2 --ack-cap-slack 0', () => {
  // Slack 0: the cap evicts exactly one ack per put beyond it, so which retries expire is exact.
  const fx = serverFixture(['--ack-cap-per-stream', '2', '--ack-cap-slack', '0']);
  let limits: Record<string, number>;

  beforeAll(async () => {
    const c = await fx.connect();
    limits = (await c.hello()).limits;
  });

  describe('transport', () => {
    it('speaks MessagePack in binary frames when the client offers no subprotocol', async () => {
      const c = await fx.connect({ protocols: [] });
      expect(c.ws.protocol).toBe('');
      const [r] = await c.put([put({ stream: 'transport-default', seq: 1 })]);
      expect(Buffer.isBuffer(r!.frame)).toBe(true);
      expect(r!.result).toMatchObject({ outcome: 'applied', replay: false });
    });

    it('speaks JSON in text frames under seqgate.v1.json', async () => {
      const c = await fx.connect({ format: 'json' });
      expect(c.ws.protocol).toBe('seqgate.v1.json');
      const [r] = await c.put([put({ stream: 'transport-json', seq: 1 })]);
      expect(typeof r!.frame).toBe('string');
      expect(r!.result).toMatchObject({ outcome: 'applied', replay: false });
    });

    it('selects no subprotocol when only unknown ones are offered, which fails an RFC 6455 handshake', async () => {
      await expect(fx.connect({ protocols: ['seqgate.v0'] })).rejects.toThrow();
    });

    it('answers GET /healthz over HTTP on the same port', async () => {
      const res = await fetch(`${fx.server().httpUrl}/healthz`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ status: 'ok' });
    });

    it('closes the connection with 1009 when a frame exceeds maxFrameBytes', async () => {
      const c = await fx.connect();
      c.sendRaw(Buffer.alloc(limits.maxFrameBytes! + 1, 0xc0), true);
      expect((await c.closed).code).toBe(1009);
    });
  });

  describe('hello and welcome', () => {
    it('answers with protocol 1, the incarnation, contiguous, every limit and the heads in request order', async () => {
      const c = await fx.connect();
      const w = await c.hello(['never-a', 'never-b', 'never-a'], { protocol: 1 });
      const documented = vector('server-messages.json', 'welcome').decoded;
      expect(Object.keys(w).sort()).toEqual(Object.keys(documented).sort());
      expect(w).toMatchObject({ type: 'welcome', protocol: 1, incarnation: fx.server().incarnation, contiguous: false });
      expect(w.server).toMatch(/^seqgate\//);
      expect(Object.keys(w.limits).sort()).toEqual(Object.keys(documented.limits).sort());
      for (const value of Object.values(w.limits)) expect(Number.isSafeInteger(value)).toBe(true);
      const zero = { epoch: 0, seq: 0, prunedThrough: 0 };
      expect(w.heads).toEqual([
        { stream: 'never-a', ...zero },
        { stream: 'never-b', ...zero },
        { stream: 'never-a', ...zero },
      ]);
    });

    it('reports heads that include every put this connection sent before the hello', async () => {
      const c = await fx.connect();
      c.send({ type: 'put', puts: [1, 2, 3].map((seq) => put({ stream: 'own-puts', seq })) });
      c.send({ type: 'hello', streams: ['own-puts'] });
      const w = await c.nextAnswer();
      expect(w.heads).toEqual([{ stream: 'own-puts', epoch: 1, seq: 3, prunedThrough: 1 }]);
      // The welcome comes after the results of the puts sent before it.
      const order = c.messages.map((m: Msg) => m.type);
      expect(order.indexOf('results')).toBeLessThan(order.indexOf('welcome'));
    });

    it('refuses a hello for another protocol version with UNSUPPORTED_VERSION listing 1', async () => {
      const c = await fx.connect();
      const e = await c.hello([], { protocol: 2 });
      expect(e.type).toBe('error');
      expectError(e, 'UNSUPPORTED_VERSION', 'message');
      expect(e.supported).toEqual([1]);
    });
  });

  describe('the gate', () => {
    it('applies a put and answers with an ack of the documented shape', async () => {
      const c = await fx.connect();
      const [r] = await c.put([put({ stream: 'apply', seq: 1, key: 'apply-doc', state: { on: true } })]);
      const { result } = r!;
      expect(result).toMatchObject({ outcome: 'applied', replay: false });
      expect(Object.keys(result.ack)).toEqual(['stream', 'epoch', 'seq', 'key', 'version', 'deleted', 'committedAt']);
      expect(result.ack).toMatchObject({ stream: 'apply', epoch: 1, seq: 1, key: 'apply-doc', version: 1, deleted: false });
      expect(Number.isInteger(result.ack.committedAt)).toBe(true);
      expect(Math.abs(result.ack.committedAt - Date.now())).toBeLessThan(10 * 60_000);
    });

    it('answers a retry with the stored ack, byte for byte and marked replay, on the same and on another connection', async () => {
      const c = await fx.connect();
      const original = { id: 'first', stream: 'replay', epoch: 1, seq: 1, key: 'replay-doc', state: { a: 1, b: [true, null, 'x'] } };
      const [first] = await c.put([original]);
      expect(first!.result).toMatchObject({ id: 'first', outcome: 'applied', replay: false });
      // Same payload, other id and other key order: the same put.
      const [again] = await c.put([{ ...original, id: 'again', state: { b: [true, null, 'x'], a: 1 } }]);
      expect(again!.result).toMatchObject({ id: 'again', outcome: 'applied', replay: true });
      expect(decodeMsgpack(ackBytesOf(first!))).toEqual(first!.result.ack);
      expect(ackBytesOf(again!)).toEqual(ackBytesOf(first!));
      const other = await fx.connect();
      const [third] = await other.put([original]);
      expect(third!.result).toMatchObject({ outcome: 'applied', replay: true });
      expect(ackBytesOf(third!)).toEqual(ackBytesOf(first!));
    });

    it('answers a different payload on a used seq sequence_reused and keeps the first', async () => {
      const c = await fx.connect();
      const base = put({ stream: 'reuse', seq: 1 });
      await c.put([base]);
      const [r] = await c.put([{ ...base, id: 99, state: { other: true } }]);
      expect(r!.result).toMatchObject({ id: 99, outcome: 'sequence_reused' });
      expectError(r!.result.error, 'SEQUENCE_REUSED', 'put');
      const [again] = await c.put([base]);
      expect(again!.result).toMatchObject({ outcome: 'applied', replay: true });
    });

    it('fences puts of a lower epoch, but still replays a retained ack of that epoch', async () => {
      const c = await fx.connect();
      const old = put({ stream: 'fence', epoch: 1, seq: 1 });
      await c.put([old]);
      const [entered] = await c.put([put({ stream: 'fence', epoch: 2, seq: 1 })]);
      expect(entered!.result).toMatchObject({ outcome: 'applied', ack: { epoch: 2, seq: 1 } });
      const [fenced] = await c.put([put({ stream: 'fence', epoch: 1, seq: 7 })]);
      expect(fenced!.result.outcome).toBe('fenced');
      expectError(fenced!.result.error, 'FENCED', 'put');
      expect(fenced!.result.error.epoch).toBe(2);
      const [retry] = await c.put([old]);
      expect(retry!.result).toMatchObject({ outcome: 'applied', replay: true, ack: { epoch: 1, seq: 1 } });
    });

    it('answers stale a seq that a later one skipped, for ever, without blocking the stream', async () => {
      const c = await fx.connect();
      await c.put([put({ stream: 'stale', seq: 1 }), put({ stream: 'stale', seq: 3 })]);
      const skipped = put({ stream: 'stale', seq: 2 });
      const [r] = await c.put([skipped]);
      expect(r!.result.outcome).toBe('stale');
      expectError(r!.result.error, 'STALE', 'put');
      expect(r!.result.error).toMatchObject({ head: { epoch: 1, seq: 3 }, prunedThrough: 0 });
      const [next] = await c.put([put({ stream: 'stale', seq: 4 })]);
      expect(next!.result.outcome).toBe('applied');
      expect((await c.put([skipped]))[0]!.result.outcome).toBe('stale');
    });

    it('answers expired a retry whose ack the per-stream cap evicted, and replays the retained ones', async () => {
      const c = await fx.connect();
      const puts = [1, 2, 3].map((seq) => put({ stream: 'expire', seq }));
      await c.put(puts);
      const [r1, r2, r3] = await c.put(puts);
      expect(r1!.result.outcome).toBe('expired');
      expectError(r1!.result.error, 'EXPIRED', 'put');
      expect(r1!.result.error).toMatchObject({ head: { epoch: 1, seq: 3 }, prunedThrough: 1 });
      expect(r2!.result).toMatchObject({ outcome: 'applied', replay: true });
      expect(r3!.result).toMatchObject({ outcome: 'applied', replay: true });
      const w = await c.hello(['expire']);
      expect(w.heads).toEqual([{ stream: 'expire', epoch: 1, seq: 3, prunedThrough: 1 }]);
    });

    it('consumes the seq on version_conflict, replays it byte for byte, and never restarts versions', async () => {
      const c = await fx.connect();
      const s = 'conflict';
      const key = 'conflict-doc';
      const step = async (p: Record<string, unknown>): Promise<Msg> => (await c.put([p]))[0]!;

      expect((await step(put({ stream: s, seq: 1, key, ifVersion: 0 }))).result).toMatchObject({ outcome: 'applied', ack: { version: 1, deleted: false } });
      const clash = put({ stream: s, seq: 2, key, ifVersion: 0, state: 'second' });
      const conflict = await step(clash);
      expect(conflict.result).toMatchObject({ outcome: 'version_conflict', replay: false, ack: { seq: 2, version: 1, deleted: false, ifVersion: 0 } });
      expect(Object.keys(conflict.result.ack)).toEqual(['stream', 'epoch', 'seq', 'key', 'version', 'deleted', 'ifVersion', 'committedAt']);
      const replayed = await step(clash);
      expect(replayed.result).toMatchObject({ outcome: 'version_conflict', replay: true });
      expect(ackBytesOf(replayed)).toEqual(ackBytesOf(conflict));
      expect((await step(put({ stream: s, seq: 3, key, ifVersion: 1 }))).result).toMatchObject({ outcome: 'applied', ack: { version: 2 } });
      expect((await step(put({ stream: s, seq: 4, key, delete: true, state: undefined }))).result).toMatchObject({
        outcome: 'applied',
        ack: { version: 3, deleted: true },
      });
      // Deleting what is already deleted changes nothing, so the version stays.
      expect((await step(put({ stream: s, seq: 5, key, delete: true, state: undefined }))).result).toMatchObject({
        outcome: 'applied',
        ack: { version: 3, deleted: true },
      });
      expect((await step(put({ stream: s, seq: 6, key, ifVersion: 3 }))).result).toMatchObject({
        outcome: 'version_conflict',
        ack: { version: 3, deleted: true, ifVersion: 3 },
      });
      expect((await step(put({ stream: s, seq: 7, key, ifVersion: 0 }))).result).toMatchObject({ outcome: 'applied', ack: { version: 4, deleted: false } });
      // Documents belong to the tenant, not to a stream.
      expect((await step(put({ stream: 'conflict-other', seq: 1, key, ifVersion: 4 }))).result).toMatchObject({ outcome: 'applied', ack: { version: 5 } });
      expect((await step(put({ stream: s, seq: 8, key: 'conflict-never', delete: true, state: undefined }))).result).toMatchObject({
        outcome: 'applied',
        ack: { version: 0, deleted: true },
      });
      expect((await step(put({ stream: s, seq: 9, key: 'conflict-never-2', ifVersion: 5 }))).result).toMatchObject({
        outcome: 'version_conflict',
        ack: { version: 0, deleted: true, ifVersion: 5 },
      });
    });

    it('answers invalid puts in place, consuming nothing, with field, limit and max', async () => {
      const c = await fx.connect();
      const s = 'invalid';
      const longKey = 'k'.repeat(limits.maxKeyBytes! + 1);
      const results = await c.put([
        put({ stream: s, seq: 1 }),
        put({ stream: s, seq: 0 }),
        put({ stream: s, seq: 2 }),
        put({ stream: s, seq: 3, key: longKey }),
        put({ stream: s, seq: 3, ttl: 60 }),
        'not a put',
        { stream: s, epoch: 1, seq: 3, key: 'k', state: 1 },
        put({ stream: s, seq: 3, state: 1, delete: true }),
      ]);
      const [ok1, seq0, ok2, tooLong, unknown, notMap, noId, both] = results.map((r) => r.result);
      expect([ok1.outcome, ok2.outcome]).toEqual(['applied', 'applied']);
      for (const r of [seq0, tooLong, unknown, notMap, noId, both]) expect(r.outcome).toBe('invalid');
      expectError(seq0.error, 'INVALID_FIELD', 'put');
      expect(seq0.error.field).toBe('seq');
      expectError(tooLong.error, 'LIMIT_EXCEEDED', 'put');
      expect(tooLong.error).toMatchObject({ field: 'key', limit: 'maxKeyBytes', max: limits.maxKeyBytes });
      expect(unknown.error).toMatchObject({ code: 'INVALID_FIELD', field: 'ttl' });
      expect(notMap).toMatchObject({ id: null, error: { code: 'INVALID_FIELD', field: 'put' } });
      expect(noId).toMatchObject({ id: null, error: { code: 'INVALID_FIELD', field: 'id' } });
      expect(both.error).toMatchObject({ code: 'INVALID_FIELD', field: 'state' });
      const [fixed] = await c.put([put({ stream: s, seq: 3 })]);
      expect(fixed!.result).toMatchObject({ outcome: 'applied', replay: false, ack: { seq: 3 } });
    });

    it('accepts a state nested exactly maxStateDepth deep and refuses one level more as TOO_DEEP', async () => {
      const c = await fx.connect();
      const [ok] = await c.put([put({ stream: 'depth', seq: 1, state: nested(limits.maxStateDepth!) })]);
      expect(ok!.result.outcome).toBe('applied');
      c.send({ type: 'put', puts: [put({ stream: 'depth', seq: 2, state: nested(limits.maxStateDepth! + 1) })] });
      const e = await c.nextAnswer();
      expectError(e, 'TOO_DEEP', 'message');
      expect(e).toMatchObject({ limit: 'maxStateDepth', max: limits.maxStateDepth });
    });
  });

  describe('canonical form across transports', () => {
    it('recognises a put sent as MessagePack and retried as JSON (reordered keys, floats for integers) as one put', async () => {
      const v = vector('canonical-puts.json', 'fingerprint-msgpack-and-json-agree');
      const m = await fx.connect({ format: 'msgpack' });
      const j = await fx.connect({ format: 'json' });
      const [a] = await m.putRaw(Buffer.from(v.hex, 'hex'), 1);
      expect(a!.result).toMatchObject({ outcome: 'applied', replay: false });
      const [b] = await j.putRaw(v.json!, 1);
      expect(b!.result).toMatchObject({ outcome: 'applied', replay: true });
      expect(b!.result.ack).toEqual(a!.result.ack);
    });

    it('recognises a put sent as JSON and retried as MessagePack', async () => {
      const v = vector('canonical-puts.json', 'fingerprint-ignores-stream-epoch-seq-and-id');
      const j = await fx.connect({ format: 'json' });
      const m = await fx.connect({ format: 'msgpack' });
      const [a] = await j.putRaw(v.json!, 1);
      expect(a!.result).toMatchObject({ outcome: 'applied', replay: false });
      const [b] = await m.putRaw(Buffer.from(v.hex, 'hex'), 1);
      expect(b!.result).toMatchObject({ outcome: 'applied', replay: true });
    });
  });

  describe('frames refused as a whole', () => {
    it('answers malformed, unknown, mistyped, too deep and oversized messages with error messages and stays open', async () => {
      const c = await fx.connect();
      const refuse = async (send: () => void, code: string, details: Record<string, unknown> = {}): Promise<void> => {
        send();
        const e = await c.nextAnswer();
        expect(e.type).toBe('error');
        expectError(e, code, 'message');
        expect(e).toMatchObject(details);
      };
      for (const name of ['frame-extension-type', 'frame-trailing-bytes', 'frame-truncated']) {
        await refuse(() => c.sendRaw(Buffer.from(vector('client-messages.json', name).hex, 'hex'), true), 'MALFORMED_FRAME');
      }
      await refuse(() => c.send({ type: 'publish' }), 'UNKNOWN_TYPE', { field: 'type' });
      await refuse(() => c.sendRaw('{"type":"ping"}', false), 'WRONG_FRAME_TYPE');
      await refuse(() => c.send(['put']), 'INVALID_MESSAGE', { field: 'type' });
      await refuse(() => c.send({ type: 'put', puts: 'many' }), 'INVALID_MESSAGE', { field: 'puts' });
      await refuse(() => c.send({ type: 'ping', nonce: nested(limits.maxStateDepth! + 3) }), 'TOO_DEEP', { limit: 'maxStateDepth', max: limits.maxStateDepth });
      await refuse(() => c.send({ type: 'hello', streams: new Array(limits.maxHelloStreams! + 1).fill('s') }), 'TOO_MANY_STREAMS', {
        limit: 'maxHelloStreams',
        max: limits.maxHelloStreams,
      });
      const many = Array.from({ length: limits.maxPutsPerFrame! + 1 }, (_, i) => put({ stream: 'too-many', seq: i + 1 }));
      await refuse(() => c.send({ type: 'put', puts: many }), 'TOO_MANY_PUTS', { limit: 'maxPutsPerFrame', max: limits.maxPutsPerFrame });
      // None of the refused frame's puts was processed.
      const [first] = await c.put([many[0]!]);
      expect(first!.result).toMatchObject({ outcome: 'applied', replay: false });
      expect((await c.ping('still-open')).nonce).toBe('still-open');
    });

    it('orders error messages among results in frame order', async () => {
      const c = await fx.connect();
      c.send({ type: 'put', puts: [put({ stream: 'ordered', seq: 1 })] });
      c.sendRaw(Buffer.of(0xc1), true);
      c.send({ type: 'put', puts: [put({ stream: 'ordered', seq: 2 })] });
      await c.awaitResults(2);
      await c.until(() => c.messages.some((m: Msg) => m.type === 'error'));
      const answers = c.messages.filter((m: Msg) => m.type !== 'pong');
      expect(answers.map((m: Msg) => m.type)).toEqual(['results', 'error', 'results']);
      expect(answers[0].results[0].ack.seq).toBe(1);
      expect(answers[2].results[0].ack.seq).toBe(2);
    });

    it('answers an empty put message with nothing', async () => {
      const c = await fx.connect();
      c.send({ type: 'put', puts: [] });
      const w = await c.hello([]);
      expect(w.type).toBe('welcome');
      expect(c.messages.map((m: Msg) => m.type)).toEqual(['welcome']);
    });
  });

  describe('ping', () => {
    it('echoes the nonce, or nil when there is none', async () => {
      const c = await fx.connect();
      expect(await c.ping('n-1')).toEqual({ type: 'pong', nonce: 'n-1' });
      expect(await c.ping(42)).toEqual({ type: 'pong', nonce: 42 });
      expect(await c.ping()).toEqual({ type: 'pong', nonce: null });
      const j = await fx.connect({ format: 'json' });
      expect(await j.ping({ at: [1, 2] })).toEqual({ type: 'pong', nonce: { at: [1, 2] } });
    });
  });

  describe('resuming after a reconnect', () => {
    it('resends unanswered puts unchanged and continues after the welcome head', async () => {
      const before = await fx.connect();
      const sent = [1, 2, 3, 4, 5].map((seq) => put({ stream: 'resume', seq }));
      await before.put(sent);
      await before.close();
      const after = await fx.connect();
      const w = await after.hello(['resume']);
      expect(w.incarnation).toBe(fx.server().incarnation);
      expect(w.heads[0]).toMatchObject({ epoch: 1, seq: 5 });
      const [retry, next] = await after.put([sent[4]!, put({ stream: 'resume', seq: w.heads[0].seq + 1 })]);
      expect(retry!.result).toMatchObject({ outcome: 'applied', replay: true, ack: { seq: 5 } });
      expect(next!.result).toMatchObject({ outcome: 'applied', replay: false, ack: { seq: 6 } });
    });
  });
});

describe('conformance: a server with --contiguous', () => {
  const fx = serverFixture(['--contiguous']);

  it('announces contiguous mode in the welcome', async () => {
    const c = await fx.connect();
    expect((await c.hello()).contiguous).toBe(true);
  });

  it('answers gap with the expected position, consuming nothing', async () => {
    const c = await fx.connect();
    const s = 'gaps';
    const step = async (p: Record<string, unknown>): Promise<Msg> => (await c.put([p]))[0]!.result;
    const firstGap = await step(put({ stream: s, seq: 2 }));
    expect(firstGap.outcome).toBe('gap');
    expectError(firstGap.error, 'GAP', 'put');
    expect(firstGap.error.expected).toEqual({ epoch: 1, seq: 1 });
    expect((await step(put({ stream: s, seq: 1 }))).outcome).toBe('applied');
    expect((await step(put({ stream: s, seq: 3 }))).error).toMatchObject({ code: 'GAP', expected: { epoch: 1, seq: 2 } });
    expect((await step(put({ stream: s, seq: 2 }))).outcome).toBe('applied');
    expect((await step(put({ stream: s, seq: 3 }))).outcome).toBe('applied');
    // At or below the head it is stale, not a gap.
    expect((await step(put({ stream: s, seq: 1, state: 'other' }))).outcome).toBe('sequence_reused');
    // A new epoch starts at seq 1.
    expect((await step(put({ stream: s, epoch: 2, seq: 2 }))).error).toMatchObject({ code: 'GAP', expected: { epoch: 2, seq: 1 } });
    expect((await step(put({ stream: s, epoch: 2, seq: 1 }))).outcome).toBe('applied');
  });
});

describe('conformance: a server with tokens', () => {
  const writer = 'conformance-writer-0001';
  const other = 'conformance-other-00002';
  const tokens = (list: string[]): string =>
    JSON.stringify({
      tokens: [
        { token: writer, tenant: 't1', write: { streams: ['dev-'], documents: ['dev-'] }, read: { streams: ['dev-'], documents: [''] } },
        { token: other, tenant: 't2' },
      ].filter((t) => list.includes(t.token)),
    });
  let tokensFile = '';
  const fx = serverFixture((dir) => {
    tokensFile = join(dir.dir, 'tokens.json');
    writeFileSync(tokensFile, tokens([writer, other]));
    return ['--tokens-file', tokensFile];
  });

  it('refuses an upgrade carrying an invalid token with HTTP 401', async () => {
    await expect(fx.connect({ headers: { authorization: 'Bearer not-a-valid-token-at-all' } })).rejects.toThrow(/401/);
    await expect(fx.connect({}, '/?token=not-a-valid-token-at-all')).rejects.toThrow(/401/);
  });

  it('lets a connection without a token ping, then closes it with 4401 after UNAUTHORIZED for anything but a valid hello', async () => {
    const c = await fx.connect();
    expect((await c.ping('before-auth')).nonce).toBe('before-auth');
    c.send({ type: 'put', puts: [put({ stream: 'dev-1', seq: 1 })] });
    const e = await c.nextAnswer();
    expectError(e, 'UNAUTHORIZED', 'close');
    expect(await c.closed).toEqual({ code: 4401, reason: 'UNAUTHORIZED' });

    const d = await fx.connect();
    const refused = await d.hello(['dev-1'], { token: 'wrong-token-0000000000' });
    expect(refused.code).toBe('UNAUTHORIZED');
    expect((await d.closed).code).toBe(4401);
  });

  it('authenticates by hello token, by bearer header and by ?token=', async () => {
    const byHello = await fx.connect();
    expect((await byHello.hello(['dev-auth'], { token: writer })).type).toBe('welcome');
    const byHeader = await fx.connect({ headers: { authorization: `Bearer ${writer}` } });
    const byQuery = await fx.connect({}, `/?token=${writer}`);
    const outcomes: string[] = [];
    for (const [i, c] of [byHello, byHeader, byQuery].entries()) {
      outcomes.push((await c.put([put({ stream: 'dev-auth', seq: i + 1, key: 'dev-auth' })]))[0]!.result.outcome);
    }
    expect(outcomes).toEqual(['applied', 'applied', 'applied']);
  });

  it('answers forbidden, consuming nothing, for a stream or key outside the grant', async () => {
    const c = await fx.connect({ headers: { authorization: `Bearer ${writer}` } });
    const [stream, key] = await c.put([put({ stream: 'prod-1', seq: 1, key: 'dev-x' }), put({ stream: 'dev-grant', seq: 1, key: 'prod-x' })]);
    const documented = vector('server-messages.json', 'results-forbidden').decoded.results[0];
    for (const r of [stream!.result, key!.result]) {
      expect(r.outcome).toBe('forbidden');
      expectError(r.error, 'FORBIDDEN', 'put');
      expect(Object.keys(r).sort()).toEqual(Object.keys(documented).sort());
    }
    const [ok] = await c.put([put({ stream: 'dev-grant', seq: 1, key: 'dev-x' })]);
    expect(ok!.result).toMatchObject({ outcome: 'applied', replay: false });
  });

  it('refuses a hello naming a stream the token may not read with FORBIDDEN and no welcome', async () => {
    const c = await fx.connect({ headers: { authorization: `Bearer ${writer}` } });
    const e = await c.hello(['dev-ok', 'prod-secret']);
    expect(e.type).toBe('error');
    expectError(e, 'FORBIDDEN', 'message');
    expect(e.stream).toBe('prod-secret');
    expect((await c.hello(['dev-ok'])).type).toBe('welcome');
  });

  it('keeps tenants apart: the same stream and key in another tenant are new', async () => {
    const a = await fx.connect({ headers: { authorization: `Bearer ${writer}` } });
    const b = await fx.connect({ headers: { authorization: `Bearer ${other}` } });
    await a.put([put({ stream: 'dev-shared', seq: 1, key: 'dev-shared', state: 'a' })]);
    const [r] = await b.put([put({ stream: 'dev-shared', seq: 1, key: 'dev-shared', state: 'b', ifVersion: 0 })]);
    expect(r!.result).toMatchObject({ outcome: 'applied', replay: false, ack: { version: 1 } });
  });

  it('closes a connection with 4403 when a reload removes its token, and leaves the others open', async () => {
    const keep = await fx.connect({ headers: { authorization: `Bearer ${writer}` } });
    const revoked = await fx.connect({ headers: { authorization: `Bearer ${other}` } });
    expect((await revoked.ping('x')).nonce).toBe('x');
    writeFileSync(tokensFile, tokens([writer]));
    fx.server().signal('SIGHUP');
    expect(await revoked.closed).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect((await keep.ping('still')).nonce).toBe('still');
    expect(readFileSync(tokensFile, 'utf8')).not.toContain(other);
  });
});

describe('conformance: connection limits and heartbeats', () => {
  const fx = serverFixture(['--max-connections', '2', '--heartbeat-interval-ms', '1000']);

  /** Connects, retrying while the server still counts connections that are closing. */
  async function connectAdmitted(options: ConnectOptions = {}): Promise<ConformanceClient> {
    for (let attempt = 0; ; attempt++) {
      const c = await fx.connect(options);
      const admitted = await Promise.race([c.closed.then(() => false), c.ping('admitted').then(() => true)]);
      if (admitted) return c;
      if (attempt >= 20) throw new Error('never admitted');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  it('closes connections beyond maxConnections with 1013', async () => {
    const a = await connectAdmitted();
    const b = await connectAdmitted();
    const c = await fx.connect();
    expect(await c.closed).toEqual({ code: 1013, reason: 'TOO_MANY_CONNECTIONS' });
    await Promise.all([a.close(), b.close()]);
  });

  it('drops a connection that answers no WebSocket ping, and keeps one that does', async () => {
    const silent = await connectAdmitted({ autoPong: false });
    const alive = await connectAdmitted();
    const { code } = await silent.closed;
    expect(code).toBe(1006);
    // Three more sweeps: the answering connection is still there.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect(alive.isClosed).toBe(false);
    expect((await alive.ping('alive')).nonce).toBe('alive');
  });
});

describe('conformance: shutdown', () => {
  const fx = serverFixture([]);

  it('answers every put it read before closing with 1001, and applies none it did not answer', async () => {
    const c = await fx.connect();
    const first = await c.hello(['shutdown']);
    const total = 10_000;
    for (let seq = 1; seq <= total; seq++) c.send({ type: 'put', puts: [put({ stream: 'shutdown', seq })] });
    // Signal while the stream of puts is being read, so that some are answered and some not.
    await c.until(() => c.results.length > 0, 30_000, 'first result');
    fx.server().signal('SIGTERM');
    const closed = await c.closed;
    expect(closed).toEqual({ code: 1001, reason: 'GOING_AWAY' });
    expect((await fx.server().exited).code).toBe(0);

    const answered = c.results.map((r) => r.result);
    expect(answered.every((r) => r.outcome === 'applied')).toBe(true);
    expect(answered.map((r) => r.ack.seq)).toEqual(Array.from({ length: answered.length }, (_, i) => i + 1));

    const restarted = await ServerProcess.start(fx.dir().dbPath);
    try {
      expect(restarted.incarnation).toBe(first.incarnation);
      const d = await ConformanceClient.connect(restarted.url);
      const w = await d.hello(['shutdown']);
      expect(w.heads[0].seq).toBe(answered.length);
      await d.close();
    } finally {
      await restarted.stop();
    }
  });
});
