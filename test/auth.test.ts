import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import WebSocket from 'ws';
import { ConfigError } from '../src/config.js';
import { AuthConfigError } from '../src/server/auth.js';
import { SeqgateServer } from '../src/server/websocket-server.js';
import { Cleanup } from './support/cleanup.js';
import { put, startTestServer, TestClient, type Msg, type TestServer } from './support/test-client.js';

/**
 * Tokens, tenants and grants on both transports (protocol/HTTP.md, "Authentication"): who gets
 * in, what each token may see and write, reloads that revoke, and secrets that stay out of logs.
 */

/**
 * Random, mixed-case tokens: no slice of one can turn up in a log by coincidence. The leading
 * letter keeps a JSON typo before the token a syntax error at the token, every run the same.
 */
function newToken(): string {
  return `T${randomBytes(18).toString('base64url')}`;
}

const ALPHA = newToken();
const BETA = newToken();
const LIMITED = newToken();

interface TokenEntry {
  token: string;
  tenant: string;
  write?: { streams?: string[]; documents?: string[] };
  read?: { streams?: string[]; documents?: string[] };
}

const alpha: TokenEntry = { token: ALPHA, tenant: 'alpha' };
const beta: TokenEntry = { token: BETA, tenant: 'beta' };
const limited: TokenEntry = {
  token: LIMITED,
  tenant: 'alpha',
  write: { streams: ['dev-'], documents: ['dev-'] },
  read: { streams: ['dev-', 'shared-'], documents: ['dev-'] },
};

function tokensJson(...entries: TokenEntry[]): string {
  return JSON.stringify({ tokens: entries });
}

interface Res {
  status: number;
  headers: Headers;
  body: Msg;
}

function http(t: TestServer): string {
  return t.url.replace(/^ws:/, 'http:');
}

async function call(t: TestServer, method: string, path: string, token?: string, json?: unknown, headers: Record<string, string> = {}): Promise<Res> {
  const h: Record<string, string> = { ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  if (json !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(http(t) + path, { method, headers: h, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text === '' ? undefined : JSON.parse(text) };
}

/** The status the server answers a WebSocket upgrade with: 101 when it switches protocols. */
function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'seqgate.v1', { headers });
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      ws.terminate();
    });
    ws.once('open', () => {
      resolve(101);
      ws.close();
    });
    ws.once('error', (err) => reject(err));
  });
}

function withBearer(token: string): WebSocket.ClientOptions {
  return { headers: { authorization: `Bearer ${token}` } };
}

/** Resolves to the close if the client closes within `ms`, otherwise to undefined. */
function closedWithin(c: TestClient, ms: number): Promise<{ code: number; reason: string } | undefined> {
  return Promise.race([c.closed, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms))]);
}

const cleanup = new Cleanup();
const serve = (overrides: Parameters<typeof startTestServer>[0] = {}, options: Parameters<typeof startTestServer>[1] = {}): Promise<TestServer> =>
  cleanup.server(overrides, options);

function tokensFile(content: string): { path: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-tokens-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'tokens.json');
  writeFileSync(path, content);
  return { path, dir };
}

const aPut = { epoch: 1, seq: 1, key: 'k', state: { owner: 'x' } };

