/**
 * The one registry of every error code seqgate can send. PROTOCOL.md lists exactly these codes;
 * test/protocol-registry.test.ts fails when the two drift apart.
 *
 * Three scopes:
 * - `put`: answers one put inside a `results` message; nothing was applied.
 * - `message`: answers a whole incoming frame inside an `error` message; no put of it was processed.
 * - `close`: the server closes the WebSocket with `closeCode`.
 */
export type ErrorScope = 'put' | 'message' | 'close';

export interface ErrorSpec {
  readonly scope: ErrorScope;
  /** true when resending the same thing later may succeed. */
  readonly retryable: boolean;
  /** WebSocket close code, for scope `close`. */
  readonly closeCode?: number;
  readonly summary: string;
}

export const ERRORS = {
  SEQUENCE_REUSED: {
    scope: 'put',
    retryable: false,
    summary: 'An ack is stored for this (stream, epoch, seq) but the payload fingerprint differs.',
  },
  FENCED: {
    scope: 'put',
    retryable: false,
    summary: "The put's epoch is below the stream's epoch; `epoch` gives the current one.",
  },
  STALE: {
    scope: 'put',
    retryable: false,
    summary: 'Same epoch, seq at or below the head and never applied (a later seq skipped past it).',
  },
  EXPIRED: {
    scope: 'put',
    retryable: false,
    summary: 'Same epoch, seq at or below the pruned-through mark: its ack, if any, was pruned.',
  },
  GAP: {
    scope: 'put',
    retryable: false,
    summary: 'Contiguous mode only: seq is not the next one; `expected` gives it.',
  },
  INVALID_FIELD: {
    scope: 'put',
    retryable: false,
    summary: 'A field of the put is missing or has the wrong type or form; `field` names it.',
  },
  LIMIT_EXCEEDED: {
    scope: 'put',
    retryable: false,
    summary: 'A field of the put exceeds a limit; `field` and `limit` name them.',
  },
  STORAGE_UNAVAILABLE: {
    scope: 'put',
    retryable: true,
    summary: 'The batch holding this put failed to commit; nothing of it was applied or consumed.',
  },
  MALFORMED_FRAME: {
    scope: 'message',
    retryable: false,
    summary: 'The frame is not exactly one valid msgpack (or JSON) value, or uses an extension type.',
  },
  WRONG_FRAME_TYPE: {
    scope: 'message',
    retryable: false,
    summary: 'A text frame on a msgpack connection, or a binary frame on a JSON connection.',
  },
  TOO_DEEP: {
    scope: 'message',
    retryable: false,
    summary: 'The frame nests arrays and maps deeper than the limit.',
  },
  INVALID_MESSAGE: {
    scope: 'message',
    retryable: false,
    summary: 'The frame decodes but is not a message of the documented shape; `field` names the fault.',
  },
  UNKNOWN_TYPE: {
    scope: 'message',
    retryable: false,
    summary: 'The message `type` is not one this protocol version defines.',
  },
  TOO_MANY_PUTS: {
    scope: 'message',
    retryable: false,
    summary: 'A put message carries more puts than `limits.maxPutsPerFrame`; none of them was processed.',
  },
  TOO_MANY_STREAMS: {
    scope: 'message',
    retryable: false,
    summary: 'A hello names more streams than `limits.maxHelloStreams`.',
  },
  UNSUPPORTED_VERSION: {
    scope: 'message',
    retryable: false,
    summary: 'The hello asks for a protocol version this server does not speak.',
  },
  GOING_AWAY: {
    scope: 'close',
    retryable: true,
    closeCode: 1001,
    summary: 'The server is shutting down; every put it read was answered first.',
  },
  FRAME_TOO_LARGE: {
    scope: 'close',
    retryable: false,
    closeCode: 1009,
    summary: 'A frame exceeded `limits.maxFrameBytes`.',
  },
  SLOW_CONSUMER: {
    scope: 'close',
    retryable: true,
    closeCode: 1008,
    summary: 'The client did not read its results and the outbound buffer stayed over its bound.',
  },
  TOO_MANY_CONNECTIONS: {
    scope: 'close',
    retryable: true,
    closeCode: 1013,
    summary: 'The server holds `maxConnections` connections already.',
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;
export type PutErrorCode = {
  [K in ErrorCode]: (typeof ERRORS)[K]['scope'] extends 'put' ? K : never;
}[ErrorCode];
export type MessageErrorCode = {
  [K in ErrorCode]: (typeof ERRORS)[K]['scope'] extends 'message' ? K : never;
}[ErrorCode];

/** Typed error carrying a registry code, as thrown inside the server and the SDK. */
export class SeqgateError extends Error {
  override readonly name = 'SeqgateError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.retryable = ERRORS[code].retryable;
    this.details = details;
  }
}
