/**
 * Structural check of an incoming frame before any decoder sees it.
 *
 * msgpackr decodes recursively and has no nesting limit, and JSON.parse has none either, so a
 * hostile frame of a few kilobytes could exhaust the stack. These scanners walk the bytes
 * iteratively (an explicit state machine with a stack of remaining item counts) and reject a frame
 * that is truncated, has trailing bytes, uses a msgpack extension type, or nests deeper than
 * allowed. Only frames that pass are handed to the decoder.
 */

type ScanFault = { fault: 'malformed'; reason: string } | { fault: 'too_deep'; depth: number };

/** Where one value of a scanned msgpack frame lies, and how many values it holds (itself included). */
export interface ScannedValue {
  readonly start: number;
  end: number;
  /** Values in the span: 1 for a scalar, 1 + every nested key, value and element for a container. */
  items: number;
  /**
   * Bytes of string and binary payload in the span. Canonical form writes each value in at least
   * one byte and each payload whole, so `items + payload` is a lower bound on the span's canonical
   * size: a state can be refused by it without being decoded, however it is encoded on the wire.
   */
  payload: number;
  /**
   * For a map or array within the indexed depth: the values nested directly in it, a map's keys
   * and values alternately (key, value, key, …). Undefined for scalars and deeper containers.
   */
  readonly children?: ScannedValue[];
}

/** Scans one msgpack value that must span `buf` exactly. Returns null when the frame is sound. */
export function scanMsgpack(buf: Uint8Array, maxDepth: number): ScanFault | null {
  const scanned = indexMsgpack(buf, maxDepth, 0);
  return 'fault' in scanned ? scanned : null;
}

/**
 * scanMsgpack() that also records, in the same pass, where each value down to `indexDepth` levels
 * lies and how many values it holds (the root is level 0; 3 reaches a put's fields). A reader can
 * then decode only the parts it needs, and refuse a part by its item count before paying for
 * decoding it.
 */
