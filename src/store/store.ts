/**
 * The storage boundary. A store takes a batch of validated puts and answers one result per put,
 * in order, after the batch is durable. A store decides nothing itself: inside its transaction it
 * reads rows, hands them to the gate (src/batch-gate.ts, built on src/gate.ts, src/document-gate.ts
 * and src/retention.ts) and writes the plan it gets back. The SQLite store is the default, and
 * test/store-contract.test.ts holds every implementation to the same behaviour.
 */

import type { ChangeLog } from './change-log.js';

export const DEFAULT_TENANT = 'default';

/** A put that passed shape and limit checks. */
export interface Put {
  readonly tenant: string;
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  /** Canonical msgpack of the new state; null deletes the document. */
  readonly state: Buffer | null;
  readonly ifVersion: number | null;
  /** 16 bytes, see putFingerprint. */
  readonly fingerprint: Buffer;
}

/** The stored answer to a put that consumed its seq; replayed byte for byte to retries. */
export interface Ack {
  readonly outcome: 'applied' | 'version_conflict';
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  /** applied: the document's new version. version_conflict: its current version. */
  readonly version: number;
  /** Whether the document is deleted after this put. */
  readonly deleted: boolean;
  /** version_conflict only: the ifVersion the put carried. */
  readonly ifVersion?: number;
  /** Commit time, milliseconds since the Unix epoch. */
  readonly committedAt: number;
}

export interface Head {
  readonly epoch: number;
  readonly seq: number;
  /** Highest seq of the current epoch whose ack may have been pruned (0: none). */
  readonly prunedThrough: number;
}

export type Rejection =
  | { readonly outcome: 'sequence_reused'; readonly code: 'SEQUENCE_REUSED' }
  | { readonly outcome: 'fenced'; readonly code: 'FENCED'; readonly epoch: number }
  | { readonly outcome: 'stale'; readonly code: 'STALE'; readonly head: Head }
  | { readonly outcome: 'expired'; readonly code: 'EXPIRED'; readonly head: Head }
  | { readonly outcome: 'gap'; readonly code: 'GAP'; readonly expected: { epoch: number; seq: number } }
  | { readonly outcome: 'error'; readonly code: 'STORAGE_UNAVAILABLE'; readonly message: string };

export type PutResult = { readonly kind: 'ack'; readonly ack: Ack; readonly replay: boolean } | ({ readonly kind: 'rejected' } & Rejection);

export interface StreamHead extends Head {
  readonly stream: string;
}

/**
 * Document writes that need no stream: the HTTP API's natural-idempotence routes and its
 * Idempotency-Key create. They share the batch (and so the transaction and ordering) with puts.
 */
export type DocWrite =
  /** PUT or DELETE /v1/docs/{key}: replace (state) or delete (null), optionally conditional. */
  | {
      readonly op: 'replace';
      readonly tenant: string;
      readonly key: string;
      readonly state: Buffer | null;
      /** 0: must not exist; N: must exist at version N; null: unconditional. */
      readonly ifVersion: number | null;
    }
  /** POST /v1/docs with an Idempotency-Key: create a document under a server-generated key. */
  | {
      readonly op: 'create';
      readonly tenant: string;
      /** Method and path the key is scoped to, e.g. "POST /v1/docs". */
      readonly scope: string;
      readonly idempotencyKey: string;
      /** Fingerprint of the request payload; a different one under the same key is refused. */
      readonly fingerprint: Buffer;
      /** The key to create; a replay answers with the key the first request created. */
      readonly key: string;
      readonly state: Buffer;
    };

interface DocumentVersion {
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
}

export type DocResult =
  /** replace: `changed` is false when the write changed nothing (same state, or deleting nothing). */
  | ({ readonly kind: 'written'; readonly changed: boolean; readonly updatedAt: number } & DocumentVersion)
  | ({ readonly kind: 'precondition_failed' } & DocumentVersion)
  | ({ readonly kind: 'created'; readonly createdAt: number; readonly replay: boolean } & DocumentVersion)
  | { readonly kind: 'idempotency_key_reused' }
  | { readonly kind: 'rejected'; readonly outcome: 'error'; readonly code: 'STORAGE_UNAVAILABLE'; readonly message: string };

export type Write = Put | DocWrite;

export interface StoredDocument extends DocumentVersion {
  /** Canonical msgpack of the state; null when deleted. */
  readonly state: Buffer | null;
  readonly updatedAt: number;
}

export function isDocWrite(w: Write): w is DocWrite {
  return 'op' in w;
}

export interface Store extends ChangeLog {
  /** Random id created with the database; it changes when the database is replaced. */
  readonly incarnation: string;
  /**
   * Runs the batch in one transaction, in order, through the gate (src/batch-gate.ts), and
   * resolves with one result per write after it committed. When the batch did not commit it
   * changes nothing and rejects (see storageUnavailable in src/gate.ts); the committer answers
   * every write STORAGE_UNAVAILABLE. A store never rejects a batch whose outcome it does not know.
   *
   * `committed`, if the store calls it, says the batch's transaction has committed but may not be
   * durable yet: the committer may then hand over the next batch, which the store must decide after
   * this one, and the store must settle the two calls in the order it got them. A store that never
   * calls it gets the next batch only once this call has settled.
   */
  apply(batch: readonly Put[], committed?: () => void): Promise<PutResult[]>;
  apply(batch: readonly Write[], committed?: () => void): Promise<Array<PutResult | DocResult>>;
  /** A document as stored, or undefined if it was never written. */
  document(tenant: string, key: string): Promise<StoredDocument | undefined>;
  /** Resolves when the store can commit a write; rejects with the reason otherwise. */
  ready(): Promise<void>;
  /** Current heads; a stream never written has epoch 0, seq 0. */
  heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]>;
  /**
   * One pruning step: looks at up to `maxRows` acks committed before `olderThan` (ms since epoch),
   * continuing where the previous step stopped, and deletes those that are not their stream's
   * latest. `done` is true when the step reached the end of the pass.
   */
  prune(olderThan: number, maxRows: number): Promise<{ pruned: number; done: boolean }>;
  /** Deletes up to `maxRows` idempotency records created before `olderThan`; returns how many went. */
  pruneIdempotency(olderThan: number, maxRows: number): Promise<number>;
  close(): Promise<void>;
}
