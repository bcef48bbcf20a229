import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { Cleanup } from './support/cleanup.js';
import { DbChecker } from './support/db-checker.js';
import { startTestServer, TestClient, type Format, type Msg, type TestServer } from './support/test-client.js';

/**
 * Hostile names and token confusion. Names that break the rules of PROTOCOL.md §4 (and HTTP.md
 * §1.1) are refused with the documented codes wherever a name enters: WebSocket puts, hello
 * streams, HTTP paths. Names that are merely odd -- path tricks, look-alikes, injection text --
 * are plain names: stored and answered under exactly their own bytes, never normalised into one
 * another and never touching the file system. Tenants never see each other's data, whatever
 * names or tokens a client tries. Tokens, grants and tenant separation in general are in
 * test/auth.test.ts; this file adds what an attacker would try on top of that.
 */

const packr = new Packr({ useRecords: false });

const cleanup = new Cleanup();
const serve = (overrides: Parameters<typeof startTestServer>[0] = {}): Promise<TestServer> => cleanup.server(overrides);
const connect = (url: string, format: Format = 'msgpack', headers: Record<string, string> = {}): Promise<TestClient> =>
  cleanup.client(url, format, { headers });
const checker = (dbPath: string): DbChecker => cleanup.checker(dbPath);

interface Res {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  body: Msg;
}

/**
 * A raw HTTP request: the path goes on the wire exactly as given (fetch would resolve dot
 * segments and re-encode before sending).
 */
function rawHttp(t: TestServer, method: string, path: string, options: { body?: string; headers?: Record<string, string> } = {}): Promise<Res> {
  const { port } = new URL(t.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port: Number(port),
        method,
        path,
        headers: {
          ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}),
          ...options.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: Msg;
          try {
            body = text === '' ? undefined : JSON.parse(text);
          } catch {
            body = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body });
        });
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

let ids = 0;
function putOf(stream: string, key: string, state: unknown, seq = 1, epoch = 1): Record<string, unknown> {
  return { id: ++ids, stream, epoch, seq, key, state };
}

/** Files and folders in `dir`, recursively, relative to it. */
function listTree(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    out.push(prefix + entry.name);
    if (entry.isDirectory()) out.push(...listTree(join(dir, entry.name), `${prefix}${entry.name}/`));
  }
  return out;
}

const DB_FILES = ['seqgate.db', 'seqgate.db-shm', 'seqgate.db-wal'];

/**
 * Valid names (PROTOCOL.md §4 forbids only emptiness, length and C0/DEL controls) chosen to trip
 * up anything that would treat a name as a path, a query, markup, or text to normalise.
 */
const ODD_NAMES: readonly string[] = [
  '../../etc/passwd',
  '../../../../../../../../tmp/seqgate-escape',
  '..',
  '.',
  '/',
  '/etc/passwd',
  'a/b/c',
  '..\\..\\windows\\system32\\config\\sam',
  '\\\\server\\share',
  '%2e%2e%2f%2e%2e%2fetc%2fpasswd',
  '..%252f..%252fetc',
  'seqgate.db',
  'seqgate.db-wal',
  'C:\\seqgate.db',
  'file:///etc/passwd',
  '~/.ssh/id_rsa',
  '$(touch pwned)',
  '`id`',
  "'; DROP TABLE streams; --",
  '" OR 1=1 --',
  '<script>alert(1)</script>',
  '${jndi:ldap://x}',
  '{{7*7}}',
  ' ',
  'trailing ',
  '__proto__',
  'constructor',
  'hasOwnProperty',
  // Look-alikes: each differs from another name here only after some normalisation.
  '\u00e9',
  'e\u0301',
  'ＡＢＣ',
  'ABC',
  '\u2025\u2215etc\u2215passwd',
  '\uff0e\uff0e\uff0fetc',
  'a\u200db',
  'ab',
  '\ufeffbom',
  'bom',
  '\u202egnp.exe',
  'İ',
  'i̇',
  // Allowed controls outside C0 and DEL: C1 NEL, the Unicode line and paragraph separators.
  'nel\u0085x',
  'ls\u2028x',
  'ps\u2029x',
  '😀',
];

