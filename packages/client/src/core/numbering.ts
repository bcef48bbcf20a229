import type { StreamRecord } from '../outbox.js';
import type { Position } from '../types.js';

/**
 * How puts get their positions: pure functions of the stream record, which the client stores in
 * the same outbox write as the puts they number (so a restart can never number a put twice).
 */

/**
 * Numbers a batch of new puts in call order. Before the stream's first welcome the epoch is
 * unknown: the puts stay unnumbered (position 0:0) and `nextSeq` does not move. The record's
 * checkpoint becomes that of the last put in the batch that carries one.
 */
export function numberBatch(
  record: StreamRecord,
  batch: ReadonlyArray<{ readonly checkpoint: { readonly value: unknown } | undefined }>,
): { readonly positions: Position[]; readonly record: StreamRecord } {
  let nextSeq = record.nextSeq;
  let checkpoint = record.checkpoint;
  const positions = batch.map((p) => {
    if (p.checkpoint !== undefined) checkpoint = p.checkpoint.value;
    return record.epoch === null ? { epoch: 0, seq: 0 } : { epoch: record.epoch, seq: nextSeq++ };
  });
  return { positions, record: { ...record, nextSeq, checkpoint } };
}

/** Numbers `count` open puts from seq 1 of a new `epoch`, keeping their order. */
export function renumber(base: StreamRecord, epoch: number, count: number): { readonly positions: Position[]; readonly record: StreamRecord } {
  return {
    positions: Array.from({ length: count }, (_, i) => ({ epoch, seq: i + 1 })),
    record: { ...base, epoch, nextSeq: count + 1 },
  };
}

/** The later of two positions (epoch first, then seq); null counts as before everything. */
export function later(a: Position | null, b: Position): Position {
  return a === null || comparePositions(b, a) > 0 ? b : a;
}

export function comparePositions(a: Position, b: Position): number {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.seq - b.seq;
}
