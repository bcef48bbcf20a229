import { Packr, Unpackr } from 'msgpackr';
import { canonicalEncode } from '../../src/protocol/canonical.js';

/**
 * The workload every arm sees: document states of a fixed canonical size and put frames encoded
 * by hand from pre-encoded pieces. Building frames from pieces keeps the generator's cost per put
 * small and identical for all arms, so differences between arms come from the servers.
 */

const UNBOUNDED = { maxBytes: 1 << 24, maxDepth: 64, bytesLimitName: '', depthLimitName: '' };

/** A plausible document: scalars of every kind, a short array and, for larger sizes, records. */
function documentValue(salt: number, note: string, items: number): Record<string, unknown> {
  const doc: Record<string, unknown> = {
    id: `doc-${salt}`,
    name: 'Sensor array, north wing',
    count: 12_345 + salt,
    active: true,
    score: 0.875,
    tags: ['alpha', 'beta', 'gamma'],
    updatedAt: 1_700_000_000_000,
    note,
  };
  if (items > 0) {
    doc.items = Array.from({ length: items }, (_, i) => ({
      sku: `SKU-${String(100_000 + i)}`,
      qty: i % 50,
      price: 19.5 + i,
      desc: 'Replacement part, standard grade',
    }));
  }
  return doc;
}

/** Canonical msgpack of a document whose encoding is exactly `targetBytes` long (>= 128). */
export function makeState(targetBytes: number, salt = 0): Buffer {
  if (targetBytes < 128) throw new Error('state size must be at least 128 bytes');
  const size = (note: string, items: number): number => canonicalEncode(documentValue(salt, note, items), UNBOUNDED, 'state').length;
  let items = 0;
  while (size('', items + 1) + 32 < targetBytes) items++;
  const base = size('', items);
  // The note's string header grows by a byte at 32 and 256 characters; try the few lengths around.
  for (let extra = 0; extra <= 3; extra++) {
    const n = targetBytes - base - extra;
    if (n < 0) break;
    const bytes = canonicalEncode(documentValue(salt, 'n'.repeat(n), items), UNBOUNDED, 'state');
    if (bytes.length === targetBytes) return bytes;
  }
  throw new Error(`cannot build a state of exactly ${targetBytes} bytes`);
}

function strBytes(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  let head: Buffer;
  if (body.length <= 31) head = Buffer.from([0xa0 | body.length]);
  else if (body.length <= 0xff) head = Buffer.from([0xd9, body.length]);
  else if (body.length <= 0xffff) head = Buffer.from([0xda, body.length >> 8, body.length & 0xff]);
  else throw new Error('string too long for the bench encoder');
  return Buffer.concat([head, body]);
}

function uintLength(n: number): number {
  if (n < 0x80) return 1;
  if (n <= 0xff) return 2;
  if (n <= 0xffff) return 3;
  if (n <= 0xffff_ffff) return 5;
  return 9;
}

function writeUint(buf: Buffer, pos: number, n: number): number {
  if (n < 0x80) {
    buf[pos] = n;
    return pos + 1;
  }
  if (n <= 0xff) {
    buf[pos] = 0xcc;
    buf[pos + 1] = n;
    return pos + 2;
  }
  if (n <= 0xffff) {
    buf[pos] = 0xcd;
    buf.writeUInt16BE(n, pos + 1);
    return pos + 3;
  }
  if (n <= 0xffff_ffff) {
    buf[pos] = 0xce;
    buf.writeUInt32BE(n, pos + 1);
    return pos + 5;
  }
  buf[pos] = 0xcf;
  buf.writeBigUInt64BE(BigInt(n), pos + 1);
  return pos + 9;
}

const ID = strBytes('id');
const SEQ = strBytes('seq');

/**
 * Encodes the puts of one stream: {stream, epoch, state, key, id, seq}. The constant part is
 * encoded once; each put only adds its key, id and seq.
 */
export class PutEncoder {
  private readonly prefix: Buffer;
  private readonly keys: Buffer[];

  constructor(
    readonly stream: string,
    readonly epoch: number,
    readonly state: Buffer,
    keyCount: number,
  ) {
    this.prefix = Buffer.concat([
      Buffer.from([0x86]),
      strBytes('stream'),
      strBytes(stream),
      strBytes('epoch'),
      Buffer.from([epoch]),
      strBytes('state'),
      state,
      strBytes('key'),
    ]);
    if (epoch >= 0x80) throw new Error('bench epochs are small');
    this.keys = Array.from({ length: keyCount }, (_, i) => strBytes(`${stream}/k${i}`));
  }

  get keyCount(): number {
    return this.keys.length;
  }

  /** The msgpack map of one put; `seq` picks the key, so a stream cycles over its keys. */
  encode(id: number, seq: number): Buffer {
    const key = this.keys[seq % this.keys.length]!;
    const buf = Buffer.allocUnsafe(this.prefix.length + key.length + ID.length + uintLength(id) + SEQ.length + uintLength(seq));
    let pos = this.prefix.copy(buf, 0);
    pos += key.copy(buf, pos);
    pos += ID.copy(buf, pos);
    pos = writeUint(buf, pos, id);
    pos += SEQ.copy(buf, pos);
    writeUint(buf, pos, seq);
    return buf;
  }
}

const FRAME_HEAD = Buffer.concat([Buffer.from([0x82]), strBytes('type'), strBytes('put'), strBytes('puts')]);

/** {type: "put", puts: [...]} around already encoded put maps. */
export function putFrame(puts: readonly Buffer[]): Buffer {
  const n = puts.length;
  const arrayHead = n <= 15 ? Buffer.from([0x90 | n]) : Buffer.from([0xdc, n >> 8, n & 0xff]);
  if (n > 0xffff) throw new Error('too many puts for one frame');
  return Buffer.concat([FRAME_HEAD, arrayHead, ...puts]);
}

const packr = new Packr({ useRecords: false, structuredClone: false, moreTypes: false });

export function helloFrame(streams: readonly string[]): Buffer {
  return packr.pack({ type: 'hello', protocol: 1, streams });
}

/** Client-side decoder: plain objects are cheapest to read, and the generator trusts the server. */
export const clientUnpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' as 'bigint' });

export function loadStreamName(index: number): string {
  return `load-${index}`;
}

export function backlogStreamName(index: number): string {
  return `backlog-${index}`;
}

export const KEYS_PER_STREAM = 16;