describe('odd but valid names', () => {
  for (const format of ['msgpack', 'json'] as const) {
    it(`over ${format}: are stored and answered under exactly their own bytes, each a stream and document of its own, and no file is created`, async () => {
      const t = await serve();
      const c = await connect(t.url, format);
      c.send({ type: 'put', puts: ODD_NAMES.map((name) => putOf(name, name, { name })) });
      const results = await c.waitResults(ODD_NAMES.length);
      for (const [i, name] of ODD_NAMES.entries()) {
        expect(results[i], JSON.stringify(name)).toMatchObject({
          outcome: 'applied',
          replay: false,
          ack: { stream: name, key: name, version: 1, deleted: false },
        });
      }

      c.send({ type: 'hello', streams: ODD_NAMES });
      const welcome = await c.waitMessage('welcome');
      expect(welcome.heads).toEqual(ODD_NAMES.map((stream) => ({ stream, epoch: 1, seq: 1, prunedThrough: 0 })));

      const base = t.url.replace(/^ws:/, 'http:');
      // "." and ".." are dot segments in a URL path; the next test covers names over HTTP.
      for (const name of ODD_NAMES.filter((n) => n !== '.' && n !== '..')) {
        const doc = await fetch(`${base}/v1/docs/${encodeURIComponent(name)}`);
        expect(doc.status, JSON.stringify(name)).toBe(200);
        expect(await doc.json()).toEqual({ name });
        const head = await fetch(`${base}/v1/streams/${encodeURIComponent(name)}`);
        expect(await head.json()).toEqual({ stream: name, epoch: 1, seq: 1, prunedThrough: 0 });
      }

      const db = checker(t.dbPath);
      expect(new Set(db.streams())).toEqual(new Set(ODD_NAMES));
      expect(new Set(db.documentKeys())).toEqual(new Set(ODD_NAMES));
      for (const name of ODD_NAMES) expect(db.document(name)?.state, JSON.stringify(name)).toEqual({ name });

      expect(listTree(t.dir).sort()).toEqual(expect.arrayContaining(['seqgate.db']));
      expect(listTree(t.dir).filter((f) => !DB_FILES.includes(f))).toEqual([]);
      expect(existsSync(join(tmpdir(), 'seqgate-escape'))).toBe(false);
      expect(existsSync(join(process.cwd(), 'pwned'))).toBe(false);
    });
  }

  it('are written and read over HTTP paths, percent-encoded, as the same documents and streams', async () => {
    const t = await serve();
    const names = ODD_NAMES.filter((n) => n !== '.' && n !== '..');
    for (const name of names) {
      const path = encodeURIComponent(name);
      const written = await rawHttp(t, 'PUT', `/v1/docs/${path}`, { body: JSON.stringify({ via: 'http', name }) });
      expect(written.status, JSON.stringify(name)).toBe(200);
      expect(written.body).toMatchObject({ key: name, version: 1, changed: true });
      const putResult = await rawHttp(t, 'POST', `/v1/streams/${path}/puts`, { body: JSON.stringify({ epoch: 1, seq: 1, key: name, state: { name } }) });
      expect(putResult.status, JSON.stringify(name)).toBe(200);
      expect(putResult.body).toMatchObject({ outcome: 'applied', ack: { stream: name, key: name, version: 2 } });
    }
    // "." and ".." as path segments are dot segments that URL parsing resolves away; encoded as
    // %2e they are resolved too (WHATWG URL), so these two names are reachable over WebSocket only.
    const dots = await rawHttp(t, 'GET', '/v1/docs/%2e%2e');
    expect(dots.status).toBe(404);
    const db = checker(t.dbPath);
    expect(new Set(db.documentKeys())).toEqual(new Set(names));
    expect(listTree(t.dir).filter((f) => !DB_FILES.includes(f))).toEqual([]);
  });

  it('over JSON: __proto__ and constructor in messages, puts and states are plain map keys and pollute no prototype', async () => {
    const t = await serve();
    const c = await connect(t.url, 'json');
    const state = '{"__proto__":{"polluted":"state"},"constructor":{"prototype":{"polluted":"state"}}}';
    c.sendRaw(`{"type":"put","__proto__":{"polluted":"message"},"puts":[{"id":1,"stream":"proto","epoch":1,"seq":1,"key":"proto","state":${state}}]}`, false);
    c.sendRaw('{"type":"put","puts":[{"id":2,"stream":"proto","epoch":1,"seq":2,"key":"proto2","state":1,"__proto__":{"seq":99}}]}', false);
    const [applied, refused] = await c.waitResults(2);
    expect(applied).toMatchObject({ id: 1, outcome: 'applied', ack: { seq: 1, version: 1 } });
    expect(refused).toMatchObject({ id: 2, outcome: 'invalid', error: { code: 'INVALID_FIELD', field: '__proto__' } });

    const m = await connect(t.url, 'msgpack');
    const hostile = JSON.parse(
      '{"type":"put","__proto__":{"polluted":"msgpack"},"puts":[{"id":3,"stream":"proto","epoch":1,"seq":3,"key":"proto3","state":{"__proto__":{"polluted":"msgpack"}}}]}',
    );
    m.sendRaw(packr.pack(hostile));
    expect((await m.waitResults(1))[0]).toMatchObject({ id: 3, outcome: 'applied' });

    const http = await rawHttp(t, 'PUT', '/v1/docs/proto-http', { body: state });
    expect(http.status).toBe(200);

    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
    for (const key of ['proto', 'proto-http']) {
      const read = await rawHttp(t, 'GET', `/v1/docs/${key}`);
      expect(read.text).toBe(state);
    }
    expect((await rawHttp(t, 'GET', '/v1/docs/proto3')).text).toBe('{"__proto__":{"polluted":"msgpack"}}');
  });
});

