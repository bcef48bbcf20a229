/**
 * UTF-8 without Node's Buffer. A lone surrogate counts and encodes as U+FFFD (3 bytes), as
 * TextEncoder and Buffer do, so every end measures a string the same way.
 */

/** UTF-8 length of `s`. */
export function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 2; // 2 UTF-16 units, 4 bytes
      i++;
    } else n += 2;
  }
  return n;
}

/** True when every unit of `s` is ASCII (so its UTF-8 bytes are its char codes). */
export function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return false;
  return true;
}

/** Writes `s` at `pos` (room for utf8Length(s) bytes is the caller's job); returns the end. */
export function writeUtf8Js(buf: Uint8Array, pos: number, s: string): number {
  let p = pos;
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      buf[p++] = c;
    } else if (c < 0x800) {
      buf[p++] = 0xc0 | (c >> 6);
      buf[p++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        c = 0x10000 + ((c - 0xd800) << 10) + (s.charCodeAt(++i) - 0xdc00);
        buf[p++] = 0xf0 | (c >> 18);
        buf[p++] = 0x80 | ((c >> 12) & 0x3f);
        buf[p++] = 0x80 | ((c >> 6) & 0x3f);
        buf[p++] = 0x80 | (c & 0x3f);
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd;
      buf[p++] = 0xe0 | (c >> 12);
      buf[p++] = 0x80 | ((c >> 6) & 0x3f);
      buf[p++] = 0x80 | (c & 0x3f);
    }
  }
  return p;
}

interface Encoder {
  encodeInto(s: string, dest: Uint8Array): { read: number; written: number };
}
// Older React Native engines have no TextEncoder; the JS loop above is the fallback.
const encoder = (globalThis as { TextEncoder?: new () => Encoder }).TextEncoder;
const native: Encoder | undefined = encoder !== undefined && typeof encoder.prototype.encodeInto === 'function' ? new encoder() : undefined;

/**
 * The platform's TextEncoder.encodeInto (fast for long strings), or undefined where there is none.
 * It encodes what fits in `dest` and says how many UTF-16 units it read.
 */
export const encodeInto: ((s: string, dest: Uint8Array) => { read: number; written: number }) | undefined =
  native === undefined ? undefined : (s, dest) => native.encodeInto(s, dest);

interface Decoder {
  decode(b: Uint8Array): string;
}
const decoderCtor = (globalThis as { TextDecoder?: new (label?: string) => Decoder }).TextDecoder;
const nativeDecoder: Decoder | undefined = decoderCtor !== undefined ? new decoderCtor('utf-8') : undefined;

/** Decodes UTF-8 (invalid sequences become U+FFFD). */
export function readUtf8(buf: Uint8Array, start: number, end: number): string {
  let out = '';
  let i = start;
  if (end - start <= 32) {
    for (; i < end; i++) {
      const b = buf[i]!;
      if (b >= 0x80) break;
      out += String.fromCharCode(b);
    }
    if (i === end) return out;
  }
  if (nativeDecoder !== undefined) return out + nativeDecoder.decode(buf.subarray(i, end));
  while (i < end) {
    const b = buf[i++]!;
    if (b < 0x80) {
      out += String.fromCharCode(b);
      continue;
    }
    let need: number;
    let cp: number;
    let min: number;
    if (b >= 0xc2 && b <= 0xdf) {
      need = 1;
      cp = b & 0x1f;
      min = 0x80;
    } else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      cp = b & 0x0f;
      min = 0x800;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      cp = b & 0x07;
      min = 0x10000;
    } else {
      out += '\ufffd';
      continue;
    }
    let ok = true;
    for (let k = 0; k < need; k++) {
      const c = buf[i];
      if (i >= end || c === undefined || (c & 0xc0) !== 0x80) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (c & 0x3f);
      i++;
    }
    if (!ok || cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      out += '\ufffd';
      continue;
    }
    out += String.fromCodePoint(cp);
  }
  return out;
}
