import { createHash, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { ERRORS, errorBody, SeqgateError, type ErrorCode, type ErrorSpec } from '../errors.js';
import { CanonicalError, canonicalEncode, FINGERPRINT_BYTES } from '../protocol/canonical.js';
import { decodeFrame, encodeMessage, ENVELOPE_DEPTH, type WireFormat } from '../protocol/codec.js';
import { forbiddenResult, nameProblem, parsePut, wireResult, type Limits, type WireResult } from '../protocol/messages.js';
import { stateJsonText } from '../protocol/state-json.js';
import type { DocResult, Store } from '../store/store.js';
import { bearerToken, mayReadDocument, mayReadStream, mayWrite, type Authenticator, type Principal } from './auth.js';
import type { Committer } from './committer.js';
import { guarded } from './listener-guard.js';
import type { Metrics } from './metrics.js';
import { Readiness, READINESS_TIMEOUT_MS } from './readiness.js';
import type { RequestBodies } from './request-bodies.js';
import { parseRequestTarget, type RequestTarget } from './request-target.js';
import { isChangesPath } from './changes-http.js';

/**
 * The HTTP API, on the same port as the WebSocket. Puts go through the same validation, gate,
 * fingerprint and stored acks as WebSocket puts, so a put sent over one transport and retried
 * over the other is recognised. protocol/HTTP.md documents every route and status.
 */

interface HttpContext {
  readonly store: Store;
  readonly committer: Committer;
  readonly limits: Limits;
  readonly auth: Authenticator;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Where request bodies are counted against the server-wide memory budget. */
  readonly bodies: RequestBodies;
  /** A body that sends nothing for this long is answered 408 and its connection closed. */
  readonly bodyIdleTimeoutMs: number;
  /** The changefeed's reader (changes-http.ts), which owns /v1/changes. */
  readonly changes?: (req: IncomingMessage, res: ServerResponse, target: RequestTarget) => void;
}

const CREATE_SCOPE = 'POST /v1/docs';
const IDEMPOTENCY_KEY = /^[\x20-\x7e]{1,255}$/;

class HttpError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
  /** Pre-encoded body (a stored state), sent as is. */
  raw?: { bytes: Buffer | string; contentType: string };
}

