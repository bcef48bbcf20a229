import { advanceHead, decide, type DocumentMeta, type StoredAck } from './gate.js';
import { decideCreate, decideReplace, type DocumentRow, type IdempotencyRecord } from './document-gate.js';
import { acksToEvict, afterForgetting, comparePositions, type Position } from './retention.js';
import { isDocWrite, type Ack, type DocResult, type Head, type Put, type PutResult, type Write } from './store/store.js';

/**
 * A whole batch through the gate. The store hands in a reader over the rows as they were when its
 * transaction started (under its locks, where it has them); this returns every answer, in order,
 * and the rows to write. Within the batch each write sees the writes before it, exactly as if the
 * batch's writes had been sent one by one, because this keeps the batch's own changes on top of
 * what the reader returns. A store carries the plan out in the same transaction and commits.
 *
 * `Id` is however the store names a stream row (SQLite: an integer; null for a stream with no row).
 */

export interface StreamRow<Id> extends Head {
  readonly id: Id;
  readonly ackCount: number;
}

/** Reads of the state before the batch. Called only for what the batch needs, at most once each. */
export interface BatchReader<Id> {
  stream(tenant: string, name: string): StreamRow<Id> | undefined;
  /** The stored ack at (put.epoch, put.seq) of this stream, with the put's stream name filled in. */
  ack(streamId: Id, put: Put): StoredAck | undefined;
  documentMeta(tenant: string, key: string): DocumentMeta | undefined;
  /** The full row: the document routes compare states. */
  document(tenant: string, key: string): DocumentRow | undefined;
  idempotency(tenant: string, scope: string, key: string): IdempotencyRecord | undefined;
  /** Up to `limit` of the stream's acks in position order, strictly after `after` (null: from the first). */
  oldestAcks(streamId: Id, after: Position | null, limit: number): Position[];
}

interface BatchOptions {
  readonly contiguous: boolean;
  readonly ackCapPerStream: number;
  /** How far above the cap a stream may go before eviction takes it back down to the cap (default 0). */
  readonly ackCapSlack?: number;
  readonly now: number;
}

interface AckWrite {
  readonly fingerprint: Buffer;
  readonly ack: Ack;
}

/** A stream whose head moved: write its row, insert `acks`, and delete its acks up to `evictThrough`. */
interface StreamWrite<Id> {
  readonly tenant: string;
  readonly name: string;
  /** null: the stream has no row yet; insert one. */
  readonly id: Id | null;
  readonly head: Head;
  readonly ackCount: number;
  /** Delete every stored ack of the stream at or below this position (cap eviction); null: none. */
  readonly evictThrough: Position | null;
  /** Acks to insert, in position order; none of them is at or below `evictThrough`. */
  readonly acks: readonly AckWrite[];
}

/** Where a document write came from: the change it makes is attributed to this. */
export type WriteOrigin =
  | { readonly kind: 'put'; readonly stream: string; readonly epoch: number; readonly seq: number }
  | { readonly kind: 'route'; readonly op: 'replace' | 'create' };

/**
 * One write that changes a document, in batch order: each is exactly one change (a no-op or a
 * version_conflict writes nothing). The same key may appear more than once; the last one wins.
 */
interface DocumentUpsert {
  readonly tenant: string;
  readonly key: string;
  readonly row: DocumentRow;
  readonly origin: WriteOrigin;
}

interface IdempotencyInsert {
  readonly tenant: string;
  readonly scope: string;
  readonly idempotencyKey: string;
  readonly record: IdempotencyRecord;
}

export interface BatchPlan<Id> {
  readonly results: Array<PutResult | DocResult>;
  readonly streams: ReadonlyArray<StreamWrite<Id>>;
  readonly documents: readonly DocumentUpsert[];
  readonly idempotency: readonly IdempotencyInsert[];
}

/** How many of a stream's oldest acks to read at a time when the cap evicts. */
const EVICTION_READ = 64;

interface StreamState<Id> {
  readonly tenant: string;
  readonly name: string;
  readonly id: Id | null;
  head: Head;
  ackCount: number;
  dirty: boolean;
  /** Acks consumed in this batch, in position order; the first `evictedInserted` are evicted again. */
  inserted: AckWrite[];
  evictedInserted: number;
  /** Stored acks read for eviction, and how far into them eviction has gone. */
  stored: Position[];
  storedNext: number;
  storedExhausted: boolean;
  evictedThrough: Position | null;
}

function atOrBelow(p: Position, limit: Position | null): boolean {
  return limit !== null && comparePositions(p, limit) <= 0;
}

