import { close, closeSync, constants, fdatasync, fsync, openSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * The fsync of the WAL, off the event loop (`walSync: 'background'`, ADR 0011).
 *
 * With SQLite's synchronous=FULL, every COMMIT ends in an fsync of the WAL on the thread that
 * commits: for the 1-10 ms it takes, the event loop reads no frame and answers no one. Instead
 * the connection commits with synchronous=NORMAL (the WAL frames are written, not synced) and this
 * class runs `fdatasync` of the WAL on libuv's thread pool. What makes that as strong as FULL is
 * the rule the store keeps: nothing that reflects a commit leaves the store before a sync that
 * started after that commit has finished. `durable()` is that wait; the store puts it after every
 * batch and every read (acks, replays, heads, documents, changes).
 *
 * One sync is in flight at a time. Commits made while it runs are covered by the next one, which
 * starts as soon as it ends: under load, one fdatasync covers many batches.
 *
 * A failed sync is final: after a failed fsync Linux may have dropped the dirty pages it could not
 * write, and a second fsync then reports success (PostgreSQL's "fsyncgate", 2018). So every later
 * durable() rejects with the same error until the process restarts and SQLite reads the WAL again.
 */
export type SyncFile = (fd: number) => Promise<void>;

export class WalSyncError extends Error {
  override readonly name = 'WalSyncError';
  constructor(path: string, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(`fdatasync of ${path} failed (${reason}): commits since the last good sync may not be durable; restart the server`, { cause });
  }
}

interface Waiter {
  readonly commit: number;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
}

const RESOLVED = Promise.resolve();

export class WalSync {
  /** Commits made on the connection, counted by the store. */
  private commits = 0;
  /** Every commit up to this one is on disk. */
  private synced = 0;
  private inFlight: Promise<void> | undefined;
  /** In commit order: a sync that covers one covers every one before it. */
  private waiters: Waiter[] = [];
  private failure: WalSyncError | undefined;
  private fd: number | undefined;
  private directorySynced = false;

  /**
   * `walPath` must exist (SQLite creates it when the connection first reads); it is opened here,
   * not created. `syncFile` replaces fdatasync in tests that hold or fail a sync.
   */
  constructor(
    private readonly walPath: string,
    private readonly syncFile: SyncFile = datasync,
  ) {
    // A checkpoint that rewinds the WAL truncates it in place: the inode, and so this fd, stay.
    this.fd = openSync(walPath, 'r+');
  }

  /** Counts a COMMIT made on the store's connection; call it right after each one. */
  committed(): void {
    this.commits++;
  }

  /** Set once a sync has failed: the store refuses writes and reads from then on. */
  get failed(): WalSyncError | undefined {
    return this.failure;
  }

  /** Resolves once every commit counted before this call is on disk; rejects if a sync failed. */
  durable(): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.synced >= this.commits) return RESOLVED;
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ commit: this.commits, resolve, reject });
      this.start();
    });
  }

  /** Waits for the sync in flight, then closes the file. Later durable() calls reject. */
  async close(): Promise<void> {
    await this.inFlight?.catch(() => undefined);
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    this.failure ??= new WalSyncError(this.walPath, new Error('closed'));
  }

  private start(): void {
    if (this.inFlight !== undefined || this.failure !== undefined || this.fd === undefined) return;
    const covers = this.commits;
    const fd = this.fd;
    this.inFlight = this.syncOnce(fd).then(
      () => {
        this.inFlight = undefined;
        this.synced = covers;
        let n = 0;
        while (n < this.waiters.length && this.waiters[n]!.commit <= covers) n++;
        for (const w of this.waiters.splice(0, n)) w.resolve();
        if (this.waiters.length > 0) this.start();
      },
      (err: unknown) => {
        this.inFlight = undefined;
        this.failure = new WalSyncError(this.walPath, err);
        for (const w of this.waiters.splice(0)) w.reject(this.failure);
      },
    );
  }

  private async syncOnce(fd: number): Promise<void> {
    await this.syncFile(fd);
    // SQLite syncs the directory after creating a WAL, at the WAL's first sync; with the
    // connection on NORMAL that sync is ours. Once per process is enough: the WAL is never
    // deleted while the store's connection is open.
    if (!this.directorySynced) {
      await syncDirectory(dirname(this.walPath));
      this.directorySynced = true;
    }
  }
}

function datasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

function syncDirectory(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (err) {
      reject(err as Error);
      return;
    }
    fsync(fd, (err) => close(fd, () => (err ? reject(err) : resolve())));
  });
}
