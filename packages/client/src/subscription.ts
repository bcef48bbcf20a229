import type { WebSocketConstructor, WebSocketLike } from './client.js';

/**
 * Reading the changefeed (PROTOCOL.md §16) from the client: a subscription to a key prefix that
 * resumes where it stopped, across reconnects and restarts. The offset is saved only after the
 * handler has finished with a batch, so every change reaches the handler at least once; an
 * IdempotentConsumer in front of a side effect makes that at most once per (key, version).
 */

/** A change as the server sends it under the JSON subprotocol. */
export interface Change {
  readonly offset: string;
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
  /** The state as JSON; null when deleted, or when JSON cannot carry it (then see stateMsgpack). */
  readonly state: unknown;
  /** Base64 of the canonical MessagePack, only for a state JSON cannot carry. */
  readonly stateMsgpack?: string;
  readonly origin: { readonly stream: string; readonly epoch: number; readonly seq: number } | { readonly route: string };
  readonly committedAt: number;
}

/** Where subscriptions keep their offsets. Every durable outbox (SQLite, IndexedDB, key-value) is one, next to its entries. */
export interface OffsetStore {
  loadOffset(name: string): Promise<string | null>;
  saveOffset(name: string, offset: string): Promise<void>;
}

export class MemoryOffsetStore implements OffsetStore {
  private readonly offsets = new Map<string, string>();
  async loadOffset(name: string): Promise<string | null> {
    return this.offsets.get(name) ?? null;
  }
  async saveOffset(name: string, offset: string): Promise<void> {
    this.offsets.set(name, offset);
  }
}

/** The offset is gone (retention) or from another database: restart from GET /v1/changes/snapshot. */
export class SubscriptionOffsetError extends Error {
  override readonly name = 'SubscriptionOffsetError';
  constructor(
    readonly code: 'OFFSET_EXPIRED' | 'OFFSET_UNKNOWN' | 'INVALID_OFFSET',
    message: string,
    readonly earliest?: string,
  ) {
    super(message);
  }
}

/** The server refused the subscription for good (FORBIDDEN, a bad prefix, a changefeed that is off). */
export class SubscriptionRefusedError extends Error {
  override readonly name = 'SubscriptionRefusedError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface SubscribeOptions {
  readonly url: string;
  readonly prefix: string;
  /** Where to start when the store holds no offset for `name`: `-1` (default), `now`, or a saved offset. */
  readonly from?: string;
  /** The offset's name in the store; defaults to `prefix`. */
  readonly name?: string;
  readonly offsets?: OffsetStore;
  /** Called for each batch, in order; the next batch waits for it. Throwing stops the subscription. */
  readonly onChanges: (changes: readonly Change[], next: string) => void | Promise<void>;
  /** A final error: the subscription has stopped (reconnectable trouble is retried silently). */
  readonly onError?: (error: Error) => void;
  readonly WebSocket?: WebSocketConstructor;
  readonly token?: string;
  readonly reconnect?: { readonly initialDelayMs?: number; readonly maxDelayMs?: number };
}

const SUBSCRIPTION_ID = 1;
const FINAL_OFFSET_CODES = new Set(['OFFSET_EXPIRED', 'OFFSET_UNKNOWN', 'INVALID_OFFSET']);

export class Subscription {
  private ws: WebSocketLike | undefined;
  private closed = false;
  private attempt = 0;
  private current: string | null = null;
  /** Batches received and not yet handled; handled one at a time, in order. */
  private queue: Promise<void> = Promise.resolve();
  private caughtUp!: () => void;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** Resolves the first time the subscription has delivered everything committed so far. */
  readonly upToDate: Promise<void> = new Promise((resolve) => {
    this.caughtUp = resolve;
  });

  private constructor(
    private readonly options: SubscribeOptions,
    private readonly offsets: OffsetStore,
  ) {}

  static async start(options: SubscribeOptions): Promise<Subscription> {
    const sub = new Subscription(options, options.offsets ?? new MemoryOffsetStore());
    sub.current = await sub.offsets.loadOffset(sub.name);
    sub.connect();
    return sub;
  }

  /** The last offset whose batch the handler finished (and the store saved); null before the first. */
  get offset(): string | null {
    return this.current;
  }

  private get name(): string {
    return this.options.name ?? this.options.prefix;
  }

