import type { AnswerEntry, Outbox, OutboxEntry, StreamRecord } from './outbox.js';
import type { OffsetStore, VersionStore } from './subscription.js';

/**
 * `@seqgate/client/indexeddb`: an outbox in the browser's IndexedDB, so that a page reload, a
 * closed tab or a killed browser loses no recorded put and the stream goes on in the same epoch.
 * Each Outbox call is one IndexedDB transaction (atomic), committed with `durability: 'strict'`
 * by default (flushed to disk before it completes, like SqliteOutbox's synchronous=FULL).
 * Subscriptions keep their offsets, and IdempotentConsumer its applied versions, in two more
 * object stores of the same database, so they live and die with the outbox's entries.
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
const OFFSETS = 'offsets';
const VERSIONS = 'versions';
/** 2 added the offsets and versions stores; a version-1 database keeps its streams and entries. */
const SCHEMA_VERSION = 2;

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

export class IndexedDbOutbox implements Outbox, OffsetStore, VersionStore {
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
      const open = factory.open(this.name, SCHEMA_VERSION);
      open.onupgradeneeded = (event) => {
        // Runs inside the versionchange transaction: either every step lands or the database stays
        // at its old version with everything it held.
        const db = open.result;
        if (event.oldVersion < 1) {
          db.createObjectStore(STREAMS, { keyPath: 'stream' });
          db.createObjectStore(ENTRIES, { keyPath: ['stream', 'pos'] });
        }
        if (event.oldVersion < 2) {
          db.createObjectStore(OFFSETS, { keyPath: 'name' });
          db.createObjectStore(VERSIONS, { keyPath: 'key' });
        }
      };
      open.onsuccess = () => {
        const db = open.result;
        // A newer client in another tab wants to upgrade: let it, rather than block it for as long
        // as this page lives. Calls on this instance fail from then on; the page should reload.
        db.onversionchange = () => db.close();
        resolve(db);
      };
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

  async loadOffset(name: string): Promise<string | null> {
    const db = await this.db;
    const row = await request(db.transaction(OFFSETS, 'readonly').objectStore(OFFSETS).get(name) as IDBRequest<{ offset: string } | undefined>);
    return row?.offset ?? null;
  }

  async saveOffset(name: string, offset: string): Promise<void> {
    const db = await this.db;
    const tx = db.transaction(OFFSETS, 'readwrite', { durability: this.durability });
    const finished = done(tx);
    tx.objectStore(OFFSETS).put({ name, offset });
    await finished;
  }

  async appliedVersion(key: string): Promise<number | undefined> {
    const db = await this.db;
    const row = await request(db.transaction(VERSIONS, 'readonly').objectStore(VERSIONS).get(key) as IDBRequest<{ version: number } | undefined>);
    return row?.version;
  }

  /** Never lowers a key's version (as SqliteOutbox's max()): the read and the write are one transaction. */
  async markApplied(key: string, version: number): Promise<void> {
    const db = await this.db;
    const tx = db.transaction(VERSIONS, 'readwrite', { durability: this.durability });
    const finished = done(tx);
    const store = tx.objectStore(VERSIONS);
    const get = store.get(key) as IDBRequest<{ version: number } | undefined>;
    get.onsuccess = () => {
      if (get.result === undefined || get.result.version < version) store.put({ key, version });
    };
    await finished;
  }

  /** Closes the database connection (the client never does; an app closing its outbox may). */
  async close(): Promise<void> {
    (await this.db).close();
  }
}
