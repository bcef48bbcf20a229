import type { Head } from './store/store.js';

/**
 * What may be forgotten, and what forgetting it does to a head: the per-stream ack cap and the
 * time-based pruning pass (PROTOCOL.md, "Ack retention"). Pure; stores read the rows, call these,
 * and delete or update what they return.
 */

export interface Position {
  readonly epoch: number;
  readonly seq: number;
}

export function comparePositions(a: Position, b: Position): number {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.seq - b.seq;
}

/**
 * Cap eviction in chunks: how many of a stream's oldest acks to evict now that it holds
 * `ackCount`. A stream may hold up to `cap + slack` acks; the put that takes it beyond that evicts
 * its `slack + 1` oldest acks in one delete, which brings a stream at steady state back to exactly
 * `cap`. So the newest `cap` acks are always kept (every retry among them replays), at most
 * `cap + slack` are stored, and a stream pays for eviction once every `slack + 1` puts instead of
 * on every put. With slack 0 each put past the cap evicts one ack. A stream far above the cap
 * (the cap was lowered) sheds `slack + 1` per put, so no single batch deletes without bound.
 * The newest ack is never evicted: it is the head's, and the cap is at least 1.
 */
export function acksToEvict(ackCount: number, cap: number, slack: number): number {
  return ackCount > cap + slack ? slack + 1 : 0;
}

/**
 * Forgetting an ack of the current epoch raises `prunedThrough` to its seq, so a retry of it is
 * answered `expired` rather than `stale` (an older epoch's acks never move the mark).
 */
export function afterForgetting(head: Head, forgotten: Position): Head {
  if (forgotten.epoch !== head.epoch || forgotten.seq <= head.prunedThrough) return head;
  return { epoch: head.epoch, seq: head.seq, prunedThrough: forgotten.seq };
}

/** A stream's latest ack (the head's own) is never pruned, so the latest retry always replays. */
export function mayPrune(ack: Position, head: Head): boolean {
  return ack.epoch !== head.epoch || ack.seq !== head.seq;
}

interface PruneCandidate<Id> extends Position {
  readonly streamId: Id;
  /** The stream's head, read in the same transaction (under its row lock where there are locks). */
  readonly head: Head;
}

interface PrunePlan<Id> {
  readonly deletes: ReadonlyArray<{ readonly streamId: Id } & Position>;
  /** One entry per stream that lost acks: its new mark and how many acks it lost. */
  readonly streams: ReadonlyArray<{ readonly streamId: Id; readonly prunedThrough: number; readonly removed: number }>;
}

/** One pruning step over acks already past the retention window. */
export function planPrune<Id>(candidates: ReadonlyArray<PruneCandidate<Id>>): PrunePlan<Id> {
  const deletes: Array<{ streamId: Id } & Position> = [];
  const streams = new Map<Id, { streamId: Id; head: Head; removed: number }>();
  for (const c of candidates) {
    if (!mayPrune(c, c.head)) continue;
    deletes.push({ streamId: c.streamId, epoch: c.epoch, seq: c.seq });
    const s = streams.get(c.streamId) ?? { streamId: c.streamId, head: c.head, removed: 0 };
    s.head = afterForgetting(s.head, c);
    s.removed++;
    streams.set(c.streamId, s);
  }
  return {
    deletes,
    streams: [...streams.values()].map((s) => ({ streamId: s.streamId, prunedThrough: s.head.prunedThrough, removed: s.removed })),
  };
}
