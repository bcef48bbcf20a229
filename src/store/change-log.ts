import type { WriteOrigin } from '../batch-gate.js';

/**
 * The change log (transactional outbox): every write that changes a document appends one change,
 * in the same transaction as the document, at the next offset of its tenant's log. Readers resume
 * from an offset and never see a change twice. Every store implements ChangeLog; the contract
 * suite (test/store-contract.test.ts) holds them to the same behaviour.
 *
 * Offsets are per tenant, start at 1, strictly increase and are never reused, even after
 * retention removed the changes that held them. A `version_conflict`, a replay, a rejected put and
 * a write that changes nothing (deleting what does not exist, writing the state a document already
 * has) append nothing.
 */

/** Where a change came from: a put by sequence, or an HTTP document route. */
export type ChangeOrigin = { readonly stream: string; readonly epoch: number; readonly seq: number } | { readonly route: string };

export interface Change {
  readonly offset: number;
  readonly key: string;
  /** The document's version after this change. */
  readonly version: number;
  readonly deleted: boolean;
  /** Canonical msgpack of the state after this change; null when deleted. */
  readonly state: Buffer | null;
  readonly origin: ChangeOrigin;
  /** Commit time, milliseconds since the Unix epoch. */
  readonly committedAt: number;
}

export interface ChangeQuery {
  /** Reads changes with an offset above this; 0 reads from the start of the log. */
  readonly after: number;
  /** Only keys that start with one of these; [''] matches every key. Empty matches nothing. */
  readonly prefixes: readonly string[];
  /** Most changes returned. */
  readonly limit: number;
  /**
   * Most offsets looked at past `after` (a filtered read of a busy log must not scan it all in one
   * call). The page's `next` then moves past what was looked at even when nothing matched.
   */
  readonly maxScan: number;
}

export interface ChangePage {
  /** True when `after` lies below the retained log: its changes were removed by retention. */
  readonly expired: boolean;
  /** Matching changes in offset order; empty when expired. */
  readonly changes: Change[];
  /** Where the next read continues (the last offset looked at); `after` when nothing was. */
  readonly next: number;
  /** The highest offset written so far (0: none). */
  readonly tail: number;
  /** The highest offset removed by retention (0: none); reads after anything below it are expired. */
  readonly trimmedThrough: number;
}

export interface SnapshotDocument {
  readonly key: string;
  readonly version: number;
  /** Canonical msgpack of the current state. */
  readonly state: Buffer;
}

/**
 * Current documents under a prefix and the log offset they correspond to, read in one
 * transaction: a reader that applies them and continues from `offset` misses nothing.
 * Large sets come in pages ordered by key; `afterKey` continues one.
 */
export interface Snapshot {
  readonly offset: number;
  readonly documents: SnapshotDocument[];
  /** Set when more documents follow; pass it as `afterKey` for the next page. */
  readonly nextKey: string | null;
}

/** What the retention pass removes, see ChangeLog.trimChanges. */
export interface ChangeRetention {
  /** Changes committed before this (ms since epoch) may go. */
  readonly olderThan: number;
  /** Per tenant, changes beyond this many newest may go (0: no cap). */
  readonly maxChanges: number;
  /**
   * true: only changes superseded by a later change of the same key go, so the log always
   * replays to the current documents and no offset falls off. false: old changes go outright and
   * readers behind them are told their offset expired.
   */
  readonly compact: boolean;
}

export interface ChangeLog {
  readChanges(tenant: string, query: ChangeQuery): Promise<ChangePage>;
  /** The highest offset written so far for the tenant (0: none). */
  changeTail(tenant: string): Promise<number>;
  snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number): Promise<Snapshot>;
  /**
   * One retention step over up to `maxRows` changes; `done` is true when nothing more is due.
   */
  trimChanges(policy: ChangeRetention, maxRows: number): Promise<{ removed: number; done: boolean }>;
}

/**
 * A change as both stores read it from their change table: the same columns in SQLite and
 * PostgreSQL, but SQLite has no boolean, so there `deleted` is 0 or 1.
 */
export interface ChangeRow {
  offset: number;
  key: string;
  version: number;
  deleted: boolean | number;
  state: Buffer | null;
  stream: string | null;
  epoch: number | null;
  seq: number | null;
  route: string | null;
  committed_at: number;
}

export function changeFromRow(r: ChangeRow): Change {
  return {
    offset: r.offset,
    key: r.key,
    version: r.version,
    deleted: r.deleted === true || r.deleted === 1,
    state: r.state,
    origin: r.stream !== null ? { stream: r.stream, epoch: r.epoch!, seq: r.seq! } : { route: r.route ?? '' },
    committedAt: r.committed_at,
  };
}

/** The origin a change records for a document write of the batch gate. */
export function changeOrigin(origin: WriteOrigin, deleted: boolean): ChangeOrigin {
  if (origin.kind === 'put') return { stream: origin.stream, epoch: origin.epoch, seq: origin.seq };
  if (origin.op === 'create') return { route: 'POST /v1/docs' };
  return { route: deleted ? 'DELETE /v1/docs/{key}' : 'PUT /v1/docs/{key}' };
}

/** One change as the retention pass sees it, oldest first. */
interface TrimCandidate {
  readonly offset: number;
  readonly version: number;
  readonly committedAt: number;
  /** The document's current version (undefined: no row); compaction keeps the latest change of a key. */
  readonly currentVersion: number | undefined;
}

interface TrimPlan {
  /** Offsets to delete. */
  readonly remove: number[];
  /** The highest offset retention (not compaction) removed: raise trimmed_through to it (0: none). */
  readonly trimmedThrough: number;
  /** True when the pass met a change still due to stay: this tenant is done for this pass. */
  readonly reachedNewer: boolean;
  /** The last offset looked at and passed over (compaction continues after it next step). */
  readonly walked: number;
}

/**
 * What one retention step removes from a tenant's oldest changes (`rows`, in offset order, the
 * store read up to its step budget). It walks from the oldest and stops at the first change still
 * due to stay, so retention only ever cuts a prefix of the log (compaction leaves holes, but only
 * where a later change of the same key follows).
 */
export function planTrim(rows: readonly TrimCandidate[], policy: ChangeRetention, lastOffset: number, budget: number, cursor: number): TrimPlan {
  const capThrough = policy.maxChanges > 0 ? lastOffset - policy.maxChanges : 0;
  const remove: number[] = [];
  let trimmedThrough = 0;
  let reachedNewer = rows.length < budget;
  let walked = cursor;
  for (const r of rows) {
    if (!(r.committedAt < policy.olderThan || r.offset <= capThrough)) {
      reachedNewer = true;
      break;
    }
    walked = r.offset;
    if (policy.compact) {
      if (r.currentVersion === undefined || r.currentVersion <= r.version) continue;
    } else {
      trimmedThrough = r.offset;
    }
    remove.push(r.offset);
  }
  return { remove, trimmedThrough, reachedNewer, walked };
}

/** True when `key` lies under one of the prefixes. */
export function underPrefixes(key: string, prefixes: readonly string[]): boolean {
  for (const p of prefixes) if (key.startsWith(p)) return true;
  return false;
}