describe('HTTP authentication', () => {
  it('accepts tokens given inline and refuses a missing, forged or differently framed token with 401', async () => {
    const t = await serve({ tokens: tokensJson(alpha) });
    expect((await call(t, 'POST', '/v1/streams/s/puts', ALPHA, aPut)).status).toBe(200);
    expect((await call(t, 'GET', '/v1/streams/s', undefined, undefined, { authorization: `bearer ${ALPHA}` })).status).toBe(200);

    const forged = ALPHA.slice(0, -1) + (ALPHA.endsWith('A') ? 'B' : 'A');
    const refusals: Array<Record<string, string>> = [
      {},
      { authorization: `Bearer ${forged}` },
      { authorization: `Bearer ${ALPHA}x` },
      { authorization: `Bearer ${ALPHA.slice(0, -1)}` },
      { authorization: `Basic ${Buffer.from(`u:${ALPHA}`).toString('base64')}` },
      { authorization: ALPHA },
      { authorization: 'Bearer ' },
    ];
    for (const headers of refusals) {
      const r = await call(t, 'POST', '/v1/streams/s/puts', undefined, { ...aPut, seq: 2 }, headers);
      expect(r.status, JSON.stringify(headers)).toBe(401);
      expect(r.headers.get('www-authenticate')).toBe('Bearer realm="seqgate"');
      expect(r.body).toEqual({ error: { code: 'UNAUTHORIZED', message: expect.any(String), retryable: false } });
    }
    expect((await call(t, 'GET', '/v1/streams/s', ALPHA)).body).toMatchObject({ seq: 1 });
  });

  it('accepts tokens from a tokens file, together with inline ones', async () => {
    const file = tokensFile(tokensJson(beta));
    const t = await serve({ tokensFile: file.path, tokens: tokensJson(alpha) });
    expect((await call(t, 'GET', '/v1/streams/s', BETA)).status).toBe(200);
    expect((await call(t, 'GET', '/v1/streams/s', ALPHA)).status).toBe(200);
    expect((await call(t, 'GET', '/v1/streams/s', LIMITED)).status).toBe(401);
  });

  it('runs open as the default tenant when no token is configured, ignoring any token sent', async () => {
    const t = await serve();
    expect((await call(t, 'POST', '/v1/streams/s/puts', undefined, aPut)).status).toBe(200);
    const r = await call(t, 'POST', '/v1/streams/s/puts', 'whatever-token-is-sent', aPut);
    expect(r.status).toBe(200);
    expect(r.headers.get('idempotent-replayed')).toBe('true');
  });
});

describe('WebSocket authentication', () => {
  it('refuses the upgrade with 401 for an unknown token in the Authorization header or the query', async () => {
    const t = await serve({ tokens: tokensJson(alpha) });
    expect(await upgradeStatus(t.url, { authorization: `Bearer ${BETA}` })).toBe(401);
    expect(await upgradeStatus(`${t.url}/?token=${encodeURIComponent(BETA)}`)).toBe(401);
    expect(await upgradeStatus(t.url, { authorization: `Bearer ${ALPHA}` })).toBe(101);
    expect(await upgradeStatus(`${t.url}/?token=${encodeURIComponent(ALPHA)}`)).toBe(101);
    expect(t.server.connectionCount).toBeLessThanOrEqual(2);
  });

  it('lets a client authenticated on the upgrade (header or query) put at once', async () => {
    const t = await serve({ tokens: tokensJson(alpha) });
    for (const c of [
      await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA)),
      await TestClient.connect(`${t.url}/?token=${encodeURIComponent(ALPHA)}`, 'json'),
    ]) {
      c.send({ type: 'put', puts: [put({ stream: `ws-${c.format}`, seq: 1 })] });
      expect((await c.waitResults(1))[0]).toMatchObject({ outcome: 'applied' });
      await c.close();
    }
    expect((await call(t, 'GET', '/v1/streams/ws-json', ALPHA)).body).toMatchObject({ seq: 1 });
  });

  it('lets a browser without headers authenticate with the token in its first hello', async () => {
    const t = await serve({ tokens: tokensJson(alpha) });
    const c = await TestClient.connect(t.url, 'json');
    c.send({ type: 'ping', nonce: 1 });
    expect(await c.waitMessage('pong')).toEqual({ type: 'pong', nonce: 1 });
    c.send({ type: 'hello', token: ALPHA, streams: ['browser'] });
    const welcome = await c.waitMessage('welcome');
    expect(welcome.heads).toEqual([{ stream: 'browser', epoch: 0, seq: 0, prunedThrough: 0 }]);
    c.send({ type: 'put', puts: [put({ stream: 'browser', seq: 1, key: 'b' })] });
    expect((await c.waitResults(1))[0]).toMatchObject({ outcome: 'applied', replay: false });
    expect((await call(t, 'GET', '/v1/docs/b', ALPHA)).status).toBe(200);
    await c.close();
  });

  for (const [name, first] of [
    ['a hello without a token', { type: 'hello', streams: [] }],
    ['a hello with an unknown token', { type: 'hello', token: BETA }],
    ['a put before any hello', { type: 'put', puts: [put({ stream: 'early' })] }],
  ] as const) {
    it(`answers ${name} on an unauthenticated connection with UNAUTHORIZED and closes it with 4401`, async () => {
      const t = await serve({ tokens: tokensJson(alpha) });
      const c = await TestClient.connect(t.url);
      c.send(first);
      const err = await c.waitMessage('error');
      expect(err).toMatchObject({ type: 'error', code: 'UNAUTHORIZED', retryable: false });
      expect(await c.closed).toEqual({ code: 4401, reason: 'UNAUTHORIZED' });
      expect(c.results()).toEqual([]);
      expect((await call(t, 'GET', '/v1/streams/early', ALPHA)).body).toMatchObject({ seq: 0 });
    });
  }
});

