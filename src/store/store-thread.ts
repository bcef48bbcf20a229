import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { SeqgateError } from '../errors.js';
import type { ChangePage, ChangeQuery, ChangeRetention, Snapshot } from './change-log.js';
import { FileLostError } from './file-identity.js';
import { processClock } from './retention-clock.js';
import type { SqliteStoreOptions } from './sqlite-store.js';
import { errorFrom, packMessage, unpackMessage, type ErrorInfo, type StoreMethod } from './store-channel.js';
import type { DocResult, Put, PutResult, Store, StoredDocument, StreamHead, Write } from './store.js';

/**
 * The SQLite store on a thread of its own (`--store-thread worker`, ADR 0012).
 *
 * better-sqlite3 is synchronous: on the server's thread, a batch's reads, writes and COMMIT hold
 * the event loop, and with one put in flight per device that thread is the limit while the second
 * core idles. Here the store runs on a worker; this class is its Store face on the server's
 * thread. A batch crosses as one transferred msgpack buffer (store-channel.ts); the server's
 * thread reads and parses frames while the worker commits the batch before.
 *
 * Nothing about ordering changes: the committer still hands over one batch at a time and the worker
 * runs calls in arrival order. Commit times come from this thread's clock, sent with each batch.
 * If the worker dies, every call in flight and every later one fails STORAGE_UNAVAILABLE.
 */
export type StoreThreadOptions = Omit<SqliteStoreOptions, 'now' | 'syncFile'>;

interface Pending {
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: Error) => void;
  readonly committed?: () => void;
}

export class StoreThread implements Store {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly incarnation: string,
    /** The schema version the worker found on open, before migrating (0: new file). */
    readonly openedSchemaVersion: number,
    private readonly options: StoreThreadOptions,
  ) {
    worker.on('message', (bytes: Uint8Array) => this.receive(unpackMessage(bytes) as [number, unknown, unknown]));
    worker.on('error', (err) => this.fail(new SeqgateError('STORAGE_UNAVAILABLE', `store thread failed: ${err.message}`, {}, { cause: err })));
    worker.on('exit', (code) => this.fail(new SeqgateError('STORAGE_UNAVAILABLE', `store thread exited (code ${code})`)));
  }

  /** Starts the worker and opens the database there; rejects as the SqliteStore constructor would throw. */
  static open(options: StoreThreadOptions): Promise<StoreThread> {
    const { onCheckpointError: _c, onFileLost: _f, onSettleError: _s, ...plain } = options;
    const worker = new Worker(workerScript(), { workerData: { options: plain } });
    return new Promise((resolve, reject) => {
      const early = (err: Error): void => reject(err);
      worker.once('error', early);
      worker.once('message', (bytes: Uint8Array) => {
        worker.off('error', early);
        const [, kind, detail] = unpackMessage(bytes) as [0, string, unknown];
        if (kind === 'open') {
          const d = detail as { incarnation: string; openedSchemaVersion: number };
          resolve(new StoreThread(worker, d.incarnation, d.openedSchemaVersion, options));
        } else {
          reject(errorFrom(detail as ErrorInfo));
          void worker.terminate();
        }
      });
    });
  }

  apply(batch: readonly Put[], committed?: () => void): Promise<PutResult[]>;
  apply(batch: readonly Write[], committed?: () => void): Promise<Array<PutResult | DocResult>>;
  apply(batch: readonly Write[], committed?: () => void): Promise<Array<PutResult | DocResult>> {
    return this.call('apply', [batch], processClock.now(), committed) as Promise<Array<PutResult | DocResult>>;
  }
  document(tenant: string, key: string): Promise<StoredDocument | undefined> {
    return this.call('document', [tenant, key]) as Promise<StoredDocument | undefined>;
  }
  async ready(): Promise<void> {
    await this.call('ready', []);
  }
  heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]> {
    return this.call('heads', [tenant, streams]) as Promise<StreamHead[]>;
  }
  prune(olderThan: number, maxRows: number): Promise<{ pruned: number; done: boolean }> {
    return this.call('prune', [olderThan, maxRows]) as Promise<{ pruned: number; done: boolean }>;
  }
  pruneIdempotency(olderThan: number, maxRows: number): Promise<number> {
    return this.call('pruneIdempotency', [olderThan, maxRows]) as Promise<number>;
  }
  readChanges(tenant: string, query: ChangeQuery): Promise<ChangePage> {
    return this.call('readChanges', [tenant, query]) as Promise<ChangePage>;
  }
  changeTail(tenant: string): Promise<number> {
    return this.call('changeTail', [tenant]) as Promise<number>;
  }
  snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number): Promise<Snapshot> {
    return this.call('snapshot', [tenant, prefixes, afterKey, limit]) as Promise<Snapshot>;
  }
  trimChanges(policy: ChangeRetention, maxRows: number): Promise<{ removed: number; done: boolean }> {
    return this.call('trimChanges', [policy, maxRows], processClock.now()) as Promise<{ removed: number; done: boolean }>;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.failure === undefined) await this.call('close', []).catch(() => undefined);
      await this.worker.terminate();
    })();
    return this.closing;
  }

  private call(method: StoreMethod, args: unknown[], now?: number, committed?: () => void): Promise<unknown> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.nextId++;
    let bytes: Uint8Array;
    try {
      bytes = packMessage(now === undefined ? [id, method, args] : [id, method, args, now]);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    return new Promise((resolve, reject) => {
      this.pending.set(id, committed === undefined ? { resolve, reject } : { resolve, reject, committed });
      this.worker.postMessage(bytes, [bytes.buffer as ArrayBuffer]);
    });
  }

  private receive([id, ok, value]: [number, unknown, unknown]): void {
    if (id === 0) {
      this.notice(ok as string, value);
      return;
    }
    const p = this.pending.get(id);
    if (p === undefined) return;
    if (ok === 'committed') {
      p.committed?.();
      return;
    }
    this.pending.delete(id);
    if (ok === true) p.resolve(value);
    else p.reject(errorFrom(value as ErrorInfo));
  }

  private notice(kind: string, detail: unknown): void {
    if (kind === 'checkpoint-error') this.options.onCheckpointError?.(errorFrom(detail as ErrorInfo));
    else if (kind === 'settle-error') this.options.onSettleError?.(errorFrom(detail as ErrorInfo));
    else if (kind === 'file-lost') {
      const d = detail as { path: string; reason: 'removed' | 'replaced' } | null;
      this.options.onFileLost?.(d === null ? undefined : new FileLostError(d.path, d.reason));
    }
  }

  private fail(err: Error): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

/**
 * The worker's script. From dist/ it sits beside this file. Tests run this file from its
 * TypeScript source, which a worker cannot load, so there it is the build's copy (npm test builds
 * first).
 */
function workerScript(): string {
  const here = fileURLToPath(import.meta.url);
  const beside = join(dirname(here), 'sqlite-worker.js');
  if (here.endsWith('.js') || existsSync(beside)) return beside;
  return join(dirname(here), '..', '..', 'dist', 'src', 'store', 'sqlite-worker.js');
}
