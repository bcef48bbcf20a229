import {
  ExpiredError,
  FencedError,
  ForbiddenError,
  GapError,
  InvalidPutError,
  ProtocolError,
  SequenceReusedError,
  type SeqgateClientError,
  StaleError,
  TransientError,
  VersionConflictError,
  WriterConflictError,
} from '../errors.js';
import type { Ack, Position, PutRef, PutResult } from '../types.js';

/**
 * The outcome table of docs/CLIENT.md ("Outcomes") as one pure function, like the server's gate:
 * a `result` from the server in, one instruction out. The client carries it out.
 */

export type OutcomeInstruction =
  /** Applied: settle with this result; the put's position was acked. */
  | { readonly kind: 'resolve'; readonly result: PutResult }
  /**
   * Settle with this error. `acked`: the position was consumed and its answer stored (a version
   * conflict). `stop`: the client stops writing, for this reason. `hole`: the seq was not consumed.
   */
  | { readonly kind: 'reject'; readonly error: SeqgateClientError; readonly acked: boolean; readonly stop: SeqgateClientError | null; readonly hole: boolean }
  /** A lower seq is missing (contiguous mode): send again after it; `rebase` when it never will come. */
  | { readonly kind: 'requeue'; readonly rebase: boolean }
  /** Nothing committed; resend after a backoff. */
  | { readonly kind: 'retry'; readonly error: TransientError };

interface OutcomeContext {
  readonly put: PutRef;
  /** The highest position the server acked to this client. */
  readonly lastAcked: Position | null;
  /** Whether a put of this client at this position is still waiting for its answer. */
  readonly isOpen: (position: Position) => boolean;
}

function record(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

function position(v: unknown): Position {
  const p = record(v);
  return { epoch: num(p.epoch), seq: num(p.seq) };
}

export function decideOutcome(answer: Record<string, unknown>, ctx: OutcomeContext): OutcomeInstruction {
  const put = ctx.put;
  const outcome = answer.outcome;
  if (outcome === 'applied' || outcome === 'version_conflict') {
    const ack = record(answer.ack) as unknown as Ack;
    const replay = answer.replay === true;
    if (outcome === 'applied') return { kind: 'resolve', result: { outcome: 'applied', replay, ack } };
    return { kind: 'reject', error: new VersionConflictError(ack, replay, { put }), acked: true, stop: null, hole: false };
  }
  const error = record(answer.error);
  const code = typeof error.code === 'string' ? error.code : 'UNKNOWN';
  const message = typeof error.message === 'string' ? error.message : String(outcome);
  const reject = (e: SeqgateClientError, stop: SeqgateClientError | null, hole: boolean): OutcomeInstruction => ({
    kind: 'reject',
    error: e,
    acked: false,
    stop,
    hole,
  });
  switch (outcome) {
    case 'fenced': {
      const fenced = new FencedError(num(error.epoch), { put });
      return reject(fenced, fenced, false);
    }
    case 'stale': {
      const head = position(error.head);
      const last = ctx.lastAcked;
      // Overtaken by this client's own later put (after a transient error), or by another writer.
      const ownSkip = last !== null && last.epoch === put.epoch && last.seq > put.seq;
      const stale = new StaleError(head, num(error.prunedThrough), ownSkip, { put });
      return reject(
        stale,
        ownSkip
          ? null
          : new WriterConflictError(
              `another writer moved stream ${put.stream} to ${head.epoch}:${head.seq} in this client's epoch ${put.epoch}; this client stops writing`,
              { cause: stale },
            ),
        false,
      );
    }
    case 'sequence_reused': {
      const reused = new SequenceReusedError({ put });
      return reject(
        reused,
        new WriterConflictError(`position ${put.epoch}:${put.seq} of stream ${put.stream} was consumed by another payload; this client stops writing`, {
          cause: reused,
        }),
        false,
      );
    }
    case 'expired':
      return reject(new ExpiredError(position(error.head), num(error.prunedThrough), { put }), null, false);
    case 'gap': {
      const expected = position(error.expected);
      if (expected.epoch === put.epoch && expected.seq < put.seq) return { kind: 'requeue', rebase: !ctx.isOpen(expected) };
      return reject(new GapError(expected, { put }), null, true);
    }
    case 'invalid': {
      const field = typeof error.field === 'string' ? error.field : 'put';
      const limit = typeof error.limit === 'string' ? error.limit : undefined;
      const max = typeof error.max === 'number' ? error.max : undefined;
      return reject(
        new InvalidPutError(code === 'LIMIT_EXCEEDED' ? 'LIMIT_EXCEEDED' : 'INVALID_FIELD', message, field, limit, max, false, { put }),
        null,
        true,
      );
    }
    case 'forbidden':
      return reject(new ForbiddenError(message, { put }), null, true);
    default:
      if (error.retryable === true) return { kind: 'retry', error: new TransientError(code, message, { put }) };
      // An outcome this client does not know: consumed nothing, not retryable (PROTOCOL.md §14).
      return reject(new ProtocolError(code, message, false, { put }), null, true);
  }
}
