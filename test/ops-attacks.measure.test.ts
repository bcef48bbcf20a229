import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, it } from 'vitest';
import { CLI_PATH, ChildServer, tempDb } from './support/child-server.js';
import { TestClient, type Msg } from './support/test-client.js';

/**
 * The figures of docs/RELIABILITY.md's section on issue 9, findings 6–8: each attack against the
 * real server, reported as what happened rather than asserted, so that the same script measures
 * an old build ("before") and this one ("after"). Skipped in `npm test`; run it with
 *
 *   SEQGATE_MEASURE=1 npx vitest run test/ops-attacks.measure.test.ts
 *   SEQGATE_MEASURE=1 SEQGATE_TEST_CLI=<old checkout>/dist/src/cli.js npx vitest run test/ops-attacks.measure.test.ts
 *
 * The regression tests that hold these guarantees are test/tokens-file-watch.test.ts,
 * test/database-identity.test.ts and test/retention-clock.test.ts.
 */

const DAY = 86_400_000;
const measured: Record<string, unknown> = {};
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const newToken = (): string => `T${randomBytes(18).toString('base64url')}`;

afterAll(() => {
  console.log(`MEASURED ${CLI_PATH}\n${JSON.stringify(measured, null, 2)}`);
});

function generation(dir: string, name: string, token: string): void {
  mkdirSync(join(dir, name));
  writeFileSync(join(dir, name, 'tokens.json'), JSON.stringify({ tokens: [{ token, tenant: 'a' }] }));
}

function secretLayout(dir: string, name: string, token: string): void {
  mkdirSync(dir, { recursive: true });
  generation(dir, name, token);
  symlinkSync(name, join(dir, '..data'));
  symlinkSync('..data/tokens.json', join(dir, 'tokens.json'));
}

async function status(server: ChildServer, path: string, token?: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${server.port}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  await res.arrayBuffer();
  return res.status;
}

async function putMany(c: TestClient, stream: string, from: number, count: number, padBytes = 200): Promise<Msg[]> {
  const before = c.results().length;
  for (let i = 0; i < count; i++) {
    const seq = from + i;
    c.send({ type: 'put', puts: [{ id: `${stream}#${seq}#${before}`, stream, epoch: 1, seq, key: `${stream}-${seq}`, state: { p: 'x'.repeat(padBytes) } }] });
  }
  await c.waitFor(() => c.results().length >= before + count, 20_000);
  return c.results().slice(before);
}

describe.skipIf(process.env.SEQGATE_MEASURE !== '1')('issue 9, findings 6-8, measured', () => {
  it('tokens file as a Kubernetes Secret: swap, then folder deleted and recreated', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'seqgate-measure-'));
    const dir = join(parent, 'secret');
    const [a, b, c] = [newToken(), newToken(), newToken()];
    secretLayout(dir, '..g1', a);
    const db = tempDb();
    const server = new ChildServer({ dbPath: db.dbPath, args: ['--tokens-file', join(dir, 'tokens.json')] });
    try {
      await server.start();
      const client = await TestClient.connect(server.url, 'msgpack', { headers: { authorization: `Bearer ${a}` } });
      generation(dir, '..g2', b);
      symlinkSync('..g2', join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
      rmSync(join(dir, '..g1'), { recursive: true });
      const swapped = Date.now();
      const closed = await Promise.race([client.closed, sleep(10_000).then(() => undefined)]);
      measured.swapRemovedTokenConnection = closed ? `closed ${closed.code} after ${Date.now() - swapped} ms` : 'still open after 10 s';
      measured.swapRemovedTokenHttp = await status(server, '/v1/streams/x', a);
      client.ws.terminate();

      rmSync(dir, { recursive: true });
      await sleep(1_500);
      secretLayout(dir, '..g3', c);
      const recreated = Date.now();
      let accepted: number | undefined;
      while (Date.now() - recreated < 10_000) {
        if ((await status(server, '/v1/streams/x', c)) === 200) {
          accepted = Date.now() - recreated;
          break;
        }
        await sleep(50);
      }
      measured.recreatedFolderNewToken = accepted === undefined ? 'refused for 10 s' : `accepted after ${accepted} ms`;
    } finally {
      await server.dispose();
      db.remove();
      rmSync(parent, { recursive: true, force: true });
    }
  }, 60_000);

  it('database files deleted while running, then 200 puts', async () => {
    const db = tempDb();
    const server = new ChildServer({ dbPath: db.dbPath, args: ['--synchronous', 'normal'] });
    try {
      await server.start();
      const c = await TestClient.connect(server.url);
      await putMany(c, 'before', 1, 10);
      for (const suffix of ['', '-wal', '-shm']) rmSync(db.dbPath + suffix, { force: true });
      const results = await putMany(c, 'after', 1, 200);
      const acked = results.filter((r) => r.outcome === 'applied').length;
      measured.deletedPutsAcked = `${acked} of 200`;
      measured.deletedReadyz = await status(server, '/readyz');
      c.ws.terminate();
      await server.kill('SIGTERM');
      await server.restart();
      const again = await TestClient.connect(server.url);
      const replays = (await putMany(again, 'after', 1, 200)).filter((r) => r.replay === true).length;
      measured.deletedAckedFoundAfterRestart = `${replays} of ${acked}`;
      again.ws.terminate();
    } finally {
      await server.dispose();
      db.remove();
    }
  }, 60_000);

  it('database at --max-db-pages', async () => {
    const db = tempDb();
    const server = new ChildServer({ dbPath: db.dbPath, args: ['--synchronous', 'normal', '--max-db-pages', '40'] });
    try {
      await server.start();
      const c = await TestClient.connect(server.url);
      let seq = 0;
      let failed = false;
      while (!failed && seq < 2000) failed = (await putMany(c, 'fill', ++seq, 1, 3000))[0].outcome !== 'applied';
      measured.fullPutFailedAtSeq = seq;
      measured.fullReadyz = await status(server, '/readyz');
      c.ws.terminate();
    } finally {
      await server.dispose();
      db.remove();
    }
  }, 60_000);

  it('wall clock stepped 2 days forward, retries 2 s later', async () => {
    const db = tempDb();
    const dir = mkdtempSync(join(tmpdir(), 'seqgate-measure-clock-'));
    const clockFile = join(dir, 'offset');
    writeFileSync(clockFile, '0');
    const shim = fileURLToPath(new URL('./support/clock-shim.mjs', import.meta.url));
    const server = new ChildServer({
      dbPath: db.dbPath,
      args: ['--synchronous', 'normal', '--prune-interval-ms', '100'],
      env: { NODE_OPTIONS: `--import ${shim}`, SEQGATE_TEST_CLOCK_FILE: clockFile },
    });
    const create = async (): Promise<string> => {
      const res = await fetch(`http://127.0.0.1:${server.port}/v1/docs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'measure-1' },
        body: '{"a":1}',
      });
      return ((await res.json()) as Msg).key;
    };
    try {
      await server.start();
      const c = await TestClient.connect(server.url);
      await putMany(c, 's', 1, 2);
      const first = await create();
      writeFileSync(clockFile, String(2 * DAY));
      server.signal('SIGUSR2');
      await server.waitForLog((l) => l.msg === 'test clock set');
      await sleep(2_000);
      const [retry] = await putMany(c, 's', 1, 1);
      measured.clockStepPutRetry = `${retry.outcome}${retry.replay ? ' (replay)' : ''}`;
      measured.clockStepCreateRetry = (await create()) === first ? 'the first document (replay)' : 'a second document';
      c.ws.terminate();
    } finally {
      await server.dispose();
      db.remove();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
