import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type WebSocket from 'ws';
import { ChildServer, tempDb, type ChildServerOptions } from './child-server.js';
import { DbChecker } from './db-checker.js';
import { startTestServer, TestClient, type Format, type TestServer } from './test-client.js';

/**
 * What a test opens, undone after it in reverse order: servers (in-process or child processes),
 * clients, database checkers, temporary folders. One per test file, created at module level; it
 * registers its own afterEach. `push` adds any other undo step.
 */
export class Cleanup {
  private readonly undo: Array<() => Promise<void> | void> = [];

  constructor() {
    afterEach(async () => {
      for (const f of this.undo.splice(0).reverse()) await f();
    });
  }

  push(step: () => Promise<void> | void): void {
    this.undo.push(step);
  }

  /** Drops the newest undo step (a test that undid it itself). */
  pop(): void {
    this.undo.pop();
  }

  tempDir(prefix: string): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    this.push(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  /** An in-process server on its own temporary database. */
  async server(overrides: Parameters<typeof startTestServer>[0] = {}, options: Parameters<typeof startTestServer>[1] = {}): Promise<TestServer> {
    const t = await startTestServer(overrides, options);
    this.push(() => t.stop());
    return t;
  }

  /** The real server as a child process (dist/src/cli.js) on its own temporary database, started. */
  async child(options: Omit<ChildServerOptions, 'dbPath'> = {}, prefix?: string): Promise<ChildServer> {
    const db = tempDb(prefix);
    this.push(() => db.remove());
    const server = new ChildServer({ ...options, dbPath: db.dbPath });
    this.push(() => server.dispose());
    await server.start();
    return server;
  }

  /** A test protocol client; the connection is cut after the test. */
  async client(url: string, format: Format = 'msgpack', options: WebSocket.ClientOptions = {}): Promise<TestClient> {
    const c = await TestClient.connect(url, format, options);
    this.push(() => {
      c.ws.terminate();
    });
    return c;
  }

  /** Raw-SQL reads of a database file, closed after the test. */
  checker(dbPath: string): DbChecker {
    const db = new DbChecker(dbPath);
    this.push(() => db.close());
    return db;
  }
}