/** Every C0 control character and DEL: each one makes a name invalid (PROTOCOL.md §4). */
const CONTROLS = [...Array.from({ length: 0x20 }, (_, i) => String.fromCharCode(i)), '\u007f'];

describe('names that break the rules', () => {
  it('with any one of the 33 control characters, as stream or as key, make the put invalid naming the field; the characters around the range are accepted', async () => {
    const t = await serve();
    const c = await connect(t.url);
    const puts = [...CONTROLS.map((ch, i) => putOf(`stream${ch}x`, 'k', i, i + 1)), ...CONTROLS.map((ch, i) => putOf('s', `key${ch}x`, i, i + 1))];
    c.send({ type: 'put', puts });
    const results = await c.waitResults(puts.length);
    results.forEach((r: Msg, i: number) => {
      expect(r, `put ${i}`).toMatchObject({ outcome: 'invalid', error: { code: 'INVALID_FIELD', field: i < CONTROLS.length ? 'stream' : 'key' } });
    });
    c.send({ type: 'put', puts: [putOf('space x', 'space x', 1), putOf('c1\u0080x', 'c1\u0080x', 1), putOf('del\u00ffx', 'del\u00ffx', 1)] });
    const edges = (await c.waitResults(puts.length + 3)).slice(puts.length);
    expect(edges.map((r: Msg) => r.outcome)).toEqual(['applied', 'applied', 'applied']);
    expect(checker(t.dbPath).streams().sort()).toEqual(['c1\u0080x', 'del\u00ffx', 'space x']);
  });

  it('in a hello, refuse the whole hello with INVALID_MESSAGE for each control character, an empty name and an over-long one', async () => {
    const t = await serve();
    const c = await connect(t.url, 'json');
    const bad = [...CONTROLS.map((ch) => `s${ch}`), '', 's'.repeat(257), '\u00e9'.repeat(129)];
    for (const name of bad) c.send({ type: 'hello', streams: ['fine', name] });
    c.send({ type: 'hello', streams: ['fine'] });
    await c.waitMessage('welcome');
    const errors = c.messages.filter((m: Msg) => m.type === 'error');
    expect(errors).toHaveLength(bad.length);
    for (const e of errors) expect(e).toMatchObject({ code: 'INVALID_MESSAGE', field: 'streams', retryable: false });
    // The welcome is the last answer: every refused hello was answered before it, in order.
    expect(c.messages[c.messages.length - 1]).toMatchObject({ type: 'welcome', heads: [{ stream: 'fine', seq: 0 }] });
  });

  /** [path segment as sent, the field it must be refused as]. */
  const BAD_SEGMENTS: ReadonlyArray<readonly [string, string]> = [
    ...CONTROLS.map((ch) => [encodeURIComponent(`n${ch}x`), 'control character'] as const),
    ['%0d%0aSet-Cookie:%20injected=1', 'header injection'],
    ['n%0d%0a%0d%0aHTTP%2f1.1%20200%20OK', 'response splitting'],
    ['%', 'broken percent-encoding'],
    ['%zz', 'broken percent-encoding'],
    ['%e9', 'a lone UTF-8 lead byte'],
    ['%c0%ae%c0%ae', 'overlong UTF-8 dots'],
    ['%ed%a0%80', 'an encoded surrogate'],
  ];

  const PLAIN_HEADERS = ['cache-control', 'connection', 'content-length', 'content-type', 'date', 'keep-alive', 'transfer-encoding'];

  it('in HTTP paths are answered 400 INVALID_BODY naming the field on every route that takes a name, and nothing is stored or echoed into a header', async () => {
    const t = await serve();
    const routes: ReadonlyArray<{ method: string; path: (seg: string) => string; field: string; body?: string }> = [
      { method: 'GET', path: (s) => `/v1/docs/${s}`, field: 'key' },
      { method: 'PUT', path: (s) => `/v1/docs/${s}`, field: 'key', body: '{"x":1}' },
      { method: 'DELETE', path: (s) => `/v1/docs/${s}`, field: 'key' },
      { method: 'GET', path: (s) => `/v1/streams/${s}`, field: 'stream' },
      { method: 'POST', path: (s) => `/v1/streams/${s}/puts`, field: 'stream', body: '{"epoch":1,"seq":1,"key":"k","state":1}' },
    ];
    const segments = [...BAD_SEGMENTS, ['k'.repeat(257), 'over the limit'] as const, ['%F0%9F%98%80'.repeat(64) + 'x', 'over the limit in bytes'] as const];
    for (const route of routes) {
      for (const [segment, what] of segments) {
        const r = await rawHttp(t, route.method, route.path(segment), { body: route.body });
        const label = `${route.method} ${route.path(segment).slice(0, 80)} (${what})`;
        expect(r.status, label).toBe(400);
        expect(r.body, label).toMatchObject({ error: { code: 'INVALID_BODY', field: route.field, retryable: false } });
        expect(r.headers['set-cookie'], label).toBeUndefined();
        const unexpected = Object.keys(r.headers).filter((h) => !PLAIN_HEADERS.includes(h));
        expect(unexpected, label).toEqual([]);
        expect(JSON.stringify(r.headers), label).not.toMatch(/injected|200 OK/);
      }
    }
    const db = checker(t.dbPath);
    expect(db.streams()).toEqual([]);
    expect(db.documentKeys()).toEqual([]);
  });

  it('in HTTP paths: empty names and raw dot segments resolve to no route (404), raw backslashes are refused (400 INVALID_TARGET), and a path longer than HTTP allows is refused by the HTTP layer while the server keeps serving', async () => {
    const t = await serve();
    const notFound = [
      ['GET', '/v1/docs/'],
      ['PUT', '/v1/docs/'],
      ['GET', '/v1/streams/'],
      ['POST', '/v1/streams//puts'],
      ['GET', '/v1/docs/../../../../etc/passwd'],
      ['GET', '/v1/docs/..%2f..%2f..%2fetc%2fpasswd'],
      ['GET', '/v1/docs/a/b'],
      ['GET', '/v1/streams/a/b/c/puts'],
      ['GET', '//v1/docs/x'],
    ] as const;
    for (const [method, path] of notFound) {
      const r = await rawHttp(t, method, path, { body: method === 'PUT' || method === 'POST' ? '{}' : undefined });
      expect(r.status, `${method} ${path}`).toBe(404);
      expect(r.body, `${method} ${path}`).toMatchObject({ error: { code: 'NOT_FOUND' } });
      expect(r.text).not.toMatch(/root:|\[boot loader\]/);
    }

    // A raw backslash is not allowed in a path (RFC 3986); URL parsers would read it as "/".
    for (const path of ['/v1/docs/..\\..\\..\\etc\\passwd', '/\\evil/v1/docs/x']) {
      const r = await rawHttp(t, 'GET', path);
      expect(r.status, path).toBe(400);
      expect(r.body, path).toMatchObject({ error: { code: 'INVALID_TARGET' } });
    }

    const huge = await rawHttp(t, 'GET', `/v1/docs/${'k'.repeat(64 * 1024)}`).catch((err: Error) => ({ status: -1, text: err.message }));
    expect([431, 414, 400, -1]).toContain(huge.status);
    const after = await rawHttp(t, 'PUT', '/v1/docs/after', { body: '1' });
    expect(after.status).toBe(200);
    expect(listTree(t.dir).filter((f) => !DB_FILES.includes(f))).toEqual([]);
  });
});

