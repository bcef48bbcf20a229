import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRequestTarget } from '../src/server/request-target.js';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { probeServing, rawExchange } from './support/raw-http.js';

/**
 * Request lines and upgrades that once ended the server process (issue 9, finding 1: `GET //[`
 * threw from `new URL` inside the request and upgrade listeners), sent to the real server in open
 * mode and in token mode. After each one the process must be alive, serve HTTP and apply a
 * WebSocket put, and have logged nothing at error level. protocol/HTTP.md §1.1 and §2 document
 * the 400 INVALID_TARGET answer.
 */

const UPGRADE =
  'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: seqgate.v1\r\n';

function request(target: string, extra = ''): string {
  return `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`;
}

describe('request targets', () => {
  it('are parsed without throwing: paths and absolute http(s)/ws(s) URLs pass, everything else is refused', () => {
    expect(parseRequestTarget('/v1/docs/a%2Fb?x=1')).toMatchObject({ segments: ['v1', 'docs', 'a%2Fb'] });
    expect(parseRequestTarget('/?token=abc')!.query.get('token')).toBe('abc');
    expect(parseRequestTarget('//v1/docs')!.segments).toEqual(['', 'v1', 'docs']);
    expect(parseRequestTarget('http://h:1/healthz')!.segments).toEqual(['healthz']);
    expect(parseRequestTarget('WSS://h')!.segments).toEqual(['']);
    expect(parseRequestTarget('/v1/docs/ключ')!.segments).toEqual(['v1', 'docs', encodeURIComponent('ключ')]);
    for (const bad of [
      '//[',
      '/[',
      '/\\evil/v1/docs',
      '/a b',
      '/a#b',
      '/a|b',
      '/{x}',
      '*',
      '',
      'v1/docs',
      'ftp://h/x',
      'h:80',
      'http://h/[',
      'http://[/x',
      '/a\u0000b',
      undefined,
    ]) {
      expect(parseRequestTarget(bad), JSON.stringify(bad)).toBeUndefined();
    }
  });
});

for (const mode of ['open', 'tokens'] as const) {
  describe(`hostile request lines against the real server process (${mode} mode)`, () => {
    const token = `T${randomBytes(18).toString('base64url')}`;
    let db: TempDb;
    let child: ChildServer;

    beforeAll(async () => {
      db = tempDb('seqgate-hostile-');
      child = new ChildServer({
        dbPath: db.dbPath,
        args: ['--log-level', 'debug'],
        env: mode === 'tokens' ? { SEQGATE_TOKENS: JSON.stringify({ tokens: [{ token, tenant: 't' }] }) } : {},
      });
      await child.start();
    });

    afterAll(async () => {
      await child?.dispose();
      db?.remove();
    });

    async function stillServing(after: string): Promise<void> {
      expect(child.running, `the server process exited after ${after}:\n${child.stderr.slice(-2000)}`).toBe(true);
      await probeServing(child.port, mode === 'tokens' ? token : undefined);
      const errors = child.logLines().filter((l) => typeof l.level === 'number' && l.level >= 50);
      expect(errors, `error logged after ${after}`).toEqual([]);
    }

    it('GET //[ is answered 400 INVALID_TARGET, as a plain request and as an upgrade, and the server keeps serving', async () => {
      const plain = await rawExchange(child.port, request('//['), { untilResponse: true });
      expect(plain.status).toBe(400);
      expect(JSON.parse(plain.body)).toMatchObject({ error: { code: 'INVALID_TARGET', retryable: false } });
      await stillServing('GET //[');

      const upgrade = await rawExchange(child.port, request('//[', UPGRADE));
      expect(upgrade.status).toBe(400);
      expect(upgrade.closedByServer).toBe(true);
      expect(JSON.parse(upgrade.body)).toMatchObject({ error: { code: 'INVALID_TARGET' } });
      await stillServing('an upgrade to //[');
    });

    it('other targets that are not paths are refused with 400 on both paths; an absolute URL is served', async () => {
      for (const target of ['/\\[', '//[::1]', '/a|b', 'OPTIONS-*', '*', 'http://[/x', '//%', '/?token=%ff']) {
        for (const extra of ['', UPGRADE]) {
          const res = await rawExchange(child.port, request(target, extra), { untilResponse: true });
          if (target === '/?token=%ff' || target === '//%') {
            // Valid targets: the first matches no route, the second carries an unknown token.
            expect(res.status, `${target} ${extra ? 'upgrade' : ''}`).not.toBe(500);
          } else {
            expect(res.status, `${target} ${extra ? 'upgrade' : ''}`).toBe(400);
          }
          await stillServing(`GET ${target}${extra ? ' as an upgrade' : ''}`);
        }
      }
      const absolute = await rawExchange(child.port, request(`http://127.0.0.1:${child.port}/healthz`), { untilResponse: true });
      expect(absolute.status).toBe(200);
    });

    it('an upgrade that is refused and then reset by the client, or never read, does not end the process and does not keep its socket', async () => {
      const refusals = [
        // An open server ignores tokens, so only a server with tokens refuses this one.
        ...(mode === 'tokens' ? [request('/?token=not-a-valid-token-at-all', UPGRADE)] : []),
        request('//[', UPGRADE),
        request('/', 'Connection: Upgrade\r\nUpgrade: websocket\r\n'),
      ];
      for (let i = 0; i < 20; i++) {
        for (const r of refusals) await rawExchange(child.port, r, { resetAfterWrite: true });
      }
      await stillServing('refused upgrades reset by the client');
      for (const r of refusals) {
        const res = await rawExchange(child.port, r, { timeoutMs: 4000 });
        expect(res.closedByServer, r).toBe(true);
      }
    });
  });
}
