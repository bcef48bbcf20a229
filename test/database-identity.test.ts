import { renameSync, rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { ChildServer } from './support/child-server.js';
import { Cleanup } from './support/cleanup.js';
import { TestClient, type Msg } from './support/test-client.js';

/**
 * Readiness and a database that vanishes under the running server (issue 9, finding 7), against the
 * real server process. SQLite writes to the inodes it opened, so after `rm seqgate.db*` every commit
 * would succeed into unlinked files and be lost at the next start; the server must notice that its
 * paths no longer name its files, stop acking (STORAGE_UNAVAILABLE), log it at error and answer
 * /readyz 503. /readyz must also fail while a full database fails puts.
 */

const cleanup = new Cleanup();

async function serve(args: string[] = []): Promise<{ server: ChildServer; dbPath: string }> {
  const server = await cleanup.child({ args: ['--synchronous', 'normal', ...args] }, 'seqgate-identity-');
  return { server, dbPath: server.options.dbPath };
}

const connect = (server: ChildServer): Promise<TestClient> => cleanup.client(server.url);

async function get(server: ChildServer, path: string): Promise<{ status: number; body: Msg }> {
  const res = await fetch(`http://127.0.0.1:${server.port}${path}`);
  return { status: res.status, body: await res.json() };
}

async function httpPut(server: ChildServer, stream: string, seq: number): Promise<{ status: number; body: Msg }> {
  const res = await fetch(`http://127.0.0.1:${server.port}/v1/streams/${stream}/puts`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ epoch: 1, seq, key: `${stream}-${seq}`, state: { seq } }),
  });
  return { status: res.status, body: await res.json() };
}

/** Sends `count` puts on `stream` from `fromSeq`, one frame each, and returns their results. */
async function putMany(c: TestClient, stream: string, fromSeq: number, count: number, padBytes = 200): Promise<Msg[]> {
  const before = c.results().length;
  for (let i = 0; i < count; i++) {
    const seq = fromSeq + i;
    c.send({ type: 'put', puts: [{ id: `${stream}#${seq}`, stream, epoch: 1, seq, key: `${stream}-${seq}`, state: { seq, pad: 'p'.repeat(padBytes) } }] });
  }
  await c.waitFor(() => c.results().length >= before + count, 20_000);
  return c.results().slice(before);
}

const lostLine = (l: Record<string, unknown>): boolean => l.msg === 'database file removed or replaced while open; refusing every write until restart';

/** What a server that lost its files must do from now on: refuse every put, answer readyz 503, log once at error. */
async function expectRefusing(server: ChildServer, c: TestClient, fromSeq: number, reason: RegExp): Promise<void> {
  const ready = await get(server, '/readyz');
  expect(ready.status).toBe(503);
  expect(ready.body.error).toMatchObject({ code: 'NOT_READY', retryable: true });
  expect(ready.body.error.message).toMatch(reason);

  const results = await putMany(c, 'after', fromSeq, 200);
  const acked = results.filter((r) => r.outcome !== 'error');
  expect(acked, 'puts acked after the database files were lost').toEqual([]);
  for (const r of results) expect(r).toMatchObject({ outcome: 'error', error: { code: 'STORAGE_UNAVAILABLE', retryable: true } });
  expect(results[0].error.message).toMatch(reason);

  const http = await httpPut(server, 'after-http', 1);
  expect(http.status).toBe(503);
  expect(http.body).toMatchObject({ outcome: 'error', error: { code: 'STORAGE_UNAVAILABLE' } });

  await server.waitForLog(lostLine, 5_000);
  const logged = server.logLines().filter(lostLine);
  expect(logged).toHaveLength(1);
  expect(logged[0]!.level).toBe(50);
  expect((await get(server, '/healthz')).status).toBe(200);
  expect((await get(server, '/readyz')).status).toBe(503);
}

