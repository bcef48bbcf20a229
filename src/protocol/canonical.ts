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
 */
export function putFingerprint(key: string, state: Buffer | null, ifVersion: number | null): Buffer {
  const hash = createHash('sha256');
  hash.update(Uint8Array.of(0x94));
  hash.update(encodeBytes(key, UNBOUNDED, 'key'));
  hash.update(Uint8Array.of(state === null ? 0xc3 : 0xc2));
  hash.update(state ?? Uint8Array.of(0xc0));
  hash.update(ifVersion === null ? Uint8Array.of(0xc0) : encodeBytes(ifVersion, UNBOUNDED, 'ifVersion'));
  return hash.digest().subarray(0, FINGERPRINT_BYTES);
}
