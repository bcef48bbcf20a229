import type { Position } from './types.js';

/**
 * Where the client keeps, per stream, its counters and the puts not yet answered. The client
 * records a put here before it sends it, and removes it after the answer. Every method is one
 * atomic step: after a crash the outbox holds either the state before a call or the state after.
 *
 * MemoryOutbox (below) is the default; SqliteOutbox (`seqgate/client/node`) survives a restart.
 * Any storage with atomic writes can implement it (IndexedDB, AsyncStorage with one key, …).
 */

export interface StreamRecord {
  /** The epoch this client writes; null until its first welcome decides it. */
  readonly epoch: number | null;
  /** The seq the next put gets. */
  readonly nextSeq: number;
  /** The highest position the server acked to this client, for rollback detection. */
  readonly lastAcked: Position | null;
  /** The server incarnation of the last welcome, for rollback detection. */
  readonly incarnation: string | null;
  /** The checkpoint of the last put recorded (PutOptions.checkpoint), or undefined. */
  readonly checkpoint: unknown;
}

export interface OutboxEntry {
  /** Order of recording; unique per stream, increasing. */
  readonly pos: number;
  /** 0 and 0 while the put waits for its stream's first welcome to fix the epoch. */
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  /** The state as encoded MessagePack; null for a delete. */
  readonly state: Uint8Array | null;
  readonly ifVersion: number | null;
  /** Wall-clock milliseconds when put() was called. */
  readonly createdAt: number;
}

export interface Outbox {
  /** True when entries survive the process (the client reports this in ClientClosedError). */
  readonly durable: boolean;
  /** The stream's record (null if none) and its entries, ordered by pos. */
  load(stream: string): Promise<{ record: StreamRecord | null; entries: OutboxEntry[] }>;
  /** Adds entries and stores the record, atomically. */
  append(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void>;
  /** Removes the entries at these positions and stores the record, atomically. */
  settle(stream: string, record: StreamRecord, positions: readonly number[]): Promise<void>;
  /** Replaces the record and all entries of the stream, atomically. */
  replace(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void>;
  /** Deletes the stream's record and entries: the next client starts as after a counter loss. */
  forget(stream: string): Promise<void>;
}

interface StreamData {
  record: StreamRecord | null;
  entries: Map<number, OutboxEntry>;
}

/**
 * Keeps everything in memory: it survives reconnects and a new client on the same instance, not a
 * restart of the process. A client that starts on an empty one fences the stream's previous epoch.
 */
export class MemoryOutbox implements Outbox {
  readonly durable = false;
  private readonly streams = new Map<string, StreamData>();

  private data(stream: string): StreamData {
    let d = this.streams.get(stream);
    if (d === undefined) {
      d = { record: null, entries: new Map() };
      this.streams.set(stream, d);
    }
    return d;
  }

  async load(stream: string): Promise<{ record: StreamRecord | null; entries: OutboxEntry[] }> {
    const d = this.streams.get(stream);
    if (d === undefined) return { record: null, entries: [] };
    return { record: d.record, entries: [...d.entries.values()].sort((a, b) => a.pos - b.pos) };
  }

  async append(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const d = this.data(stream);
    d.record = { ...record };
    for (const e of entries) d.entries.set(e.pos, { ...e });
  }

  async settle(stream: string, record: StreamRecord, positions: readonly number[]): Promise<void> {
    const d = this.data(stream);
    d.record = { ...record };
    for (const p of positions) d.entries.delete(p);
  }

  async replace(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const d = this.data(stream);
    d.record = { ...record };
    d.entries = new Map(entries.map((e) => [e.pos, { ...e }]));
  }

  async forget(stream: string): Promise<void> {
    this.streams.delete(stream);
  }
}
