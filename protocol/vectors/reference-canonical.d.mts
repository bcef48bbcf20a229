/** Types for reference-canonical.mjs (see there). */
export function canonical(value: unknown): Buffer;
export function header(len: number, fix: number, fixMax: number, op8: number | null, op16: number, op32: number): Buffer;
export function intBytes(n: number | bigint): Buffer;
export function float64Bytes(v: number): Buffer;
export function strBytes(s: string): Buffer;