describe('tenants', () => {
  it('keeps streams, documents and idempotency keys of two tenants with the same names apart', async () => {
    const t = await serve({ tokens: tokensJson(alpha, beta) });
    const a = await call(t, 'POST', '/v1/streams/shared/puts', ALPHA, aPut);
    expect(a.body).toMatchObject({ outcome: 'applied', ack: { version: 1 } });
    await call(t, 'POST', '/v1/streams/shared/puts', ALPHA, { ...aPut, seq: 2, state: 2 });
    expect((await call(t, 'PUT', '/v1/docs/plain', ALPHA, { secret: 'alpha' })).status).toBe(200);
    const created = await call(t, 'POST', '/v1/docs', ALPHA, { n: 1 }, { 'idempotency-key': 'same-key' });
    expect(created.status).toBe(201);

    // Beta sees none of it...
    expect((await call(t, 'GET', '/v1/streams/shared', BETA)).body).toEqual({ stream: 'shared', epoch: 0, seq: 0, prunedThrough: 0 });
    for (const key of ['k', 'plain', created.body.key as string]) {
      const r = await call(t, 'GET', `/v1/docs/${key}`, BETA);
      expect(r.status, key).toBe(404);
      expect(r.body).toEqual({ error: { code: 'NOT_FOUND', message: 'no such document', retryable: false } });
    }
    const c = await TestClient.connect(t.url, 'msgpack', withBearer(BETA));
    c.send({ type: 'hello', streams: ['shared'] });
    expect((await c.waitMessage('welcome')).heads).toEqual([{ stream: 'shared', epoch: 0, seq: 0, prunedThrough: 0 }]);

    // ...and its own writes under the same names are new, not replays or conflicts.
    const b = await call(t, 'POST', '/v1/streams/shared/puts', BETA, aPut);
    expect(b.status).toBe(200);
    expect(b.headers.get('idempotent-replayed')).toBeNull();
    expect(b.body).toMatchObject({ outcome: 'applied', replay: false, ack: { version: 1 } });
    c.send({ type: 'put', puts: [put({ stream: 'shared', seq: 2, key: 'k', state: 'beta-2' })] });
    expect((await c.waitResults(1))[0]).toMatchObject({ outcome: 'applied', replay: false, ack: { version: 2 } });
    const sameKey = await call(t, 'POST', '/v1/docs', BETA, { n: 1 }, { 'idempotency-key': 'same-key' });
    expect(sameKey.status).toBe(201);
    expect(sameKey.headers.get('idempotent-replayed')).toBeNull();
    expect(sameKey.body.key).not.toBe(created.body.key);
    const otherPayload = await call(t, 'POST', '/v1/docs', BETA, { n: 2 }, { 'idempotency-key': 'other-key' });
    expect(otherPayload.status).toBe(201);
    expect((await call(t, 'PUT', '/v1/docs/plain', BETA, { secret: 'beta' })).body).toMatchObject({ version: 1, changed: true });
    expect((await call(t, 'DELETE', '/v1/docs/plain', BETA)).body).toMatchObject({ version: 2, deleted: true });

    // Alpha's data is untouched by all of that.
    expect((await call(t, 'GET', '/v1/docs/plain', ALPHA)).body).toEqual({ secret: 'alpha' });
    expect((await call(t, 'GET', '/v1/docs/k', ALPHA)).body).toBe(2);
    expect((await call(t, 'GET', '/v1/streams/shared', ALPHA)).body).toMatchObject({ epoch: 1, seq: 2 });
    const replay = await call(t, 'POST', '/v1/docs', ALPHA, { n: 1 }, { 'idempotency-key': 'same-key' });
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.body).toEqual(created.body);
    expect((await call(t, 'POST', '/v1/docs', ALPHA, { n: 3 }, { 'idempotency-key': 'other-key' })).status).toBe(201);
    await c.close();
  });
});

