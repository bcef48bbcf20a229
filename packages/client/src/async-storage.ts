import type { AnswerEntry, Outbox, OutboxEntry, StoredAnswer, StreamRecord } from './outbox.js';
import type { OffsetStore, VersionStore } from './subscription.js';

/**
 * `@seqgate/client/async-storage`: an outbox over any key-value store shaped like React Native's
 * AsyncStorage (`getItem`, `setItem`, `removeItem`, strings in and out), for apps that have no
 * SQLite. Such stores write one key atomically but nothing across keys, so each stream lives in
 * exactly one key: every Outbox call reads the stream's value, changes it and writes it back whole.
 * That keeps each call atomic; it also makes each write cost the size of the stream's outbox, so
 * it suits outboxes of hundreds of puts, not of hundreds of thousands.
 *
 * Subscriptions' offsets and IdempotentConsumer's applied versions are kept under the same prefix,
 * one key each (`<prefix>\x1Foffset\x1F<name>`, `<prefix>\x1Fversion\x1F<key>`): every update
 * touches one key, so none needs multiSet (whose atomicity AsyncStorage does not promise), and
 * a stream name cannot contain a control character, so these keys never meet a stream's key.
 *
 * ```ts
 * import AsyncStorage from '@react-native-async-storage/async-storage';
 * import { SeqgateClient } from '@seqgate/client';
 * import { KeyValueOutbox } from '@seqgate/client/async-storage';
 *
 * const client = new SeqgateClient({ url, stream: installId, outbox: new KeyValueOutbox(AsyncStorage) });
 * ```
 */

export interface KeyValueStore {
  getItem(key: string): Promise<string | null>;
  setItem(key: string, value: string): Promise<void>;
  removeItem(key: string): Promise<void>;
}

export interface KeyValueOutboxOptions {
  /** Prefix of the keys this outbox uses (one per stream). Default `seqgate-outbox:`. */
  readonly prefix?: string;
}

interface StoredEntry {
  readonly pos: number;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  /** base64 of the canonical state; null for a delete. */
  readonly state: string | null;
  readonly ifVersion: number | null;
  readonly createdAt: number;
  readonly answer?: StoredAnswer | null;
}

interface StoredStream {
  readonly v: 1;
  readonly record: StreamRecord;
  readonly entries: StoredEntry[];
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = new Map([...B64].map((c, i) => [c, i]));

function toBase64(b: Uint8Array): string {
  let out = '';
  for (let i = 0; i < b.length; i += 3) {
    const n = (b[i]! << 16) | ((b[i + 1] ?? 0) << 8) | (b[i + 2] ?? 0);
    out += B64[n >> 18]! + B64[(n >> 12) & 63]! + (i + 1 < b.length ? B64[(n >> 6) & 63]! : '=') + (i + 2 < b.length ? B64[n & 63]! : '=');
  }
  return out;
}

function fromBase64(s: string): Uint8Array {
  const pad = s.endsWith('==') ? 2 : s.endsWith('=') ? 1 : 0;
  const out = new Uint8Array((s.length / 4) * 3 - pad);
  let p = 0;
  for (let i = 0; i < s.length; i += 4) {
    const n = (B64_INDEX.get(s[i]!)! << 18) | (B64_INDEX.get(s[i + 1]!)! << 12) | ((B64_INDEX.get(s[i + 2]!) ?? 0) << 6) | (B64_INDEX.get(s[i + 3]!) ?? 0);
    if (p < out.length) out[p++] = n >> 16;
    if (p < out.length) out[p++] = (n >> 8) & 0xff;
    if (p < out.length) out[p++] = n & 0xff;
  }
  return out;
}

function store(e: OutboxEntry): StoredEntry {
  return { ...e, state: e.state === null ? null : toBase64(e.state) };
}

/** U+001F: no stream name may hold a control character (wire/names.ts), so no stream key has it. */
const SEPARATOR = '\x1F';

export class KeyValueOutbox implements Outbox, OffsetStore, VersionStore {
  readonly durable = true;
  private readonly prefix: string;
  /** markApplied reads then writes; calls on one instance run one after the other so none is lost. */
  private versionWrites: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly kv: KeyValueStore,
    options: KeyValueOutboxOptions = {},
  ) {
    this.prefix = options.prefix ?? 'seqgate-outbox:';
  }

  private async read(stream: string): Promise<StoredStream | null> {
    const raw = await this.kv.getItem(this.prefix + stream);
    if (raw === null) return null;
    const parsed = JSON.parse(raw) as StoredStream;
    if (parsed.v !== 1) throw new Error(`outbox key ${this.prefix + stream} has format ${String(parsed.v)}, unknown to this client`);
    return parsed;
  }

  private write(stream: string, record: StreamRecord, entries: StoredEntry[]): Promise<void> {
    entries.sort((a, b) => a.pos - b.pos);
    const value: StoredStream = { v: 1, record, entries };
    return this.kv.setItem(this.prefix + stream, JSON.stringify(value));
  }

  async load(stream: string): Promise<{ record: StreamRecord | null; entries: OutboxEntry[] }> {
    const s = await this.read(stream);
    if (s === null) return { record: null, entries: [] };
    return {
      record: { ...s.record, checkpoint: s.record.checkpoint },
      entries: s.entries.map((e) => ({ ...e, state: e.state === null ? null : fromBase64(e.state) })),
    };
  }

  async append(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const s = await this.read(stream);
    const kept = (s?.entries ?? []).filter((e) => !entries.some((n) => n.pos === e.pos));
    await this.write(stream, record, [...kept, ...entries.map(store)]);
  }

  async settle(stream: string, record: StreamRecord, answers: readonly AnswerEntry[], seen: readonly number[]): Promise<void> {
    const s = await this.read(stream);
    const byPos = new Map(answers.map((a) => [a.pos, a.answer]));
    const gone = new Set(seen);
    const entries = (s?.entries ?? []).filter((e) => !gone.has(e.pos)).map((e) => (byPos.has(e.pos) ? { ...e, answer: byPos.get(e.pos)! } : e));
    await this.write(stream, record, entries);
  }

  async replace(stream: string, record: StreamRecord, entries: readonly OutboxEntry[]): Promise<void> {
    const s = await this.read(stream);
    const answered = (s?.entries ?? []).filter((e) => e.answer !== undefined && e.answer !== null);
    await this.write(stream, record, [...answered, ...entries.map(store)]);
  }

  async forget(stream: string): Promise<void> {
    await this.kv.removeItem(this.prefix + stream);
  }

  private offsetKey(name: string): string {
    return `${this.prefix}${SEPARATOR}offset${SEPARATOR}${name}`;
  }

  private versionKey(key: string): string {
    return `${this.prefix}${SEPARATOR}version${SEPARATOR}${key}`;
  }

  async loadOffset(name: string): Promise<string | null> {
    return this.kv.getItem(this.offsetKey(name));
  }

  async saveOffset(name: string, offset: string): Promise<void> {
    await this.kv.setItem(this.offsetKey(name), offset);
  }

  async appliedVersion(key: string): Promise<number | undefined> {
    const raw = await this.kv.getItem(this.versionKey(key));
    return raw === null ? undefined : Number(raw);
  }

  /** Never lowers a key's version (as SqliteOutbox's max()). */
  markApplied(key: string, version: number): Promise<void> {
    const write = this.versionWrites.then(async () => {
      const seen = await this.appliedVersion(key);
      if (seen === undefined || seen < version) await this.kv.setItem(this.versionKey(key), String(version));
    });
    this.versionWrites = write.catch(() => undefined);
    return write;
  }
}
