import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { ERRORS, errorBody, type ErrorCode, type ErrorSpec } from '../errors.js';
import type { ChangeFeed } from '../feed/change-feed.js';
import { changeJson } from '../feed/change-wire.js';
import { formatOffset, incarnationTag, parseOffset } from '../feed/offset.js';
import { readablePrefixes } from '../feed/read-scope.js';
import { nameProblem } from '../protocol/messages.js';
import { stateJsonText } from '../protocol/state-json.js';
import type { Change, ChangeLog } from '../store/change-log.js';
import { bearerToken, type Authenticator, type Principal } from './auth.js';
import type { RequestTarget } from './request-target.js';

/**
 * `GET /v1/changes`: the change log over HTTP in the Durable Streams read protocol (catch-up,
 * `live=long-poll`, `live=sse`, JSON mode), plus `GET /v1/changes/snapshot` to restart a reader
 * whose offset fell off. protocol/HTTP.md ("Changefeed") documents it and what of the Durable
 * Streams protocol is implemented.
 */

interface ChangesHttpContext {
  readonly store: ChangeLog & { readonly incarnation: string };
  readonly feed: ChangeFeed;
  readonly auth: Authenticator;
  readonly log: Logger;
  /** false when the server runs with --changefeed false. */
  readonly enabled: boolean;
  readonly maxKeyBytes: number;
  /** Byte budget of one response body (or SSE data event). */
  readonly maxResponseBytes: number;
  readonly longPollMs: number;
  readonly sseMaxMs: number;
  /** Unsent response bytes above which a live reader is read no further (outboundHighWaterBytes). */
  readonly outboundHighWaterBytes: number;
  /** A response held above half the mark this long is closed (slowConsumerTimeoutMs). */
  readonly slowConsumerTimeoutMs: number;
  /** Called once per response closed as a slow consumer (the metrics counter). */
  readonly onSlowReader?: () => void;
}

/** Most changes in one response, and most log offsets one request looks at for a filtered read. */
const MAX_CHANGES_PER_RESPONSE = 1000;
const MAX_SCAN = 10_000;
const SNAPSHOT_PAGE = 1000;
const SSE_KEEPALIVE_MS = 15_000;
const DRAIN_POLL_MS = 10;
/** Durable Streams cursor intervals: 20 s counted from 2024-10-09T00:00:00Z. */
const CURSOR_EPOCH_MS = Date.UTC(2024, 9, 9);
const CURSOR_INTERVAL_MS = 20_000;

class ChangesError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

interface Read {
  readonly tenant: string;
  readonly prefixes: readonly string[];
  readonly filterTag: string;
  readonly limit: number;
}

interface Page {
  readonly changes: Change[];
  readonly body: string;
  readonly next: number;
  readonly upToDate: boolean;
}

export function isChangesPath(segments: readonly string[]): boolean {
  return segments[0] === 'v1' && segments[1] === 'changes' && (segments.length === 2 || (segments.length === 3 && segments[2] === 'snapshot'));
}

