import { afterEach, describe, expect, it } from 'vitest';
import { guarded } from '../src/server/listener-guard.js';
import { captureLogs } from './support/log-capture.js';
import { probeServing, rawExchange } from './support/raw-http.js';
import { startTestServer, type TestServer } from './support/test-client.js';

/**
 * An unexpected throw in a listener is logged at error and answered (500, or a destroyed socket),
 * never passed on to the event loop, where it would end the process (issue 9, finding 1).
 */

let t: TestServer | undefined;
afterEach(async () => {
  await t?.stop();
  t = undefined;
});

describe('guarded listeners', () => {
  it('log a synchronous throw and a rejection, run the recovery with the listener arguments, and survive a failing recovery', async () => {
    const { logger, errors } = captureLogs();
    const recovered: unknown[] = [];
    guarded(
      logger,
      'sync',
      (n: number) => {
        throw new Error(`boom ${n}`);
      },
      (_err, n) => recovered.push(n),
    )(1);
    guarded(
      logger,
      'async',
      async (n: number) => {
        throw new Error(`boom ${n}`);
      },
      (_err, n) => recovered.push(n),
    )(2);
    guarded(
      logger,
      'bad recovery',
      () => {
        throw new Error('first');
      },
      () => {
        throw new Error('second');
      },
    )();
    await new Promise((resolve) => setImmediate(resolve));
    expect(recovered).toEqual([1, 2]);
    expect(errors.map((e) => e.msg)).toEqual(['sync failed', 'bad recovery failed', 'bad recovery: recovery failed', 'async failed']);
  });

  it('answer 500 when an HTTP handler throws after the route was handled, and the server keeps serving', async () => {
    const { logger, errors } = captureLogs();
    t = await startTestServer({}, { logger });
    const inc = t.server.metrics.httpRequests.inc.bind(t.server.metrics.httpRequests);
    let fail = true;
    t.server.metrics.httpRequests.inc = ((...args: Parameters<typeof inc>) => {
      if (fail) throw new Error('metrics exploded');
      return inc(...args);
    }) as typeof inc;
    const port = Number(new URL(t.url).port);
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    expect(res.status).toBe(500);
    expect(await res.json()).toMatchObject({ error: { code: 'STORAGE_UNAVAILABLE', message: 'internal error', retryable: true } });
    expect(errors.some((e) => e.msg === 'HTTP request failed' && JSON.stringify(e.err).includes('metrics exploded'))).toBe(true);
    fail = false;
    await probeServing(port);
  });

  it('answer 500 and close the socket when an upgrade handler throws, and the server keeps serving', async () => {
    const { logger, errors } = captureLogs();
    t = await startTestServer({}, { logger });
    const auth = (t.server as unknown as { auth: { authenticate: (token?: string) => unknown } }).auth;
    const authenticate = auth.authenticate.bind(auth);
    let fail = true;
    auth.authenticate = (token?: string) => {
      if (fail) throw new Error('auth exploded');
      return authenticate(token);
    };
    const port = Number(new URL(t.url).port);
    const res = await rawExchange(
      port,
      'GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    expect(res.status).toBe(500);
    expect(res.closedByServer).toBe(true);
    expect(errors.some((e) => e.msg === 'WebSocket upgrade failed' && JSON.stringify(e.err).includes('auth exploded'))).toBe(true);
    fail = false;
    await probeServing(port);
  });

  it('log an error event of the listening HTTP server (an accept failure) instead of throwing it', async () => {
    const { logger, errors } = captureLogs();
    t = await startTestServer({}, { logger });
    const http = (t.server as unknown as { http: import('node:http').Server }).http;
    expect(() => http.emit('error', Object.assign(new Error('accept ENOBUFS'), { code: 'ENOBUFS' }))).not.toThrow();
    expect(errors.some((e) => e.msg === 'HTTP server error; still listening')).toBe(true);
    await probeServing(Number(new URL(t.url).port));
  });
});
