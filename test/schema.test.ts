import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SCHEMA_VERSION } from '../src/store/sqlite-schema.js';
import { SqliteStore } from '../src/store/sqlite-store.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'seqgate-schema-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const open = (path: string) => new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 10 });

describe('on-disk schema', () => {
  it('creates a new file at the current schema version with a random incarnation id', async () => {
    const a = open(join(dir, 'a.db'));
    const b = open(join(dir, 'b.db'));
    expect(a.openedSchemaVersion).toBe(0);
    expect(a.database.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(a.incarnation).toMatch(/^[0-9a-f-]{36}$/);
    expect(a.incarnation).not.toBe(b.incarnation);
    await a.close();
    await b.close();
  });

  it('keeps the incarnation id and data across restarts', async () => {
    const path = join(dir, 'db');
    const first = open(path);
    const id = first.incarnation;
    await first.close();
    const again = open(path);
    expect(again.incarnation).toBe(id);
    expect(again.openedSchemaVersion).toBe(SCHEMA_VERSION);
    await again.close();
  });

  it('migrates an older file forward on start', async () => {
    const path = join(dir, 'old.db');
    const raw = new Database(path);
    raw.pragma('user_version = 0');
    raw.close();
    const store = open(path);
    expect(store.openedSchemaVersion).toBe(0);
    expect(store.database.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    await store.close();
  });

  it('refuses a file written by a newer seqgate instead of guessing', () => {
    const path = join(dir, 'new.db');
    const raw = new Database(path);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    expect(() => open(path)).toThrow(/newer than this seqgate understands/);
  });

  it('uses WAL with synchronous=FULL by default and NORMAL when asked', async () => {
    const full = open(join(dir, 'full.db'));
    expect(full.database.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(full.database.pragma('synchronous', { simple: true })).toBe(2);
    const normal = new SqliteStore({ path: join(dir, 'n.db'), synchronous: 'normal', contiguous: false, ackCapPerStream: 10 });
    expect(normal.database.pragma('synchronous', { simple: true })).toBe(1);
    await full.close();
    await normal.close();
  });
});