export function createChangesHandler(ctx: ChangesHttpContext): (req: IncomingMessage, res: ServerResponse, target: RequestTarget) => void {
  const tag = incarnationTag(ctx.store.incarnation);
  const offset = (n: number): string => formatOffset(n, ctx.store.incarnation);

  /** Reads one page; a filtered read keeps scanning (bounded) until it finds a change or the tail. */
  const readPage = async (read: Read, after: number, scanBudget = MAX_SCAN * 10): Promise<Page> => {
    let from = after;
    for (;;) {
      const page = await ctx.feed.read(read.tenant, { after: from, prefixes: read.prefixes, limit: read.limit, maxScan: MAX_SCAN });
      if (page.expired) {
        throw new ChangesError('OFFSET_EXPIRED', `changes after offset ${offset(from)} were removed by retention; restart from GET /v1/changes/snapshot`, {
          earliest: offset(page.trimmedThrough),
        });
      }
      if (page.changes.length > 0 || page.next >= page.tail || scanBudget <= MAX_SCAN) {
        // Cut at the byte budget, always keeping at least one change.
        const texts: string[] = [];
        let bytes = 2;
        let next = page.next;
        for (const c of page.changes) {
          const text = changeJson(c, ctx.store.incarnation);
          if (texts.length > 0 && bytes + text.length + 1 > ctx.maxResponseBytes) {
            next = page.changes[texts.length - 1]!.offset;
            break;
          }
          texts.push(text);
          bytes += text.length + 1;
        }
        const changes = page.changes.slice(0, texts.length);
        return { changes, body: `[${texts.join(',')}]`, next, upToDate: next >= page.tail };
      }
      from = page.next;
      scanBudget -= MAX_SCAN;
    }
  };

  /** Resolves the requested offset to a position, checking that it belongs to this log. */
  const startPosition = async (read: Read, raw: string | null): Promise<number> => {
    const requested = parseOffset(raw ?? '-1');
    if (requested === undefined) {
      throw new ChangesError('INVALID_OFFSET', 'offset must be -1, now, or a Stream-Next-Offset this server returned', { field: 'offset' });
    }
    if (requested.kind === 'start') return 0;
    const tail = await ctx.store.changeTail(read.tenant);
    if (requested.kind === 'now') return tail;
    if (requested.incarnation !== tag || requested.position > tail) {
      throw new ChangesError('OFFSET_UNKNOWN', 'this offset was not minted by this database (replaced or restored?); restart from GET /v1/changes/snapshot');
    }
    return requested.position;
  };

  const streamHeaders = (next: number, upToDate: boolean, cursor: string | null): Record<string, string> => ({
    'stream-next-offset': offset(next),
    ...(upToDate ? { 'stream-up-to-date': 'true' } : {}),
    'stream-cursor': nextCursor(cursor),
  });

  const changes = async (req: IncomingMessage, res: ServerResponse, query: URLSearchParams, principal: Principal, abort: AbortSignal): Promise<void> => {
    const read = scope(principal, query, ctx.maxKeyBytes);
    const live = query.get('live');
    if (live !== null && live !== 'long-poll' && live !== 'sse') {
      throw new ChangesError('INVALID_BODY', 'live must be long-poll or sse', { field: 'live' });
    }
    const cursor = query.get('cursor');
    const start = await startPosition(read, query.get('offset'));

    if (req.method === 'HEAD') {
      const tail = await ctx.store.changeTail(read.tenant);
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'stream-next-offset': offset(tail) });
      res.end();
      return;
    }

    if (live === 'sse') return sse(res, read, start, cursor, abort);

    let page = await readPage(read, start);
    if (live === 'long-poll' && page.changes.length === 0) {
      const deadline = Date.now() + ctx.longPollMs;
      while (page.changes.length === 0) {
        const left = deadline - Date.now();
        if (left <= 0 || !(await ctx.feed.waitForChange(read.tenant, page.next, left, abort))) break;
        page = await readPage(read, page.next);
      }
      if (page.changes.length === 0) {
        res.writeHead(204, { 'cache-control': 'no-store', ...streamHeaders(page.next, true, cursor) });
        res.end();
        return;
      }
    }

    const etag = `"${tag}:${start}:${page.next}:${read.filterTag}"`;
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      // A range of the log never changes once written, so a chunk with data may be cached by the
      // reader (private: what a token sees depends on its grants); the tail must not be.
      'cache-control': page.changes.length > 0 ? 'private, max-age=60, stale-while-revalidate=300' : 'no-store',
      etag,
      ...streamHeaders(page.next, page.upToDate, live === null ? null : cursor),
    };
    if (live === null) delete headers['stream-cursor'];
    if (req.headers['if-none-match'] === etag) {
      res.writeHead(304, headers);
      res.end();
      return;
    }
    res.writeHead(200, headers);
    res.end(page.body);
    // A reader that never reads its answer must not keep it in memory for ever.
    unsentBound(res);
  };

  /**
   * The WebSocket's slow-consumer rule for an HTTP response: unsent bytes (the response's and its
   * socket's buffers; not the kernel's) above the outbound high-water mark are a slow reader; one
   * still above half of it after slowConsumerTimeoutMs has its response closed (the socket
   * destroyed: what is unsent cannot be delivered), is logged and counted. Resolves true once the
   * bytes are back under half the mark, false when the response is gone.
   */
  const drained = async (res: ServerResponse): Promise<boolean> => {
    const high = ctx.outboundHighWaterBytes;
    if (res.destroyed) return false;
    if (res.writableLength <= high) return true;
    const deadline = Date.now() + ctx.slowConsumerTimeoutMs;
    while (!res.destroyed && res.writableLength > high / 2) {
      if (Date.now() >= deadline) {
        ctx.log.warn({ unsentBytes: res.writableLength }, 'closing slow changefeed reader');
        ctx.onSlowReader?.();
        res.destroy();
        return false;
      }
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
    return !res.destroyed;
  };

  /** After a whole answer was written: the same rule, so that its bytes are freed in bounded time. */
  const unsentBound = (res: ServerResponse): void => {
    if (res.writableLength > ctx.outboundHighWaterBytes) void drained(res);
  };

  const sse = async (res: ServerResponse, read: Read, start: number, cursor: string | null, abort: AbortSignal): Promise<void> => {
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    const ends = Date.now() + ctx.sseMaxMs;
    let at = start;
    let announced = -1;
    // Above the high-water mark the log is read no further for this reader until it has read half
    // of it; one that does not in time is closed (drained).
    const write = async (text: string): Promise<void> => {
      res.write(text);
      await drained(res);
    };
    /** The next page as SSE events; the page itself is not kept while the reader is waited for. */
    const nextEvents = async (): Promise<{ text: string; next: number; upToDate: boolean }> => {
      const page = await readPage(read, at);
      let text = page.changes.length > 0 ? `event: data\ndata: ${page.body}\n\n` : '';
      if (page.changes.length > 0 || page.next !== announced) {
        const control = { streamNextOffset: offset(page.next), streamCursor: nextCursor(cursor), ...(page.upToDate ? { upToDate: true } : {}) };
        text += `event: control\ndata: ${JSON.stringify(control)}\n\n`;
      }
      return { text, next: page.next, upToDate: page.upToDate };
    };
    while (!abort.aborted && !res.destroyed && !ctx.feed.stopped && Date.now() < ends) {
      const { text, next, upToDate } = await nextEvents();
      announced = next;
      at = next;
      if (text !== '') await write(text);
      if (!upToDate) continue;
      const wait = Math.min(SSE_KEEPALIVE_MS, ends - Date.now());
      if (wait <= 0) break;
      if (!(await ctx.feed.waitForChange(read.tenant, at, wait, abort)) && !abort.aborted && Date.now() < ends) {
        await write(': keepalive\n\n');
      }
    }
    if (res.destroyed) return;
    res.end();
    unsentBound(res);
  };

  const snapshot = async (res: ServerResponse, query: URLSearchParams, principal: Principal): Promise<void> => {
    const read = scope(principal, query, ctx.maxKeyBytes);
    const after = query.get('after');
    const snap = await ctx.store.snapshot(read.tenant, read.prefixes, after, SNAPSHOT_PAGE);
    const docs = snap.documents.map((d) => {
      const text = stateJsonText(d.state);
      const state = text ?? `null,"stateMsgpack":${JSON.stringify(d.state.toString('base64'))}`;
      return `{"key":${JSON.stringify(d.key)},"version":${d.version},"state":${state}}`;
    });
    const body = `{"offset":"${offset(snap.offset)}","documents":[${docs.join(',')}],"nextKey":${JSON.stringify(snap.nextKey)}}`;
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'stream-next-offset': offset(snap.offset) });
    res.end(body);
  };

  return (req, res, target) => {
    const query = target.query;
    const abort = new AbortController();
    res.once('close', () => abort.abort());
    const run = async (): Promise<void> => {
      const principal = ctx.auth.authenticate(bearerToken(req.headers.authorization));
      if (principal === undefined) throw new ChangesError('UNAUTHORIZED', 'a valid bearer token is required');
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new ChangesError('METHOD_NOT_ALLOWED', 'use GET or HEAD');
      if (!ctx.enabled) throw new ChangesError('NOT_FOUND', 'the changefeed is off on this server (--changefeed false)');
      if (target.segments.length === 3) return snapshot(res, query, principal);
      return changes(req, res, query, principal, abort.signal);
    };
    run().catch((err: unknown) => {
      if (res.headersSent) {
        if (!(err instanceof ChangesError)) ctx.log.warn({ err }, 'changefeed response failed');
        res.destroy();
        return;
      }
      let code: ErrorCode = 'STORAGE_UNAVAILABLE';
      let message = 'the change log could not be read; retry';
      let details: Record<string, unknown> = {};
      if (err instanceof ChangesError) ({ code, message, details } = err);
      else ctx.log.warn({ err }, 'changefeed read failed');
      const spec: ErrorSpec = ERRORS[code];
      const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
      if (code === 'UNAUTHORIZED') headers['www-authenticate'] = 'Bearer realm="seqgate"';
      if (code === 'METHOD_NOT_ALLOWED') headers.allow = 'GET, HEAD';
      if (spec.retryable) headers['retry-after'] = '1';
      res.writeHead(spec.status ?? 400, headers);
      res.end(req.method === 'HEAD' ? undefined : JSON.stringify({ error: errorBody(code, message, details) }));
    });
  };
}

