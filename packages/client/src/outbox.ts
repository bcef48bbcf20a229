import type { StoredAnswer } from './answer.js';
import type { Position } from './types.js';

export type { StoredAnswer };

/**
 * Where the client keeps, per stream, its counters, the puts not yet answered, and the answers
 * the application has not yet seen. The client records a put here before it sends it, stores its
 * answer in the same entry, and removes the entry once the application has seen the answer. Every
 * method is one atomic step: after a crash the outbox holds either the state before a call or the
 * state after. test/client/outbox-contract.ts is the suite every implementation must pass.
 *
 * MemoryOutbox (below) is the default; SqliteOutbox (`@seqgate/client/node`), IndexedDbOutbox
 * (`@seqgate/client/indexeddb`) and KeyValueOutbox over AsyncStorage (`@seqgate/client/async-storage`)
 * survive a restart.
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
  /** The answer, once there is one and until the application has seen it; absent before. */
  readonly answer?: StoredAnswer | null;
}

/** An answer to store in the entry at `pos`. */
export interface AnswerEntry {
  readonly pos: number;
  readonly answer: StoredAnswer;
}

export interface Outbox {
  /** True when entries survive the process (the client reports this in ClientClosedError). */
  readonly durable: boolean;
  /** The stream's record (null if none) and its entries, ordered by pos. */
  load(stream: string): Promise<{ record: StreamRecord | null; entries: OutboxEntry[] }>;
  /** Adds entries and stores the record, atomically. */
  append(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void>;
  /**
   * Atomically: stores the record, stores each answer in its entry (an entry that is gone stays
   * gone), and removes the entries at the `seen` positions (answers the application has seen).
   */
  settle(stream: string, record: StreamRecord, answers: readonly AnswerEntry[], seen: readonly number[]): Promise<void>;
  /** Replaces the record and every entry without an answer, atomically; answered entries stay. */
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

  async settle(stream: string, record: StreamRecord, answers: readonly AnswerEntry[], seen: readonly number[]): Promise<void> {
    const d = this.data(stream);
    d.record = { ...record };
    for (const a of answers) {
      const e = d.entries.get(a.pos);
      if (e !== undefined) d.entries.set(a.pos, { ...e, answer: a.answer });
    }
    for (const p of seen) d.entries.delete(p);
  }

  async replace(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const d = this.data(stream);
    d.record = { ...record };
    const kept = [...d.entries.values()].filter((e) => e.answer !== undefined && e.answer !== null);
    d.entries = new Map([...kept, ...entries].map((e) => [e.pos, { ...e }]));
  }

  async forget(stream: string): Promise<void> {
    this.streams.delete(stream);
  }
}