  private connect(): void {
    if (this.closed) return;
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Ctor === undefined) throw new Error('no WebSocket implementation: pass options.WebSocket');
    const ws = new Ctor(this.options.url, 'seqgate.v1.json');
    this.ws = ws;
    ws.onopen = () => {
      if (this.options.token !== undefined) ws.send(JSON.stringify({ type: 'hello', token: this.options.token }));
      ws.send(JSON.stringify({ type: 'subscribe', id: SUBSCRIPTION_ID, prefix: this.options.prefix, from: this.current ?? this.options.from ?? '-1' }));
    };
    ws.onmessage = (event: { data: unknown }) => this.receive(String(event.data));
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.scheduleReconnect();
    };
    ws.onerror = () => undefined;
  }

  private receive(text: string): void {
    let message: { type?: string; id?: unknown; code?: string; message?: string; earliest?: string; changes?: Change[]; next?: string; upToDate?: boolean };
    try {
      message = JSON.parse(text) as typeof message;
    } catch {
      return;
    }
    if (message.type === 'subscribed') this.attempt = 0;
    if (message.type === 'changes' && message.id === SUBSCRIPTION_ID) {
      const { changes = [], next, upToDate } = message;
      this.queue = this.queue
        .then(async () => {
          if (this.closed || next === undefined) return;
          if (changes.length > 0) await this.options.onChanges(changes, next);
          // Saved only once the handler is done: a crash before this replays the batch, never skips it.
          await this.offsets.saveOffset(this.name, next);
          this.current = next;
          if (upToDate === true) this.caughtUp();
        })
        .catch((err: unknown) => this.fail(err instanceof Error ? err : new Error(String(err))));
      return;
    }
    if (message.type === 'error' && message.code !== undefined) {
      // Connection-level trouble (storage, unauthorised hello) is retried by reconnecting; an
      // offset or grant problem is final.
      if (FINAL_OFFSET_CODES.has(message.code)) {
        this.fail(new SubscriptionOffsetError(message.code as 'OFFSET_EXPIRED', message.message ?? message.code, message.earliest));
      } else if (message.id === SUBSCRIPTION_ID && message.code !== 'STORAGE_UNAVAILABLE') {
        this.fail(new SubscriptionRefusedError(message.code, message.message ?? message.code));
      } else {
        this.ws?.close();
      }
    }
  }

  private scheduleReconnect(): void {
    if (this.closed) return;
    const initial = this.options.reconnect?.initialDelayMs ?? 100;
    const max = this.options.reconnect?.maxDelayMs ?? 10_000;
    const delay = Math.random() * Math.min(max, initial * 2 ** this.attempt++);
    // Reconnect only after every batch received so far is handled, so `from` is the latest offset.
    this.timer = setTimeout(() => {
      void this.queue.then(() => this.connect());
    }, delay);
  }

  private fail(error: Error): void {
    if (this.closed) return;
    void this.close();
    this.options.onError?.(error);
  }

  /** Stops receiving; a batch in the handler finishes (and its offset is saved) first. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = undefined;
    ws?.close();
    await this.queue.catch(() => undefined);
  }
}

/** Remembers the highest version applied per key; every durable outbox is one. */
export interface VersionStore {
  appliedVersion(key: string): Promise<number | undefined>;
  markApplied(key: string, version: number): Promise<void>;
}

export class MemoryVersionStore implements VersionStore {
  private readonly versions = new Map<string, number>();
  async appliedVersion(key: string): Promise<number | undefined> {
    return this.versions.get(key);
  }
  async markApplied(key: string, version: number): Promise<void> {
    this.versions.set(key, version);
  }
}

/**
 * Applies each (key, version) at most once, for consumers that write elsewhere: a change at or
 * below the version already applied for its key is skipped. Versions of a key only rise, so a
 * replayed batch, a resubscription from an older offset or a snapshot page newer than its offset
 * never applies anything twice or goes back in time. For exactly-once effects, keep the version
 * store in the same transaction as the effect.
 */
export class IdempotentConsumer {
  constructor(private readonly versions: VersionStore = new MemoryVersionStore()) {}

  /** Runs `effect` for the change unless it (or a later version of its key) was applied; true when it ran. */
  async apply(change: Pick<Change, 'key' | 'version'>, effect: () => void | Promise<void>): Promise<boolean> {
    const seen = await this.versions.appliedVersion(change.key);
    if (seen !== undefined && change.version <= seen) return false;
    await effect();
    await this.versions.markApplied(change.key, change.version);
    return true;
  }
}
