import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { putFingerprint } from '../src/protocol/canonical.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import type { Put } from '../src/store/store.js';

/**
 * WAL checkpoints off the commit path (--wal-checkpoint background): the store's connection never
 * checkpoints, a worker thread does, the WAL stays bounded under continuous writes, and every
 * commit is in the database after a reopen. (The crash suites run the real server with this
 * default and prove that acked puts survive SIGKILL at any moment, checkpoints included.)
 */

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempPath(): string {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-wal-'));
  dirs.push(dir);
  return join(dir, 'db.sqlite');
}

/** A state of about 3 KiB, different per seq, so each put dirties its own page. */
function put(stream: string, seq: number): Put {
  const key = `${stream}/k${seq}`;
  const state = Buffer.concat([Buffer.from([0xc5, 0x0c, 0x00]), Buffer.alloc(3072, seq & 0xff)]);
  return { tenant: 'default', stream, epoch: 1, seq, key, state, ifVersion: null, fingerprint: putFingerprint(key, state, null) };
}

const MAX_WAL = 1024 * 1024;

async function writeBatches(store: SqliteStore, batches: number, perBatch: number, onEach?: () => void): Promise<void> {
  let seq = 0;
  for (let b = 0; b < batches; b++) {
    const puts = Array.from({ length: perBatch }, () => put('s', ++seq));
    const results = await store.apply(puts);
    expect(results.every((r) => r.kind === 'ack' && !r.replay)).toBe(true);
    onEach?.();
    // Commits keep coming, but the event loop turns between them, as in the server.
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** A store with background checkpoints and its WAL bounded at MAX_WAL. */
function boundedStore(path: string): SqliteStore {
  return new SqliteStore({
    path,
    synchronous: 'full',
    contiguous: false,
    ackCapPerStream: 100_000,
    walCheckpoint: 'background',
    maxWalBytes: MAX_WAL,
  });
}

/** Batches of 10 puts (about 150 KiB), watching the WAL file after each: its largest size, and how often it shrank (a rewind truncated it). */
async function writeWatchingWal(store: SqliteStore, path: string, batches: number): Promise<{ maxWal: number; truncations: number }> {
  let maxWal = 0;
  let lastWal = 0;
  let truncations = 0;
  await writeBatches(store, batches, 10, () => {
    const size = statSync(`${path}-wal`).size;
    if (size < lastWal) truncations++;
    lastWal = size;
    maxWal = Math.max(maxWal, size);
  });
  return { maxWal, truncations };
}

describe('background WAL checkpoints', () => {
  it('checkpoint on a worker, keep the WAL bounded under continuous writes, and lose nothing across a reopen', async () => {
    const path = tempPath();
    const store = boundedStore(path);
    expect(store.database.pragma('wal_autocheckpoint', { simple: true })).toBe(0);
    // 300 batches × 10 puts × ~3 KiB: about 9 MiB of pages through a WAL bounded at 1 MiB.
    const { maxWal, truncations } = await writeWatchingWal(store, path, 300);
    const checkpointer = store.walCheckpointer!;
    const deadline = Date.now() + 5000;
    while (checkpointer.productive === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(checkpointer.checkpoints).toBeGreaterThan(0);
    expect(checkpointer.productive).toBeGreaterThan(0);
    // Past the bound, batches wait while the worker copies the last frames, and the next batch
    // rewinds the WAL (then truncated to the bound). Batches are held at twice the bound at the
    // latest, so it stays under that plus one batch (about 150 KiB here), against 9 MiB written.
    expect(truncations).toBeGreaterThanOrEqual(2);
    expect(maxWal).toBeLessThan(2.5 * MAX_WAL);
    await store.close();

    const again = new SqliteStore({ path, synchronous: 'full', contiguous: false, ackCapPerStream: 100_000 });
    try {
      expect((await again.heads('default', ['s']))[0]).toMatchObject({ epoch: 1, seq: 3000 });
      expect((await again.document('default', 's/k3000'))?.state).toEqual(put('s', 3000).state);
      const [r] = await again.apply([put('s', 1)]);
      expect(r).toMatchObject({ kind: 'ack', replay: true });
    } finally {
      await again.close();
    }
  });

  it('holds batches for the worker at most REWIND_WAIT_MS, then checkpoints on its own connection', async () => {
    const path = tempPath();
    const store = boundedStore(path);
    try {
      // A worker that answers the first checkpoint of each rewind (so batches are held) and never the second.
      const checkpointer = store.walCheckpointer!;
      let asked = 0;
      checkpointer.afterNextCheckpoint = (then) => {
        if (asked++ % 2 === 0) setImmediate(then);
      };
      const started = performance.now();
      // 30 batches of about 150 KiB: past the 1 MiB bound two or three times.
      const { maxWal, truncations } = await writeWatchingWal(store, path, 30);
      const elapsed = performance.now() - started;
      expect(asked).toBeGreaterThanOrEqual(4);
      // Held for the 1 s fallback each time, and let go each time.
      expect(elapsed).toBeGreaterThan(1000 * Math.floor(asked / 2) - 100);
      // The store's own checkpoint let the WAL rewind.
      expect(truncations).toBeGreaterThanOrEqual(1);
      expect(maxWal).toBeLessThan(2 * MAX_WAL);
    } finally {
      await store.close();
    }
  });

  it('closes in a process with nothing else to do, instead of exiting while close() awaits the worker', () => {
    // The compiled store (npm run build), as a tool or script would load it.
    const storeModule = fileURLToPath(new URL('../dist/src/store/sqlite-store.js', import.meta.url));
    const script = `
      import { SqliteStore } from ${JSON.stringify(storeModule)};
      const store = new SqliteStore({ path: ${JSON.stringify(tempPath())}, synchronous: 'full', contiguous: false, ackCapPerStream: 10, walCheckpoint: 'background' });
      await store.ready();
      await store.close();
      console.log('closed');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe('closed');
  });

  it('leaves checkpoints to SQLite inside the commit with walCheckpoint commit (the default of the store class)', async () => {
    const store = new SqliteStore({ path: tempPath(), synchronous: 'full', contiguous: false, ackCapPerStream: 10 });
    try {
      expect(store.walCheckpointer).toBeUndefined();
      expect(store.database.pragma('wal_autocheckpoint', { simple: true })).toBe(1000);
    } finally {
      await store.close();
    }
  });
});