describe('grants', () => {
  it('refuses writes outside the write prefixes with outcome forbidden (403) and applies those inside', async () => {
    const t = await serve({ tokens: tokensJson(alpha, limited) });
    const outsideStream = await call(t, 'POST', '/v1/streams/prod-1/puts', LIMITED, { ...aPut, key: 'dev-k' });
    expect(outsideStream.status).toBe(403);
    expect(outsideStream.body).toMatchObject({ outcome: 'forbidden', error: { code: 'FORBIDDEN', retryable: false } });
    const outsideKey = await call(t, 'POST', '/v1/streams/dev-1/puts', LIMITED, { ...aPut, key: 'prod-k' });
    expect(outsideKey.status).toBe(403);
    expect((await call(t, 'POST', '/v1/streams/dev-1/puts', LIMITED, { ...aPut, key: 'dev-k' })).status).toBe(200);

    expect((await call(t, 'PUT', '/v1/docs/prod-doc', LIMITED, 1)).status).toBe(403);
    expect((await call(t, 'DELETE', '/v1/docs/prod-doc', LIMITED)).status).toBe(403);
    expect((await call(t, 'PUT', '/v1/docs/dev-doc', LIMITED, 1)).status).toBe(200);
    // Generated keys carry no prefix, so a prefix-limited token cannot create by Idempotency-Key.
    expect((await call(t, 'POST', '/v1/docs', LIMITED, 1, { 'idempotency-key': 'x' })).status).toBe(403);

    expect((await call(t, 'GET', '/v1/streams/prod-1', ALPHA)).body).toMatchObject({ seq: 0 });
    expect((await call(t, 'GET', '/v1/docs/prod-doc', ALPHA)).status).toBe(404);
  });

  it('refuses reads outside the read prefixes with 403, whether or not the name exists', async () => {
    const t = await serve({ tokens: tokensJson(alpha, limited) });
    await call(t, 'PUT', '/v1/docs/prod-doc', ALPHA, 1);
    await call(t, 'POST', '/v1/streams/prod-1/puts', ALPHA, aPut);
    for (const path of ['/v1/docs/prod-doc', '/v1/docs/prod-none', '/v1/streams/prod-1', '/v1/streams/prod-none']) {
      const r = await call(t, 'GET', path, LIMITED);
      expect(r.status, path).toBe(403);
      expect(r.body.error).toMatchObject({ code: 'FORBIDDEN', retryable: false });
    }
    expect((await call(t, 'GET', '/v1/streams/shared-x', LIMITED)).status).toBe(200);
    expect((await call(t, 'GET', '/v1/docs/dev-none', LIMITED)).status).toBe(404);
  });

  it('answers forbidden per put over WebSocket and refuses a hello naming a stream it may not read', async () => {
    const t = await serve({ tokens: tokensJson(alpha, limited) });
    const c = await TestClient.connect(t.url, 'msgpack', withBearer(LIMITED));
    c.send({
      type: 'put',
      puts: [put({ stream: 'dev-1', seq: 1, key: 'dev-a' }), put({ stream: 'prod-1', seq: 1, key: 'dev-b' }), put({ stream: 'dev-1', seq: 2, key: 'x' })],
    });
    const results = await c.waitResults(3);
    expect(results.map((r: Msg) => r.outcome)).toEqual(['applied', 'forbidden', 'forbidden']);
    expect(results[1].error).toMatchObject({ code: 'FORBIDDEN', retryable: false });
    c.send({ type: 'hello', streams: ['dev-1', 'prod-1'] });
    const err = await c.waitMessage('error');
    expect(err).toMatchObject({ code: 'FORBIDDEN', stream: 'prod-1' });
    expect(c.messages.some((m: Msg) => m.type === 'welcome')).toBe(false);
    c.send({ type: 'hello', streams: ['dev-1', 'shared-1'] });
    const welcome = await c.waitMessage('welcome');
    expect(welcome.heads.map((h: Msg) => [h.stream, h.seq])).toEqual([
      ['dev-1', 1],
      ['shared-1', 0],
    ]);
    expect((await call(t, 'GET', '/v1/streams/dev-1', ALPHA)).body).toMatchObject({ seq: 1 });
    await c.close();
  });
});