describe('database files removed or replaced while the server runs', () => {
  it('deleting the file and its -wal and -shm: no put is acked afterwards, /readyz 503, one error logged', async () => {
    const { server, dbPath } = await serve();
    const c = await connect(server);
    expect((await putMany(c, 'before', 1, 20)).every((r) => r.outcome === 'applied')).toBe(true);
    expect((await get(server, '/readyz')).status).toBe(200);

    for (const suffix of ['', '-wal', '-shm']) rmSync(dbPath + suffix, { force: true });
    await expectRefusing(server, c, 1, /removed while open/);
    expect(server.running).toBe(true);
  }, 60_000);

  it('a file renamed over the database (a restore from backup): no put is acked afterwards, /readyz 503', async () => {
    const { server, dbPath } = await serve();
    const c = await connect(server);
    expect((await putMany(c, 'before', 1, 20)).every((r) => r.outcome === 'applied')).toBe(true);
    // A consistent copy of an older state, as a restore would bring, renamed over the live file.
    const backup = `${dbPath}.backup`;
    const source = new Database(dbPath, { readonly: true });
    await source.backup(backup);
    source.close();
    renameSync(backup, dbPath);
    await expectRefusing(server, c, 1, /replaced while open/);
  }, 60_000);

  it('deleting only the -wal file: commits would land in the unlinked log, so none is acked', async () => {
    const { server, dbPath } = await serve();
    const c = await connect(server);
    expect((await putMany(c, 'before', 1, 5)).every((r) => r.outcome === 'applied')).toBe(true);
    rmSync(`${dbPath}-wal`);
    // "replaced" when the background checkpointer's own connection opens the path after the removal
    // and so creates a new, empty -wal there: refused either way.
    await expectRefusing(server, c, 1, /-wal was (removed|replaced) while open/);
  }, 60_000);

  it('deleting only the -shm file is harmless: it is rebuilt from the WAL, so puts go on and survive a kill -9', async () => {
    const { server, dbPath } = await serve();
    const c = await connect(server);
    expect((await putMany(c, 's', 1, 5)).every((r) => r.outcome === 'applied')).toBe(true);
    rmSync(`${dbPath}-shm`);
    expect((await get(server, '/readyz')).status).toBe(200);
    expect((await putMany(c, 's', 6, 5)).every((r) => r.outcome === 'applied')).toBe(true);
    c.ws.terminate();
    await server.kill('SIGKILL');
    await server.restart();
    const again = await connect(server);
    const replays = await putMany(again, 's', 1, 10);
    expect(replays.map((r) => [r.outcome, r.replay])).toEqual(Array.from({ length: 10 }, () => ['applied', true]));
  }, 60_000);

  it('moving the files away and back restores service: the paths name the open files again', async () => {
    const { server, dbPath } = await serve();
    const c = await connect(server);
    expect((await putMany(c, 'before', 1, 5)).every((r) => r.outcome === 'applied')).toBe(true);
    // Moving the files away and back is the same file throughout (same inode).
    for (const suffix of ['', '-wal', '-shm']) renameSync(dbPath + suffix, `${dbPath}${suffix}.moved`);
    expect((await get(server, '/readyz')).status).toBe(503);
    expect((await putMany(c, 'during', 1, 3)).map((r) => r.outcome)).toEqual(['error', 'error', 'error']);
    for (const suffix of ['', '-wal', '-shm']) renameSync(`${dbPath}${suffix}.moved`, dbPath + suffix);
    expect((await get(server, '/readyz')).status).toBe(200);
    expect((await putMany(c, 'during', 1, 3)).map((r) => r.outcome)).toEqual(['applied', 'applied', 'applied']);
    await server.waitForLog((l) => l.msg === 'database files are back at their paths; accepting writes again', 5_000);
  }, 60_000);
});

describe('/readyz on a full database', () => {
  it('answers 503 while puts fail at --max-db-pages, and 200 before', async () => {
    const { server } = await serve(['--max-db-pages', '40']);
    const c = await connect(server);
    expect((await get(server, '/readyz')).status).toBe(200);
    let seq = 0;
    let failed: Msg | undefined;
    while (failed === undefined && seq < 2000) {
      const [r] = await putMany(c, 'fill', ++seq, 1, 3000);
      if (r.outcome !== 'applied') failed = r;
      else if (seq % 10 === 0) expect((await get(server, '/readyz')).status, `readyz while put ${seq} still applied`).toBe(200);
    }
    expect(failed).toMatchObject({ outcome: 'error', error: { code: 'STORAGE_UNAVAILABLE' } });
    const ready = await get(server, '/readyz');
    expect(ready.status).toBe(503);
    expect(ready.body.error.message).toMatch(/full/);
    // Still failing, still not ready: the answers agree for as long as the fault lasts.
    expect((await putMany(c, 'fill', seq, 1, 3000))[0]).toMatchObject({ outcome: 'error' });
    expect((await get(server, '/readyz')).status).toBe(503);
  }, 60_000);
});
