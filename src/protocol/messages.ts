import type { Config } from '../config.js';
import { errorBody, SeqgateError } from '../errors.js';
import type { Ack, Put, PutResult, StreamHead } from '../store/store.js';
import { CanonicalError, canonicalEncode, putFingerprint } from './canonical.js';
import { CanonicalState } from './canonical-bytes.js';
import { field, fieldNames, isMap } from './codec.js';
import { nameProblem as wireNameProblem } from '@seqgate/client/wire';
import { parseSubscribe, parseUnsubscribe, type SubscribeMessage, type UnsubscribeMessage } from './subscribe-messages.js';

/**
 * The messages of PROTOCOL.md: what a decoded frame must look like, and the shapes the server
 * sends back. Validation here is the gate's first row: a put that breaks a shape or a limit is
 * answered `invalid` without reaching the store.
 */

export interface Limits {
  readonly maxFrameBytes: number;
  readonly maxPutsPerFrame: number;
  readonly maxStateBytes: number;
  readonly maxStateDepth: number;
  readonly maxKeyBytes: number;
  readonly maxStreamBytes: number;
  readonly maxIdBytes: number;
  readonly maxHelloStreams: number;
  readonly maxNonceBytes: number;
}

/** The limits a server announces in its welcome, taken from its configuration. */
export function limitsOf(c: Config): Limits {
  return {
    maxFrameBytes: c.maxFrameBytes,
    maxPutsPerFrame: c.maxPutsPerFrame,
    maxStateBytes: c.maxStateBytes,
    maxStateDepth: c.maxStateDepth,
    maxKeyBytes: c.maxKeyBytes,
    maxStreamBytes: c.maxStreamBytes,
    maxIdBytes: c.maxIdBytes,
    maxHelloStreams: c.maxHelloStreams,
    maxNonceBytes: c.maxNonceBytes,
  };
}

export type CorrelationId = string | number | null;

export type ParsedPut =
  { readonly ok: true; readonly id: CorrelationId; readonly put: Put } | { readonly ok: false; readonly id: CorrelationId; readonly result: WireResult };

export type IncomingMessage =
  | { readonly type: 'hello'; readonly streams: readonly string[]; readonly token: string | undefined }
  | { readonly type: 'put'; readonly puts: readonly ParsedPut[] }
  | { readonly type: 'ping'; readonly nonce: unknown }
  | SubscribeMessage
  | UnsubscribeMessage;

export interface WireError {
  readonly code: string;
  readonly message: string;
  readonly retryable: boolean;
  readonly [detail: string]: unknown;
}

export type WireResult =
  | { readonly id: CorrelationId; readonly outcome: Ack['outcome']; readonly replay: boolean; readonly ack: WireAck }
  | { readonly id: CorrelationId; readonly outcome: string; readonly error: WireError };

/** The ack exactly as sent; field order is fixed so that a replay encodes to the same bytes. */
export interface WireAck {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
  readonly ifVersion?: number;
  readonly committedAt: number;
}

const PUT_FIELDS = new Set(['id', 'stream', 'epoch', 'seq', 'key', 'state', 'delete', 'ifVersion']);

