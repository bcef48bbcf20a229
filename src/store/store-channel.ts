import { Packr, Unpackr } from 'msgpackr';
import { SeqgateError } from '../errors.js';
import { DatabaseUnusableError } from './sqlite-schema.js';

/**
 * The wire between StoreThread (the server's thread) and the store's worker (sqlite-worker.ts).
 * Every message is one msgpack buffer, transferred, not cloned: a put's Buffers are views of
 * Node's shared 8 KiB pool, and structured clone copies a view's whole backing store (that
 * is what sank the first attempt at a store thread). Buffers arrive as Buffers; undefined survives.
 */
const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, structuredClone: false, mapsAsObjects: true });

/** Packs a message into a buffer of its own, ready to transfer. */
export function packMessage(value: unknown): Uint8Array {
  // pack() returns a view of the Packr's reusable buffer: copy it out before handing it over.
  return Uint8Array.prototype.slice.call(packr.pack(value));
}

export function unpackMessage(bytes: Uint8Array): unknown {
  return unpackr.unpack(bytes);
}

/** The methods of Store a caller may run on the worker (every async method of Store). */
export const STORE_METHODS = [
  'apply',
  'document',
  'ready',
  'heads',
  'prune',
  'pruneIdempotency',
  'readChanges',
  'changeTail',
  'snapshot',
  'trimChanges',
  'close',
] as const;
export type StoreMethod = (typeof STORE_METHODS)[number];

export interface ErrorInfo {
  readonly name: string;
  readonly message: string;
  readonly code?: string;
  readonly stack?: string;
}

export function errorInfo(err: unknown): ErrorInfo {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  const code = (err as { code?: unknown }).code;
  return { name: err.name, message: err.message, ...(typeof code === 'string' ? { code } : {}), ...(err.stack ? { stack: err.stack } : {}) };
}

/** The error the worker threw, as the same class where callers look at the class. */
export function errorFrom(info: ErrorInfo): Error {
  let err: Error;
  if (info.code === 'STORAGE_UNAVAILABLE') err = new SeqgateError('STORAGE_UNAVAILABLE', info.message);
  else if (info.name === 'DatabaseUnusableError') err = new DatabaseUnusableError(info.message);
  else {
    err = new Error(info.message);
    Object.defineProperty(err, 'name', { value: info.name, configurable: true });
    if (info.code !== undefined) Object.assign(err, { code: info.code });
  }
  // The worker's stack says where it failed; this thread's says only who asked.
  if (info.stack !== undefined) err.stack = info.stack;
  return err;
}
