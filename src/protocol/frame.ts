import { Unpackr } from 'msgpackr';
import { SeqgateError } from '../errors.js';
import { ENVELOPE_DEPTH, field, isMap, type WireFormat } from './codec.js';
import { CanonicalState, isCanonicalMsgpack } from './canonical-bytes.js';
import { indexMsgpack, peekJsonType, scanJsonDepth, type ScannedValue as Span } from './frame-scanner.js';
import { oversizeStateResult, parseMessage, parsePut, type IncomingMessage, type Limits, type ParsedPut } from './messages.js';

/**
 * One incoming WebSocket frame, decoded only as far as it has to be. A msgpack frame is scanned
 * whole (structure and depth, one pass without allocation) and then decoded piece by piece:
 * - its `type` first, so that a connection that has not authenticated pays for nothing else;
 * - a hello or ping only in the fields the message has (ignored fields are never decoded);
 * - each put on its own, and a put whose state holds more values, plus string and binary payload
 *   bytes, than `maxStateBytes` is refused `LIMIT_EXCEEDED` without decoding or sorting that
 *   state: every value takes at least one byte in canonical form and every payload its own length,
 *   so its canonical form is larger than the limit (duplicate map keys, which decoding would
 *   collapse, are counted as sent: PROTOCOL.md appendix). One string just under maxFrameBytes cost
 *   3-4 ms of decoding before it was refused.
 * Decoding a million-key map costs hundreds of milliseconds of a single-threaded server; counting
 * its items costs a few.
 * A JSON frame is parsed whole (JSON.parse has no partial mode) once its depth is checked, but
 * only when its message is asked for: its `type` is found by a scan of the text first, so an
 * unauthenticated connection's put is refused without being parsed.
 */

// The same settings as the codec's unpacker (see codec.ts): no records, no structured clone,
// maps as Map, int64 beyond 2^53 as BigInt.
const unpackr = new Unpackr({
  useRecords: false,
  structuredClone: false,
  mapsAsObjects: false,
  int64AsType: 'auto' as 'bigint',
  moreTypes: false,
});

/** Values a put map holds besides its state: 8 fields, their names, scalar values. */
const PUT_ENVELOPE_ITEMS = 32;
/** Fields that are not a state are decoded only up to this many values; larger ones are refused anyway. */
const SMALL_ITEMS = 64;
/** Stands for a field value too large to be valid (it is never a string or a number). */
const TOO_LARGE = new Map<never, never>();

export class IncomingFrame {
  private constructor(
    /** The `type` field, decoded; undefined when the frame is not a map or has none. */
    readonly type: unknown,
    /** Whether the frame is a map at all (a message must be). */
    private readonly isMapFrame: boolean,
    private readonly decodeMessage: (limits: Limits, tenant: string) => IncomingMessage,
  ) {}

  /** Scans (and for JSON parses) a frame; throws SeqgateError for a frame refused as a whole. */
  static open(data: Buffer, isBinary: boolean, format: WireFormat, limits: Limits): IncomingFrame {
    const maxDepth = limits.maxStateDepth + ENVELOPE_DEPTH;
    if (format === 'json') {
      if (isBinary) throw new SeqgateError('WRONG_FRAME_TYPE', 'binary frame on a JSON connection; send text frames');
      const text = data.toString('utf8');
      if (scanJsonDepth(text, maxDepth))
        throw new SeqgateError('TOO_DEEP', `frame nests deeper than ${maxDepth} levels`, { limit: 'maxStateDepth', max: limits.maxStateDepth });
      const type = peekJsonType(text);
      if (type !== undefined) return new IncomingFrame(type, true, (l, tenant) => parseMessage(parseJson(text), l, tenant));
      const value = parseJson(text);
      return new IncomingFrame(field(value, 'type'), isMap(value), (l, tenant) => parseMessage(value, l, tenant));
    }
    if (!isBinary) throw new SeqgateError('WRONG_FRAME_TYPE', 'text frame on a msgpack connection; send binary frames');
    // One pass checks the structure and records where the message's fields, its puts and their
    // fields lie (levels 0-3), with how many values each holds.
    const scanned = indexMsgpack(data, maxDepth, 3);
    if ('fault' in scanned) {
      if (scanned.fault === 'too_deep')
        throw new SeqgateError('TOO_DEEP', `frame nests deeper than ${maxDepth} levels`, { limit: 'maxStateDepth', max: limits.maxStateDepth });
      throw new SeqgateError('MALFORMED_FRAME', `undecodable msgpack: ${scanned.reason}`);
    }
    const { root } = scanned;
    if (!isMapAt(data, root)) return new IncomingFrame(undefined, false, () => parseMessage(null, limits, ''));
    const fields = new Map<string, Span>();
    const spans = root.children!;
    for (let i = 0; i < spans.length; i += 2) {
      const key = spans[i]!;
      // Field names are short strings; anything else is not a field this protocol reads.
      if (key.items !== 1 || key.end - key.start > 64) continue;
      const name = decode(data, key);
      if (typeof name === 'string') fields.set(name, spans[i + 1]!);
    }
    const typeSpan = fields.get('type');
    const type = typeSpan === undefined ? undefined : typeSpan.items === 1 ? decode(data, typeSpan) : TOO_LARGE;
    return new IncomingFrame(type, true, (l, tenant) => messageOf(data, type, fields, l, tenant));
  }