export function indexMsgpack(buf: Uint8Array, maxDepth: number, indexDepth: number): ScanFault | { root: ScannedValue } {
  // remaining[i] = items still to read in the container at depth i+1; opened[i] its index node
  // (or null beyond indexDepth) and counted[i] the value count when it opened.
  const remaining: number[] = [];
  const opened: Array<ScannedValue | null> = [];
  const counted: number[] = [];
  const paid: number[] = [];
  let count = 0;
  let payload = 0;
  let root: ScannedValue | undefined;
  let pos = 0;
  let rootDone = false;
  const len = buf.length;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);

  const need = (n: number): boolean => pos + n <= len;
  // Closes every container whose last item was just read.
  const closeFilled = (): void => {
    while (remaining.length > 0 && remaining[remaining.length - 1] === 0) {
      remaining.pop();
      const closing = opened.pop()!;
      const at = counted.pop()!;
      const payloadAt = paid.pop()!;
      if (closing !== null) {
        closing.end = pos;
        closing.items = count - at + 1;
        closing.payload = payload - payloadAt;
      }
    }
  };

  while (pos < len) {
    if (rootDone) return { fault: 'malformed', reason: 'trailing bytes after the value' };
    const depth = remaining.length;
    if (depth > indexDepth) {
      // Below the indexed levels, runs of one-byte values and short strings (the bulk of a large
      // map or array) are skipped in a tight loop: this is most of the time spent on such frames.
      const top = depth - 1;
      let left = remaining[top]!;
      let p = pos;
      let skipped = 0;
      while (left > 0 && p < len) {
        const b = buf[p]!;
        if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) p++;
        else if (b >= 0xa0 && b <= 0xbf) {
          p += 1 + (b & 0x1f);
          payload += b & 0x1f;
          if (p > len) return truncated();
        } else break;
        left--;
        skipped++;
      }
      if (skipped > 0) {
        pos = p;
        count += skipped;
        remaining[top] = left;
        if (left === 0) {
          closeFilled();
          if (remaining.length === 0) rootDone = true;
        }
        continue;
      }
    }
    const start = pos;
    count++;
    const b = buf[pos++]!;
    let skip = 0;
    let children = -1;
    let bytes = 0;

    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) {
      // fixint, negative fixint, nil, false, true: the byte is the whole value
    } else if (b >= 0x80 && b <= 0x8f) {
      children = (b & 0x0f) * 2;
    } else if (b >= 0x90 && b <= 0x9f) {
      children = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
      skip = b & 0x1f;
      bytes = skip;
    } else {
      switch (b) {
        case 0xc4:
        case 0xd9:
          if (!need(1)) return truncated();
          skip = buf[pos]!;
          bytes = skip;
          pos += 1;
          break;
        case 0xc5:
        case 0xda:
          if (!need(2)) return truncated();
          skip = view.getUint16(pos);
          bytes = skip;
          pos += 2;
          break;
        case 0xc6:
        case 0xdb:
          if (!need(4)) return truncated();
          skip = view.getUint32(pos);
          bytes = skip;
          pos += 4;
          break;
        case 0xca:
          skip = 4;
          break;
        case 0xcb:
          skip = 8;
          break;
        case 0xcc:
        case 0xd0:
          skip = 1;
          break;
        case 0xcd:
        case 0xd1:
          skip = 2;
          break;
        case 0xce:
        case 0xd2:
          skip = 4;
          break;
        case 0xcf:
        case 0xd3:
          skip = 8;
          break;
        case 0xdc:
          if (!need(2)) return truncated();
          children = view.getUint16(pos);
          pos += 2;
          break;
        case 0xdd:
          if (!need(4)) return truncated();
          children = view.getUint32(pos);
          pos += 4;
          break;
        case 0xde:
          if (!need(2)) return truncated();
          children = view.getUint16(pos) * 2;
          pos += 2;
          break;
        case 0xdf:
          if (!need(4)) return truncated();
          children = view.getUint32(pos) * 2;
          pos += 4;
          break;
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
    payload += bytes;

    let node: ScannedValue | null = null;
    if (depth <= indexDepth) {
      node = depth < indexDepth && children >= 0 ? { start, end: pos, items: 1, payload: 0, children: [] } : { start, end: pos, items: 1, payload: bytes };
      if (depth === 0) root = node;
      else opened[depth - 1]!.children!.push(node);
    }

    // The value just read fills one slot of its parent.
    if (remaining.length > 0) remaining[remaining.length - 1]! -= 1;

    if (children > 0) {
      // Every item takes at least one byte: an inflated count is caught here, not by looping.
      if (children > len - pos) return truncated();
      if (remaining.length + 1 > maxDepth) return { fault: 'too_deep', depth: remaining.length + 1 };
      remaining.push(children);
      opened.push(node);
      counted.push(count);
      paid.push(payload);
    } else if (children === 0 && remaining.length + 1 > maxDepth) {
      return { fault: 'too_deep', depth: remaining.length + 1 };
    }

    closeFilled();
    if (remaining.length === 0) rootDone = true;
  }
  if (!rootDone || root === undefined) return truncated();
  return { root };
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

/**
 * The value of the top-level "type" field of a JSON text, if it is a string, found without
 * parsing the text: the last one wins, as with JSON.parse. Undefined when the text is not an
 * object, has no such field, or it is not a string. The text is not validated.
 */
export function peekJsonType(text: string): string | undefined {
  let depth = 0;
  let found: string | undefined;
  // At depth 1: whether the next string is a key, and whether the last key read was "type".
  let expectKey = false;
  let afterTypeKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      const start = i;
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c) i++;
        else if (d === 0x22) break;
      }
      if (depth !== 1) continue;
      const token = text.slice(start, i + 1);
      if (expectKey) {
        afterTypeKey = stringOf(token) === 'type';
        expectKey = false;
      } else if (afterTypeKey) {
        found = stringOf(token);
        afterTypeKey = false;
      }
      continue;
    }
    if (c === 0x7b || c === 0x5b) {
      if (depth === 1 && afterTypeKey) {
        found = undefined;
        afterTypeKey = false;
      }
      depth++;
      if (depth === 1) expectKey = c === 0x7b;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    } else if (depth === 1 && c === 0x2c) {
      expectKey = true;
      afterTypeKey = false;
    } else if (depth === 1 && afterTypeKey && c !== 0x3a && c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) {
      // A number, true, false or null: "type" is there but not a string.
      found = undefined;
      afterTypeKey = false;
    }
  }
  return found;
}

function stringOf(token: string): string | undefined {
  try {
    const v: unknown = JSON.parse(token);
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}