/** Acks consumed in one batch rise strictly, so a retry within the batch is found by bisection. */
function findInserted(acks: readonly AckWrite[], put: Put): AckWrite | undefined {
  let lo = 0;
  let hi = acks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = comparePositions(acks[mid]!.ack, put);
    if (c === 0) return acks[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

export function planBatch<Id>(batch: readonly Write[], reader: BatchReader<Id>, options: BatchOptions): BatchPlan<Id> {
  const { now } = options;
  const streams = new Map<string, StreamState<Id>>();
  const docs = new Map<string, DocumentRow>();
  const records = new Map<string, IdempotencyRecord>();
  const documents: DocumentUpsert[] = [];
  const idempotency: IdempotencyInsert[] = [];
  const results: Array<PutResult | DocResult> = [];

  const documentRow = (tenant: string, key: string): DocumentRow | undefined => docs.get(tenant + '\u0000' + key) ?? reader.document(tenant, key);
  const writeDocument = (tenant: string, key: string, row: DocumentRow, origin: WriteOrigin): void => {
    docs.set(tenant + '\u0000' + key, row);
    documents.push({ tenant, key, row, origin });
  };

  /** Evicts the oldest ack; `wanted` (this one included) sizes a read of stored acks. */
  const evictOldest = (s: StreamState<Id>, wanted: number): void => {
    let oldest: Position | undefined;
    if (s.storedNext < s.stored.length) oldest = s.stored[s.storedNext++];
    else if (!s.storedExhausted && s.id !== null) {
      const limit = Math.max(EVICTION_READ, wanted);
      s.stored = reader.oldestAcks(s.id, s.evictedThrough, limit);
      s.storedNext = 0;
      s.storedExhausted = s.stored.length < limit;
      oldest = s.stored[s.storedNext++];
    }
    // Stored acks all sit at or below the old head, so this batch's own acks come after them.
    if (oldest === undefined) oldest = s.inserted[s.evictedInserted++]?.ack;
    if (oldest === undefined) return;
    s.evictedThrough = { epoch: oldest.epoch, seq: oldest.seq };
    s.ackCount--;
    s.head = afterForgetting(s.head, oldest);
  };

  for (const w of batch) {
    if (isDocWrite(w)) {
      if (w.op === 'create') {
        const slot = w.tenant + '\u0000' + w.scope + '\u0000' + w.idempotencyKey;
        const d = decideCreate(w, records.get(slot) ?? reader.idempotency(w.tenant, w.scope, w.idempotencyKey), now);
        if (d.write !== null) {
          records.set(slot, d.record);
          writeDocument(w.tenant, w.key, d.write, { kind: 'route', op: 'create' });
          idempotency.push({ tenant: w.tenant, scope: w.scope, idempotencyKey: w.idempotencyKey, record: d.record });
        }
        results.push(d.result);
      } else {
        const d = decideReplace(w, documentRow(w.tenant, w.key), now);
        if (d.write !== null) writeDocument(w.tenant, w.key, d.write, { kind: 'route', op: 'replace' });
        results.push(d.result);
      }
      continue;
    }

    const put = w;
    const streamKey = put.tenant + '\u0000' + put.stream;
    let s = streams.get(streamKey);
    if (s === undefined) {
      const row = reader.stream(put.tenant, put.stream);
      s = {
        tenant: put.tenant,
        name: put.stream,
        id: row?.id ?? null,
        head: row ? { epoch: row.epoch, seq: row.seq, prunedThrough: row.prunedThrough } : { epoch: 0, seq: 0, prunedThrough: 0 },
        ackCount: row?.ackCount ?? 0,
        dirty: false,
        inserted: [],
        evictedInserted: 0,
        stored: [],
        storedNext: 0,
        storedExhausted: false,
        evictedThrough: null,
      };
      streams.set(streamKey, s);
    }
    const state = s;
    const decision = decide(put, {
      head: state.head,
      storedAck: () => {
        if (atOrBelow(put, state.evictedThrough)) return undefined;
        return findInserted(state.inserted, put) ?? (state.id === null ? undefined : reader.ack(state.id, put));
      },
      document: () => {
        const own = docs.get(put.tenant + '\u0000' + put.key);
        return own !== undefined ? own : reader.documentMeta(put.tenant, put.key);
      },
      contiguous: options.contiguous,
      now,
    });

    if (decision.kind === 'replay') {
      results.push({ kind: 'ack', ack: decision.ack, replay: true });
      continue;
    }
    if (decision.kind === 'reject') {
      results.push({ kind: 'rejected', ...decision.rejection });
      continue;
    }

    const { ack, write } = decision;
    if (write !== null) {
      writeDocument(
        put.tenant,
        put.key,
        { version: write.version, deleted: write.deleted, state: write.state, updatedAt: now },
        { kind: 'put', stream: put.stream, epoch: put.epoch, seq: put.seq },
      );
    }
    state.head = advanceHead(state.head, put);
    state.dirty = true;
    state.inserted.push({ fingerprint: put.fingerprint, ack });
    state.ackCount++;
    const due = acksToEvict(state.ackCount, options.ackCapPerStream, options.ackCapSlack ?? 0);
    for (let i = due; i > 0; i--) evictOldest(state, i);
    results.push({ kind: 'ack', ack, replay: false });
  }

  const writes: Array<StreamWrite<Id>> = [];
  for (const s of streams.values()) {
    if (!s.dirty) continue;
    writes.push({
      tenant: s.tenant,
      name: s.name,
      id: s.id,
      head: s.head,
      ackCount: s.ackCount,
      evictThrough: s.evictedThrough,
      acks: s.evictedInserted === 0 ? s.inserted : s.inserted.slice(s.evictedInserted),
    });
  }
  return { results, streams: writes, documents, idempotency };
}
