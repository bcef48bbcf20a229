import { connect } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChildServer, tempDb, type TempDb } from '../support/child-server.js';
import { TestClient } from '../support/test-client.js';
import { CONTROL_TOKEN, FUZZ_TOKEN, runProperty, TOKENS } from './harness.js';
import { mutate, type Mutation } from './msgpack-forge.js';

/**
 * Fuzzed raw HTTP against the real server process (issue 9): request lines, header blocks, bodies
 * and WebSocket upgrade requests, built from plausible parts and then mutated at the byte level
 * (bit flips, truncation, spliced CR/LF and NUL, repeated runs), plus plain random bytes, each
 * written on a fresh TCP socket in one or more pieces.
 *
 * After every case: the process is alive, GET /healthz answers 200, a control WebSocket opened at
 * the start (another tenant's token) still applies a put, no answer had status 500 or above, and
 * the server logged nothing at error level. The server runs with tokens, so both the refusals
 * before authentication and the routes behind it (with the fuzz token) are reached.
 *
 * Seeds and replay commands are printed as in frames.test.ts (test/fuzz/harness.ts). Longer runs:
 * `npm run fuzz:http` (SEQGATE_FUZZ_RUNS_FACTOR=20, both modes), or set the factor yourself.
 */

const FACTOR = Number(process.env.SEQGATE_FUZZ_RUNS_FACTOR || 1);
/**
 * How long a case waits for the server to answer and close before the probes run anyway: after a
 * half-close the server should close soon; a socket left open may rightly wait for more bytes.
 */
const CASE_WAIT_MS = { halfClosed: 1500, open: 200 };

let db: TempDb;
let child: ChildServer;
let control: TestClient;
let controlSeq = 0;

/**
 * Server modes to fuzz: tokens by default (refusals before authentication and, with the fuzz
 * token, the routes behind it); SEQGATE_FUZZ_HTTP_MODES=tokens,open adds an open server, whose
 * routes every case reaches (`npm run fuzz:http` runs both).
 */
const MODES = (process.env.SEQGATE_FUZZ_HTTP_MODES || 'tokens').split(',').map((m) => m.trim()) as Array<'tokens' | 'open'>;
for (const m of MODES) if (m !== 'tokens' && m !== 'open') throw new Error(`SEQGATE_FUZZ_HTTP_MODES: unknown mode ${m}`);

async function startChild(mode: 'tokens' | 'open'): Promise<void> {
  db = tempDb('seqgate-fuzz-http-');
  child = new ChildServer({ dbPath: db.dbPath, args: ['--log-level', 'info'], env: mode === 'tokens' ? { SEQGATE_TOKENS: TOKENS } : {} });
  await child.start();
  control = await TestClient.connect(child.url, 'msgpack', { headers: mode === 'tokens' ? { authorization: `Bearer ${CONTROL_TOKEN}` } : {} });
  controlSeq = 0;
}

async function stopChild(): Promise<void> {
  control?.ws.terminate();
  await child?.dispose();
  db?.remove();
}

// ---------------------------------------------------------------------------------------------
// One case: write the pieces, half-close, collect the answer until the server closes.

interface Outcome {
  readonly statuses: number[];
  readonly closed: boolean;
}

function sendCase(pieces: readonly Buffer[], halfClose: boolean): Promise<Outcome> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let done = false;
    const socket = connect(child.port, '127.0.0.1');
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const statuses = [...text.matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
      resolve({ statuses, closed });
    };
    const timer = setTimeout(() => finish(false), halfClose ? CASE_WAIT_MS.halfClosed : CASE_WAIT_MS.open);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('connect', async () => {
      for (const p of pieces) {
        if (socket.destroyed) return;
        socket.write(p);
        if (pieces.length > 1) await new Promise((r) => setImmediate(r));
      }
      if (halfClose && !socket.destroyed) socket.end();
    });
  });
}

type Counters = Record<string, number>;
const bump = (c: Counters, k: string): void => {
  c[k] = (c[k] ?? 0) + 1;
};