export function createHttpHandler(ctx: HttpContext): (req: IncomingMessage, res: ServerResponse) => void {
  const readiness = new Readiness(ctx.store, READINESS_TIMEOUT_MS);
  const inFlightKeys = new Set<string>();

  const handle = async (req: IncomingMessage, route: string, parts: string[], format: WireFormat): Promise<Reply> => {
    const method = req.method ?? 'GET';
    if (route === 'healthz') return { status: 200, body: { status: 'ok' } };
    if (route === 'readyz') {
      try {
        await readiness.check();
        return { status: 200, body: { status: 'ready' } };
      } catch (err) {
        throw new HttpError('NOT_READY', `database does not accept writes: ${(err as Error).message}`);
      }
    }
    if (route === 'metrics') {
      return { status: 200, body: null, raw: { bytes: await ctx.metrics.registry.metrics(), contentType: ctx.metrics.registry.contentType } };
    }

    const principal = ctx.auth.authenticate(bearerToken(req.headers.authorization));
    if (principal === undefined) {
      throw new HttpError('UNAUTHORIZED', 'a valid bearer token is required', {}, { 'www-authenticate': 'Bearer realm="seqgate"' });
    }

    switch (route) {
      case 'stream-puts': {
        allow(method, ['POST']);
        const stream = segment(parts[2]!, 'stream', ctx.limits.maxStreamBytes);
        const body = await readBody(req);
        const parsed = parsePut(body, ctx.limits, principal.tenant, { stream, idOptional: true });
        let result: WireResult;
        if (!parsed.ok) result = parsed.result;
        else if (!mayWrite(principal, parsed.put.stream, parsed.put.key)) result = forbiddenResult(parsed.id);
        else result = wireResult(parsed.id, (await ctx.committer.submit([parsed.put]))[0]!);
        ctx.metrics.countOutcome(result.outcome, 'replay' in result && result.replay, 'http');
        return putReply(result);
      }
      case 'stream': {
        allow(method, ['GET']);
        const stream = segment(parts[2]!, 'stream', ctx.limits.maxStreamBytes);
        if (!mayReadStream(principal, stream)) throw new HttpError('FORBIDDEN', `token may not read stream ${stream}`);
        const [head] = await ctx.store.heads(principal.tenant, [stream]);
        return { status: 200, body: head };
      }
      case 'docs': {
        allow(method, ['POST']);
        return create(req, principal);
      }
      case 'doc': {
        allow(method, ['GET', 'PUT', 'DELETE']);
        const key = segment(parts[2]!, 'key', ctx.limits.maxKeyBytes);
        if (method === 'GET') return read(principal, key, format);
        if (!mayWrite(principal, null, key)) throw new HttpError('FORBIDDEN', `token may not write document ${key}`);
        const ifVersion = precondition(req);
        const state = method === 'PUT' ? canonicalState(await readBody(req), ctx.limits) : null;
        const [r] = await ctx.committer.submit([{ op: 'replace', tenant: principal.tenant, key, state, ifVersion }]);
        return docReply(r as DocResult);
      }
      default:
        throw new HttpError('NOT_FOUND', 'no such route');
    }
  };

  const create = async (req: IncomingMessage, principal: Principal): Promise<Reply> => {
    const idempotencyKey = req.headers['idempotency-key'];
    if (typeof idempotencyKey !== 'string') throw new HttpError('IDEMPOTENCY_KEY_REQUIRED', 'POST /v1/docs needs an Idempotency-Key header');
    if (!IDEMPOTENCY_KEY.test(idempotencyKey)) {
      throw new HttpError('IDEMPOTENCY_KEY_REQUIRED', 'Idempotency-Key must be 1 to 255 printable ASCII characters');
    }
    const state = canonicalState(await readBody(req), ctx.limits);
    const key = randomUUID();
    if (!mayWrite(principal, null, key)) throw new HttpError('FORBIDDEN', 'token may not create documents with generated keys');
    const fingerprint = createHash('sha256').update(CREATE_SCOPE).update(state).digest().subarray(0, FINGERPRINT_BYTES);
    const slot = `${principal.tenant}\u0000${CREATE_SCOPE}\u0000${idempotencyKey}`;
    // Held in memory only, never on disk: a request that dies with the process cannot wedge its key.
    if (inFlightKeys.has(slot)) {
      throw new HttpError('IDEMPOTENCY_KEY_IN_FLIGHT', 'a request with this Idempotency-Key is in progress', {}, { 'retry-after': '1' });
    }
    inFlightKeys.add(slot);
    try {
      const [r] = await ctx.committer.submit([
        {
          op: 'create',
          tenant: principal.tenant,
          scope: CREATE_SCOPE,
          idempotencyKey,
          fingerprint,
          key,
          state,
        },
      ]);
      return docReply(r as DocResult);
    } finally {
      inFlightKeys.delete(slot);
    }
  };

  const read = async (principal: Principal, key: string, format: WireFormat): Promise<Reply> => {
    if (!mayReadDocument(principal, key)) throw new HttpError('FORBIDDEN', `token may not read document ${key}`);
    const doc = await ctx.store.document(principal.tenant, key);
    if (doc === undefined || doc.deleted || doc.state === null) {
      throw new HttpError('NOT_FOUND', 'no such document', doc ? { version: doc.version, deleted: true } : {});
    }
    const headers = { etag: `"${doc.version}"`, 'seqgate-version': String(doc.version) };
    if (format === 'msgpack') return { status: 200, body: null, headers, raw: { bytes: doc.state, contentType: 'application/msgpack' } };
    const json = stateJsonText(doc.state);
    if (json === undefined) {
      throw new HttpError('NOT_ACCEPTABLE', 'JSON cannot carry this state (binary, NaN or infinity, or integer map keys): ask for application/msgpack');
    }
    return { status: 200, body: null, headers, raw: { bytes: json, contentType: 'application/json' } };
  };

  /** Body bytes each request holds against the memory budget, released when it is answered. */
  const held = new WeakMap<IncomingMessage, { bytes: number }>();
  const readBody = async (req: IncomingMessage): Promise<unknown> => {
    requestFormat(req);
    let mine = held.get(req);
    if (mine === undefined) held.set(req, (mine = { bytes: 0 }));
    return decodeBody(req, await collectBody(req, ctx.limits, ctx.bodies, ctx.bodyIdleTimeoutMs, mine), ctx.limits);
  };

  const listener = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const target = parseRequestTarget(req.url);
    if (ctx.changes !== undefined && target !== undefined && isChangesPath(target.segments)) {
      res.once('finish', () => ctx.metrics.httpRequests.inc({ route: 'changes', status: String(res.statusCode) }));
      ctx.changes(req, res, target);
      return;
    }
    const parts = target?.segments ?? [];
    const route = target === undefined ? 'unknown' : routeOf(parts);
    const format = responseFormat(req);
    let reply: Reply;
    try {
      if (target === undefined) throw new HttpError('INVALID_TARGET', 'the request target must be a path such as /v1/docs/k (or an absolute http URL)');
      reply = await handle(req, route, parts, format);
    } catch (err) {
      reply = errorReply(err, req, ctx.log);
    } finally {
      ctx.bodies.release(held.get(req)?.bytes ?? 0);
    }
    ctx.metrics.httpRequests.inc({ route, status: String(reply.status) });
    // A body left unread (refused, stalled, or never needed) is not drained: the connection closes.
    if (!req.complete) reply.headers = { ...reply.headers, connection: 'close' };
    send(res, reply, format);
  };
  return guarded(ctx.log, 'HTTP request', listener, (_err, _req, res) => answerInternalError(res));
}

