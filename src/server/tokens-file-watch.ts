import { realpathSync, statSync, watch, type FSWatcher } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import { guarded } from './listener-guard.js';

/**
 * Notices changes of the tokens file, however they are made, and asks for a check.
 *
 * Two mechanisms, because neither is enough alone:
 * - fs.watch on the folders involved, for a prompt reaction. It watches the folder that holds the
 *   path (where editors rename files over the old one, and where Kubernetes swaps its `..data`
 *   symlink) and, when the path is a symlink, the folder of the file it resolves to. Any event in
 *   those folders triggers a check: event names cannot be trusted to name the tokens file (a
 *   Kubernetes update only touches `..data` and timestamped folders).
 * - A poll every `pollMs`, for correctness. A watch hears nothing once its folder is deleted and
 *   recreated, on many network and overlay file systems, or when inotify runs out of watches. The
 *   poll also checks each watched folder's identity (device and inode) and re-establishes a watch
 *   whose folder is gone or was replaced, logging it.
 *
 * A check is the caller's: it compares the file's content with the content in force (see
 * Authenticator.reloadIfChanged), so spurious events and polls cost one small file read. Nothing
 * here may throw into a timer or an event: the process must not exit because of a file system.
 */

interface TokensFileWatchOptions {
  readonly pollMs: number;
  /** Events within this window are coalesced into one check (editors write in several steps). */
  readonly debounceMs?: number;
  readonly onCheck: () => void;
  readonly log: Logger;
}

interface Watched {
  readonly dir: string;
  readonly dev: number;
  readonly ino: number;
  readonly watcher: FSWatcher;
}

function identity(dir: string): { dev: number; ino: number } | undefined {
  const st = statSync(dir, { throwIfNoEntry: false });
  return st?.isDirectory() ? { dev: st.dev, ino: st.ino } : undefined;
}

export class TokensFileWatch {
  private readonly watched = new Map<string, Watched>();
  private pollTimer: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  /** Last problem logged per folder, so a folder that stays missing is logged once, not every poll. */
  private readonly reported = new Map<string, string>();
  private closed = false;
  private readonly check: () => void;

  constructor(
    private readonly path: string,
    private readonly options: TokensFileWatchOptions,
  ) {
    this.check = guarded(options.log, 'tokens file check', () => options.onCheck());
  }

  start(): void {
    this.closed = false;
    this.ensureWatches();
    this.pollTimer = setInterval(
      guarded(this.options.log, 'tokens file poll', () => this.poll()),
      this.options.pollMs,
    );
    this.pollTimer.unref();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.pollTimer);
    clearTimeout(this.debounce);
    for (const w of this.watched.values()) w.watcher.close();
    this.watched.clear();
  }

  /** Folders to watch now: the path's own folder, and the resolved file's folder if elsewhere. */
  private folders(): string[] {
    const own = dirname(resolve(this.path));
    let real: string | undefined;
    try {
      real = dirname(realpathSync(this.path));
    } catch {
      // A missing file (or a dangling link) leaves only the path's own folder to watch.
    }
    return real === undefined || real === own ? [own] : [own, real];
  }

  private poll(): void {
    if (this.closed) return;
    this.ensureWatches();
    this.check();
  }

  private scheduleCheck(): void {
    if (this.closed) return;
    clearTimeout(this.debounce);
    this.debounce = setTimeout(() => this.check(), this.options.debounceMs ?? 100);
  }

  /** Drops watches of folders that are gone, replaced or no longer involved, and opens the missing ones. */
  private ensureWatches(): void {
    try {
      const wanted = this.folders();
      for (const [dir, w] of this.watched) {
        if (!wanted.includes(dir)) {
          // Only the resolved file's folder moves (a symlink swapped to a new folder): no news.
          this.unwatch(w);
          continue;
        }
        const now = identity(dir);
        if (now === undefined || now.dev !== w.dev || now.ino !== w.ino) {
          this.options.log.warn(
            { dir, tokensFile: this.path, reason: now === undefined ? 'removed' : 'replaced' },
            'tokens file watch lost its folder; re-establishing it',
          );
          this.reported.set(dir, 'lost');
          this.unwatch(w);
        }
      }
      for (const dir of wanted) if (!this.watched.has(dir)) this.watchFolder(dir);
    } catch (err) {
      this.options.log.error({ err }, 'tokens file watch could not be re-established; polling continues');
    }
  }

  private unwatch(w: Watched): void {
    this.watched.delete(w.dir);
    try {
      w.watcher.close();
    } catch {
      // Closing a dead watcher has nothing left to release.
    }
  }

  private watchFolder(dir: string): void {
    const id = identity(dir);
    if (id === undefined) {
      this.report(dir, 'missing', () =>
        this.options.log.warn({ dir, tokensFile: this.path }, 'tokens file folder is missing; polling until it is back (the previous tokens stay in force)'),
      );
      return;
    }
    let watcher: FSWatcher;
    try {
      watcher = watch(
        dir,
        { persistent: false },
        guarded(this.options.log, 'tokens file watch event', () => this.scheduleCheck()),
      );
    } catch (err) {
      this.report(dir, `watch failed: ${(err as Error).message}`, () =>
        this.options.log.warn({ err, dir }, `cannot watch the tokens file folder; changes are noticed by polling every ${this.options.pollMs} ms`),
      );
      return;
    }
    const w: Watched = { dir, ...id, watcher };
    // Without a listener an 'error' event (the folder vanished, too many watches) would end the process.
    watcher.on(
      'error',
      guarded(this.options.log, 'tokens file watch error handler', (err: Error) => {
        this.options.log.warn({ err, dir }, 'tokens file watch failed; re-establishing it');
        this.reported.set(dir, 'lost');
        if (this.watched.get(dir) === w) this.unwatch(w);
        this.scheduleCheck();
      }),
    );
    this.watched.set(dir, w);
    if (this.reported.delete(dir)) this.options.log.info({ dir }, 'tokens file watch re-established');
    // The file may have changed while no watch was open (at start: since it was first read).
    this.scheduleCheck();
  }

  private report(dir: string, problem: string, log: () => void): void {
    if (this.reported.get(dir) === problem) return;
    this.reported.set(dir, problem);
    log();
  }
}