function newToken(): string {
  return `T${randomBytes(18).toString('base64url')}`;
}

describe("a token of one tenant used with another tenant's names", () => {
  const A = newToken();
  const B = newToken();
  const tokens = JSON.stringify({
    tokens: [
      { token: A, tenant: 'tenant-a' },
      { token: B, tenant: 'tenant-b' },
    ],
  });
  const MARKER = `secret-${randomBytes(8).toString('hex')}`;

  it("never reveals B's data, versions, positions or keys in any response body or header, on either transport", async () => {
    const t = await serve({ tokens });
    const auth = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

    // Tenant B's data: a stream at epoch 3 seq 7, a live and a deleted document, a created one.
    const bPut = { epoch: 3, seq: 7, key: 'b-doc', state: { marker: MARKER } };
    const bAck = await rawHttp(t, 'POST', '/v1/streams/b-stream/puts', { body: JSON.stringify(bPut), headers: auth(B) });
    expect(bAck.body).toMatchObject({ outcome: 'applied', ack: { version: 1 } });
    for (let i = 0; i < 3; i++) await rawHttp(t, 'PUT', '/v1/docs/b-gone', { body: JSON.stringify({ marker: MARKER, i }), headers: auth(B) });
    expect((await rawHttp(t, 'DELETE', '/v1/docs/b-gone', { headers: auth(B) })).body).toMatchObject({ version: 4, deleted: true });
    const created = await rawHttp(t, 'POST', '/v1/docs', { body: JSON.stringify({ marker: MARKER }), headers: { ...auth(B), 'idempotency-key': 'b-key' } });
    expect(created.status).toBe(201);
    const bCreatedKey = created.body.key as string;
    const bSecrets = [MARKER, bCreatedKey, String(bAck.body.ack.committedAt), String(created.body.createdAt), 'tenant-b', B];

    // Everything tenant A tries with B's names.
    const seen: Res[] = [];
    const asA = async (method: string, path: string, body?: string, headers: Record<string, string> = {}): Promise<Res> => {
      const r = await rawHttp(t, method, path, { body, headers: { ...auth(A), ...headers } });
      seen.push(r);
      return r;
    };
    for (const key of ['b-doc', 'b-gone', bCreatedKey]) {
      const r = await asA('GET', `/v1/docs/${key}`);
      expect(r.status, key).toBe(404);
      // A deleted document of B's would answer with its version: A's answer must not have one.
      expect(r.body, key).toEqual({ error: { code: 'NOT_FOUND', message: 'no such document', retryable: false } });
      const msgpack = await asA('GET', `/v1/docs/${key}`, undefined, { accept: 'application/msgpack' });
      expect(msgpack.status).toBe(404);
    }
    expect((await asA('GET', '/v1/streams/b-stream')).body).toEqual({ stream: 'b-stream', epoch: 0, seq: 0, prunedThrough: 0 });
    // Conditional writes against B's versions are decided against A's (empty) documents.
    const ifMatch = await asA('PUT', '/v1/docs/b-gone', '{"a":1}', { 'if-match': '"4"' });
    expect(ifMatch.status).toBe(412);
    expect(ifMatch.body.error).toMatchObject({ code: 'PRECONDITION_FAILED', version: 0, deleted: true });
    expect((await asA('DELETE', '/v1/docs/b-doc')).body).toEqual({ key: 'b-doc', version: 0, deleted: true, changed: false });
    // B's exact put, by A: applied fresh in A's tenant, not a replay of B's ack, not fenced or stale.
    const same = await asA('POST', '/v1/streams/b-stream/puts', JSON.stringify(bPut));
    expect(same.status).toBe(200);
    expect(same.headers['idempotent-replayed']).toBeUndefined();
    expect(same.body).toMatchObject({ outcome: 'applied', replay: false, ack: { epoch: 3, seq: 7, version: 1 } });
    expect((await asA('POST', '/v1/streams/b-stream/puts', JSON.stringify({ ...bPut, epoch: 3, seq: 7, state: 'other' }))).body).toMatchObject({
      outcome: 'sequence_reused',
    });
    const lower = await asA('POST', '/v1/streams/b-stream2/puts', JSON.stringify({ epoch: 1, seq: 1, key: 'a-doc', state: 1 }));
    expect(lower.body).toMatchObject({ outcome: 'applied' });
    const sameKey = await asA('POST', '/v1/docs', JSON.stringify({ marker: MARKER }), { 'idempotency-key': 'b-key' });
    expect(sameKey.status).toBe(201);
    expect(sameKey.headers['idempotent-replayed']).toBeUndefined();
    // The POST echoes A's own body (MARKER is in A's request too): only its key and time must differ.
    expect(sameKey.body.key).not.toBe(bCreatedKey);
    seen.splice(seen.indexOf(sameKey), 1);
    seen.splice(seen.indexOf(same), 1);

    // WebSocket: a hello naming B's stream, a put at B's position.
    const c = await connect(t.url, 'json', auth(A));
    c.send({ type: 'hello', streams: ['b-stream', 'b-stream3'] });
    const welcome = await c.waitMessage('welcome');
    expect(welcome.heads).toEqual([
      { stream: 'b-stream', epoch: 3, seq: 7, prunedThrough: 0 },
      { stream: 'b-stream3', epoch: 0, seq: 0, prunedThrough: 0 },
    ]);
    c.send({ type: 'put', puts: [putOf('b-stream3', 'b-gone', 'mine', 1, 1)] });
    expect((await c.waitResults(1))[0]).toMatchObject({ outcome: 'applied', replay: false, ack: { version: 1 } });

    const metrics = await rawHttp(t, 'GET', '/metrics');
    const everything = [
      ...seen.map((r) => `${r.status} ${JSON.stringify(r.headers)} ${r.text}`),
      ...c.frames.map((f) => f.toString('utf8')),
      metrics.text,
    ].join('\n');
    for (const secret of bSecrets) expect(everything.includes(secret), `A saw ${secret}`).toBe(false);

    // And B's data is as B left it.
    expect((await rawHttp(t, 'GET', '/v1/docs/b-doc', { headers: auth(B) })).body).toEqual({ marker: MARKER });
    expect((await rawHttp(t, 'GET', '/v1/docs/b-gone', { headers: auth(B) })).body.error).toMatchObject({ version: 4, deleted: true });
  });

  it("cannot switch tenant on an authenticated connection: a later hello carrying B's token is ignored", async () => {
    const t = await serve({ tokens });
    await rawHttp(t, 'POST', '/v1/streams/b-only/puts', {
      body: JSON.stringify({ epoch: 2, seq: 5, key: 'b-only', state: MARKER }),
      headers: { authorization: `Bearer ${B}` },
    });
    for (const [i, how] of (['bearer', 'hello'] as const).entries()) {
      const c = how === 'bearer' ? await connect(t.url, 'msgpack', { authorization: `Bearer ${A}` }) : await connect(t.url, 'msgpack');
      if (how === 'hello') {
        c.send({ type: 'hello', token: A, streams: [] });
        await c.waitMessage('welcome');
      }
      c.send({ type: 'hello', token: B, streams: ['b-only'] });
      await c.waitFor(() => c.messages.filter((m: Msg) => m.type === 'welcome').length === (how === 'hello' ? 2 : 1));
      const welcome = c.messages.filter((m: Msg) => m.type === 'welcome').pop();
      // Tenant A's view of the stream (its own put of the previous round), never B's (2, 5).
      expect(welcome.heads, how).toEqual([{ stream: 'b-only', epoch: i === 0 ? 0 : 1, seq: i, prunedThrough: 0 }]);
      c.send({ type: 'put', puts: [putOf('b-only', `a-${how}`, 1, i + 1, 1)] });
      expect((await c.waitResults(1))[0], how).toMatchObject({ outcome: 'applied', replay: false });
    }
    const bView = await rawHttp(t, 'GET', '/v1/streams/b-only', { headers: { authorization: `Bearer ${B}` } });
    expect(bView.body).toEqual({ stream: 'b-only', epoch: 2, seq: 5, prunedThrough: 0 });
    const db = checker(t.dbPath);
    expect(db.head('b-only', 'tenant-a')).toMatchObject({ epoch: 1, seq: 2 });
    expect(db.documentKeys('tenant-b')).toEqual(['b-only']);
  });

  it('on the upgrade, the Authorization header wins over a ?token= for another tenant; on HTTP a ?token= is never read', async () => {
    const t = await serve({ tokens });
    const c = await connect(`${t.url}/?token=${encodeURIComponent(B)}`, 'msgpack', { authorization: `Bearer ${A}` });
    c.send({ type: 'put', puts: [putOf('which', 'which', 'a', 1, 1)] });
    expect((await c.waitResults(1))[0]).toMatchObject({ outcome: 'applied' });
    const db = checker(t.dbPath);
    expect(db.head('which', 'tenant-a')).toMatchObject({ seq: 1 });
    expect(db.head('which', 'tenant-b')).toBeUndefined();

    for (const path of [`/v1/streams/which?token=${encodeURIComponent(A)}`, `/v1/docs/which?token=${encodeURIComponent(A)}`]) {
      const r = await rawHttp(t, 'GET', path);
      expect(r.status, path).toBe(401);
      expect(r.body).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
    }
  });

  it('keeps tenants whose names are prefixes or concatenations of one another apart, also inside one batch', async () => {
    const names = ['t', 'tt', 't/t', 't\u0001'];
    const list = names.map((tenant, i) => ({ token: `${newToken()}${i}`, tenant }));
    const t = await serve({ tokens: JSON.stringify({ tokens: list }) });
    const clients = await Promise.all(list.map((e) => connect(t.url, 'msgpack', { authorization: `Bearer ${e.token}` })));
    // Sent in one burst so that the puts of all tenants share one batch.
    clients.forEach((c, i) => c.send({ type: 'put', puts: [putOf('t', 't/t', { tenant: i }, 1, 1), putOf('t/t', 't', { tenant: i }, 1, 1)] }));
    for (const c of clients) {
      for (const r of await c.waitResults(2)) expect(r).toMatchObject({ outcome: 'applied', replay: false, ack: { version: 1 } });
    }
    const db = checker(t.dbPath);
    names.forEach((tenant, i) => {
      expect(db.streams(tenant), tenant).toEqual(['t', 't/t']);
      expect(db.document('t/t', tenant)?.state, tenant).toEqual({ tenant: i });
      expect(db.document('t', tenant)?.state, tenant).toEqual({ tenant: i });
    });
  });
});
