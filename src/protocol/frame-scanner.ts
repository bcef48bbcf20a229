/**
 * Structural check of an incoming frame before any decoder sees it.
 *
 * msgpackr decodes recursively and has no nesting limit, and JSON.parse has none either, so a
 * hostile frame of a few kilobytes could exhaust the stack. These scanners walk the bytes
 * iteratively (an explicit state machine with a stack of remaining item counts) and reject a frame
 * that is truncated, has trailing bytes, uses a msgpack extension type, or nests deeper than
 * allowed. Only frames that pass are handed to the decoder.
 */

export type ScanFault =
  | { fault: 'malformed'; reason: string }
  | { fault: 'too_deep'; depth: number };

/** Scans one msgpack value that must span `buf` exactly. Returns null when the frame is sound. */
export function scanMsgpack(buf: Uint8Array, maxDepth: number): ScanFault | null {
  // remaining[i] = items still to read in the container at depth i+1
  const remaining: number[] = [];
  let pos = 0;
  let rootDone = false;
  const len = buf.length;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);

  const need = (n: number): boolean => pos + n <= len;

  while (pos < len) {
    if (rootDone) return { fault: 'malformed', reason: 'trailing bytes after the value' };
    const b = buf[pos++]!;
    let skip = 0;
    let children = -1;

    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      // fixint, negative fixint, nil, false, true: the byte is the whole value
    } else if (b >= 0x80 && b <= 0x8f) {
      children = (b & 0x0f) * 2;
    } else if (b >= 0x90 && b <= 0x9f) {
      children = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
      skip = b & 0x1f;
    } else {
      switch (b) {
        case 0xc4: case 0xd9:
          if (!need(1)) return truncated();
          skip = buf[pos]!; pos += 1; break;
        case 0xc5: case 0xda:
          if (!need(2)) return truncated();
          skip = view.getUint16(pos); pos += 2; break;
        case 0xc6: case 0xdb:
          if (!need(4)) return truncated();
          skip = view.getUint32(pos); pos += 4; break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xdc:
          if (!need(2)) return truncated();
          children = view.getUint16(pos); pos += 2; break;
        case 0xdd:
          if (!need(4)) return truncated();
          children = view.getUint32(pos); pos += 4; break;
        case 0xde:
          if (!need(2)) return truncated();
          children = view.getUint16(pos) * 2; pos += 2; break;
        case 0xdf:
          if (!need(4)) return truncated();
          children = view.getUint32(pos) * 2; pos += 4; break;
        case 0xc1:
          return { fault: 'malformed', reason: 'byte 0xc1 is never used in msgpack' };
        default:
          return { fault: 'malformed', reason: 'msgpack extension types are not accepted' };
      }
    }

    if (skip > 0) {
      if (!need(skip)) return truncated();
      pos += skip;
    }

    // The value just read fills one slot of its parent.
    if (remaining.length > 0) remaining[remaining.length - 1]! -= 1;

    if (children > 0) {
      // Every item takes at least one byte: an inflated count is caught here, not by looping.
      if (children > len - pos) return truncated();
      if (remaining.length + 1 > maxDepth) return { fault: 'too_deep', depth: remaining.length + 1 };
      remaining.push(children);
    } else if (children === 0 && remaining.length + 1 > maxDepth) {
      return { fault: 'too_deep', depth: remaining.length + 1 };
    }

    while (remaining.length > 0 && remaining[remaining.length - 1] === 0) remaining.pop();
    if (remaining.length === 0) rootDone = true;
  }
  if (!rootDone) return truncated();
  return null;
}

function truncated(): ScanFault {
  return { fault: 'malformed', reason: 'truncated msgpack value' };
}

/**
 * Bounds the bracket nesting of a JSON text. Strings are skipped (with escapes), everything else
 * is left to JSON.parse, which is only reached once the depth is known to be safe.
 */
export function scanJsonDepth(text: string, maxDepth: number): ScanFault | null {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > maxDepth) return { fault: 'too_deep', depth };
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return null;
}

/** Where one value of a scanned msgpack frame lies, and how many values it holds (itself included). */
export interface Span {
  readonly start: number;
  readonly end: number;
  /** Values in the span: 1 for a scalar, 1 + every nested key, value and element for a container. */
  readonly items: number;
}

export interface Children {
  readonly kind: 'map' | 'array' | 'scalar';
  /** A map's keys and values alternately (key, value, key, …), or an array's elements. */
  readonly spans: Span[];
}

// Set by headerAt() next to its return value, to spare an allocation per value.
let headerChildren = 0;

/**
 * The end of the header and payload of the value at `pos`; sets `headerChildren` to the number of
 * values nested directly in it. Only for bytes that scanMsgpack() accepted.
 */
function headerAt(buf: Uint8Array, view: DataView, pos: number): number {
  const b = buf[pos]!;
  headerChildren = 0;
  if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) return pos + 1;
  if (b <= 0x8f) { headerChildren = (b & 0x0f) * 2; return pos + 1; }
  if (b <= 0x9f) { headerChildren = b & 0x0f; return pos + 1; }
  if (b <= 0xbf) return pos + 1 + (b & 0x1f);
  switch (b) {
    case 0xc4: case 0xd9: return pos + 2 + buf[pos + 1]!;
    case 0xc5: case 0xda: return pos + 3 + view.getUint16(pos + 1);
    case 0xc6: case 0xdb: return pos + 5 + view.getUint32(pos + 1);
    case 0xca: return pos + 5;
    case 0xcb: return pos + 9;
    case 0xcc: case 0xd0: return pos + 2;
    case 0xcd: case 0xd1: return pos + 3;
    case 0xce: case 0xd2: return pos + 5;
    case 0xcf: case 0xd3: return pos + 9;
    case 0xdc: headerChildren = view.getUint16(pos + 1); return pos + 3;
    case 0xdd: headerChildren = view.getUint32(pos + 1); return pos + 5;
    case 0xde: headerChildren = view.getUint16(pos + 1) * 2; return pos + 3;
    case 0xdf: headerChildren = view.getUint32(pos + 1) * 2; return pos + 5;
    default: throw new RangeError(`byte 0x${b.toString(16)} at ${pos}: not a value scanMsgpack() accepted`);
  }
}

/** The span of the value starting at `pos`. */
function spanAt(buf: Uint8Array, view: DataView, pos: number): Span {
  const start = pos;
  let pending = 1;
  let items = 0;
  while (pending > 0) {
    pos = headerAt(buf, view, pos);
    pending += headerChildren - 1;
    items++;
  }
  return { start, end: pos, items };
}

/**
 * The values nested directly in the value at `start` of a frame that scanMsgpack() accepted, each
 * with its span, without decoding any of them. A reader can then decode only the parts it needs,
 * and refuse a part by its item count before paying for decoding it.
 */
export function msgpackChildren(buf: Uint8Array, start = 0): Children {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const b = buf[start]!;
  let pos = headerAt(buf, view, start);
  const count = headerChildren;
  const kind = (b >= 0x80 && b <= 0x8f) || b === 0xde || b === 0xdf ? 'map'
    : (b >= 0x90 && b <= 0x9f) || b === 0xdc || b === 0xdd ? 'array' : 'scalar';
  const spans: Span[] = [];
  for (let i = 0; i < count; i++) {
    const span = spanAt(buf, view, pos);
    spans.push(span);
    pos = span.end;
  }
  return { kind, spans };
}