  /** The whole message, validated as parseMessage() does; throws SeqgateError. */
  message(limits: Limits, tenant: string): IncomingMessage {
    if (!this.isMapFrame) throw new SeqgateError('INVALID_MESSAGE', 'a message must be a map', { field: 'type' });
    return this.decodeMessage(limits, tenant);
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SeqgateError('MALFORMED_FRAME', `undecodable JSON: ${(err as Error).message}`, {}, { cause: err });
  }
}

function isMapAt(data: Buffer, span: Span): boolean {
  const b = data[span.start]!;
  return (b >= 0x80 && b <= 0x8f) || b === 0xde || b === 0xdf;
}

function isArrayAt(data: Buffer, span: Span): boolean {
  const b = data[span.start]!;
  return (b >= 0x90 && b <= 0x9f) || b === 0xdc || b === 0xdd;
}

function decode(data: Buffer, span: Span): unknown {
  try {
    return unpackr.unpack(data.subarray(span.start, span.end));
  } catch (err) {
    // The scanner accepted the bytes, so this is unexpected; it still only costs this frame.
    throw new SeqgateError('MALFORMED_FRAME', `undecodable msgpack: ${(err as Error).message}`, {}, { cause: err });
  }
}

/** A map of only the named fields, each decoded unless it holds more than `maxItems` values. */
function partial(data: Buffer, fields: Map<string, Span>, names: readonly string[], maxItems: number): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const name of names) {
    const span = fields.get(name);
    if (span !== undefined) out.set(name, span.items > maxItems ? TOO_LARGE : decode(data, span));
  }
  return out;
}

function messageOf(data: Buffer, type: unknown, fields: Map<string, Span>, limits: Limits, tenant: string): IncomingMessage {
  switch (type) {
    case 'ping': {
      const nonce = fields.get('nonce');
      // Canonical form takes at least one byte per value: more values than bytes allowed is over.
      if (nonce !== undefined && nonce.items > limits.maxNonceBytes) {
        throw new SeqgateError('INVALID_MESSAGE', `nonce exceeds ${limits.maxNonceBytes} bytes`, {
          field: 'nonce',
          limit: 'maxNonceBytes',
          max: limits.maxNonceBytes,
        });
      }
      return parseMessage(partial(data, fields, ['type', 'nonce'], Infinity), limits, tenant);
    }
    case 'hello':
      // A streams array beyond the limit is refused by its length, never decoded.
      return parseMessage(helloOf(data, fields, limits), limits, tenant);
    case 'put':
      return { type, puts: putsOf(data, fields.get('puts'), limits, tenant) };
    case 'subscribe':
    case 'unsubscribe':
      // Changefeed messages hold scalars only; anything larger is refused by its shape.
      return parseMessage(partial(data, fields, ['type', 'id', 'prefix', 'from'], 1), limits, tenant);
    default:
      return parseMessage(partial(data, fields, ['type'], 1), limits, tenant);
  }
}

function helloOf(data: Buffer, fields: Map<string, Span>, limits: Limits): Map<string, unknown> {
  const hello = partial(data, fields, ['type', 'protocol', 'token'], SMALL_ITEMS);
  const streams = fields.get('streams');
  if (streams !== undefined) {
    const count = isArrayAt(data, streams) ? streams.children!.length : 0;
    hello.set(
      'streams',
      count > limits.maxHelloStreams ? new Array<null>(count).fill(null) : streams.items > (limits.maxHelloStreams + 1) * 2 ? TOO_LARGE : decode(data, streams),
    );
  }
  return hello;
}

function putsOf(data: Buffer, span: Span | undefined, limits: Limits, tenant: string): ParsedPut[] {
  if (span === undefined || !isArrayAt(data, span)) throw new SeqgateError('INVALID_MESSAGE', 'puts must be an array', { field: 'puts' });
  const puts = span.children!;
  if (puts.length > limits.maxPutsPerFrame) {
    throw new SeqgateError('TOO_MANY_PUTS', `${puts.length} puts exceed maxPutsPerFrame ${limits.maxPutsPerFrame}`, {
      limit: 'maxPutsPerFrame',
      max: limits.maxPutsPerFrame,
    });
  }
  return puts.map((put) => putOf(data, put, limits, tenant));
}