describe('token reload', () => {
  it('closes with 4403 the connections whose token was removed, keeps the others, and refuses the token on HTTP', async () => {
    const file = tokensFile(tokensJson(alpha, beta));
    const t = await serve({ tokensFile: file.path });
    const byHeader = await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA));
    const byQuery = await TestClient.connect(`${t.url}/?token=${encodeURIComponent(ALPHA)}`, 'json');
    const byHello = await TestClient.connect(t.url);
    byHello.send({ type: 'hello', token: ALPHA });
    await byHello.waitMessage('welcome');
    const kept = await TestClient.connect(t.url, 'msgpack', withBearer(BETA));

    writeFileSync(file.path, tokensJson(beta));
    t.server.reloadTokens();
    for (const c of [byHeader, byQuery, byHello]) expect(await c.closed).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await closedWithin(kept, 200)).toBeUndefined();
    kept.send({ type: 'put', puts: [put({ stream: 'still', seq: 1 })] });
    expect((await kept.waitResults(1))[0]).toMatchObject({ outcome: 'applied' });
    expect((await call(t, 'GET', '/v1/streams/still', ALPHA)).status).toBe(401);
    expect(await upgradeStatus(t.url, { authorization: `Bearer ${ALPHA}` })).toBe(401);
    await kept.close();
  });

  it('closes the connections of a token whose grant changed', async () => {
    const file = tokensFile(tokensJson(alpha, beta));
    const t = await serve({ tokensFile: file.path });
    const a = await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA));
    const b = await TestClient.connect(t.url, 'msgpack', withBearer(BETA));
    writeFileSync(file.path, tokensJson({ ...alpha, write: { streams: ['only-'] } }, beta));
    t.server.reloadTokens();
    expect(await a.closed).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await closedWithin(b, 200)).toBeUndefined();
    const fresh = await call(t, 'POST', '/v1/streams/other/puts', ALPHA, aPut);
    expect(fresh.status).toBe(403);
    await b.close();
  });

  it('notices a rewrite of the tokens file by itself within 2 seconds', async () => {
    const file = tokensFile(tokensJson(alpha, beta));
    const t = await serve({ tokensFile: file.path });
    const a = await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA));
    const b = await TestClient.connect(t.url, 'msgpack', withBearer(BETA));
    writeFileSync(file.path, tokensJson(beta, limited));
    expect(await closedWithin(a, 2000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(b.ws.readyState).toBe(WebSocket.OPEN);
    expect((await call(t, 'GET', '/v1/streams/dev-x', LIMITED)).status).toBe(200);
    await b.close();
  });

  it('notices tokens files replaced atomically (written aside, renamed over), more than once', async () => {
    const file = tokensFile(tokensJson(alpha, beta));
    const t = await serve({ tokensFile: file.path });
    const replace = (content: string): void => {
      const aside = join(file.dir, `next-${randomBytes(4).toString('hex')}.json`);
      writeFileSync(aside, content);
      renameSync(aside, file.path);
    };
    const a = await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA));
    replace(tokensJson(beta));
    expect(await closedWithin(a, 2000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    const b = await TestClient.connect(t.url, 'msgpack', withBearer(BETA));
    replace(tokensJson(alpha));
    expect(await closedWithin(b, 2000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
  });

  it('locks everyone out, rather than opening the server, when a reload leaves no token at all', async () => {
    const file = tokensFile(tokensJson(alpha));
    const t = await serve({ tokensFile: file.path });
    const a = await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA));
    writeFileSync(file.path, tokensJson());
    t.server.reloadTokens();
    expect(await a.closed).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect((await call(t, 'GET', '/v1/streams/s', ALPHA)).status).toBe(401);
    const anonymous = await call(t, 'POST', '/v1/streams/s/puts', undefined, aPut);
    expect(anonymous.status).toBe(401);
    expect(await upgradeStatus(t.url)).toBe(101);
    const c = await TestClient.connect(t.url);
    c.send({ type: 'put', puts: [put({ stream: 'anon' })] });
    expect(await c.closed).toEqual({ code: 4401, reason: 'UNAUTHORIZED' });
    expect(c.results()).toEqual([]);
  });

  it('keeps the previous tokens and connections when the new tokens file is bad', async () => {
    const file = tokensFile(tokensJson(alpha));
    const t = await serve({ tokensFile: file.path });
    const a = await TestClient.connect(t.url, 'msgpack', withBearer(ALPHA));
    for (const bad of ['{"tokens": [', tokensJson({ token: 'short', tenant: 'x' }), tokensJson({ token: BETA, tenant: '' }), '{"tokens": 1}']) {
      writeFileSync(file.path, bad);
      t.server.reloadTokens();
      expect((await call(t, 'GET', '/v1/streams/s', ALPHA)).status).toBe(200);
      expect((await call(t, 'GET', '/v1/streams/s', BETA)).status).toBe(401);
    }
    rmSync(file.path);
    t.server.reloadTokens();
    expect((await call(t, 'GET', '/v1/streams/s', ALPHA)).status).toBe(200);
    expect(await closedWithin(a, 300)).toBeUndefined();
    await a.close();
  });
});

