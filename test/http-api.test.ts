import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Packr, Unpackr } from 'msgpackr';
import type { Config } from '../src/config.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import { put, startTestServer, TestClient, type Msg, type TestServer } from './support/test-client.js';
import { HeldStore } from './support/held-store.js';

/**
 * The HTTP API (protocol/HTTP.md): every status it can answer, provoked and checked, and the
 * replay guarantees across transports and across aborted requests.
 */

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, int64AsType: 'auto' as 'bigint' });

interface Res {
  readonly status: number;
  readonly headers: Headers;
  readonly bytes: Buffer;
  readonly text: string;
  readonly body: Msg;
}

interface CallOptions {
  readonly json?: unknown;
  readonly msgpack?: unknown;
  readonly raw?: { body: string | Buffer; contentType?: string };
  readonly headers?: Record<string, string>;
  readonly accept?: string;
  readonly token?: string;
  readonly signal?: AbortSignal;
}

function base(t: TestServer): string {
  return t.url.replace(/^ws:/, 'http:');
}

async function call(t: TestServer, method: string, path: string, o: CallOptions = {}): Promise<Res> {
  const headers: Record<string, string> = { ...o.headers };
  let body: string | Buffer | undefined;
  if (o.json !== undefined) {
    body = JSON.stringify(o.json);
    headers['content-type'] = 'application/json';
  } else if (o.msgpack !== undefined) {
    body = packr.pack(o.msgpack);
    headers['content-type'] = 'application/msgpack';
  } else if (o.raw !== undefined) {
    body = o.raw.body;
    if (o.raw.contentType !== undefined) headers['content-type'] = o.raw.contentType;
  }
  if (o.accept !== undefined) headers.accept = o.accept;
  if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`;
  const res = await fetch(base(t) + path, { method, headers, body, signal: o.signal });
  const bytes = Buffer.from(await res.arrayBuffer());
  const type = res.headers.get('content-type') ?? '';
  const text = bytes.toString('utf8');
  let parsed: Msg;
  if (bytes.length === 0) parsed = undefined;
  else if (type.startsWith('application/json')) parsed = JSON.parse(text);
  else if (type.startsWith('application/msgpack')) parsed = unpackr.unpack(bytes);
  else parsed = text;
  return { status: res.status, headers: res.headers, bytes, text, body: parsed };
}

/** The held store lives in a folder of its own; the caller removes it. */
async function startHeld(overrides: Partial<Config> = {}): Promise<{ t: TestServer; held: HeldStore; dbPath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-http-held-'));
  const dbPath = join(dir, 'db');
  const held = new HeldStore(new SqliteStore({ path: dbPath, synchronous: 'full', contiguous: false, ackCapPerStream: 1000 }));
  const t = await startTestServer(overrides, { store: held });
  const stop = t.stop;
  return {
    t: {
      ...t,
      stop: async () => {
        await stop();
        rmSync(dir, { recursive: true, force: true });
      },
    },
    held,
    dbPath,
  };
}

async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function countRows(dbPath: string, sql: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare(sql).get() as { n: number }).n;
  } finally {
    db.close();
  }
}

function sqlite(t: TestServer): SqliteStore {
  return t.server.store as SqliteStore;
}

let t: TestServer;
beforeEach(async () => {
  t = await startTestServer();
});
afterEach(async () => {
  await t.stop();
});

describe('POST /v1/streams/{stream}/puts', () => {
  it('applies a put with 200 and answers its retry with the stored ack, 200 and Idempotent-Replayed: true', async () => {
    const body = { epoch: 1, seq: 1, key: 'doc', state: { n: 1 } };
    const first = await call(t, 'POST', '/v1/streams/s1/puts', { json: body });
    expect(first.status).toBe(200);
    expect(first.headers.get('content-type')).toBe('application/json');
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(first.body).toMatchObject({
      id: null,
      outcome: 'applied',
      replay: false,
      ack: { stream: 's1', epoch: 1, seq: 1, key: 'doc', version: 1, deleted: false },
    });

    const retry = await call(t, 'POST', '/v1/streams/s1/puts', { json: body });
    expect(retry.status).toBe(200);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.body).toEqual({ ...first.body, replay: true });
  });

  it('echoes a correlation id given in the body and accepts a body naming the same stream as the path', async () => {
    const r = await call(t, 'POST', '/v1/streams/s2/puts', { json: { id: 'c-1', stream: 's2', epoch: 0, seq: 3, key: 'k', state: 1 } });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ id: 'c-1', outcome: 'applied', ack: { stream: 's2', epoch: 0, seq: 3 } });
  });

  it('recognises a retry sent as msgpack of a put first sent as JSON (same fingerprint) and answers msgpack to a msgpack request', async () => {
    const body = { epoch: 1, seq: 1, key: 'fp', state: { b: [1, 2.5, 'x'], a: { z: null, y: true } } };
    const asJson = await call(t, 'POST', '/v1/streams/fp/puts', { json: body });
    expect(asJson.body.replay).toBe(false);
    const asMsgpack = await call(t, 'POST', '/v1/streams/fp/puts', { msgpack: { ...body, state: { a: { y: true, z: null }, b: [1, 2.5, 'x'] } } });
    expect(asMsgpack.status).toBe(200);
    expect(asMsgpack.headers.get('content-type')).toBe('application/msgpack');
    expect(asMsgpack.headers.get('idempotent-replayed')).toBe('true');
    expect(asMsgpack.body).toEqual({ ...asJson.body, replay: true });
  });

  it('recognises a put sent over WebSocket and retried over HTTP as a replay with the same ack', async () => {
    const c = await TestClient.connect(t.url);
    const p = put({ stream: 'cross-a', seq: 7, key: 'x', state: { v: [1, 2] } });
    c.send({ type: 'put', puts: [p] });
    const [ws] = await c.waitResults(1);
    expect(ws).toMatchObject({ outcome: 'applied', replay: false });
    const { id: _id, stream: _stream, ...rest } = p;
    const http = await call(t, 'POST', '/v1/streams/cross-a/puts', { json: rest });
    expect(http.status).toBe(200);
    expect(http.headers.get('idempotent-replayed')).toBe('true');
    expect(http.body).toEqual({ id: null, outcome: 'applied', replay: true, ack: ws.ack });
    await c.close();
  });

  it('recognises a put sent over HTTP and retried over WebSocket as a replay with the same ack', async () => {
    const http = await call(t, 'POST', '/v1/streams/cross-b/puts', { msgpack: { epoch: 2, seq: 1, key: 'y', delete: true } });
    expect(http.status).toBe(200);
    expect(http.body.replay).toBe(false);
    const c = await TestClient.connect(t.url, 'json');
    c.send({ type: 'put', puts: [{ id: 9, stream: 'cross-b', epoch: 2, seq: 1, key: 'y', delete: true }] });
    const [ws] = await c.waitResults(1);
    expect(ws).toEqual({ id: 9, outcome: 'applied', replay: true, ack: http.body.ack });
    await c.close();
  });

  it('answers version_conflict with 412 and the stored ack, and its retry with 412 and Idempotent-Replayed', async () => {
    await call(t, 'POST', '/v1/streams/vc/puts', { json: { epoch: 1, seq: 1, key: 'vc', state: 1 } });
    const body = { epoch: 1, seq: 2, key: 'vc', state: 2, ifVersion: 5 };
    const r = await call(t, 'POST', '/v1/streams/vc/puts', { json: body });
    expect(r.status).toBe(412);
    expect(r.body).toMatchObject({ outcome: 'version_conflict', replay: false, ack: { version: 1, ifVersion: 5, seq: 2 } });
    const retry = await call(t, 'POST', '/v1/streams/vc/puts', { json: body });
    expect(retry.status).toBe(412);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.body).toEqual({ ...r.body, replay: true });
  });

  it('answers sequence_reused with 422 when the seq was used by a different payload', async () => {
    await call(t, 'POST', '/v1/streams/sr/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 'one' } });
    const r = await call(t, 'POST', '/v1/streams/sr/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 'two' } });
    expect(r.status).toBe(422);
    expect(r.headers.get('retry-after')).toBeNull();
    expect(r.body).toMatchObject({ outcome: 'sequence_reused', error: { code: 'SEQUENCE_REUSED', retryable: false } });
  });

  it('answers fenced and stale with 409 and the details to recover from', async () => {
    await call(t, 'POST', '/v1/streams/fs/puts', { json: { epoch: 2, seq: 5, key: 'k', state: 1 } });
    const fenced = await call(t, 'POST', '/v1/streams/fs/puts', { json: { epoch: 1, seq: 9, key: 'k', state: 1 } });
    expect(fenced.status).toBe(409);
    expect(fenced.body).toMatchObject({ outcome: 'fenced', error: { code: 'FENCED', epoch: 2, retryable: false } });
    const stale = await call(t, 'POST', '/v1/streams/fs/puts', { json: { epoch: 2, seq: 3, key: 'k', state: 1 } });
    expect(stale.status).toBe(409);
    expect(stale.body).toMatchObject({ outcome: 'stale', error: { code: 'STALE', head: { epoch: 2, seq: 5 }, prunedThrough: 0 } });
  });

  it('answers expired with 409 once the ack of the retried seq was dropped by the per-stream cap', async () => {
    const capped = await startTestServer({ ackCapPerStream: 1, ackCapSlack: 0 });
    try {
      const one = { epoch: 1, seq: 1, key: 'k', state: 1 };
      await call(capped, 'POST', '/v1/streams/ex/puts', { json: one });
      await call(capped, 'POST', '/v1/streams/ex/puts', { json: { ...one, seq: 2 } });
      const r = await call(capped, 'POST', '/v1/streams/ex/puts', { json: one });
      expect(r.status).toBe(409);
      expect(r.body).toMatchObject({ outcome: 'expired', error: { code: 'EXPIRED', head: { epoch: 1, seq: 2 }, prunedThrough: 1 } });
    } finally {
      await capped.stop();
    }
  });

  it('answers gap with 409 and the expected position on a contiguous server', async () => {
    const strict = await startTestServer({ contiguous: true });
    try {
      const r = await call(strict, 'POST', '/v1/streams/g/puts', { json: { epoch: 1, seq: 2, key: 'k', state: 1 } });
      expect(r.status).toBe(409);
      expect(r.body).toMatchObject({ outcome: 'gap', error: { code: 'GAP', expected: { epoch: 1, seq: 1 } } });
    } finally {
      await strict.stop();
    }
  });

  it('answers an invalid put with 400, outcome invalid and the faulty field', async () => {
    const badEpoch = await call(t, 'POST', '/v1/streams/inv/puts', { json: { epoch: -1, seq: 1, key: 'k', state: 1 } });
    expect(badEpoch.status).toBe(400);
    expect(badEpoch.body).toMatchObject({ outcome: 'invalid', error: { code: 'INVALID_FIELD', field: 'epoch' } });

    const longKey = await call(t, 'POST', '/v1/streams/inv/puts', { json: { epoch: 1, seq: 1, key: 'k'.repeat(257), state: 1 } });
    expect(longKey.status).toBe(400);
    expect(longKey.body).toMatchObject({ outcome: 'invalid', error: { code: 'LIMIT_EXCEEDED', field: 'key', limit: 'maxKeyBytes', max: 256 } });

    const otherStream = await call(t, 'POST', '/v1/streams/inv/puts', { json: { stream: 'elsewhere', epoch: 1, seq: 1, key: 'k', state: 1 } });
    expect(otherStream.status).toBe(400);
    expect(otherStream.body).toMatchObject({ outcome: 'invalid', error: { code: 'INVALID_FIELD', field: 'stream' } });

    const unknownField = await call(t, 'POST', '/v1/streams/inv/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 1, tenant: 'x' } });
    expect(unknownField.status).toBe(400);
    expect(unknownField.body).toMatchObject({ outcome: 'invalid', error: { code: 'INVALID_FIELD', field: 'tenant' } });

    const head = await call(t, 'GET', '/v1/streams/inv');
    expect(head.body).toMatchObject({ epoch: 0, seq: 0 });
  });

  it('answers 400 INVALID_BODY to an undecodable or too deep body and to a bad stream name in the path', async () => {
    const malformed = await call(t, 'POST', '/v1/streams/b/puts', { raw: { body: '{"epoch":1,', contentType: 'application/json' } });
    expect(malformed.status).toBe(400);
    expect(malformed.body).toEqual({ error: expect.objectContaining({ code: 'INVALID_BODY', cause: 'MALFORMED_FRAME', retryable: false }) });

    const deep = await call(t, 'POST', '/v1/streams/b/puts', { raw: { body: '['.repeat(200) + ']'.repeat(200), contentType: 'application/json' } });
    expect(deep.status).toBe(400);
    expect(deep.body.error).toMatchObject({ code: 'INVALID_BODY', cause: 'TOO_DEEP' });

    const trailing = await call(t, 'POST', '/v1/streams/b/puts', {
      raw: { body: Buffer.concat([packr.pack({ epoch: 1 }), Buffer.from([0xc0])]), contentType: 'application/msgpack' },
    });
    expect(trailing.status).toBe(400);
    expect(trailing.body.error).toMatchObject({ code: 'INVALID_BODY', cause: 'MALFORMED_FRAME' });

    const badEncoding = await call(t, 'POST', '/v1/streams/%E0%A4%A/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 1 } });
    expect(badEncoding.status).toBe(400);
    expect(badEncoding.body.error).toMatchObject({ code: 'INVALID_BODY', field: 'stream' });

    const control = await call(t, 'POST', '/v1/streams/a%00b/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 1 } });
    expect(control.status).toBe(400);
    expect(control.body.error).toMatchObject({ code: 'INVALID_BODY', field: 'stream' });
  });

  it('answers 415 to a body that is neither JSON nor msgpack', async () => {
    for (const contentType of ['text/plain', undefined]) {
      const r = await call(t, 'POST', '/v1/streams/m/puts', { raw: { body: '{"epoch":1,"seq":1,"key":"k","state":1}', contentType } });
      expect(r.status).toBe(415);
      expect(r.body.error).toMatchObject({ code: 'UNSUPPORTED_MEDIA_TYPE', retryable: false });
    }
  });

  it('answers 413 to a body over maxFrameBytes, whether its length is declared or streamed chunked', async () => {
    const small = await startTestServer({ maxFrameBytes: 1024 });
    try {
      const declared = await call(small, 'POST', '/v1/streams/big/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 'x'.repeat(4000) } });
      expect(declared.status).toBe(413);
      expect(declared.body.error).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', max: 1024 });

      // No Content-Length: the limit must hold while reading, and the client must still get an answer.
      const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpRequest(
          base(small) + '/v1/streams/big/puts',
          {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
          },
          (res) => {
            let text = '';
            res.on('data', (d: Buffer) => {
              text += d.toString();
            });
            res.on('end', () => resolve({ status: res.statusCode!, body: text }));
          },
        );
        req.on('error', reject);
        req.write('{"epoch":1,"seq":1,"key":"k","state":"');
        for (let i = 0; i < 8; i++) req.write('y'.repeat(512));
        req.end('"}');
      });
      expect(chunked.status).toBe(413);
      expect(JSON.parse(chunked.body).error.code).toBe('PAYLOAD_TOO_LARGE');
      expect(countRows(small.dbPath, 'SELECT COUNT(*) AS n FROM acks_all')).toBe(0);
    } finally {
      await small.stop();
    }
  });

  it('answers 405 with an Allow header to a method the route does not take', async () => {
    const r = await call(t, 'GET', '/v1/streams/s/puts');
    expect(r.status).toBe(405);
    expect(r.headers.get('allow')).toBe('POST');
    expect(r.body.error.code).toBe('METHOD_NOT_ALLOWED');
    const s = await call(t, 'DELETE', '/v1/streams/s');
    expect(s.status).toBe(405);
    expect(s.headers.get('allow')).toBe('GET');
    const d = await call(t, 'PATCH', '/v1/docs/k', { json: 1 });
    expect(d.status).toBe(405);
    expect(d.headers.get('allow')).toBe('GET, PUT, DELETE');
    const c = await call(t, 'GET', '/v1/docs');
    expect(c.status).toBe(405);
    expect(c.headers.get('allow')).toBe('POST');
  });

  it('answers 503 with Retry-After when the batch cannot commit, stores nothing, and the retry applies', async () => {
    const body = { epoch: 1, seq: 1, key: 'f', state: { n: 1 } };
    sqlite(t).database.pragma('query_only = ON');
    try {
      const failed = await call(t, 'POST', '/v1/streams/fault/puts', { json: body });
      expect(failed.status).toBe(503);
      expect(failed.headers.get('retry-after')).toBe('1');
      expect(failed.body).toMatchObject({ outcome: 'error', error: { code: 'STORAGE_UNAVAILABLE', retryable: true } });
    } finally {
      sqlite(t).database.pragma('query_only = OFF');
    }
    const retry = await call(t, 'POST', '/v1/streams/fault/puts', { json: body });
    expect(retry.status).toBe(200);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect(retry.body).toMatchObject({ outcome: 'applied', replay: false, ack: { version: 1 } });
  });
});

describe('GET /v1/streams/{stream}', () => {
  it('shows head (0, 0) for a stream never written and the head after puts', async () => {
    const none = await call(t, 'GET', '/v1/streams/never');
    expect(none.status).toBe(200);
    expect(none.body).toEqual({ stream: 'never', epoch: 0, seq: 0, prunedThrough: 0 });
    await call(t, 'POST', '/v1/streams/h%20s/puts', { json: { epoch: 3, seq: 4, key: 'k', state: 1 } });
    const head = await call(t, 'GET', '/v1/streams/h%20s', { accept: 'application/msgpack' });
    expect(head.headers.get('content-type')).toBe('application/msgpack');
    expect(head.body).toEqual({ stream: 'h s', epoch: 3, seq: 4, prunedThrough: 0 });
  });
});

describe('documents: PUT, GET, DELETE /v1/docs/{key}', () => {
  it('replaces the full state; the same state again leaves the version unchanged', async () => {
    const first = await call(t, 'PUT', '/v1/docs/d1', { json: { a: 1, b: [true] } });
    expect(first.status).toBe(200);
    expect(first.headers.get('etag')).toBe('"1"');
    expect(first.body).toEqual({ key: 'd1', version: 1, deleted: false, changed: true });
    const same = await call(t, 'PUT', '/v1/docs/d1', { msgpack: { b: [true], a: 1 } });
    expect(same.status).toBe(200);
    expect(same.body).toEqual({ key: 'd1', version: 1, deleted: false, changed: false });
    const other = await call(t, 'PUT', '/v1/docs/d1', { json: { a: 2 } });
    expect(other.body).toEqual({ key: 'd1', version: 2, deleted: false, changed: true });
    const got = await call(t, 'GET', '/v1/docs/d1');
    expect(got.status).toBe(200);
    expect(got.headers.get('etag')).toBe('"2"');
    expect(got.headers.get('seqgate-version')).toBe('2');
    expect(got.body).toEqual({ a: 2 });
  });

  it('honours If-Match and If-None-Match: * and answers 412 with the current version when they fail', async () => {
    const created = await call(t, 'PUT', '/v1/docs/c1', { json: 1, headers: { 'if-none-match': '*' } });
    expect(created.status).toBe(200);
    expect(created.body.version).toBe(1);
    const exists = await call(t, 'PUT', '/v1/docs/c1', { json: 2, headers: { 'if-none-match': '*' } });
    expect(exists.status).toBe(412);
    expect(exists.body.error).toMatchObject({ code: 'PRECONDITION_FAILED', version: 1, deleted: false, retryable: false });
    const matched = await call(t, 'PUT', '/v1/docs/c1', { json: 2, headers: { 'if-match': '"1"' } });
    expect(matched.status).toBe(200);
    expect(matched.body.version).toBe(2);
    const mismatch = await call(t, 'PUT', '/v1/docs/c1', { json: 3, headers: { 'if-match': '"1"' } });
    expect(mismatch.status).toBe(412);
    expect(mismatch.body.error).toMatchObject({ code: 'PRECONDITION_FAILED', version: 2 });
    const deleteMismatch = await call(t, 'DELETE', '/v1/docs/c1', { headers: { 'if-match': 'W/"7"' } });
    expect(deleteMismatch.status).toBe(412);
    const missing = await call(t, 'PUT', '/v1/docs/nope', { json: 3, headers: { 'if-match': '"1"' } });
    expect(missing.status).toBe(412);
    expect(missing.body.error).toMatchObject({ version: 0, deleted: true });
    expect((await call(t, 'GET', '/v1/docs/c1')).body).toBe(2);
  });

  it('answers 400 to a malformed If-Match or an If-None-Match other than *', async () => {
    const a = await call(t, 'PUT', '/v1/docs/p', { json: 1, headers: { 'if-match': 'banana' } });
    expect(a.status).toBe(400);
    expect(a.body.error).toMatchObject({ code: 'INVALID_BODY', field: 'If-Match' });
    const b = await call(t, 'PUT', '/v1/docs/p', { json: 1, headers: { 'if-none-match': '"1"' } });
    expect(b.status).toBe(400);
    expect(b.body.error).toMatchObject({ code: 'INVALID_BODY', field: 'If-None-Match' });
    expect((await call(t, 'GET', '/v1/docs/p')).status).toBe(404);
  });

  it('reads If-Match strictly: only "N", W/"N" and N (with optional spaces around) pass; half-quoted, unquoted-weak, lists and other forms are 400 and write nothing', async () => {
    for (let v = 1; v <= 6; v++) expect((await call(t, 'PUT', '/v1/docs/strict', { json: v })).status).toBe(200);
    const refused = [
      '"4',
      '5"',
      'W/6',
      'w/"6"',
      'W/ "6"',
      'W/"6',
      '"6", "6"',
      '"5","6"',
      '*',
      '"6"x',
      '""',
      '"-6"',
      '"6.0"',
      "'6'",
      '" 6"',
      '"1234567890123456"',
      '6 6',
      'W/W/"6"',
      '\u00a0"6"',
    ];
    for (const value of refused) {
      for (const method of ['PUT', 'DELETE'] as const) {
        const r = await call(t, method, '/v1/docs/strict', { ...(method === 'PUT' ? { json: 'written' } : {}), headers: { 'if-match': value } });
        expect(r.status, `${method} If-Match: ${value}`).toBe(400);
        expect(r.body.error, `${method} If-Match: ${value}`).toMatchObject({ code: 'INVALID_BODY', field: 'If-Match', retryable: false });
      }
    }
    const unchanged = await call(t, 'GET', '/v1/docs/strict');
    expect(unchanged.headers.get('etag')).toBe('"6"');
    expect(unchanged.body).toBe(6);
    let version = 6;
    for (const make of [(n: number) => `"${n}"`, (n: number) => `W/"${n}"`, (n: number) => `${n}`, (n: number) => ` "${n}" `, (n: number) => `\tW/"${n}"\t`]) {
      const r = await call(t, 'PUT', '/v1/docs/strict', { json: version + 100, headers: { 'if-match': make(version) } });
      expect(r.status, `If-Match: ${make(version)}`).toBe(200);
      expect(r.body.version).toBe(++version);
    }
  });

  it('deletes once: a repeated DELETE changes nothing, a later PUT continues the version', async () => {
    await call(t, 'PUT', '/v1/docs/del', { json: 'x' });
    const del = await call(t, 'DELETE', '/v1/docs/del');
    expect(del.status).toBe(200);
    expect(del.body).toEqual({ key: 'del', version: 2, deleted: true, changed: true });
    const again = await call(t, 'DELETE', '/v1/docs/del');
    expect(again.status).toBe(200);
    expect(again.body).toEqual({ key: 'del', version: 2, deleted: true, changed: false });
    const gone = await call(t, 'GET', '/v1/docs/del');
    expect(gone.status).toBe(404);
    expect(gone.body.error).toMatchObject({ code: 'NOT_FOUND', version: 2, deleted: true });
    const back = await call(t, 'PUT', '/v1/docs/del', { json: 'x' });
    expect(back.body).toEqual({ key: 'del', version: 3, deleted: false, changed: true });
    const never = await call(t, 'DELETE', '/v1/docs/never-written');
    expect(never.body).toEqual({ key: 'never-written', version: 0, deleted: true, changed: false });
  });

  it('answers 404 for a document never written and for an unknown route', async () => {
    const doc = await call(t, 'GET', '/v1/docs/unknown');
    expect(doc.status).toBe(404);
    expect(doc.body).toEqual({ error: { code: 'NOT_FOUND', message: 'no such document', retryable: false } });
    for (const path of ['/', '/v2/docs/x', '/v1/docs/a/b', '/v1/streams/s/puts/x', '/v1/things']) {
      const r = await call(t, 'GET', path);
      expect(r.status, path).toBe(404);
      expect(r.body.error.code).toBe('NOT_FOUND');
    }
  });

  it('serves a state written as msgpack with integers beyond 2^53 as JSON with every digit, or as the stored msgpack', async () => {
    const state = new Map<string, unknown>([
      ['big', 9007199254740993n],
      ['min', -9223372036854775808n],
      ['max', 18446744073709551615n],
      ['f', 0.5],
    ]);
    const w = await call(t, 'PUT', '/v1/docs/int64', { raw: { body: packr.pack(state), contentType: 'application/msgpack' } });
    expect(w.status).toBe(200);
    const json = await call(t, 'GET', '/v1/docs/int64');
    expect(json.status).toBe(200);
    expect(json.headers.get('content-type')).toBe('application/json');
    expect(json.text).toContain('"big":9007199254740993');
    expect(json.text).toContain('"min":-9223372036854775808');
    expect(json.text).toContain('"max":18446744073709551615');
    expect(json.text).toContain('"f":0.5');
    expect(() => JSON.parse(json.text)).not.toThrow();

    const mp = await call(t, 'GET', '/v1/docs/int64', { accept: 'application/msgpack' });
    expect(mp.status).toBe(200);
    expect(mp.headers.get('content-type')).toBe('application/msgpack');
    expect(mp.headers.get('etag')).toBe('"1"');
    expect(mp.body).toEqual({ big: 9007199254740993n, min: -9223372036854775808n, max: 18446744073709551615n, f: 0.5 });
  });

  it('answers 406 to a JSON read of a state holding binary data, and serves it as msgpack', async () => {
    await call(t, 'PUT', '/v1/docs/bin', { msgpack: { blob: Buffer.from([1, 2, 3]) } });
    const json = await call(t, 'GET', '/v1/docs/bin');
    expect(json.status).toBe(406);
    expect(json.body.error).toMatchObject({ code: 'NOT_ACCEPTABLE', retryable: false });
    const mp = await call(t, 'GET', '/v1/docs/bin', { accept: 'application/msgpack' });
    expect(mp.status).toBe(200);
    expect(Buffer.from(mp.body.blob)).toEqual(Buffer.from([1, 2, 3]));
  });

  it('answers 406 to a JSON read of a state JSON cannot carry (NaN, infinities, integer map keys) rather than altering it', async () => {
    const states: Array<[string, unknown]> = [
      ['nan', { x: Number.NaN }],
      ['inf', [Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]],
      [
        'intkey',
        new Map<unknown, unknown>([
          [1, 'int'],
          ['1', 'string'],
        ]),
      ],
    ];
    for (const [key, state] of states) {
      expect((await call(t, 'PUT', `/v1/docs/${key}`, { raw: { body: packr.pack(state), contentType: 'application/msgpack' } })).status).toBe(200);
      const mp = await call(t, 'GET', `/v1/docs/${key}`, { accept: 'application/msgpack' });
      expect(mp.status, key).toBe(200);
      const json = await call(t, 'GET', `/v1/docs/${key}`);
      expect.soft(json.status, `${key}: served as ${json.text}`).toBe(406);
    }
  });

  it('answers 415 to a PUT without a JSON or msgpack Content-Type and 413 to a state over maxStateBytes', async () => {
    const noType = await call(t, 'PUT', '/v1/docs/m', { raw: { body: '1', contentType: 'text/plain' } });
    expect(noType.status).toBe(415);
    const big = await call(t, 'PUT', '/v1/docs/m', { json: 'x'.repeat(70_000) });
    expect(big.status).toBe(413);
    expect(big.body.error).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', field: 'state', limit: 'maxStateBytes' });
    const badState = await call(t, 'PUT', '/v1/docs/m', { msgpack: new Map<unknown, unknown>([[new Map([[1, 2]]), 1]]) });
    expect(badState.status).toBe(400);
    expect(badState.body.error).toMatchObject({ code: 'INVALID_BODY', field: 'state' });
    expect((await call(t, 'GET', '/v1/docs/m')).status).toBe(404);
  });

  it('answers 400 to a document key in the path that breaks the name rules', async () => {
    const long = await call(t, 'PUT', `/v1/docs/${'k'.repeat(257)}`, { json: 1 });
    expect(long.status).toBe(400);
    expect(long.body.error).toMatchObject({ code: 'INVALID_BODY', field: 'key' });
  });

  it('answers 500 with a retryable error when a read fails unexpectedly', async () => {
    const { t: h, held } = await startHeld();
    try {
      held.failReads = true;
      const r = await call(h, 'GET', '/v1/docs/any');
      expect(r.status).toBe(500);
      expect(r.body.error).toMatchObject({ code: 'STORAGE_UNAVAILABLE', retryable: true });
      const s = await call(h, 'GET', '/v1/streams/any');
      expect(s.status).toBe(500);
    } finally {
      held.failReads = false;
      await h.stop();
    }
  });
});

describe('POST /v1/docs with Idempotency-Key', () => {
  const create = (srv: TestServer, key: string | undefined, state: unknown, o: CallOptions = {}): Promise<Res> =>
    call(srv, 'POST', '/v1/docs', { json: state, ...o, headers: { ...(key !== undefined ? { 'idempotency-key': key } : {}), ...o.headers } });

  it('creates a document with a generated key (201, Location, ETag); the retry gets the same response, marked replayed', async () => {
    const first = await create(t, 'order-1', { total: 10 });
    expect(first.status).toBe(201);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(first.body).toEqual({ key: expect.any(String), version: 1, createdAt: expect.any(Number) });
    expect(first.headers.get('location')).toBe(`/v1/docs/${first.body.key}`);
    expect(first.headers.get('etag')).toBe('"1"');
    const doc = await call(t, 'GET', first.headers.get('location')!);
    expect(doc.body).toEqual({ total: 10 });

    const retry = await create(t, 'order-1', { total: 10 });
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.headers.get('location')).toBe(first.headers.get('location'));
    expect(retry.text).toBe(first.text);

    const asMsgpack = await call(t, 'POST', '/v1/docs', { msgpack: { total: 10 }, accept: 'application/json', headers: { 'idempotency-key': 'order-1' } });
    expect(asMsgpack.status).toBe(201);
    expect(asMsgpack.headers.get('idempotent-replayed')).toBe('true');
    expect(asMsgpack.text).toBe(first.text);
    expect(countRows(t.dbPath, 'SELECT COUNT(*) AS n FROM documents')).toBe(1);
  });

  it('creates distinct documents for distinct keys, even with the same payload', async () => {
    const a = await create(t, 'k-a', { same: true });
    const b = await create(t, 'k-b', { same: true });
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    expect(a.body.key).not.toBe(b.body.key);
    expect(countRows(t.dbPath, 'SELECT COUNT(*) AS n FROM documents')).toBe(2);
  });

  it('answers 400 without an Idempotency-Key or with one that is not 1 to 255 visible ASCII characters', async () => {
    const missing = await create(t, undefined, { x: 1 });
    expect(missing.status).toBe(400);
    expect(missing.body.error).toMatchObject({ code: 'IDEMPOTENCY_KEY_REQUIRED', retryable: false });
    const long = await create(t, 'k'.repeat(256), { x: 1 });
    expect(long.status).toBe(400);
    expect(long.body.error.code).toBe('IDEMPOTENCY_KEY_REQUIRED');
    const latin1 = await create(t, 'caf\u00e9', { x: 1 });
    expect(latin1.status).toBe(400);
    const longest = await create(t, 'k'.repeat(255), { x: 1 });
    expect(longest.status).toBe(201);
    expect(countRows(t.dbPath, 'SELECT COUNT(*) AS n FROM documents')).toBe(1);
  });

  it('answers 422 when the key is reused with a different payload, and creates nothing', async () => {
    expect((await create(t, 'reuse', { v: 1 })).status).toBe(201);
    const r = await create(t, 'reuse', { v: 2 });
    expect(r.status).toBe(422);
    expect(r.body.error).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', retryable: false });
    expect(countRows(t.dbPath, 'SELECT COUNT(*) AS n FROM documents')).toBe(1);
  });

  it('answers 400 or 415 to a bad body and leaves its Idempotency-Key unused', async () => {
    expect((await create(t, 'body', undefined, { raw: { body: 'nope', contentType: 'application/json' } })).status).toBe(400);
    expect((await create(t, 'body', undefined, { raw: { body: '1', contentType: 'text/csv' } })).status).toBe(415);
    const ok = await create(t, 'body', { fine: true });
    expect(ok.status).toBe(201);
    expect(ok.headers.get('idempotent-replayed')).toBeNull();
  });

  it('answers 409 to the same key while the first request is in flight; once it finishes the retry replays', async () => {
    const { t: h, held } = await startHeld();
    try {
      held.hold();
      const before = held.writes;
      const first = create(h, 'busy', { n: 1 });
      await until(() => held.writes > before);
      const second = await create(h, 'busy', { n: 1 });
      expect(second.status).toBe(409);
      expect(second.body.error).toMatchObject({ code: 'IDEMPOTENCY_KEY_IN_FLIGHT', retryable: true });
      // A different payload under the busy key is also told to wait, not judged yet.
      expect((await create(h, 'busy', { n: 2 })).status).toBe(409);
      held.open();
      const done = await first;
      expect(done.status).toBe(201);
      expect(done.headers.get('idempotent-replayed')).toBeNull();
      const retry = await create(h, 'busy', { n: 1 });
      expect(retry.status).toBe(201);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(done.text);
    } finally {
      held.open();
      await h.stop();
    }
  });

  it('answers 503 with Retry-After on a storage fault, stores neither the answer nor the key, and the retry creates', async () => {
    sqlite(t).database.pragma('query_only = ON');
    try {
      const failed = await create(t, 'fault', { n: 1 });
      expect(failed.status).toBe(503);
      expect(failed.headers.get('retry-after')).toBe('1');
      expect(failed.body.error).toMatchObject({ code: 'STORAGE_UNAVAILABLE', retryable: true });
      const again = await create(t, 'fault', { n: 1 });
      expect(again.status).toBe(503);
    } finally {
      sqlite(t).database.pragma('query_only = OFF');
    }
    const retry = await create(t, 'fault', { n: 1 });
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    // A different payload would now be judged against the stored one: the failed attempts left nothing.
    expect((await create(t, 'fault', { n: 2 })).status).toBe(422);
    expect(countRows(t.dbPath, 'SELECT COUNT(*) AS n FROM documents')).toBe(1);
    expect(countRows(t.dbPath, 'SELECT COUNT(*) AS n FROM idempotency')).toBe(1);
  });

  it('keeps a key through pruning passes for the retention period and forgets it after', async () => {
    const kept = await startTestServer({ pruneIntervalMs: 20 });
    const forgetful = await startTestServer({ pruneIntervalMs: 20, idempotencyRetentionSeconds: 0 });
    try {
      const a = await create(kept, 'ret', { n: 1 });
      const b = await create(forgetful, 'ret', { n: 1 });
      await until(() => countRows(forgetful.dbPath, 'SELECT COUNT(*) AS n FROM idempotency') === 0);
      await new Promise((resolve) => setTimeout(resolve, 100));
      const a2 = await create(kept, 'ret', { n: 1 });
      expect(a2.headers.get('idempotent-replayed')).toBe('true');
      expect(a2.body.key).toBe(a.body.key);
      const b2 = await create(forgetful, 'ret', { n: 1 });
      expect(b2.headers.get('idempotent-replayed')).toBeNull();
      expect(b2.body.key).not.toBe(b.body.key);
    } finally {
      await kept.stop();
      await forgetful.stop();
    }
  });

  it('creates exactly one document when one POST is sent 10 times with the same key and some attempts are aborted mid-flight', async () => {
    const { t: h, held, dbPath } = await startHeld();
    try {
      const state = {
        order: 4711,
        lines: [
          { sku: 'a', qty: 2 },
          { sku: 'b', qty: 1 },
        ],
      };
      // 'held': the client aborts while the server holds the request inside the commit;
      // a number: abort after that many ms, wherever the request is; 'complete': wait for the answer.
      const plan: Array<'held' | 'complete' | number> = ['held', 1, 'complete', 0, 'complete', 'held', 2, 'complete', 5, 'complete'];
      const completed: Res[] = [];
      let aborted = 0;
      const send = (signal?: AbortSignal): Promise<Res> => create(h, 'classic', state, { signal });
      const record = (r: Res): boolean => {
        if (r.status === 409) {
          // The server may still be finishing an aborted attempt; that is the answer to wait and retry.
          expect(r.body.error.code).toBe('IDEMPOTENCY_KEY_IN_FLIGHT');
          return false;
        }
        completed.push(r);
        return true;
      };
      for (const step of plan) {
        if (step === 'held') {
          held.hold();
          const before = held.writes;
          const controller = new AbortController();
          const attempt = send(controller.signal).then(
            () => 'answered',
            (err: Error) => err.name,
          );
          await until(() => held.writes > before);
          controller.abort();
          expect(await attempt).toBe('AbortError');
          aborted++;
          held.open();
        } else if (step === 'complete') {
          while (!record(await send())) await new Promise((resolve) => setTimeout(resolve, 10));
        } else {
          const signal = step === 0 ? AbortSignal.abort() : AbortSignal.timeout(step);
          const outcome = await send(signal).catch((err: Error) => err);
          if (outcome instanceof Error) aborted++;
          else record(outcome);
        }
      }
      expect(aborted).toBeGreaterThanOrEqual(3);
      expect(completed.length).toBeGreaterThanOrEqual(4);
      const [firstDone] = completed;
      for (const r of completed) {
        expect(r.status).toBe(201);
        expect(r.text).toBe(firstDone!.text);
        expect(r.headers.get('location')).toBe(firstDone!.headers.get('location'));
        expect(r.headers.get('etag')).toBe('"1"');
      }
      for (const r of completed.slice(1)) expect(r.headers.get('idempotent-replayed')).toBe('true');
      // The held attempts reached the store before any completing one, so even the first answer is a replay.
      expect(firstDone!.headers.get('idempotent-replayed')).toBe('true');
      expect(countRows(dbPath, 'SELECT COUNT(*) AS n FROM documents')).toBe(1);
      expect(countRows(dbPath, "SELECT COUNT(*) AS n FROM documents WHERE key = '" + String(firstDone!.body.key) + "'")).toBe(1);
      expect(countRows(dbPath, 'SELECT COUNT(*) AS n FROM idempotency')).toBe(1);
    } finally {
      held.open();
      await h.stop();
    }
  });
});

describe('auth on the HTTP API', () => {
  const TOKEN = 'http-test-token-0123456789';
  const LIMITED = 'http-limited-token-abcdefgh';
  const tokens = JSON.stringify({
    tokens: [
      { token: TOKEN, tenant: 'acme' },
      { token: LIMITED, tenant: 'acme', write: { streams: ['dev-'], documents: ['dev-'] }, read: { streams: ['dev-'], documents: ['dev-'] } },
    ],
  });

  it('answers 401 with WWW-Authenticate to a missing or unknown token, 403 outside the grant, and serves health without a token', async () => {
    const secured = await startTestServer({ tokens });
    try {
      const none = await call(secured, 'GET', '/v1/docs/x');
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toBe('Bearer realm="seqgate"');
      expect(none.body.error).toMatchObject({ code: 'UNAUTHORIZED', retryable: false });
      const forged = await call(secured, 'POST', '/v1/streams/s/puts', { token: TOKEN + 'x', json: { epoch: 1, seq: 1, key: 'k', state: 1 } });
      expect(forged.status).toBe(401);
      const ok = await call(secured, 'POST', '/v1/streams/s/puts', { token: TOKEN, json: { epoch: 1, seq: 1, key: 'k', state: 1 } });
      expect(ok.status).toBe(200);

      const writeOutside = await call(secured, 'POST', '/v1/streams/prod-1/puts', { token: LIMITED, json: { epoch: 1, seq: 1, key: 'dev-k', state: 1 } });
      expect(writeOutside.status).toBe(403);
      expect(writeOutside.body).toMatchObject({ outcome: 'forbidden', error: { code: 'FORBIDDEN', retryable: false } });
      const readOutside = await call(secured, 'GET', '/v1/docs/k', { token: LIMITED });
      expect(readOutside.status).toBe(403);
      expect(readOutside.body.error.code).toBe('FORBIDDEN');

      for (const path of ['/healthz', '/readyz', '/metrics']) expect((await call(secured, 'GET', path)).status, path).toBe(200);
    } finally {
      await secured.stop();
    }
  });
});

describe('health and metrics endpoints', () => {
  it('answers /healthz 200 always and /readyz 503 NOT_READY while the database refuses writes', async () => {
    expect(await call(t, 'GET', '/healthz')).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(await call(t, 'GET', '/readyz')).toMatchObject({ status: 200, body: { status: 'ready' } });
    sqlite(t).database.pragma('query_only = ON');
    try {
      const r = await call(t, 'GET', '/readyz');
      expect(r.status).toBe(503);
      expect(r.body.error).toMatchObject({ code: 'NOT_READY', retryable: true });
      expect((await call(t, 'GET', '/healthz')).status).toBe(200);
    } finally {
      sqlite(t).database.pragma('query_only = OFF');
    }
    expect((await call(t, 'GET', '/readyz')).status).toBe(200);
  });

  it('serves /metrics in the Prometheus text format', async () => {
    await call(t, 'POST', '/v1/streams/m/puts', { json: { epoch: 1, seq: 1, key: 'k', state: 1 } });
    const r = await call(t, 'GET', '/metrics');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(r.text).toContain('# TYPE seqgate_put_outcomes_total counter');
    expect(r.text).toContain('seqgate_put_outcomes_total{outcome="applied",replay="false",transport="http"} 1');
    expect(r.text).toContain('seqgate_http_requests_total{route="stream-puts",status="200"} 1');
  });
});
