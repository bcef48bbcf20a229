import { Packr } from 'msgpackr';
import { afterEach, describe, expect, it } from 'vitest';
import { ChildServer, tempDb, type TempDb } from '../support/child-server.js';
import { TestClient, type Msg } from '../support/test-client.js';

/**
 * Fixed inputs that the fuzzers in this folder found to break the server, replayed against the
 * real server process (an uncaught exception there ends the process, which an in-process server
 * cannot show). Each stays as a plain regression test once the bug is fixed.
 */

const packr = new Packr({ useRecords: false });

let db: TempDb | undefined;
let child: ChildServer | undefined;
const clients: TestClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.ws.terminate();
  await child?.dispose();
  child = undefined;
  db?.remove();
  db = undefined;
});

async function serve(): Promise<ChildServer> {
  db = tempDb('seqgate-regress-');
  child = new ChildServer({ dbPath: db.dbPath });
  await child.start();
  return child;
}

async function connect(url: string): Promise<TestClient> {
  const c = await TestClient.connect(url);
  clients.push(c);
  return c;
}

describe('found by fuzzing', () => {
  // A ping's nonce is echoed as is (PROTOCOL.md §3.5). An integral float beyond 64 bits (a float32
  // 2^64 in 22 bytes, or 1e20) is widened to a BigInt for the pong, which msgpackr cannot encode:
  // the exception escapes the message handler and the process exits with code 1.
  it.each<[string, unknown]>([
    ['2^64 as a float32', Buffer.from('82a474797065a470696e67a56e6f6e6365ca5f800000', 'hex')],
    ['1e20 as a float64', { type: 'ping', nonce: 1e20 }],
    ['-1e300 inside an array', { type: 'ping', nonce: [1, -1e300] }],
  ])(
    'a ping whose nonce holds %s is answered with a pong and the server process keeps running',
    async (_name, frame) => {
      const server = await serve();
      const c = await connect(server.url);
      c.sendRaw(Buffer.isBuffer(frame) ? frame : packr.pack(frame));
      c.send({ type: 'hello', streams: ['after'] });
      await c.waitFor(() => c.messages.some((m: Msg) => m.type === 'welcome') || c.ws.readyState === c.ws.CLOSED, 10_000);
      if (c.ws.readyState === c.ws.CLOSED) await server.waitExit(5000).catch(() => undefined);
      expect(server.running, `the server exited: ${server.stderr.slice(0, 600)}`).toBe(true);
      expect(c.messages.map((m: Msg) => m.type)).toEqual(['pong', 'welcome']);
      const other = await connect(server.url);
      other.send({ type: 'ping', nonce: 'still there' });
      expect(await other.waitMessage('pong')).toEqual({ type: 'pong', nonce: 'still there' });
    },
    60_000,
  );
});
