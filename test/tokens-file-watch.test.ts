import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ChildServer } from './support/child-server.js';
import { Cleanup } from './support/cleanup.js';
import { put, TestClient } from './support/test-client.js';

/**
 * Tokens file updates the way Kubernetes updates a mounted Secret (HTTP.md §8.4), against the real
 * server process. The mount folder holds `tokens.json -> ..data/tokens.json` and
 * `..data -> ..<timestamp>/`; an update writes a new timestamped folder, renames a new `..data`
 * symlink over the old one and deletes the old folder, so `tokens.json` itself never changes.
 */

const cleanup = new Cleanup();

const token = (): string => `T${randomBytes(18).toString('base64url')}`;
const ALPHA = token();
const BETA = token();
const GAMMA = token();

function tokensJson(...entries: Array<[string, string]>): string {
  return JSON.stringify({ tokens: entries.map(([t, tenant]) => ({ token: t, tenant })) });
}

/** A Secret volume as the kubelet lays it out, updated the way the kubelet's atomic writer does. */
class SecretMount {
  private generation = 0;
  private current: string | undefined;

  constructor(readonly dir: string) {}

  get tokensFile(): string {
    return join(this.dir, 'tokens.json');
  }

  /** First layout: the timestamped folder, `..data`, and the user-visible symlink. */
  create(content: string): void {
    mkdirSync(this.dir, { recursive: true });
    this.current = this.writeGeneration(content);
    symlinkSync(this.current, join(this.dir, '..data'));
    symlinkSync('..data/tokens.json', this.tokensFile);
  }

  /** Atomic update: new folder, new `..data_tmp` renamed over `..data`, old folder removed. */
  update(content: string): void {
    const next = this.writeGeneration(content);
    symlinkSync(next, join(this.dir, '..data_tmp'));
    renameSync(join(this.dir, '..data_tmp'), join(this.dir, '..data'));
    if (this.current !== undefined) rmSync(join(this.dir, this.current), { recursive: true, force: true });
    this.current = next;
  }

  private writeGeneration(content: string): string {
    const name = `..2026_12_01_10_00_${String(this.generation++).padStart(2, '0')}.${randomBytes(4).toString('hex')}`;
    mkdirSync(join(this.dir, name));
    writeFileSync(join(this.dir, name, 'tokens.json'), content);
    return name;
  }
}

function withBearer(t: string): WebSocket.ClientOptions {
  return { headers: { authorization: `Bearer ${t}` } };
}

const startServer = (mount: SecretMount): Promise<ChildServer> => cleanup.child({ args: ['--tokens-file', mount.tokensFile] });

const connect = (server: ChildServer, t: string): Promise<TestClient> => cleanup.client(server.url, 'msgpack', withBearer(t));

