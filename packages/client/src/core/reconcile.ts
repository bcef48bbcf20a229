import type { StreamRecord } from '../outbox.js';
import type { EpochChange, Head, Position, RollbackInfo, RollbackPolicy } from '../types.js';
import { comparePositions } from './numbering.js';

/**
 * What a welcome means for the client's record, decided before anything is sent on the new
 * connection (docs/CLIENT.md: Counter loss, Server rollback, Contiguous mode). A pure function:
 * the client carries out the plan (outbox writes, events, settling puts) in the order given.
 */

export interface ReconcileInput {
  readonly stream: string;
  readonly record: StreamRecord;
  readonly head: Head;
  readonly incarnation: string;
  readonly policy: RollbackPolicy;
  /** Contiguous mode left a hole in the current epoch: move the open puts to a new one. */
  readonly needRebase: boolean;
  /** Puts recorded and not yet answered. */
  readonly open: number;
}

type ReconcilePlan =
  /** Rollback with policy `reject`: store `record` with no open puts; reject every open put. */
  | { readonly kind: 'reject-open'; readonly rollback: RollbackInfo; readonly record: StreamRecord; readonly epoch: EpochChange }
  | {
      readonly kind: 'continue';
      /** Rollback with policy `resend`: store `record` (acks forgotten) and report, before the rest. */
      readonly rollback: { readonly info: RollbackInfo; readonly record: StreamRecord } | null;
      /** Number every open put from seq 1 of a new epoch, on top of `base`. */
      readonly renumber: { readonly base: StreamRecord; readonly epoch: EpochChange } | null;
      /** Store this record (the incarnation changed); null when nothing changes. */
      readonly store: StreamRecord | null;
    };

export function planReconcile(i: ReconcileInput): ReconcilePlan {
  const r = i.record;
  const head: Position = { epoch: i.head.epoch, seq: i.head.seq };
  let reason: RollbackInfo['reason'] | null = null;
  if (r.incarnation !== null && r.incarnation !== i.incarnation) reason = 'incarnation';
  else if (r.lastAcked !== null && comparePositions(head, r.lastAcked) < 0) reason = 'head-behind';

  let rollback: { info: RollbackInfo; record: StreamRecord } | null = null;
  let rec = r;
  if (reason !== null) {
    const epoch = i.policy === 'reject' ? Math.max(head.epoch, r.epoch ?? 0) + 1 : (r.epoch ?? head.epoch + 1);
    const info: RollbackInfo = {
      reason,
      stream: i.stream,
      previousIncarnation: r.incarnation,
      incarnation: i.incarnation,
      lastAcked: r.lastAcked,
      head,
      pending: i.open,
      policy: i.policy,
      epoch,
    };
    if (i.policy === 'reject') {
      return {
        kind: 'reject-open',
        rollback: info,
        record: { ...r, epoch, nextSeq: 1, lastAcked: null, incarnation: i.incarnation },
        epoch: { epoch, previous: r.epoch, reason: 'rollback', head: i.head },
      };
    }
    // resend: the gate decides each put again; forget acks the server no longer has.
    rec = { ...r, lastAcked: null, incarnation: i.incarnation };
    rollback = { info, record: rec };
  }
  if (rec.epoch === null) {
    // No record: a new stream, or this writer lost its counter. A fresh epoch above the server's
    // fences any older writer of the stream.
    const epoch = head.epoch + 1;
    const why = head.seq > 0 || head.epoch > 0 ? 'counter-loss' : 'new-stream';
    return {
      kind: 'continue',
      rollback,
      renumber: { base: { ...rec, incarnation: i.incarnation }, epoch: { epoch, previous: null, reason: why, head: i.head } },
      store: null,
    };
  }
  if (i.needRebase) {
    const epoch = Math.max(head.epoch, rec.epoch) + 1;
    return {
      kind: 'continue',
      rollback,
      renumber: { base: { ...rec, incarnation: i.incarnation }, epoch: { epoch, previous: rec.epoch, reason: 'gap', head: i.head } },
      store: null,
    };
  }
  return { kind: 'continue', rollback, renumber: null, store: rec.incarnation !== i.incarnation ? { ...rec, incarnation: i.incarnation } : null };
}
