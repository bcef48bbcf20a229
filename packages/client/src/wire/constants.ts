/**
 * Names and numbers of protocol/PROTOCOL.md that both ends must agree on. The server imports
 * these too; test/protocol-registry.test.ts checks them against the server's error registry.
 */

export const PROTOCOL_VERSION = 1;

/** WebSocket subprotocols (PROTOCOL.md §2.1): MessagePack binary frames, or JSON text frames. */
export const SUBPROTOCOL_MSGPACK = 'seqgate.v1';
export const SUBPROTOCOL_JSON = 'seqgate.v1.json';
export type WireFormat = 'msgpack' | 'json';
export const SUBPROTOCOLS: { readonly [F in WireFormat]: string } = { msgpack: SUBPROTOCOL_MSGPACK, json: SUBPROTOCOL_JSON };

/** Levels a put message adds above a state: message map, puts array, put map. */
export const ENVELOPE_DEPTH = 3;

/** Close codes the server sends (PROTOCOL.md §9.6), by error code. */
export const CLOSE_CODES = {
  GOING_AWAY: 1001,
  SLOW_CONSUMER: 1008,
  FRAME_TOO_LARGE: 1009,
  TOO_MANY_CONNECTIONS: 1013,
  UNAUTHORIZED: 4401,
  TOKEN_REVOKED: 4403,
} as const;
export type CloseCodeName = keyof typeof CLOSE_CODES;

export type WireErrorScope = 'put' | 'message' | 'close';

/**
 * Every error code a WebSocket client can meet (PROTOCOL.md §10), with its scope and whether
 * resending the same thing later may succeed. HTTP-only codes are the server's business.
 */
export const WIRE_ERRORS = {
  SEQUENCE_REUSED: { scope: 'put', retryable: false },
  FENCED: { scope: 'put', retryable: false },
  STALE: { scope: 'put', retryable: false },
  EXPIRED: { scope: 'put', retryable: false },
  GAP: { scope: 'put', retryable: false },
  INVALID_FIELD: { scope: 'put', retryable: false },
  LIMIT_EXCEEDED: { scope: 'put', retryable: false },
  STORAGE_UNAVAILABLE: { scope: 'put', retryable: true },
  FORBIDDEN: { scope: 'put', retryable: false },
  MALFORMED_FRAME: { scope: 'message', retryable: false },
  WRONG_FRAME_TYPE: { scope: 'message', retryable: false },
  TOO_DEEP: { scope: 'message', retryable: false },
  INVALID_MESSAGE: { scope: 'message', retryable: false },
  UNKNOWN_TYPE: { scope: 'message', retryable: false },
  TOO_MANY_PUTS: { scope: 'message', retryable: false },
  TOO_MANY_STREAMS: { scope: 'message', retryable: false },
  UNSUPPORTED_VERSION: { scope: 'message', retryable: false },
  INVALID_OFFSET: { scope: 'message', retryable: false },
  OFFSET_EXPIRED: { scope: 'message', retryable: false },
  OFFSET_UNKNOWN: { scope: 'message', retryable: false },
  GOING_AWAY: { scope: 'close', retryable: true },
  SLOW_CONSUMER: { scope: 'close', retryable: true },
  FRAME_TOO_LARGE: { scope: 'close', retryable: false },
  TOO_MANY_CONNECTIONS: { scope: 'close', retryable: true },
  UNAUTHORIZED: { scope: 'close', retryable: false },
  TOKEN_REVOKED: { scope: 'close', retryable: false },
} as const satisfies Record<string, { scope: WireErrorScope; retryable: boolean }>;
export type WireErrorCode = keyof typeof WIRE_ERRORS;

/** Limits announced in every welcome (PROTOCOL.md §11.1), with the server's defaults. */
export interface WireLimits {
  readonly maxFrameBytes: number;
  readonly maxPutsPerFrame: number;
  readonly maxStateBytes: number;
  readonly maxStateDepth: number;
  readonly maxKeyBytes: number;
  readonly maxStreamBytes: number;
  readonly maxIdBytes: number;
  readonly maxHelloStreams: number;
}

export const DEFAULT_WIRE_LIMITS: WireLimits = {
  maxFrameBytes: 1_048_576,
  maxPutsPerFrame: 1000,
  maxStateBytes: 65_536,
  maxStateDepth: 32,
  maxKeyBytes: 256,
  maxStreamBytes: 256,
  maxIdBytes: 128,
  maxHelloStreams: 1000,
};

/** Largest value of `epoch`, `seq`, `ifVersion` and integer ids (PROTOCOL.md §4). */
export const MAX_POSITION = Number.MAX_SAFE_INTEGER;