async function checkAlive(after: string): Promise<void> {
  if (!child.running) throw new Error(`the server process exited after ${after}:\n${child.stderr.slice(-3000)}`);
  const res = await fetch(`http://127.0.0.1:${child.port}/healthz`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`GET /healthz answered ${res.status} after ${after}`);
  await res.arrayBuffer();
  if (control.ws.readyState !== control.ws.OPEN) throw new Error(`the control WebSocket was closed after ${after}`);
  const seq = ++controlSeq;
  control.send({ type: 'put', puts: [{ id: seq, stream: 'ctl', epoch: 1, seq, key: 'ctl', state: { seq } }] });
  await control.waitFor(() => control.results().some((r) => r.id === seq), 5000);
  const r = control.results().find((x) => x.id === seq);
  if (r.outcome !== 'applied') throw new Error(`control put answered ${JSON.stringify(r)} after ${after}`);
  const errors = child.logLines().filter((l) => typeof l.level === 'number' && l.level >= 50);
  if (errors.length > 0) throw new Error(`the server logged an error after ${after}: ${JSON.stringify(errors).slice(0, 1500)}`);
}

function describeCase(bytes: Buffer): string {
  const shown = bytes
    .subarray(0, 300)
    .toString('latin1')
    .replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return `${bytes.length} bytes: ${shown}${bytes.length > 300 ? '…' : ''}`;
}

async function runCase(bytes: Buffer, cuts: readonly number[], halfClose: boolean, counters: Counters): Promise<void> {
  const points = [...new Set(cuts.map((c) => (bytes.length === 0 ? 0 : c % bytes.length)))].sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    if (p > from) pieces.push(bytes.subarray(from, p));
    from = Math.max(from, p);
  }
  pieces.push(bytes.subarray(from));
  const outcome = await sendCase(pieces, halfClose);
  bump(counters, 'cases');
  for (const s of outcome.statuses) bump(counters, `status${s}`);
  if (outcome.statuses.length === 0) bump(counters, outcome.closed ? 'closedWithoutAnswer' : 'stillOpen');
  const bad = outcome.statuses.find((s) => s >= 500);
  if (bad !== undefined) throw new Error(`the server answered ${bad} to ${describeCase(bytes)}`);
  await checkAlive(describeCase(bytes));
}

// ---------------------------------------------------------------------------------------------
// Arbitraries: plausible parts, so that cases get past the HTTP parser, then byte mutations.

const ascii = (max: number): fc.Arbitrary<string> => fc.string({ unit: 'binary-ascii', maxLength: max });
const bytesText = (max: number): fc.Arbitrary<string> => fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b).toString('latin1'));

const methodArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'CONNECT', 'TRACE') },
  { weight: 1, arbitrary: fc.constantFrom('get', 'G ET', '', 'PRI', 'M-SEARCH', 'GET\u0000') },
  { weight: 1, arbitrary: ascii(8) },
);
const nameArb = fc.oneof(fc.constantFrom('k', 's', 'a%2Fb', '%', '%zz', '%ff%fe', '..', '.', '%00', '%2e%2e', 'ключ', 'x'.repeat(300)), ascii(12));
const targetArb = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .tuple(fc.constantFrom('/v1/docs/', '/v1/streams/', '/v1/streams/s/puts?', '/v1/docs', '/healthz', '/readyz', '/metrics', '/'), nameArb)
      .map(([a, b]) => a + b),
  },
  { weight: 1, arbitrary: fc.tuple(nameArb, fc.constantFrom('', '/puts')).map(([s, tail]) => `/v1/streams/${s}${tail}`) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '//[',
      '/\\[',
      '//',
      '*',
      'http://h/healthz',
      'http://[',
      'ws://x/',
      'h:80',
      '/?token=%ff',
      '/?token=',
      '/#frag',
      '/%',
      '//v1/docs/x',
      '',
    ),
  },
  { weight: 1, arbitrary: ascii(24) },
  { weight: 1, arbitrary: bytesText(24) },
);
const versionArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant('HTTP/1.1') },
  { weight: 2, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.10', 'http/1.1', 'HTTP/', '') },
);
const headerArb: fc.Arbitrary<[string, string]> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.tuple(
      fc.constant('Authorization'),
      fc.oneof(fc.constant(`Bearer ${FUZZ_TOKEN}`), fc.constantFrom('Bearer', 'Bearer  ', `bearer ${FUZZ_TOKEN}x`, 'Basic YTpi'), ascii(40)),
    ),
  },
  {
    weight: 3,
    arbitrary: fc.tuple(
      fc.constant('Content-Type'),
      fc.constantFrom('application/json', 'application/msgpack', 'text/plain', 'application/json; charset=utf-8', '', ';;;'),
    ),
  },
  {
    weight: 2,
    arbitrary: fc.tuple(
      fc.constant('Content-Length'),
      fc.oneof(fc.nat(70).map(String), fc.constantFrom('-1', '99999999999999999999', '1e3', ' 5', '5, 6', 'abc', '0x10')),
    ),
  },
  { weight: 1, arbitrary: fc.tuple(fc.constant('Transfer-Encoding'), fc.constantFrom('chunked', 'gzip, chunked', 'identity', 'chunked, chunked', 'xchunked')) },
  {
    weight: 2,
    arbitrary: fc.tuple(fc.constantFrom('If-Match', 'If-None-Match'), fc.oneof(fc.constantFrom('"1"', '*', 'W/"1"', '"4', '5"', 'W/6', '"1", "2"'), ascii(12))),
  },
  { weight: 1, arbitrary: fc.tuple(fc.constant('Idempotency-Key'), ascii(20)) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('Accept'), fc.constantFrom('application/msgpack', 'application/json', '*/*', '')) },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.constantFrom('Expect', 'Connection', 'Upgrade', 'Host'),
      fc.constantFrom('100-continue', 'close', 'keep-alive', 'upgrade', 'websocket', 'h2c', ''),
    ),
  },
  { weight: 1, arbitrary: fc.tuple(ascii(10), ascii(30)) },
  { weight: 1, arbitrary: fc.tuple(bytesText(8), bytesText(20)) },
);
const bodyArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant('') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      '{"epoch":1,"seq":1,"key":"k","state":{"a":1}}',
      '{}',
      'null',
      '1',
      '[',
      '{"epoch":1,"seq":1,"key":"k","state":{"a":',
      '5\r\nhello\r\n0\r\n\r\n',
      'ff\r\nab\r\n',
      '0\r\n\r\n',
    ),
  },
  { weight: 2, arbitrary: bytesText(64) },
);
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('insert' as const),
      at: fc.nat(),
      bytes: fc.constantFrom(
        Uint8Array.of(13, 10),
        Uint8Array.of(10),
        Uint8Array.of(13),
        Uint8Array.of(0),
        Uint8Array.of(32),
        Uint8Array.of(58),
        Uint8Array.of(0xff),
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 8 }) }) },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant('repeat' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 16 }), times: fc.integer({ min: 1, max: 64 }) }),
  },
);
const mutationsArb = fc.oneof(
  { weight: 2, arbitrary: fc.constant([] as Mutation[]) },
  { weight: 3, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) },
);
const cutsArb = fc.array(fc.nat(), { maxLength: 3 });