class Invalid extends Error {
  constructor(
    readonly code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED',
    readonly field: string,
    readonly limit: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

/** Checks a stream or document name; returns an error message or null. */
export function nameProblem(value: string, fieldName: string, maxBytes: number): string | null {
  try {
    name(value, fieldName, maxBytes, '');
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

function name(value: unknown, fieldName: string, maxBytes: number, limitName: string): string {
  // The rule is the wire module's, shared with the client, so a name it accepts is accepted here.
  const problem = wireNameProblem(value, fieldName, maxBytes);
  if (problem !== null) throw new Invalid(problem.code, fieldName, problem.code === 'LIMIT_EXCEEDED' ? limitName : undefined, problem.message);
  return value as string;
}

function integer(value: unknown, fieldName: string, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new Invalid('INVALID_FIELD', fieldName, undefined, `${fieldName} must be a safe integer >= ${min}`);
  }
  return value;
}

function correlationId(value: unknown, limits: Limits): CorrelationId {
  if (typeof value === 'string' && Buffer.byteLength(value, 'utf8') <= limits.maxIdBytes) return value;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  return null;
}

interface PutContext {
  /** HTTP puts name the stream in the path; a body that names another one is invalid. */
  readonly stream?: string;
  /** HTTP puts need no correlation id: the response answers the request. */
  readonly idOptional?: boolean;
}

export function parsePut(raw: unknown, limits: Limits, tenant: string, context: PutContext = {}): ParsedPut {
  const id = correlationId(field(raw, 'id'), limits);
  try {
    if (!isMap(raw)) throw new Invalid('INVALID_FIELD', 'put', undefined, 'each put must be a map');
    const rawId = field(raw, 'id');
    if (id === null && !(context.idOptional && rawId === undefined)) {
      if (typeof rawId === 'string') throw new Invalid('LIMIT_EXCEEDED', 'id', 'maxIdBytes', `id exceeds ${limits.maxIdBytes} UTF-8 bytes`);
      throw new Invalid('INVALID_FIELD', 'id', undefined, 'id must be a string or a safe integer >= 0');
    }
    for (const f of fieldNames(raw)) {
      if (typeof f !== 'string' || !PUT_FIELDS.has(f)) throw new Invalid('INVALID_FIELD', String(f), undefined, `unknown field ${String(f)}`);
    }
    const rawStream = field(raw, 'stream');
    if (context.stream !== undefined && rawStream !== undefined && rawStream !== context.stream) {
      throw new Invalid('INVALID_FIELD', 'stream', undefined, 'stream in the body differs from the stream in the path');
    }
    const stream = name(context.stream ?? rawStream, 'stream', limits.maxStreamBytes, 'maxStreamBytes');
    const epoch = integer(field(raw, 'epoch'), 'epoch', 0);
    const seq = integer(field(raw, 'seq'), 'seq', 1);
    const key = name(field(raw, 'key'), 'key', limits.maxKeyBytes, 'maxKeyBytes');
    const del = field(raw, 'delete');
    if (del !== undefined && typeof del !== 'boolean') throw new Invalid('INVALID_FIELD', 'delete', undefined, 'delete must be a boolean');
    const hasState = raw instanceof Map ? raw.has('state') : Object.hasOwn(raw as object, 'state');
    if (del === true && hasState) throw new Invalid('INVALID_FIELD', 'state', undefined, 'a put carries either state or delete: true, not both');
    if (del !== true && !hasState) throw new Invalid('INVALID_FIELD', 'state', undefined, 'state is required unless delete is true');
    const rawIfVersion = field(raw, 'ifVersion');
    const ifVersion = rawIfVersion === undefined || rawIfVersion === null ? null : integer(rawIfVersion, 'ifVersion', 0);

    let state: Buffer | null = null;
    const rawState = field(raw, 'state');
    // Bytes the frame reader found canonical and within the limits are the state already.
    if (del !== true && rawState instanceof CanonicalState) state = rawState.bytes;
    else if (del !== true) {
      try {
        state = canonicalEncode(
          rawState,
          {
            maxBytes: limits.maxStateBytes,
            maxDepth: limits.maxStateDepth,
            bytesLimitName: 'maxStateBytes',
            depthLimitName: 'maxStateDepth',
          },
          'state',
        );
      } catch (err) {
        if (err instanceof CanonicalError) {
          throw new Invalid(err.kind === 'limit' ? 'LIMIT_EXCEEDED' : 'INVALID_FIELD', 'state', err.limit, err.message);
        }
        throw err;
      }
    }
    const put: Put = { tenant, stream, epoch, seq, key, state, ifVersion, fingerprint: putFingerprint(key, state, ifVersion) };
    return { ok: true, id, put };
  } catch (err) {
    if (!(err instanceof Invalid)) throw err;
    const error: WireError = errorBody(err.code, err.message, {
      field: err.field,
      ...(err.limit !== undefined ? { limit: err.limit, max: limits[err.limit as keyof Limits] } : {}),
    });
    return { ok: false, id, result: { id, outcome: 'invalid', error } };
  }
}

/** Parses a decoded frame; throws SeqgateError with a message-scope code. */
export function parseMessage(value: unknown, limits: Limits, tenant: string): IncomingMessage {
  if (!isMap(value)) throw new SeqgateError('INVALID_MESSAGE', 'a message must be a map', { field: 'type' });
  const type = field(value, 'type');
  if (typeof type !== 'string') throw new SeqgateError('INVALID_MESSAGE', 'type must be a string', { field: 'type' });
  switch (type) {
    case 'put': {
      const puts = field(value, 'puts');
      if (!Array.isArray(puts)) throw new SeqgateError('INVALID_MESSAGE', 'puts must be an array', { field: 'puts' });
      if (puts.length > limits.maxPutsPerFrame) {
        throw new SeqgateError('TOO_MANY_PUTS', `${puts.length} puts exceed maxPutsPerFrame ${limits.maxPutsPerFrame}`, {
          limit: 'maxPutsPerFrame',
          max: limits.maxPutsPerFrame,
        });
      }
      return { type, puts: puts.map((p) => parsePut(p, limits, tenant)) };
    }
    case 'hello': {
      const protocol = field(value, 'protocol');
      if (protocol !== undefined && protocol !== 1) {
        throw new SeqgateError(
          'UNSUPPORTED_VERSION',
          `protocol ${typeof protocol === 'number' ? protocol : `of type ${typeof protocol}`} is not supported; this server speaks 1`,
          { supported: [1] },
        );
      }
      const streams = field(value, 'streams') ?? [];
      if (!Array.isArray(streams)) throw new SeqgateError('INVALID_MESSAGE', 'streams must be an array of stream names', { field: 'streams' });
      if (streams.length > limits.maxHelloStreams) {
        throw new SeqgateError('TOO_MANY_STREAMS', `${streams.length} streams exceed maxHelloStreams ${limits.maxHelloStreams}`, {
          limit: 'maxHelloStreams',
          max: limits.maxHelloStreams,
        });
      }
      const names: string[] = [];
      for (const s of streams) {
        try {
          names.push(name(s, 'streams', limits.maxStreamBytes, 'maxStreamBytes'));
        } catch (err) {
          throw new SeqgateError('INVALID_MESSAGE', (err as Error).message, { field: 'streams' });
        }
      }
      const token = field(value, 'token');
      if (token !== undefined && typeof token !== 'string') throw new SeqgateError('INVALID_MESSAGE', 'token must be a string', { field: 'token' });
      return { type, streams: names, token };
    }
    case 'ping':
      return { type, nonce: checkedNonce(field(value, 'nonce') ?? null, limits) };
    case 'subscribe':
      return parseSubscribe(value, limits);
    case 'unsubscribe':
      return parseUnsubscribe(value, limits);
    default:
      throw new SeqgateError('UNKNOWN_TYPE', `unknown message type "${type.slice(0, 64)}"`, { field: 'type' });
  }
}

/**
 * A pong echoes its ping's nonce: bounded, so that pings cannot make the server queue large
 * answers (a pong costs what its nonce costs, on the way out too).
 */
function checkedNonce(nonce: unknown, limits: Limits): unknown {
  try {
    canonicalEncode(
      nonce,
      { maxBytes: limits.maxNonceBytes, maxDepth: limits.maxStateDepth, bytesLimitName: 'maxNonceBytes', depthLimitName: 'maxStateDepth' },
      'nonce',
    );
  } catch (err) {
    if (!(err instanceof CanonicalError)) throw err;
    throw new SeqgateError('INVALID_MESSAGE', err.message, {
      field: 'nonce',
      ...(err.limit === 'maxNonceBytes' ? { limit: 'maxNonceBytes', max: limits.maxNonceBytes } : {}),
    });
  }
  return nonce;
}

/** The answer to a put whose state is over maxStateBytes, as parsePut gives it. */
export function oversizeStateResult(id: CorrelationId, limits: Limits): WireResult {
  return {
    id,
    outcome: 'invalid',
    error: errorBody('LIMIT_EXCEEDED', `state exceeds ${limits.maxStateBytes} bytes`, {
      field: 'state',
      limit: 'maxStateBytes',
      max: limits.maxStateBytes,
    }),
  };
}

function wireAck(ack: Ack): WireAck {
  return {
    stream: ack.stream,
    epoch: ack.epoch,
    seq: ack.seq,
    key: ack.key,
    version: ack.version,
    deleted: ack.deleted,
    ...(ack.ifVersion !== undefined ? { ifVersion: ack.ifVersion } : {}),
    committedAt: ack.committedAt,
  };
}

export function wireResult(id: CorrelationId, result: PutResult): WireResult {
  if (result.kind === 'ack') return { id, outcome: result.ack.outcome, replay: result.replay, ack: wireAck(result.ack) };
  switch (result.outcome) {
    case 'sequence_reused':
      return { id, outcome: result.outcome, error: errorBody(result.code, 'seq already used by a put with a different payload') };
    case 'fenced':
      return { id, outcome: result.outcome, error: errorBody(result.code, `epoch is fenced; the stream is at epoch ${result.epoch}`, { epoch: result.epoch }) };
    case 'stale':
    case 'expired':
      return {
        id,
        outcome: result.outcome,
        error: errorBody(
          result.code,
          result.outcome === 'stale' ? 'seq is at or below the head and was never applied' : 'seq is at or below the pruned-through mark',
          { head: { epoch: result.head.epoch, seq: result.head.seq }, prunedThrough: result.head.prunedThrough },
        ),
      };
    case 'gap':
      return { id, outcome: result.outcome, error: errorBody(result.code, `expected seq ${result.expected.seq}`, { expected: result.expected }) };
    case 'error':
      return { id, outcome: result.outcome, error: errorBody(result.code, result.message) };
  }
}

/** The answer to a put the token's grant does not cover; nothing was consumed. */
export function forbiddenResult(id: CorrelationId): WireResult {
  return { id, outcome: 'forbidden', error: errorBody('FORBIDDEN', 'token may not write this stream or document') };
}

export function errorMessage(err: SeqgateError): object {
  return { type: 'error', ...errorBody(err.code, err.message, err.details) };
}

export function headsForWire(heads: readonly StreamHead[]): object[] {
  return heads.map((h) => ({ stream: h.stream, epoch: h.epoch, seq: h.seq, prunedThrough: h.prunedThrough }));
}