/** One put, as parsePut() would answer it; an oversize state is refused without being decoded. */
function putOf(data: Buffer, span: Span, limits: Limits, tenant: string): ParsedPut {
  if (span.items <= limits.maxStateBytes + PUT_ENVELOPE_ITEMS && span.payload <= limits.maxStateBytes) {
    return (FAST_PATH ? canonicalPut(data, span, limits, tenant) : undefined) ?? parsePut(decode(data, span), limits, tenant);
  }
  // Not a map: refused for that, whatever it holds.
  if (!isMapAt(data, span)) return parsePut([], limits, tenant);
  const fields = span.children!;
  const put = new Map<unknown, unknown>();
  let oversize = false;
  for (let i = 0; i < fields.length; i += 2) {
    const keySpan = fields[i]!;
    const valueSpan = fields[i + 1]!;
    const key = keySpan.items > SMALL_ITEMS ? TOO_LARGE : decode(data, keySpan);
    if (key === 'state') {
      // The last one counts, as when the map is decoded.
      oversize = valueSpan.items + valueSpan.payload > limits.maxStateBytes;
      put.set(key, oversize ? null : decode(data, valueSpan));
    } else {
      put.set(key, valueSpan.items > SMALL_ITEMS ? TOO_LARGE : decode(data, valueSpan));
    }
  }
  const parsed = parsePut(put, limits, tenant);
  if (!parsed.ok || !oversize) return parsed;
  return { ok: false, id: parsed.id, result: oversizeStateResult(parsed.id, limits) };
}

/**
 * Whether puts whose state is already canonical skip decoding and re-encoding it (the default).
 * SEQGATE_CANONICAL_FAST_PATH=0 switches it off, so that the bench can measure the lever against
 * the slow path in the same run (bench/README.md); the answers are the same either way.
 */
const FAST_PATH = process.env.SEQGATE_CANONICAL_FAST_PATH !== '0';

/** The eight put fields, as bytes (all short ASCII, so each is one fixstr) and as the string decoding gives. */
const PUT_FIELD_NAMES = ['id', 'stream', 'epoch', 'seq', 'key', 'state', 'delete', 'ifVersion'] as const;
const PUT_FIELD_BYTES = PUT_FIELD_NAMES.map((n) => Buffer.from(n, 'latin1'));

/**
 * The put at `span` read without decoding its state, when its state's bytes are already canonical
 * (as the SDK sends them): they are then the stored state as they are, and parsePut() validates
 * the rest as for a decoded put. Undefined for anything unusual (not a fixmap, a field name that is
 * not one of the eight or not a fixstr, a state that is not canonical or over a limit): the caller
 * then decodes the whole put as before, so every refusal and every non-canonical state takes the
 * one path that defines the answer. test/canonical-bytes.test.ts checks both paths give the same
 * answer.
 */
function canonicalPut(data: Buffer, span: Span, limits: Limits, tenant: string): ParsedPut | undefined {
  const head = data[span.start]!;
  if (head < 0x80 || head > 0x8f) return undefined;
  const fields = span.children!;
  const put = new Map<string, unknown>();
  for (let i = 0; i < fields.length; i += 2) {
    const name = putFieldName(data, fields[i]!);
    if (name === undefined) return undefined;
    const value = fields[i + 1]!;
    if (name === 'state') {
      if (!isCanonicalMsgpack(data, value.start, value.end, limits.maxStateBytes, limits.maxStateDepth)) return undefined;
      // A copy: the stored state must not keep the whole received frame alive.
      const bytes = Buffer.allocUnsafe(value.end - value.start);
      data.copy(bytes, 0, value.start, value.end);
      put.set(name, new CanonicalState(bytes));
    } else {
      put.set(name, scalar(data, value));
    }
  }
  return parsePut(put, limits, tenant);
}

function putFieldName(data: Buffer, span: Span): string | undefined {
  const n = span.end - span.start - 1;
  if (n > 31 || data[span.start] !== (0xa0 | n)) return undefined;
  for (let f = 0; f < PUT_FIELD_BYTES.length; f++) {
    const bytes = PUT_FIELD_BYTES[f]!;
    if (bytes.length !== n) continue;
    let same = true;
    for (let i = 0; i < n && same; i++) same = data[span.start + 1 + i] === bytes[i];
    if (same) return PUT_FIELD_NAMES[f];
  }
  return undefined;
}

/**
 * A field's value as the decoder gives it. The common shapes (small unsigned integers, nil,
 * booleans, short ASCII strings) are read here, where they cost a few comparisons; anything else
 * goes to the decoder, on its own bytes.
 */
function scalar(data: Buffer, span: Span): unknown {
  const p = span.start;
  const b = data[p]!;
  if (b <= 0x7f) return b;
  if (b >= 0xa0 && b <= 0xbf) {
    const end = p + 1 + (b & 0x1f);
    for (let i = p + 1; i < end; i++) if (data[i]! >= 0x80) return decode(data, span);
    return data.toString('latin1', p + 1, end);
  }
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xcc:
      return data[p + 1];
    case 0xcd:
      return data.readUInt16BE(p + 1);
    case 0xce:
      return data.readUInt32BE(p + 1);
    default:
      return decode(data, span);
  }
}
