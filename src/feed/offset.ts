/**
 * Changefeed offsets on the wire. A position in a tenant's change log is a number (the offset of
 * the last change a reader has seen; 0 before the first). On the wire it is an opaque token of
 * fixed width, `<16 decimal digits>_<8 hex digits>`: the position zero-padded, so that tokens of
 * one database sort lexically in log order, and the first 8 hex digits of the database's
 * incarnation, so that a token saved against another database (a restore, a fresh file) is
 * recognised instead of silently skipping or repeating changes.
 *
 * `-1` (the start of the log) and `now` (the current tail) are the Durable Streams sentinels; the
 * server never mints them.
 */

const OFFSET_DIGITS = 16;
const MAX_POSITION = 10 ** OFFSET_DIGITS - 1;
const TOKEN = /^(\d{16})_([0-9a-f]{8})$/;

type OffsetRequest = { readonly kind: 'start' } | { readonly kind: 'now' } | { readonly kind: 'at'; readonly position: number; readonly incarnation: string };

/** The 8-hex-digit database tag an offset carries. */
export function incarnationTag(incarnation: string): string {
  const hex = incarnation.replace(/[^0-9a-f]/gi, '').toLowerCase();
  return (hex + '00000000').slice(0, 8);
}

export function formatOffset(position: number, incarnation: string): string {
  if (!Number.isSafeInteger(position) || position < 0 || position > MAX_POSITION) {
    throw new RangeError(`offset position ${position} out of range`);
  }
  return `${String(position).padStart(OFFSET_DIGITS, '0')}_${incarnationTag(incarnation)}`;
}

/** Parses a requested offset; undefined when it is neither a sentinel nor a well-formed token. */
export function parseOffset(text: string): OffsetRequest | undefined {
  if (text === '-1') return { kind: 'start' };
  if (text === 'now') return { kind: 'now' };
  const m = TOKEN.exec(text);
  if (m === null) return undefined;
  return { kind: 'at', position: Number(m[1]), incarnation: m[2]! };
}
