import { ERRORS, SeqgateError } from './errors.js';
import type { Ack, Head, Put, Rejection } from './store/store.js';

/**
 * The decision table of PROTOCOL.md ("The gate"), as one pure function. A store calls it inside
 * its transaction with what it read, then carries out the decision. Order matters: dedup comes
 * first, so the retry of a write that succeeded is never reported as a conflict or as fenced.
 */

export interface StoredAck {
  readonly fingerprint: Buffer;
  readonly ack: Ack;
}

export interface DocumentMeta {
  readonly version: number;
  readonly deleted: boolean;
}

export type Decision =
  | { readonly kind: 'replay'; readonly ack: Ack }
  | { readonly kind: 'reject'; readonly rejection: Rejection }
  /** Consumes the seq: the head moves to (put.epoch, put.seq) and `ack` is stored. */
  | { readonly kind: 'consume'; readonly ack: Ack; readonly write: DocumentChange | null };

/** What a consumed put does to its document: the new version and state (null state: deleted). */
interface DocumentChange {
  readonly version: number;
  readonly deleted: boolean;
  readonly state: Buffer | null;
}

export interface GateInputs {
  readonly head: Head;
  /** Looks up the stored ack for (stream, put.epoch, put.seq); called only when one may exist. */
  readonly storedAck: () => StoredAck | undefined;
  readonly document: () => DocumentMeta | undefined;
  readonly contiguous: boolean;
  readonly now: number;
}

/** Every stored ack sits at or below its stream's head, so a put above the head needs no lookup. */
function mayHaveStoredAck(put: Put, head: Head): boolean {
  return put.epoch < head.epoch || (put.epoch === head.epoch && put.seq <= head.seq);
}

export function decide(put: Put, inputs: GateInputs): Decision {
  const { head } = inputs;

  if (mayHaveStoredAck(put, head)) {
    const stored = inputs.storedAck();
    if (stored !== undefined) {
      if (stored.fingerprint.equals(put.fingerprint)) return { kind: 'replay', ack: stored.ack };
      return { kind: 'reject', rejection: { outcome: 'sequence_reused', code: 'SEQUENCE_REUSED' } };
    }
  }

  if (put.epoch < head.epoch) {
    return { kind: 'reject', rejection: { outcome: 'fenced', code: 'FENCED', epoch: head.epoch } };
  }
  if (put.epoch === head.epoch && put.seq <= head.seq) {
    return put.seq <= head.prunedThrough
      ? { kind: 'reject', rejection: { outcome: 'expired', code: 'EXPIRED', head } }
      : { kind: 'reject', rejection: { outcome: 'stale', code: 'STALE', head } };
  }
  if (inputs.contiguous) {
    const expected = put.epoch === head.epoch ? head.seq + 1 : 1;
    if (put.seq !== expected) {
      return { kind: 'reject', rejection: { outcome: 'gap', code: 'GAP', expected: { epoch: put.epoch, seq: expected } } };
    }
  }

  const doc = inputs.document();
  const version = doc?.version ?? 0;
  const exists = doc !== undefined && !doc.deleted;
  const base = { stream: put.stream, epoch: put.epoch, seq: put.seq, key: put.key, committedAt: inputs.now };

  if (put.ifVersion !== null) {
    const matches = put.ifVersion === 0 ? !exists : exists && put.ifVersion === version;
    if (!matches) {
      return {
        kind: 'consume',
        write: null,
        ack: { outcome: 'version_conflict', ...base, version, deleted: !exists, ifVersion: put.ifVersion },
      };
    }
  }

  if (put.state === null && !exists) {
    // Deleting what does not exist changes nothing, so the version does not move.
    return { kind: 'consume', write: null, ack: { outcome: 'applied', ...base, version, deleted: true } };
  }
  const write: DocumentChange = { version: version + 1, deleted: put.state === null, state: put.state };
  return { kind: 'consume', write, ack: { outcome: 'applied', ...base, version: write.version, deleted: write.deleted } };
}

/**
 * Where a consumed put moves its stream's head: to (put.epoch, put.seq). A new epoch starts with
 * nothing pruned, since `prunedThrough` counts seqs of the current epoch only.
 */
export function advanceHead(head: Head, put: Put): Head {
  return { epoch: put.epoch, seq: put.seq, prunedThrough: put.epoch === head.epoch ? head.prunedThrough : 0 };
}

/** The answer to one write of a batch that did not commit: nothing of it was applied or consumed. */
interface StorageFailure {
  readonly kind: 'rejected';
  readonly outcome: 'error';
  readonly code: 'STORAGE_UNAVAILABLE';
  readonly message: string;
}

/**
 * The one way a store reports that a batch did not commit: it throws this (with the driver's error
 * as `cause`) after rolling back, and the committer answers every write with `failedBatch`.
 */
export function storageUnavailable(cause: unknown): SeqgateError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  return new SeqgateError('STORAGE_UNAVAILABLE', `batch not committed: ${reason}`, {}, { cause });
}

/** Every write of a failed batch gets the same retryable answer, from the error registry. */
export function failedBatch(size: number, cause: unknown): StorageFailure[] {
  const code = 'STORAGE_UNAVAILABLE' satisfies keyof typeof ERRORS;
  const err = cause instanceof SeqgateError && cause.code === code ? cause : storageUnavailable(cause);
  const answer: StorageFailure = { kind: 'rejected', outcome: 'error', code, message: err.message };
  return new Array<StorageFailure>(size).fill(answer);
}