function routeOf(parts: string[]): string {
  const [a, b, c, d] = parts;
  if (parts.length === 1 && (a === 'healthz' || a === 'readyz' || a === 'metrics')) return a;
  if (a !== 'v1') return 'unknown';
  if (b === 'streams' && c && parts.length === 4 && d === 'puts') return 'stream-puts';
  if (b === 'streams' && c && parts.length === 3) return 'stream';
  if (b === 'docs' && parts.length === 2) return 'docs';
  if (b === 'docs' && c && parts.length === 3) return 'doc';
  return 'unknown';
}

function allow(method: string, methods: string[]): void {
  if (!methods.includes(method)) {
    throw new HttpError('METHOD_NOT_ALLOWED', `use ${methods.join(' or ')}`, {}, { allow: methods.join(', ') });
  }
}

function segment(raw: string, field: string, maxBytes: number): string {
  let value: string;
  try {
    value = decodeURIComponent(raw);
  } catch {
    throw new HttpError('INVALID_BODY', `${field} in the path is not valid percent-encoding`, { field });
  }
  const problem = nameProblem(value, field, maxBytes);
  if (problem !== null) throw new HttpError('INVALID_BODY', problem, { field });
  return value;
}

/**
 * Exactly the three forms HTTP.md §1.4 lists, each quote paired: "N", W/"N" and a bare N. Anything
 * else ("4, 5", W/6, lists, *) is refused rather than guessed at: a precondition read wrongly
 * would let a write through that the client meant to stop.
 */
const IF_MATCH = /^[ \t]*(?:"(\d{1,15})"|W\/"(\d{1,15})"|(\d{1,15}))[ \t]*$/;

/** If-Match: "N" → the document must be at version N; If-None-Match: * → it must not exist. */
function precondition(req: IncomingMessage): number | null {
  const ifMatch = req.headers['if-match'];
  const ifNoneMatch = req.headers['if-none-match'];
  if (ifNoneMatch !== undefined) {
    if (ifNoneMatch.trim() !== '*') throw new HttpError('INVALID_BODY', 'If-None-Match supports only *', { field: 'If-None-Match' });
    return 0;
  }
  if (ifMatch === undefined) return null;
  const m = IF_MATCH.exec(ifMatch);
  if (!m) throw new HttpError('INVALID_BODY', 'If-Match must be one version ETag: "3", W/"3" or 3', { field: 'If-Match' });
  return Number(m[1] ?? m[2] ?? m[3]);
}

function requestFormat(req: IncomingMessage): WireFormat {
  const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'application/json') return 'json';
  if (type === 'application/msgpack' || type === 'application/x-msgpack' || type === 'application/vnd.msgpack') return 'msgpack';
  throw new HttpError('UNSUPPORTED_MEDIA_TYPE', 'Content-Type must be application/json or application/msgpack');
}

function responseFormat(req: IncomingMessage): WireFormat {
  const accept = req.headers.accept ?? '';
  if (/application\/(x-|vnd\.)?msgpack/.test(accept)) return 'msgpack';
  if (accept.includes('application/json')) return 'json';
  const type = req.headers['content-type'] ?? '';
  return /msgpack/.test(type) ? 'msgpack' : 'json';
}

/**
 * The body's bytes, each chunk counted against the memory budget before it is kept. Refused as
 * soon as it passes maxFrameBytes (413) or the budget's share for bodies (503), or when it stalls
 * for `idleMs` (408); the caller's answer then closes the connection, so the rest is never read.
 * `held` accumulates what was counted; the caller releases it once the request is answered.
 */
function collectBody(req: IncomingMessage, limits: Limits, bodies: RequestBodies, idleMs: number, held: { bytes: number }): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const tooLarge = (): HttpError => new HttpError('PAYLOAD_TOO_LARGE', `body exceeds ${limits.maxFrameBytes} bytes`, { max: limits.maxFrameBytes });
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limits.maxFrameBytes) {
      reject(tooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let timer: NodeJS.Timeout | undefined;
    const settle = (err: Error | undefined): void => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
      if (err === undefined) resolve(Buffer.concat(chunks, size));
      else {
        req.pause();
        reject(err);
      }
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => settle(new HttpError('REQUEST_TIMEOUT', `no body bytes arrived for ${idleMs} ms`)), idleMs);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limits.maxFrameBytes) return settle(tooLarge());
      if (!bodies.reserve(chunk.length)) {
        return settle(new HttpError('SERVER_BUSY', 'request bodies hold their share of the server memory budget; retry later', {}, { 'retry-after': '1' }));
      }
      held.bytes += chunk.length;
      chunks.push(chunk);
      arm();
    };
    const onEnd = (): void => settle(undefined);
    const onError = (err: Error): void => settle(err);
    const onClose = (): void => settle(new Error('the client closed the connection before the body ended'));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
    arm();
  });
}

