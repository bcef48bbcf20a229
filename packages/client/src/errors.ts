import type { Ack, Position, PutRef, RollbackInfo } from './types.js';

/**
 * Every way a put or the client can fail, one class per outcome. Like nats.js errors: `name` is
 * the class name, `code` a stable string to switch on, `cause` the error that led to this one.
 * Codes that the server sends keep the server's name (FENCED, STALE, …); codes the client adds
 * are its own (WRITER_CONFLICT, SERVER_ROLLBACK, CLOSED, …).
 */

/**
 * Every code the client itself gives an error (docs/CLIENT.md, "Error codes", lists exactly these;
 * test/client/error-codes.test.ts checks both ways). Codes of the server's other answers (the
 * message-scope codes of PROTOCOL.md §10, and retryable ones such as STORAGE_UNAVAILABLE) pass
 * through unchanged on ProtocolError and TransientError.
 */
export const CLIENT_ERROR_CODES = {
  SEQUENCE_REUSED: 'SequenceReusedError',
  FENCED: 'FencedError',
  STALE: 'StaleError',
  EXPIRED: 'ExpiredError',
  GAP: 'GapError',
  INVALID_FIELD: 'InvalidPutError',
  LIMIT_EXCEEDED: 'InvalidPutError',
  VERSION_CONFLICT: 'VersionConflictError',
  FORBIDDEN: 'ForbiddenError',
  WRITER_CONFLICT: 'WriterConflictError',
  SERVER_ROLLBACK: 'ServerRollbackError',
  CLOSED: 'ClientClosedError',
  OUTBOX_FAILED: 'OutboxError',
  UNAUTHORIZED: 'AuthenticationError',
  TOKEN_REVOKED: 'AuthenticationError',
  CONNECT_FAILED: 'ConnectionError',
  CONNECTION_CLOSED: 'ConnectionError',
  TIMEOUT: 'ConnectionError',
  SEND_FAILED: 'ConnectionError',
  UNDECODABLE: 'ConnectionError',
  REBASE: 'ConnectionError',
  PROTOCOL: 'ProtocolError',
} as const;

export type ClientErrorCode = keyof typeof CLIENT_ERROR_CODES | (string & {});

export class SeqgateClientError extends Error {
  override readonly name: string = 'SeqgateClientError';
  readonly code: ClientErrorCode;
  /** The put this error answers, when it answers one. */
  readonly put: PutRef | undefined;

  constructor(code: ClientErrorCode, message: string, options: { cause?: unknown; put?: PutRef } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.put = options.put;
  }
}

function where(put: PutRef | undefined): string {
  return put === undefined ? '' : ` (stream ${put.stream}, position ${put.epoch}:${put.seq}, key ${put.key})`;
}

/**
 * A writer with a higher epoch owns the stream. The client stops writing: this put and every
 * later one reject with FencedError (the later ones carry the first as `cause`).
 */
export class FencedError extends SeqgateClientError {
  override readonly name = 'FencedError';
  constructor(
    readonly epoch: number,
    options: { cause?: unknown; put?: PutRef; message?: string } = {},
  ) {
    super('FENCED', options.message ?? `fenced: the stream is at epoch ${epoch}, above this client's${where(options.put)}`, options);
  }
}

/**
 * The head passed this put without applying it. Normally another writer moved the stream (the
 * client then stops with WriterConflictError). `ownSkip` is true when this client's own later put
 * overtook it, which happens only after a transient storage error (see docs/CLIENT.md).
 */
export class StaleError extends SeqgateClientError {
  override readonly name = 'StaleError';
  constructor(
    readonly head: Position,
    readonly prunedThrough: number,
    readonly ownSkip: boolean,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super(
      'STALE',
      ownSkip
        ? `not applied: a later put of this client committed first, after a transient storage error${where(options.put)}`
        : `not applied: another writer moved the stream to ${head.epoch}:${head.seq}${where(options.put)}`,
      options,
    );
  }
}

/** The ack of this position was pruned; whether the put applied is unknown. */
export class ExpiredError extends SeqgateClientError {
  override readonly name = 'ExpiredError';
  constructor(
    readonly head: Position,
    readonly prunedThrough: number,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super('EXPIRED', `outcome unknown: the ack was pruned (pruned through seq ${prunedThrough})${where(options.put)}`, options);
  }
}

/** The position was consumed by a different payload: another writer uses this client's epoch. */
export class SequenceReusedError extends SeqgateClientError {
  override readonly name = 'SequenceReusedError';
  constructor(options: { cause?: unknown; put?: PutRef } = {}) {
    super('SEQUENCE_REUSED', `the position was consumed by a different payload${where(options.put)}`, options);
  }
}

/** Contiguous mode: the server expected another position. */
export class GapError extends SeqgateClientError {
  override readonly name = 'GapError';
  constructor(
    readonly expected: Position,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super('GAP', `gap: the server expected position ${expected.epoch}:${expected.seq}${where(options.put)}`, options);
  }
}

/**
 * The put is malformed or too large. `local` is true when the client refused it before assigning a
 * seq (nothing was sent); false when the server answered `invalid` (the seq was not consumed).
 */
