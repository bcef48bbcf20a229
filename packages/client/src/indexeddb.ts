import type { AnswerEntry, Outbox, OutboxEntry, StreamRecord } from './outbox.js';

/**
 * `@seqgate/client/indexeddb`: an outbox in the browser's IndexedDB, so that a page reload, a
 * closed tab or a killed browser loses no recorded put and the stream goes on in the same epoch.
 * Each Outbox call is one IndexedDB transaction (atomic), committed with `durability: 'strict'`
 * by default (flushed to disk before it completes, like SqliteOutbox's synchronous=FULL).
 */

export interface IndexedDbOutboxOptions {
  /** Database name; one database can hold the outboxes of many streams. Default `seqgate-outbox`. */
  readonly name?: string;
  /** `strict` (default): survives power loss. `relaxed`: survives a crash of the browser, faster. */
  readonly durability?: 'strict' | 'relaxed';
  /** The IndexedDB factory; default `globalThis.indexedDB`. */
  readonly indexedDB?: IDBFactory;
}

const STREAMS = 'streams';
const ENTRIES = 'entries';

interface StoredRecord extends StreamRecord {
  readonly stream: string;
}

interface StoredEntry extends OutboxEntry {
  readonly stream: string;
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error('IndexedDB request failed'));
  });
}

function range(stream: string): IDBKeyRange {
  return IDBKeyRange.bound([stream, -Infinity], [stream, Infinity]);
}

function withoutStream<T extends { stream: string }>(v: T): Omit<T, 'stream'> {
  const { stream: _, ...rest } = v;
  return rest;
}

export class IndexedDbOutbox implements Outbox {
  readonly durable = true;
  readonly name: string;
  private readonly durability: 'strict' | 'relaxed';
  private readonly db: Promise<IDBDatabase>;

  constructor(options: IndexedDbOutboxOptions = {}) {
    this.name = options.name ?? 'seqgate-outbox';
    this.durability = options.durability ?? 'strict';
    const factory = options.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (factory === undefined) throw new TypeError('seqgate IndexedDbOutbox: no IndexedDB here; pass options.indexedDB');
    this.db = new Promise((resolve, reject) => {
      const open = factory.open(this.name, 1);
      open.onupgradeneeded = () => {
        const db = open.result;
        db.createObjectStore(STREAMS, { keyPath: 'stream' });
        db.createObjectStore(ENTRIES, { keyPath: ['stream', 'pos'] });
      };
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error ?? new Error(`cannot open IndexedDB ${this.name}`));
      open.onblocked = () => reject(new Error(`IndexedDB ${this.name} is blocked by another open version`));
    });
    this.db.catch(() => undefined);
  }

  private async tx(mode: IDBTransactionMode): Promise<IDBTransaction> {
    const db = await this.db;
    return mode === 'readonly' ? db.transaction([STREAMS, ENTRIES], mode) : db.transaction([STREAMS, ENTRIES], mode, { durability: this.durability });
  }

  async load(stream: string): Promise<{ record: StreamRecord | null; entries: OutboxEntry[] }> {
    const tx = await this.tx('readonly');
    const [rec, rows] = await Promise.all([
      request(tx.objectStore(STREAMS).get(stream) as IDBRequest<StoredRecord | undefined>),
      request(tx.objectStore(ENTRIES).getAll(range(stream)) as IDBRequest<StoredEntry[]>),
    ]);
    // Keys are [stream, pos]: getAll returns them in pos order.
    return { record: rec === undefined ? null : withoutStream(rec), entries: rows.map(withoutStream) };
  }

  async append(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const tx = await this.tx('readwrite');
    const finished = done(tx);
    tx.objectStore(STREAMS).put({ ...record, stream });
    const store = tx.objectStore(ENTRIES);
    for (const e of entries) store.put({ ...e, stream });
    await finished;
  }

  async settle(stream: string, record: StreamRecord, answers: readonly AnswerEntry[], seen: readonly number[]): Promise<void> {
    const tx = await this.tx('readwrite');
    const finished = done(tx);
    tx.objectStore(STREAMS).put({ ...record, stream });
    const store = tx.objectStore(ENTRIES);
    for (const a of answers) {
      const get = store.get([stream, a.pos]) as IDBRequest<StoredEntry | undefined>;
      get.onsuccess = () => {
        if (get.result !== undefined) store.put({ ...get.result, answer: a.answer });
      };
    }
    for (const pos of seen) store.delete([stream, pos]);
    await finished;
  }

  async replace(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const tx = await this.tx('readwrite');
    const finished = done(tx);
    tx.objectStore(STREAMS).put({ ...record, stream });
    const store = tx.objectStore(ENTRIES);
    const cursor = store.openCursor(range(stream));
    cursor.onsuccess = () => {
      const c = cursor.result;
      if (c !== null) {
        const answer = (c.value as StoredEntry).answer;
        if (answer === undefined || answer === null) c.delete();
        c.continue();
        return;
      }
      for (const e of entries) store.put({ ...e, stream });
    };
    await finished;
  }

  async forget(stream: string): Promise<void> {
    const tx = await this.tx('readwrite');
    const finished = done(tx);
    tx.objectStore(STREAMS).delete(stream);
    tx.objectStore(ENTRIES).delete(range(stream));
    await finished;
  }

  /** Closes the database connection (the client never does; an app closing its outbox may). */
  async close(): Promise<void> {
    (await this.db).close();
  }
}
