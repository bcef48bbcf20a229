/**
 * The one registry of every error code seqgate can send. PROTOCOL.md lists exactly these codes;
 * test/protocol-registry.test.ts fails when the two drift apart.
 *
 * Four scopes:
 * - `put`: answers one put inside a `results` message (or an HTTP put); nothing was applied.
 * - `message`: answers a whole incoming frame inside an `error` message; no put of it was processed.
 * - `close`: the server closes the WebSocket with `closeCode`.
 * - `http`: an HTTP API answer only.
 * `status` is the HTTP status the code is answered with on the HTTP API.
 */
type ErrorScope = 'put' | 'message' | 'close' | 'http';

export interface ErrorSpec {
  readonly scope: ErrorScope;
  /** true when resending the same thing later may succeed. */
  readonly retryable: boolean;
  /** WebSocket close code, for scope `close`. */
  readonly closeCode?: number;
  /** HTTP status on the HTTP API. */
  readonly status?: number;
  readonly summary: string;
}

export const ERRORS = {
  SEQUENCE_REUSED: {
    scope: 'put',
    retryable: false,
    status: 422,
    summary: 'An ack is stored for this (stream, epoch, seq) but the payload fingerprint differs.',
  },
  FENCED: {
    scope: 'put',
    retryable: false,
    status: 409,
    summary: "The put's epoch is below the stream's epoch; `epoch` gives the current one.",
  },
  STALE: {
    scope: 'put',
    retryable: false,
    status: 409,
    summary: 'Same epoch, seq at or below the head and never applied (a later seq skipped past it).',
  },
  EXPIRED: {
    scope: 'put',
    retryable: false,
    status: 409,
    summary: 'Same epoch, seq at or below the pruned-through mark: its ack, if any, was pruned.',
  },
  GAP: {
    scope: 'put',
    retryable: false,
    status: 409,
    summary: 'Contiguous mode only: seq is not the next one; `expected` gives it.',
  },
  INVALID_FIELD: {
    scope: 'put',
    retryable: false,
    status: 400,
    summary: 'A field of the put is missing or has the wrong type or form; `field` names it.',
  },
  LIMIT_EXCEEDED: {
    scope: 'put',
    retryable: false,
    status: 400,
    summary: 'A field of the put exceeds a limit; `field` and `limit` name them.',
  },
  STORAGE_UNAVAILABLE: {
    scope: 'put',
    retryable: true,
    status: 503,
    summary: 'The batch holding this put failed to commit; nothing of it was applied or consumed.',
  },
  MALFORMED_FRAME: {
    scope: 'message',
    retryable: false,
    status: 400,
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
    status: 400,
    summary: 'The frame nests arrays and maps deeper than the limit.',
  },
  INVALID_MESSAGE: {
    scope: 'message',
    retryable: false,
    status: 400,
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
  FORBIDDEN: {
    scope: 'put',
    retryable: false,
    status: 403,
    summary: "The token's grant does not cover this stream or document (or, in a hello, this stream).",
  },
  IDEMPOTENCY_KEY_REQUIRED: {
    scope: 'http',
    retryable: false,
    status: 400,
    summary: 'POST /v1/docs needs an Idempotency-Key header (1 to 255 visible ASCII characters).',
  },
  IDEMPOTENCY_KEY_REUSED: {
    scope: 'http',
    retryable: false,
    status: 422,
    summary: 'The Idempotency-Key was used before with a different payload.',
  },
  IDEMPOTENCY_KEY_IN_FLIGHT: {
    scope: 'http',
    retryable: true,
    status: 409,
    summary: 'A request with this Idempotency-Key is still being processed; retry after it finishes.',
  },
  PRECONDITION_FAILED: {
    scope: 'http',
    retryable: false,
    status: 412,
    summary: 'If-Match or If-None-Match did not hold; the body gives the current version.',
  },
  NOT_FOUND: {
    scope: 'http',
    retryable: false,
    status: 404,
    summary: 'No such route, or no such document (a deleted document answers with its version).',
  },
  METHOD_NOT_ALLOWED: {
    scope: 'http',
    retryable: false,
    status: 405,
    summary: 'The route exists but not for this method; the Allow header lists the methods.',
  },
  UNSUPPORTED_MEDIA_TYPE: {
    scope: 'http',
    retryable: false,
    status: 415,
    summary: 'The body must be application/json or application/msgpack.',
  },
  NOT_ACCEPTABLE: {
    scope: 'http',
    retryable: false,
    status: 406,
    summary: 'JSON cannot carry this state faithfully (binary, NaN or infinity, integer map keys); ask for msgpack.',
  },
  PAYLOAD_TOO_LARGE: {
    scope: 'http',
    retryable: false,
    status: 413,
    summary: 'The request body exceeds `limits.maxFrameBytes`.',
  },
  INVALID_BODY: {
    scope: 'http',
    retryable: false,
    status: 400,
    summary: 'The body does not decode, or is not of the documented shape; `field` names the fault.',
  },
  INVALID_TARGET: {
    scope: 'http',
    retryable: false,
    status: 400,
    summary: 'The request target is neither a path (origin-form) nor an absolute http(s)/ws(s) URL.',
  },
  REQUEST_TIMEOUT: {
    scope: 'http',
    retryable: true,
    status: 408,
    summary: 'The request body stopped arriving for `httpBodyIdleTimeoutMs`; the connection is closed.',
  },
  SERVER_BUSY: {
    scope: 'http',
    retryable: true,
    status: 503,
    summary: "Request bodies already hold their share of the server's memory budget; retry after Retry-After.",
  },
  NOT_READY: {
    scope: 'http',
    retryable: true,
    status: 503,
    summary: '/readyz: the database does not accept writes right now.',
  },
  INVALID_OFFSET: {
    scope: 'message',
    retryable: false,
    status: 400,
    summary: 'Changefeed: the offset is neither `-1`, `now` nor of the form this server mints.',
  },
  OFFSET_EXPIRED: {
    scope: 'message',
    retryable: false,
    status: 410,
    summary: 'Changefeed: retention removed changes after this offset; restart from a snapshot (`earliest` gives the oldest offset still readable).',
  },
  OFFSET_UNKNOWN: {
    scope: 'message',
    retryable: false,
    status: 410,
    summary: "Changefeed: the offset belongs to another database (a replaced or restored file) or lies beyond the log's end; restart from a snapshot.",
  },
  UNAUTHORIZED: {
    scope: 'close',
    retryable: false,
    closeCode: 4401,
    status: 401,
    summary: 'No valid token: HTTP 401, a refused upgrade, or a WebSocket closed after a hello without one.',
  },
  TOKEN_REVOKED: {
    scope: 'close',
    retryable: false,
    closeCode: 4403,
    summary: "The connection's token was revoked or its grant changed by a token reload.",
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
    status: 503,
    summary: 'The server holds `maxConnections` WebSocket connections (close 1013) or `maxHttpConnections` HTTP connections (503) already.',
  },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

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

/** An error as every transport sends it: code, message, and `retryable` as the registry says. */
interface ErrorBody {
  readonly code: ErrorCode;
  readonly message: string;
  readonly retryable: boolean;
  readonly [detail: string]: unknown;
}

/**
 * The one way to build an error body, so that `retryable` always comes from ERRORS. Details follow
 * the three fixed fields, in the caller's order: bodies are compared byte for byte by the vectors.
 */
export function errorBody(code: ErrorCode, message: string, details: Readonly<Record<string, unknown>> = {}): ErrorBody {
  return { code, message, retryable: ERRORS[code].retryable, ...details };
}