async function httpStatus(server: ChildServer, t: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${server.port}/v1/streams/s`, { headers: { authorization: `Bearer ${t}` } });
  await res.arrayBuffer();
  return res.status;
}

function closedWithin(c: TestClient, ms: number): Promise<{ code: number; reason: string } | undefined> {
  return Promise.race([c.closed, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms))]);
}

/** Polls `probe` until it returns `want` or `ms` pass; returns the last value seen. */
async function eventually<T>(probe: () => Promise<T>, want: T, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  let last = await probe();
  while (last !== want && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    last = await probe();
  }
  return last;
}

function mountDir(): string {
  const parent = mkdtempSync(join(tmpdir(), 'seqgate-secret-'));
  cleanup.push(() => rmSync(parent, { recursive: true, force: true }));
  return join(parent, 'secret');
}

describe('tokens file mounted as a Kubernetes Secret', () => {
  it('follows an atomic ..data swap: a removed token is closed with 4403 and refused, an added one works, others stay', async () => {
    const mount = new SecretMount(mountDir());
    mount.create(tokensJson([ALPHA, 'alpha'], [BETA, 'beta']));
    const server = await startServer(mount);
    const a = await connect(server, ALPHA);
    const b = await connect(server, BETA);
    expect(await httpStatus(server, GAMMA)).toBe(401);

    mount.update(tokensJson([BETA, 'beta'], [GAMMA, 'gamma']));
    // Watch events arrive within milliseconds; the poll (1000 ms by default) is the backstop.
    expect(await closedWithin(a, 3000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await httpStatus(server, ALPHA)).toBe(401);
    expect(await httpStatus(server, GAMMA)).toBe(200);
    expect(b.ws.readyState).toBe(WebSocket.OPEN);
    b.send({ type: 'put', puts: [put({ stream: 'kept', seq: 1 })] });
    expect((await b.waitResults(1))[0]).toMatchObject({ outcome: 'applied' });

    // A second swap, back again: the watch survives the folder it resolved to being deleted.
    const g = await connect(server, GAMMA);
    mount.update(tokensJson([ALPHA, 'alpha'], [BETA, 'beta']));
    expect(await closedWithin(g, 3000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await httpStatus(server, ALPHA)).toBe(200);
    // The log line follows the close frames: wait for it rather than race the pipe.
    expect(await eventually(async () => server.logLines().filter((l) => l.msg === 'tokens reloaded').length, 2, 3000)).toBe(2);
  });

  it('keeps reloading after the whole mount folder is deleted and recreated, and logs the lost watch', async () => {
    const mount = new SecretMount(mountDir());
    mount.create(tokensJson([ALPHA, 'alpha'], [BETA, 'beta']));
    const server = await startServer(mount);
    const a = await connect(server, ALPHA);

    rmSync(mount.dir, { recursive: true, force: true });
    // While the folder is missing the tokens in force stay in force (a reload cannot read the file).
    await server.waitForLog((l) => l.msg === 'tokens file watch lost its folder; re-establishing it', 5000);
    expect(await httpStatus(server, ALPHA)).toBe(200);
    expect(a.ws.readyState).toBe(WebSocket.OPEN);

    const again = new SecretMount(mount.dir);
    again.create(tokensJson([GAMMA, 'gamma']));
    expect(await closedWithin(a, 4000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await eventually(() => httpStatus(server, GAMMA), 200, 2000)).toBe(200);
    expect(await httpStatus(server, ALPHA)).toBe(401);
    await server.waitForLog((l) => l.msg === 'tokens file watch re-established', 3000);

    // And the re-established watch follows the next swap too.
    const g = await connect(server, GAMMA);
    again.update(tokensJson([BETA, 'beta']));
    expect(await closedWithin(g, 3000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await httpStatus(server, BETA)).toBe(200);
    const errors = server.logLines().filter((l) => Number(l.level) >= 50);
    // Exactly one failed reload is logged for the missing file, not one per poll.
    expect(errors.filter((l) => l.msg === 'token reload failed; keeping the previous tokens').length).toBeLessThanOrEqual(1);
    expect(server.running).toBe(true);
  });

  it('follows a symlink to a file in another folder that is edited in place', async () => {
    const dir = mountDir();
    mkdirSync(dir, { recursive: true });
    const elsewhere = mkdtempSync(join(tmpdir(), 'seqgate-real-'));
    cleanup.push(() => rmSync(elsewhere, { recursive: true, force: true }));
    writeFileSync(join(elsewhere, 'real.json'), tokensJson([ALPHA, 'alpha']));
    symlinkSync(join(elsewhere, 'real.json'), join(dir, 'tokens.json'));
    const server = await startServer({ tokensFile: join(dir, 'tokens.json') } as SecretMount);
    const a = await connect(server, ALPHA);
    writeFileSync(join(elsewhere, 'real.json'), tokensJson([BETA, 'beta']));
    expect(await closedWithin(a, 3000)).toEqual({ code: 4403, reason: 'TOKEN_REVOKED' });
    expect(await httpStatus(server, BETA)).toBe(200);
  });
});
