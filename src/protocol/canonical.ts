import * as crypto from 'node:crypto';
import { createHash } from 'node:crypto';
import { CanonicalError, canonicalEncode as encodeBytes, type CanonicalLimits } from '@seqgate/client/wire';

/**
 * Canonical msgpack (PROTOCOL.md §6) is written once, in the wire module of `@seqgate/client`,
 * and run by the server and the client alike, so the two can never disagree on a state's bytes
 * or on what is refused. This file only adapts it to Node: Buffers, and the fingerprint.
 */

export { CanonicalError, type CanonicalLimits };

/** Canonical msgpack bytes of `value`, as a Buffer over the encoder's bytes (no copy). */
export function canonicalEncode(value: unknown, limits: CanonicalLimits, path: string): Buffer {
  const u8 = encodeBytes(value, limits, path);
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/** A fingerprint is this many leading bytes of the SHA-256 (PROTOCOL.md §6.4; Idempotency-Key records too). */
export const FINGERPRINT_BYTES = 16;

/** Keys and ifVersion are bounded by their own limits before they are fingerprinted. */
const UNBOUNDED: CanonicalLimits = {
  maxBytes: 2 ** 31,
  maxDepth: 1024,
  bytesLimitName: '',
  depthLimitName: '',
};

/**
 * Fingerprint of a put's payload: the first 16 bytes of SHA-256 over the canonical msgpack array
 * [key, delete, state (nil when deleting), ifVersion (nil when absent)].
 * Stream, epoch and seq are not part of it: they address the ack, the fingerprint checks its body.
 *
 * The array is written into one scratch buffer and hashed in one call: five hash updates and the
 * key's own encoded buffer per put were a measurable share of the server's time at high put
 * rates (issue 13, lever (c)). A state too large for the scratch is hashed in three updates
 * instead of being copied; the digest is the same.
 */
export function putFingerprint(key: string, state: Buffer | null, ifVersion: number | null): Buffer {
  let p = 0;
  const stateBytes = state === null ? 1 : state.length;
  // Header, key (at most 3 bytes per UTF-16 unit), delete flag, ifVersion (at most 9 bytes).
  const headRoom = 1 + 5 + key.length * 3 + 1;
  if (headRoom + SCRATCH_TAIL > scratch.length) return fingerprintStreamed(key, state, ifVersion);
  scratch[p++] = 0x94;
  p = writeKey(scratch, p, key);
  scratch[p++] = state === null ? 0xc3 : 0xc2;
  if (p + stateBytes + SCRATCH_TAIL > scratch.length) return fingerprintStreamed(key, state, ifVersion);
  if (state === null) scratch[p++] = 0xc0;
  else p += state.copy(scratch, p);
  p = writeIfVersion(scratch, p, ifVersion);
  return sha256(scratch.subarray(0, p)).subarray(0, FINGERPRINT_BYTES);
}

/** The same digest, fed in parts: for states larger than the scratch buffer. */
function fingerprintStreamed(key: string, state: Buffer | null, ifVersion: number | null): Buffer {
  const head = Buffer.allocUnsafe(1 + 5 + key.length * 3 + 1);
  let p = 0;
  head[p++] = 0x94;
  p = writeKey(head, p, key);
  head[p++] = state === null ? 0xc3 : 0xc2;
  const tail = Buffer.allocUnsafe(SCRATCH_TAIL);
  const hash = createHash('sha256');
  hash.update(head.subarray(0, p));
  hash.update(state ?? Uint8Array.of(0xc0));
  hash.update(tail.subarray(0, writeIfVersion(tail, 0, ifVersion)));
  return hash.digest().subarray(0, FINGERPRINT_BYTES);
}

/** Room kept after the state for ifVersion's canonical form. */
const SCRATCH_TAIL = 9;
const scratch = Buffer.allocUnsafeSlow(16 * 1024);

// crypto.hash (one call, no Hash object) exists from Node 20.12; 20.10 and 20.11 use createHash.
const oneShot = (crypto as { hash?: (algorithm: string, data: Uint8Array, encoding: 'buffer') => Buffer }).hash;
const sha256: (data: Uint8Array) => Buffer =
  oneShot !== undefined ? (data) => oneShot('sha256', data, 'buffer') : (data) => createHash('sha256').update(data).digest();

function writeKey(out: Buffer, p: number, key: string): number {
  const n = key.length;
  if (n <= 31) {
    let ascii = true;
    for (let i = 0; i < n; i++) {
      const c = key.charCodeAt(i);
      if (c >= 0x80) {
        ascii = false;
        break;
      }
      out[p + 1 + i] = c;
    }
    if (ascii) {
      out[p] = 0xa0 | n;
      return p + 1 + n;
    }
  }
  const bytes = encodeBytes(key, UNBOUNDED, 'key');
  out.set(bytes, p);
  return p + bytes.length;
}

function writeIfVersion(out: Buffer, p: number, ifVersion: number | null): number {
  if (ifVersion === null) {
    out[p] = 0xc0;
    return p + 1;
  }
  const bytes = ifVersion >= 0 && ifVersion < 0x80 ? null : encodeBytes(ifVersion, UNBOUNDED, 'ifVersion');
  if (bytes === null) {
    out[p] = ifVersion;
    return p + 1;
  }
  out.set(bytes, p);
  return p + bytes.length;
}
