import type { ChangeQuery, ChangeRetention } from '../../src/store/change-log.js';
import type { SqliteStore } from '../../src/store/sqlite-store.js';
import { isDocWrite, type DocResult, type Put, type PutResult, type Store, type StreamHead, type Write } from '../../src/store/store.js';

/**
 * A store wrapper for tests: holds every batch until released (so puts can be lined up behind a
 * batch in flight), records what it was given, and can make reads fail.
 */
export class HeldStore implements Store {
  /** The puts of every batch applied so far, in order (document writes left out). */
  readonly batches: Put[][] = [];
  /** Writes (puts and document writes) handed to apply so far. */
  writes = 0;
  failReads = false;
  private release: (() => void) | undefined;
  private held: Promise<void> = Promise.resolve();

  constructor(readonly inner: SqliteStore) {}

  get incarnation(): string {
    return this.inner.incarnation;
  }
  hold(): void {
    this.held = new Promise((resolve) => {
      this.release = resolve;
    });
  }
  open(): void {
    this.release?.();
  }

  apply(batch: readonly Put[]): Promise<PutResult[]>;
  apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>>;
  async apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>> {
    this.batches.push(batch.filter((w): w is Put => !isDocWrite(w)));
    this.writes += batch.length;
    await this.held;
    return this.inner.apply(batch);
  }

  heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]> {
    if (this.failReads) return Promise.reject(new Error('injected read failure'));
    return this.inner.heads(tenant, streams);
  }

  document(tenant: string, key: string) {
    if (this.failReads) return Promise.reject(new Error('injected read failure'));
    return this.inner.document(tenant, key);
  }

  ready() {
    return this.inner.ready();
  }
  readChanges(tenant: string, query: ChangeQuery) {
    return this.inner.readChanges(tenant, query);
  }
  changeTail(tenant: string) {
    return this.inner.changeTail(tenant);
  }
  snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number) {
    return this.inner.snapshot(tenant, prefixes, afterKey, limit);
  }
  trimChanges(policy: ChangeRetention, maxRows: number) {
    return this.inner.trimChanges(policy, maxRows);
  }
  prune(olderThan: number, maxRows: number) {
    return this.inner.prune(olderThan, maxRows);
  }
  pruneIdempotency(olderThan: number, maxRows: number) {
    return this.inner.pruneIdempotency(olderThan, maxRows);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