function requestBytes(method: string, target: string, version: string, headers: ReadonlyArray<[string, string]>, body: string, withLength: boolean): Buffer {
  const lines = [`${method} ${target} ${version}`, 'Host: 127.0.0.1', ...headers.map(([n, v]) => `${n}: ${v}`)];
  if (withLength && body.length > 0 && !headers.some(([n]) => /^(content-length|transfer-encoding)$/i.test(n))) lines.push(`Content-Length: ${body.length}`);
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n${body}`, 'latin1');
}

const UPGRADE_HEADERS: Array<[string, string]> = [
  ['Connection', 'Upgrade'],
  ['Upgrade', 'websocket'],
  ['Sec-WebSocket-Version', '13'],
  ['Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ=='],
  ['Sec-WebSocket-Protocol', 'seqgate.v1'],
];
const upgradeHeaderArb: fc.Arbitrary<[string, string]> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.tuple(fc.constant('Sec-WebSocket-Protocol'), fc.constantFrom('seqgate.v1', 'seqgate.v1.json', 'other', '', 'seqgate.v1, seqgate.v1', ',,,')),
  },
  { weight: 2, arbitrary: fc.tuple(fc.constant('Sec-WebSocket-Version'), fc.constantFrom('13', '8', '', '13, 8', 'x')) },
  { weight: 2, arbitrary: fc.tuple(fc.constant('Sec-WebSocket-Key'), fc.oneof(fc.constantFrom('', 'short', '!!!!!!!!!!!!!!!!!!!!!!!!'), ascii(30))) },
  {
    weight: 2,
    arbitrary: fc.tuple(
      fc.constant('Sec-WebSocket-Extensions'),
      fc.constantFrom('permessage-deflate', 'permessage-deflate; client_max_window_bits', 'x; y=', ';;'),
    ),
  },
  { weight: 2, arbitrary: fc.tuple(fc.constant('Authorization'), fc.oneof(fc.constant(`Bearer ${FUZZ_TOKEN}`), ascii(30))) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom('Upgrade', 'Connection'), fc.constantFrom('websocket', 'WebSocket', 'Upgrade', 'keep-alive, Upgrade', '', 'h2c')),
  },
  { weight: 1, arbitrary: headerArb },
);
const upgradeTargetArb = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('/', `/?token=${FUZZ_TOKEN}`, '/?token=wrong-token-0123456789', '/?token=', '/?token=%ff&token=x', '/x/y') },
  { weight: 1, arbitrary: targetArb },
);

// ---------------------------------------------------------------------------------------------

/** runProperty, whose replay command also needs the mode when it is not the default one. */
async function runInMode<Ts>(mode: string, property: fc.IAsyncPropertyWithHooks<Ts>, options: Parameters<typeof runProperty>[1]): Promise<void> {
  try {
    await runProperty(property, options);
  } catch (err) {
    if (mode === 'tokens') throw err;
    throw new Error(`${(err as Error).message}\n(prefix the replay command with SEQGATE_FUZZ_HTTP_MODES=${mode})`, { cause: err });
  }
}

for (const mode of MODES)
  describe(`fuzzed raw HTTP against the real server process (${mode} mode)`, () => {
    const timeout = 120_000 * FACTOR;
    beforeAll(() => startChild(mode));
    afterAll(stopChild);

    it(
      `${mode} mode: fuzzed request lines, headers and bodies never end the process, never get a 5xx, and leave it serving HTTP and WebSocket`,
      async () => {
        const counters: Counters = {};
        await runInMode(
          mode,
          fc.asyncProperty(
            methodArb,
            targetArb,
            versionArb,
            fc.array(headerArb, { maxLength: 6 }),
            bodyArb,
            fc.boolean(),
            mutationsArb,
            cutsArb,
            fc.nat(3),
            async (method, target, version, headers, body, withLength, mutations, cuts, closeChance) => {
              const bytes = mutate({ bytes: requestBytes(method, target, version, headers, body, withLength), headers: [] }, mutations);
              await runCase(bytes, cuts, closeChance !== 0, counters);
            },
          ),
          { fileUrl: import.meta.url, name: `raw HTTP requests (${mode})`, numRuns: 150, counters },
        );
      },
      timeout,
    );

    it(
      `${mode} mode: fuzzed WebSocket upgrade requests never end the process, never get a 5xx, and leave it serving HTTP and WebSocket`,
      async () => {
        const counters: Counters = {};
        await runInMode(
          mode,
          fc.asyncProperty(
            upgradeTargetArb,
            fc.subarray(UPGRADE_HEADERS),
            fc.array(upgradeHeaderArb, { maxLength: 5 }),
            bodyArb,
            mutationsArb,
            cutsArb,
            fc.nat(3),
            async (target, base, extra, trailing, mutations, cuts, closeChance) => {
              const bytes = mutate(
                {
                  bytes: Buffer.concat([requestBytes('GET', target, 'HTTP/1.1', [...base, ...extra], '', false), Buffer.from(trailing, 'latin1')]),
                  headers: [],
                },
                mutations,
              );
              await runCase(bytes, cuts, closeChance !== 0, counters);
            },
          ),
          { fileUrl: import.meta.url, name: `raw WebSocket upgrades (${mode})`, numRuns: 120, counters },
        );
      },
      timeout,
    );

    it(
      `${mode} mode: random bytes on a raw socket never end the process and leave it serving HTTP and WebSocket`,
      async () => {
        const counters: Counters = {};
        await runInMode(
          mode,
          fc.asyncProperty(
            fc.oneof(
              fc.uint8Array({ maxLength: 256 }),
              ascii(256).map((s) => Uint8Array.from(Buffer.from(s, 'latin1'))),
            ),
            cutsArb,
            fc.nat(3),
            async (bytes, cuts, closeChance) => {
              await runCase(Buffer.from(bytes), cuts, closeChance !== 0, counters);
            },
          ),
          { fileUrl: import.meta.url, name: `raw random bytes (${mode})`, numRuns: 60, counters },
        );
        expect(child.running).toBe(true);
      },
      timeout,
    );
  });