export class InvalidPutError extends SeqgateClientError {
  override readonly name = 'InvalidPutError';
  constructor(
    code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED',
    message: string,
    readonly field: string,
    readonly limit: string | undefined,
    readonly max: number | undefined,
    readonly local: boolean,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super(code, message, options);
  }
}

/**
 * The put's `ifVersion` did not match. The seq is consumed and the answer is stored: `ack.version`
 * is the document's version, `ack.deleted` whether it exists; `replay` as for applied puts.
 */
export class VersionConflictError extends SeqgateClientError {
  override readonly name = 'VersionConflictError';
  constructor(
    readonly ack: Ack,
    readonly replay: boolean,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super(
      'VERSION_CONFLICT',
      `version conflict: expected version ${ack.ifVersion ?? '?'}, the document is at ${ack.version}${ack.deleted ? ' (absent)' : ''}${where(options.put)}`,
      options,
    );
  }
}

/** The server could not commit; the client resends by itself. Passed to `transientError` listeners. */
export class TransientError extends SeqgateClientError {
  override readonly name = 'TransientError';
  constructor(code: string, message: string, options: { cause?: unknown; put?: PutRef } = {}) {
    super(code, message, options);
  }
}

/** The token may not write this stream or document (or read the stream's head). */
export class ForbiddenError extends SeqgateClientError {
  override readonly name = 'ForbiddenError';
  constructor(message: string, options: { cause?: unknown; put?: PutRef } = {}) {
    super('FORBIDDEN', message, options);
  }
}

/**
 * Another writer uses this client's epoch (a `stale` or `sequence_reused` answer to its own put).
 * The client stops: every put not yet answered, and every later one, rejects with this error;
 * `cause` is the answer that revealed the conflict.
 */
export class WriterConflictError extends SeqgateClientError {
  override readonly name = 'WriterConflictError';
  constructor(message: string, options: { cause?: unknown; put?: PutRef } = {}) {
    super('WRITER_CONFLICT', message, options);
  }
}

/** The server went back in time (see `rollback` in docs/CLIENT.md); this put was not resent. */
export class ServerRollbackError extends SeqgateClientError {
  override readonly name = 'ServerRollbackError';
  constructor(
    readonly rollback: RollbackInfo,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super('SERVER_ROLLBACK', `the server went back in time (${rollback.reason}); this unanswered put was not resent${where(options.put)}`, options);
  }
}

/**
 * The client was closed before this put was answered. `keptInOutbox` tells whether the put is
 * still in a durable outbox, where the next client on that outbox resends it.
 */
export class ClientClosedError extends SeqgateClientError {
  override readonly name = 'ClientClosedError';
  constructor(
    readonly keptInOutbox: boolean,
    options: { cause?: unknown; put?: PutRef; message?: string } = {},
  ) {
    super(
      'CLOSED',
      options.message !== undefined
        ? options.message
        : keptInOutbox
          ? `client closed before an answer; the put stays in the outbox for the next client${where(options.put)}`
          : `client closed before an answer; the put is dropped${where(options.put)}`,
      options,
    );
  }
}

/** The outbox could not record the put (or load). Nothing was sent. */
export class OutboxError extends SeqgateClientError {
  override readonly name = 'OutboxError';
  constructor(message: string, options: { cause?: unknown; put?: PutRef } = {}) {
    super('OUTBOX_FAILED', message, options);
  }
}

/** The server refused a frame as a whole, or sent something this client does not understand. */
export class ProtocolError extends SeqgateClientError {
  override readonly name = 'ProtocolError';
  constructor(
    code: string,
    message: string,
    readonly retryable: boolean,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super(code, message, options);
  }
}

/**
 * The server refused this client's token: `UNAUTHORIZED` (close 4401: no valid token) or
 * `TOKEN_REVOKED` (close 4403: revoked, or its grant changed). The client stops; retrying with the
 * same token cannot succeed. Get a new token (log in again) and start a new client.
 */
export class AuthenticationError extends SeqgateClientError {
  override readonly name = 'AuthenticationError';
  constructor(
    code: 'UNAUTHORIZED' | 'TOKEN_REVOKED',
    message: string,
    readonly closeCode: number,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super(code, message, options);
  }
}

/**
 * A connection failed or was given up (carried by `state` and `error` events, never by a put: the
 * client reconnects and resends by itself). `CONNECT_FAILED`: the WebSocket could not be created;
 * `CONNECTION_CLOSED`: it closed (`closeCode`); `TIMEOUT`: no welcome, pong or answer in time;
 * `SEND_FAILED`; `UNDECODABLE`: a frame from the server did not decode; `REBASE`: the client
 * reconnects on purpose to move to a new epoch (contiguous mode).
 */
export class ConnectionError extends SeqgateClientError {
  override readonly name = 'ConnectionError';
  constructor(
    code: 'CONNECT_FAILED' | 'CONNECTION_CLOSED' | 'TIMEOUT' | 'SEND_FAILED' | 'UNDECODABLE' | 'REBASE',
    message: string,
    readonly closeCode?: number,
    options: { cause?: unknown; put?: PutRef } = {},
  ) {
    super(code, message, options);
  }
}