/** The key prefix asked for (`prefix`, an extension of the protocol), narrowed to the token's read grants. */
function scope(principal: Principal, query: URLSearchParams, maxKeyBytes: number): Read {
  const requested = query.get('prefix') ?? '';
  if (requested !== '') {
    const problem = nameProblem(requested, 'prefix', maxKeyBytes);
    if (problem !== null) throw new ChangesError('INVALID_BODY', problem, { field: 'prefix' });
  }
  const prefixes = readablePrefixes(principal, requested);
  if (prefixes.length === 0) throw new ChangesError('FORBIDDEN', `token may not read documents under "${requested}"`);
  const rawLimit = query.get('limit');
  let limit = MAX_CHANGES_PER_RESPONSE;
  if (rawLimit !== null) {
    if (!/^\d{1,6}$/.test(rawLimit) || Number(rawLimit) < 1) throw new ChangesError('INVALID_BODY', 'limit must be an integer >= 1', { field: 'limit' });
    limit = Math.min(Number(rawLimit), MAX_CHANGES_PER_RESPONSE);
  }
  const filterTag = createHash('sha256').update(JSON.stringify(prefixes)).digest('hex').slice(0, 12);
  return { tenant: principal.tenant, prefixes, filterTag, limit };
}

/**
 * Durable Streams cursor: the current 20-second interval; when the client echoes one at or past
 * it, a strictly greater one (jittered), so that cursors never go back and caches do not loop.
 */
function nextCursor(echoed: string | null): string {
  const current = Math.floor((Date.now() - CURSOR_EPOCH_MS) / CURSOR_INTERVAL_MS);
  const client = echoed !== null && /^\d{1,15}$/.test(echoed) ? Number(echoed) : -1;
  if (client < current) return String(current);
  return String(client + 1 + Math.floor(Math.random() * 180));
}
