import type { Logger } from 'pino';
import type { ChangeLog, ChangePage, ChangeQuery } from '../store/change-log.js';

/**
 * Tells waiting readers (long-polls, SSE streams, WebSocket subscriptions) that their tenant's log
 * grew. The server pokes it after every committed batch; a timer also polls while anyone waits,
 * because with a shared database (PostgreSQL) other servers append too. A wake-up only says
 * "read again": readers always read from the store, so a missed or early wake-up costs latency,
 * never a change.
 */

interface Waiter {
  readonly after: number;
  readonly finish: (changed: boolean) => void;
}

interface ChangeFeedOptions {
  /** How often tenants with waiters are checked for changes made elsewhere; 0 turns polling off. */
  readonly pollIntervalMs: number;
}

export class ChangeFeed {
  private readonly waiters = new Map<string, Set<Waiter>>();
  /** Reads in progress or just done, shared by readers asking the same thing in the same turn. */
  private readonly shared = new Map<string, Promise<ChangePage>>();
  /** Tails read in this turn, shared the same way (every waiter checks the tail before it waits). */
  private readonly tails = new Map<string, Promise<number>>();
  private checking = false;
  private again = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private isStopped = false;

  constructor(
    private readonly log: ChangeLog,
    private readonly options: ChangeFeedOptions,
    private readonly logger?: Logger,
  ) {}

  /**
   * Resolves true once the tenant's tail is above `after`, false when `timeoutMs` passes or
   * `signal` aborts first. Resolves at once when the tail already is above `after`.
   */
  async waitForChange(tenant: string, after: number, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    if (this.isStopped || signal?.aborted) return false;
    if ((await this.tail(tenant)) > after) return true;
    return new Promise<boolean>((resolve) => {
      let set = this.waiters.get(tenant);
      if (set === undefined) this.waiters.set(tenant, (set = new Set()));
      const done = (value: boolean): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const s = this.waiters.get(tenant);
        s?.delete(waiter);
        if (s?.size === 0) this.waiters.delete(tenant);
        resolve(value);
      };
      const onAbort = (): void => done(false);
      const waiter: Waiter = { after, finish: done };
      const timer = setTimeout(() => done(false), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      set.add(waiter);
      this.ensurePolling();
    });
  }

  /**
   * Reads a page of the log. Readers woken by one commit all ask for the same page (same tenant,
   * offset and prefix): the first one's read serves them all until the event loop turns, so 1,000
   * subscribers of one prefix cost one read, not 1,000. Every commit on this server clears the
   * shared pages (poke), so a reader woken by a commit never gets a page from before it; a commit
   * by another server is seen after the turn, when the page is forgotten.
   */
  read(tenant: string, query: ChangeQuery): Promise<ChangePage> {
    const key = `${tenant}\u0000${query.after}\u0000${query.limit}\u0000${query.maxScan}\u0000${query.prefixes.join('\u0000')}`;
    let page = this.shared.get(key);
    if (page === undefined) {
      page = this.log.readChanges(tenant, query);
      this.shared.set(key, page);
      const forget = (): void => {
        setImmediate(() => {
          if (this.shared.get(key) === page) this.shared.delete(key);
        });
      };
      page.then(forget, forget);
    }
    return page;
  }

  /**
   * The tenant's tail, shared like read(): 1,000 subscribers going back to wait after one commit
   * ask the store once. A commit on this server clears it (poke), so a waiter never compares
   * against a tail from before a commit whose wake-up it has already missed.
   */
  private tail(tenant: string): Promise<number> {
    let tail = this.tails.get(tenant);
    if (tail === undefined) {
      tail = this.log.changeTail(tenant);
      this.tails.set(tenant, tail);
      const forget = (): void => {
        setImmediate(() => {
          if (this.tails.get(tenant) === tail) this.tails.delete(tenant);
        });
      };
      tail.then(forget, forget);
    }
    return tail;
  }

  /** A batch committed: check the tails of the tenants someone waits on. */
  poke(): void {
    // A page or tail read before this commit must not be handed to a reader woken by it.
    this.shared.clear();
    this.tails.clear();
    if (this.waiters.size === 0) return;
    if (this.checking) {
      this.again = true;
      return;
    }
    this.checking = true;
    void this.check().finally(() => {
      this.checking = false;
      if (this.again) {
        this.again = false;
        this.poke();
      }
    });
  }

  /** After stop(): readers should end instead of waiting again. */
  get stopped(): boolean {
    return this.isStopped;
  }

  get waiting(): number {
    let n = 0;
    for (const s of this.waiters.values()) n += s.size;
    return n;
  }

  private async check(): Promise<void> {
    for (const [tenant, set] of [...this.waiters]) {
      let tail: number;
      try {
        tail = await this.log.changeTail(tenant);
      } catch (err) {
        this.logger?.warn({ err }, 'changefeed: reading the log tail failed; readers will retry');
        continue;
      }
      for (const w of [...set]) if (tail > w.after) w.finish(true);
    }
  }

  private ensurePolling(): void {
    if (this.pollTimer !== undefined || this.options.pollIntervalMs <= 0 || this.isStopped) return;
    this.pollTimer = setInterval(() => {
      if (this.waiters.size === 0) {
        clearInterval(this.pollTimer);
        this.pollTimer = undefined;
        return;
      }
      this.poke();
    }, this.options.pollIntervalMs);
    this.pollTimer.unref();
  }

  /** Wakes nobody again: every waiter resolves false at once. */
  stop(): void {
    this.isStopped = true;
    clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    for (const set of [...this.waiters.values()]) for (const w of [...set]) w.finish(false);
  }
}