describe('secrets stay out of logs', () => {
  /** Every 8-character slice of the token: a log quoting part of a token leaks it too. */
  function slices(token: string): string[] {
    const out: string[] = [];
    for (let i = 0; i + 8 <= token.length; i++) out.push(token.slice(i, i + 8));
    return out;
  }

  it('never writes a token, or any part of one, to the log at level trace', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString('utf8'));
        done();
      },
    });
    const logger = pino({ level: 'trace' }, sink);
    const file = tokensFile(tokensJson(alpha, beta));
    const t = await serve({ tokensFile: file.path }, { logger });

    await call(t, 'POST', '/v1/streams/s/puts', ALPHA, aPut);
    await call(t, 'POST', '/v1/streams/s/puts', LIMITED, aPut);
    await call(t, 'GET', '/v1/docs/k', `${ALPHA}x`);
    await upgradeStatus(t.url, { authorization: `Bearer ${LIMITED}` });
    await upgradeStatus(`${t.url}/?token=${LIMITED}`);
    const good = await TestClient.connect(`${t.url}/?token=${encodeURIComponent(BETA)}`);
    good.send({ type: 'put', puts: [put({ stream: 'log' })] });
    await good.waitResults(1);
    const bad = await TestClient.connect(t.url);
    bad.send({ type: 'hello', token: LIMITED });
    await bad.closed;
    const hello = await TestClient.connect(t.url);
    hello.send({ type: 'hello', token: ALPHA });
    await hello.waitMessage('welcome');

    // A hand-edited file with a typo: the parse error must not quote the text around the token.
    writeFileSync(file.path, `{"tokens":[{"token":${LIMITED}","tenant":"x"},{"token":"${BETA}","tenant":"beta"}]}`);
    t.server.reloadTokens();
    writeFileSync(file.path, `{"tokens":[{"token":"${BETA}", "tenant":"beta"},{"token":"${ALPHA}" "tenant":"alpha"}]}`);
    t.server.reloadTokens();
    writeFileSync(file.path, tokensJson(beta));
    t.server.reloadTokens();
    await hello.closed;
    await good.close();
    await t.stop();
    cleanup.pop();

    const log = lines.join('');
    expect(log).toContain('tokens reloaded');
    expect(log).toContain('token reload failed');
    for (const token of [ALPHA, BETA, LIMITED]) {
      expect(log).not.toContain(token);
      const leaked = slices(token).filter((s) => log.includes(s));
      expect(leaked, `part of a token in the log: ${leaked.join(', ')}`).toEqual([]);
    }
  });

  it('refuses a tokens file that is not valid JSON without quoting the token in the error', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'seqgate-auth-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = tokensFile(`{"tokens":[{"token":${ALPHA}","tenant":"alpha"}]}`);
    const err = await SeqgateServer.start({ port: 0, dbPath: join(dir, 'db'), tokensFile: file.path }, { logger: pino({ level: 'silent' }) }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(AuthConfigError);
    for (const s of slices(ALPHA)) expect(err!.message).not.toContain(s);
  });
});

