import {
  AuthenticationError,
  ExpiredError,
  FencedError,
  ForbiddenError,
  GapError,
  InvalidPutError,
  OutboxError,
  ProtocolError,
  SequenceReusedError,
  SeqgateClientError,
  ServerRollbackError,
  StaleError,
  TransientError,
  VersionConflictError,
  WriterConflictError,
} from './errors.js';
import type { Ack, Position, PutRef, PutResult, RollbackInfo } from './types.js';

/**
 * A put's answer as an outbox stores it (a JSON value), so that an answer the application has not
 * yet seen survives a crash and is reported again at the next start (docs/CLIENT.md, "Results
 * after a crash"). Errors come back as the same class with the same fields; `cause` is not kept.
 */
export type StoredAnswer =
  | { readonly ok: true; readonly replay: boolean; readonly ack: Ack }
  | { readonly ok: false; readonly name: string; readonly code: string; readonly message: string; readonly detail?: Record<string, unknown> };

export function storeAnswer(outcome: { result?: PutResult; error?: Error }): StoredAnswer {
  if (outcome.result !== undefined) return { ok: true, replay: outcome.result.replay, ack: outcome.result.ack };
  const e = outcome.error;
  const code = e instanceof SeqgateClientError ? String(e.code) : 'UNKNOWN';
  const base = { ok: false as const, name: e?.name ?? 'Error', code, message: e?.message ?? 'no outcome' };
  if (e instanceof VersionConflictError) return { ...base, detail: { ack: e.ack, replay: e.replay } };
  if (e instanceof FencedError) return { ...base, detail: { epoch: e.epoch } };
  if (e instanceof StaleError) return { ...base, detail: { head: e.head, prunedThrough: e.prunedThrough, ownSkip: e.ownSkip } };
  if (e instanceof ExpiredError) return { ...base, detail: { head: e.head, prunedThrough: e.prunedThrough } };
  if (e instanceof GapError) return { ...base, detail: { expected: e.expected } };
  if (e instanceof InvalidPutError) return { ...base, detail: { field: e.field, limit: e.limit ?? null, max: e.max ?? null, local: e.local } };
  if (e instanceof ServerRollbackError) return { ...base, detail: { rollback: e.rollback } };
  if (e instanceof ProtocolError) return { ...base, detail: { retryable: e.retryable } };
  if (e instanceof AuthenticationError) return { ...base, detail: { closeCode: e.closeCode } };
  return base;
}

/** The settlement a stored answer stands for, with the error rebuilt as its own class. */
export function loadAnswer(a: StoredAnswer, put: PutRef): { result?: PutResult; error?: SeqgateClientError } {
  if (a.ok) return { result: { outcome: 'applied', replay: a.replay, ack: a.ack } };
  const d = (a.detail ?? {}) as Record<string, unknown>;
  const o = { put };
  switch (a.name) {
    case 'VersionConflictError':
      return { error: new VersionConflictError(d.ack as Ack, d.replay === true, o) };
    case 'FencedError':
      return { error: new FencedError(Number(d.epoch), { ...o, message: a.message }) };
    case 'StaleError':
      return { error: new StaleError(d.head as Position, Number(d.prunedThrough), d.ownSkip === true, o) };
    case 'ExpiredError':
      return { error: new ExpiredError(d.head as Position, Number(d.prunedThrough), o) };
    case 'SequenceReusedError':
      return { error: new SequenceReusedError(o) };
    case 'GapError':
      return { error: new GapError(d.expected as Position, o) };
    case 'InvalidPutError':
      return {
        error: new InvalidPutError(
          a.code === 'LIMIT_EXCEEDED' ? 'LIMIT_EXCEEDED' : 'INVALID_FIELD',
          a.message,
          String(d.field),
          typeof d.limit === 'string' ? d.limit : undefined,
          typeof d.max === 'number' ? d.max : undefined,
          d.local === true,
          o,
        ),
      };
    case 'ForbiddenError':
      return { error: new ForbiddenError(a.message, o) };
    case 'WriterConflictError':
      return { error: new WriterConflictError(a.message, o) };
    case 'ServerRollbackError':
      return { error: new ServerRollbackError(d.rollback as RollbackInfo, o) };
    case 'OutboxError':
      return { error: new OutboxError(a.message, o) };
    case 'TransientError':
      return { error: new TransientError(a.code, a.message, o) };
    case 'AuthenticationError':
      return { error: new AuthenticationError(a.code === 'TOKEN_REVOKED' ? 'TOKEN_REVOKED' : 'UNAUTHORIZED', a.message, Number(d.closeCode), o) };
    case 'ProtocolError':
      return { error: new ProtocolError(a.code, a.message, d.retryable === true, o) };
    default:
      return { error: new SeqgateClientError(a.code, a.message, o) };
  }
}
