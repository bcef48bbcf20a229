import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/**
 * WAL checkpoints off the commit path. With SQLite's own autocheckpoint, the COMMIT that pushes
 * the WAL past 1000 pages also copies every page back into the database file and syncs it, on the
 * event loop, inside the time a batch's answers wait. Here the store's connection sets
 * `wal_autocheckpoint = 0` and a worker thread with its own connection runs PASSIVE checkpoints
 * beside the commits: a PASSIVE checkpoint never blocks the writer, and the writer never waits for
 * it. Durability is unchanged: a commit is durable once its WAL frames are synced (synchronous=FULL
 * syncs the WAL at every COMMIT); a checkpoint only moves already durable pages, and a crash in
 * the middle of one is repaired from the WAL on the next open, as with SQLite's own checkpoints.
 *
 * Bounded WAL: under continuous writes a PASSIVE checkpoint rarely finds every frame copied at the
 * moment the next write begins, and the WAL only rewinds to its start then. So the store watches
 * the WAL file (`walBytes()`); past its bound it asks for a checkpoint at once
 * (`afterNextCheckpoint`), then holds new batches while one more copies what was written
 * meanwhile, so that none is left behind: the store's next write rewinds the WAL, and
 * `journal_size_limit` truncates the file (SqliteStore.rewindIfLong). (A RESTART checkpoint in
 * the worker would instead wait for a gap between the writer's transactions while holding the
 * checkpoint lock, and under continuous writes that gap rarely comes.)
 */

interface WalCheckpointerOptions {
  readonly path: string;
  readonly synchronous: 'full' | 'normal';
  /** Least time between two checkpoints while writes continue, ms (fewer, larger checkpoints). */
  readonly intervalMs: number;
  /** Called with each failure of a checkpoint (the next one retries). */
  readonly onError?: (err: Error) => void;
}

interface CheckpointReport {
  readonly busy: number;
  readonly log: number;
  readonly checkpointed: number;
}

/**
 * The worker is a short CommonJS script evaluated in place rather than a file of its own: it
 * then runs the same way from the compiled package and under the test runner, which loads
 * sources that a worker thread could not import.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('synchronous = ' + (workerData.synchronous === 'full' ? 'FULL' : 'NORMAL'));
db.pragma('busy_timeout = 1000');
db.pragma('wal_autocheckpoint = 0');
parentPort.on('message', (m) => {
  if (m === 'close') {
    db.close();
    parentPort.close();
    return;
  }
  try {
    const [r] = db.pragma('wal_checkpoint(PASSIVE)');
    parentPort.postMessage({ busy: r.busy, log: r.log, checkpointed: r.checkpointed });
  } catch (err) {
    parentPort.postMessage({ error: String(err && err.message || err) });
  }
});
`;

export class WalCheckpointer {
  private readonly worker: Worker;
  /** A checkpoint request is with the worker and not yet answered. */
  private outstanding = false;
  /** Commits happened since the last request was sent. */
  private dirty = false;
  private lastSent = 0;
  private afterNext: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly exited: Promise<void>;
  /** The last checkpoint's report; for tests and metrics. */
  last: CheckpointReport | undefined;
  checkpoints = 0;
  /** Checkpoints that copied frames (others found the lock taken, or nothing new). */
  productive = 0;

  constructor(private readonly options: WalCheckpointerOptions) {
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { driver, path: options.path, synchronous: options.synchronous },
    });
    // The worker must not keep a process alive that is otherwise done (tests, CLI tools).
    this.worker.unref();
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('error', (err) => options.onError?.(err));
    this.worker.on('message', (m: CheckpointReport | { error: string }) => {
      this.outstanding = false;
      if ('error' in m) options.onError?.(new Error(`WAL checkpoint failed: ${m.error}`));
      else {
        this.last = m;
        this.checkpoints++;
        if (m.checkpointed > 0) this.productive++;
      }
      for (const f of this.afterNext.splice(0)) f();
      if (this.dirty) this.request();
    });
  }

  /**
   * Runs `then` once the worker's next checkpoint has ended (failed ones too), asking for it now
   * rather than after the interval. A checkpoint right behind the worker's has only the frames
   * written meanwhile left to copy.
   */
  afterNextCheckpoint(then: () => void): void {
    if (this.closed) return;
    this.afterNext.push(then);
    if (this.outstanding) return;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.lastSent = -Infinity;
    this.request();
  }

  /**
   * Size of the WAL file in bytes: an upper bound on the frames not yet rewound (the file is
   * reused from its start after a rewind, and truncated to the store's journal_size_limit).
   */
  walBytes(): number {
    try {
      return statSync(`${this.options.path}-wal`).size;
    } catch {
      return 0;
    }
  }

  /** After a commit: there are frames to copy. Cheap; coalesces with a checkpoint under way. */
  committed(): void {
    if (this.closed) return;
    this.dirty = true;
    this.request();
  }

  private request(): void {
    if (this.outstanding || this.closed || this.timer !== undefined) return;
    const wait = this.lastSent + this.options.intervalMs - performance.now();
    if (wait > 0) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.request();
      }, wait);
      this.timer.unref();
      return;
    }
    this.dirty = false;
    this.outstanding = true;
    this.lastSent = performance.now();
    this.worker.postMessage('run');
  }

  /** Stops the worker and closes its connection (before the store's own connection closes). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    // Waiting for the worker must keep the process alive (it is unref'd while it runs).
    this.worker.ref();
    this.worker.postMessage('close');
    await Promise.race([this.exited, new Promise<void>((resolve) => setTimeout(resolve, 5000).unref())]);
    await this.worker.terminate();
  }
}