describe('open mode and start checks', () => {
  const silent = pino({ level: 'silent' });
  function dbPath(): string {
    const dir = mkdtempSync(join(tmpdir(), 'seqgate-auth-start-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    return join(dir, 'seqgate.db');
  }

  it('refuses to listen on a non-loopback interface without tokens unless --allow-insecure-open is set', async () => {
    for (const host of ['0.0.0.0', '::', '192.0.2.10']) {
      const err = await SeqgateServer.start({ host, port: 0, dbPath: dbPath() }, { logger: silent }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err, host).toBeInstanceOf(ConfigError);
      expect(err!.message).toContain('--allow-insecure-open');
    }
    const open = await SeqgateServer.start({ host: '0.0.0.0', port: 0, dbPath: dbPath(), allowInsecureOpen: true }, { logger: silent });
    await open.close();
    const secured = await SeqgateServer.start({ host: '0.0.0.0', port: 0, dbPath: dbPath(), tokens: tokensJson(alpha) }, { logger: silent });
    await secured.close();
  });

  it('runs open on loopback without tokens, without any token on either transport', async () => {
    const t = await serve();
    const c = await TestClient.connect(t.url);
    c.send({ type: 'put', puts: [put({ stream: 'open' })] });
    expect((await c.waitResults(1))[0]).toMatchObject({ outcome: 'applied' });
    expect((await call(t, 'GET', '/v1/streams/open')).body).toMatchObject({ seq: 1 });
    await c.close();
  });

  it('refuses to start with a token shorter than 16 characters, a missing tenant or an unreadable tokens file', async () => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ tokens: tokensJson({ token: '123456789012345', tenant: 'a' }) }, /at least 16 characters/],
      [{ tokens: JSON.stringify({ tokens: [{ token: ALPHA }] }) }, /tenant/],
      [{ tokens: '{"tokens": {}}' }, /expected \{"tokens": \[\.\.\.\]\}/],
      [{ tokensFile: join(tmpdir(), `missing-${randomBytes(4).toString('hex')}.json`) }, /cannot read/],
    ];
    for (const [overrides, message] of cases) {
      const path = dbPath();
      const err = await SeqgateServer.start({ port: 0, dbPath: path, ...overrides }, { logger: silent }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(AuthConfigError);
      expect(err!.message).toMatch(message);
      expect(existsSync(path)).toBe(false);
    }
    const sixteen = await SeqgateServer.start(
      { port: 0, dbPath: dbPath(), tokens: tokensJson({ token: '1234567890123456', tenant: 'a' }) },
      { logger: silent },
    );
    await sixteen.close();
  });
});
