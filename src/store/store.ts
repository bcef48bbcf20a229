/**
 * The storage boundary. A store takes a batch of validated puts and answers one result per put,
 * in order, after the batch is durable. Implementations run the gate (src/gate.ts) inside their
 * own transaction; the SQLite store is the default, and test/store-contract.test.ts holds every
 * implementation to the same behaviour.
 */

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

export const EMPTY_HEAD: Head = { epoch: 0, seq: 0, prunedThrough: 0 };

export type Rejection =
  | { readonly outcome: 'sequence_reused'; readonly code: 'SEQUENCE_REUSED' }
  | { readonly outcome: 'fenced'; readonly code: 'FENCED'; readonly epoch: number }
  | { readonly outcome: 'stale'; readonly code: 'STALE'; readonly head: Head }
  | { readonly outcome: 'expired'; readonly code: 'EXPIRED'; readonly head: Head }
  | { readonly outcome: 'gap'; readonly code: 'GAP'; readonly expected: { epoch: number; seq: number } }
  | { readonly outcome: 'error'; readonly code: 'STORAGE_UNAVAILABLE'; readonly message: string };

export type PutResult =
  | { readonly kind: 'ack'; readonly ack: Ack; readonly replay: boolean }
  | ({ readonly kind: 'rejected' } & Rejection);

export interface StreamHead extends Head {
  readonly stream: string;
}

export interface Store {
  /** Random id created with the database; it changes when the database is replaced. */
  readonly incarnation: string;
  /** Runs the gate over the batch in one transaction; one result per put, in order. */
  apply(batch: readonly Put[]): Promise<PutResult[]>;
  /** Current heads; a stream never written has epoch 0, seq 0. */
  heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]>;
  /**
   * One pruning step: looks at up to `maxRows` acks committed before `olderThan` (ms since epoch),
   * continuing where the previous step stopped, and deletes those that are not their stream's
   * latest. `done` is true when the step reached the end of the pass.
   */
  prune(olderThan: number, maxRows: number): Promise<{ pruned: number; done: boolean }>;
  close(): Promise<void>;
}