function decodeBody(req: IncomingMessage, bytes: Buffer, limits: Limits): unknown {
  const format = requestFormat(req);
  try {
    return decodeFrame(bytes, format === 'msgpack', format, limits.maxStateDepth + ENVELOPE_DEPTH);
  } catch (err) {
    if (err instanceof SeqgateError) throw new HttpError('INVALID_BODY', err.message, { cause: err.code });
    throw err;
  }
}

function canonicalState(value: unknown, limits: Limits): Buffer {
  try {
    return canonicalEncode(
      value,
      { maxBytes: limits.maxStateBytes, maxDepth: limits.maxStateDepth, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' },
      'state',
    );
  } catch (err) {
    if (err instanceof CanonicalError) {
      const code = err.kind === 'limit' ? 'PAYLOAD_TOO_LARGE' : 'INVALID_BODY';
      throw new HttpError(code, err.message, { field: 'state', ...(err.limit ? { limit: err.limit } : {}) });
    }
    throw err;
  }
}

/** Status follows the outcome: 200 applied, 412 version conflict, the registry's status otherwise. */
function putReply(result: WireResult): Reply {
  if ('ack' in result) {
    return {
      status: result.outcome === 'applied' ? 200 : 412,
      body: result,
      headers: result.replay ? { 'idempotent-replayed': 'true' } : {},
    };
  }
  const spec: ErrorSpec = ERRORS[result.error.code as ErrorCode];
  const headers: Record<string, string> = spec.retryable ? { 'retry-after': '1' } : {};
  return { status: spec.status ?? 400, body: result, headers };
}

function docReply(r: DocResult): Reply {
  switch (r.kind) {
    case 'written':
      return { status: 200, body: { key: r.key, version: r.version, deleted: r.deleted, changed: r.changed }, headers: { etag: `"${r.version}"` } };
    case 'precondition_failed':
      throw new HttpError('PRECONDITION_FAILED', `document is at version ${r.version}${r.deleted ? ' (deleted)' : ''}`, {
        version: r.version,
        deleted: r.deleted,
      });
    case 'created':
      return {
        status: 201,
        body: { key: r.key, version: r.version, createdAt: r.createdAt },
        headers: { location: `/v1/docs/${encodeURIComponent(r.key)}`, etag: `"${r.version}"`, ...(r.replay ? { 'idempotent-replayed': 'true' } : {}) },
      };
    case 'idempotency_key_reused':
      throw new HttpError('IDEMPOTENCY_KEY_REUSED', 'this Idempotency-Key was used with a different payload');
    case 'rejected':
      throw new HttpError('STORAGE_UNAVAILABLE', r.message, {}, { 'retry-after': '1' });
  }
}

function errorReply(err: unknown, req: IncomingMessage, log: Logger): Reply {
  if (err instanceof HttpError) {
    const spec: ErrorSpec = ERRORS[err.code];
    return {
      status: spec.status ?? 400,
      body: { error: errorBody(err.code, err.message, err.details) },
      headers: err.headers,
    };
  }
  // A client that went away mid-body is not a server fault; nobody is left to answer anyway.
  if (req.socket.destroyed) log.debug({ err }, 'HTTP request abandoned by the client');
  else log.error({ err }, 'HTTP request failed');
  return { status: 500, body: INTERNAL_ERROR };
}

const INTERNAL_ERROR = { error: errorBody('STORAGE_UNAVAILABLE', 'internal error') };

/** Last resort when answering itself failed: a 500 if nothing was sent yet, else the connection is cut. */
function answerInternalError(res: ServerResponse): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  res.writeHead(500, { 'content-type': 'application/json', 'cache-control': 'no-store', connection: 'close' });
  res.end(JSON.stringify(INTERNAL_ERROR));
}

function send(res: ServerResponse, reply: Reply, format: WireFormat): void {
  if (res.headersSent || res.destroyed) return;
  let bytes: Buffer | string;
  let contentType: string;
  if (reply.raw) {
    bytes = reply.raw.bytes;
    contentType = reply.raw.contentType;
  } else {
    bytes = encodeMessage(reply.body as object, format);
    contentType = format === 'msgpack' ? 'application/msgpack' : 'application/json';
  }
  res.writeHead(reply.status, { 'content-type': contentType, 'cache-control': 'no-store', ...reply.headers });
  res.end(bytes);
}
