import { readFileSync } from 'node:fs';
import { Packr, Unpackr } from 'msgpackr';
import WebSocket from 'ws';

/**
 * A seqgate client written from protocol/PROTOCOL.md alone. It imports nothing from src/: what it
 * knows about the wire comes from the spec text and the vectors, so the conformance suite fails
 * when the server stops doing what the spec says, not when the two change together.
 */

export type Format = 'msgpack' | 'json';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read any decoded field and let assertions judge it
export type Msg = any;

export const SUBPROTOCOL: Record<Format, string> = { msgpack: 'seqgate.v1', json: 'seqgate.v1.json' };

// A client of its own: plain maps, no records, 64-bit integers beyond 2^53 as BigInt.
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, int64AsType: 'auto' as 'bigint' });

export function decodeMsgpack(bytes: Buffer): Msg {
  return unpackr.unpack(bytes);
}

export function encode(message: unknown, format: Format): Buffer | string {
  return format === 'msgpack' ? packr.pack(message) : JSON.stringify(message);
}

/** A result together with the frame it arrived in, so its ack's exact bytes can be compared. */
export interface ReceivedResult {
  readonly result: Msg;
  readonly frame: Buffer | string;
  readonly index: number;
}

export interface ConnectOptions {
  readonly format?: Format;
  /** Subprotocols to offer; defaults to the one of `format`. An empty list offers none. */
  readonly protocols?: readonly string[];
  readonly headers?: Record<string, string>;
  /** Whether WebSocket pings are answered (the default, as every conforming client does). */
  readonly autoPong?: boolean;
}

export class ConformanceClient {
  /** Every message received, in order. */
  readonly messages: Msg[] = [];
  readonly results: ReceivedResult[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private waiters: Array<() => void> = [];
  private putsSent = 0;
  private cursor = 0;
  private closeInfo: { code: number; reason: string } | undefined;

  private constructor(
    readonly ws: WebSocket,
    readonly format: Format,
  ) {
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const frame = isBinary ? data : data.toString('utf8');
      const message: Msg = isBinary ? unpackr.unpack(data) : JSON.parse(frame as string);
      this.messages.push(message);
      if (message?.type === 'results') {
        (message.results as Msg[]).forEach((result, index) => this.results.push({ result, frame, index }));
      }
      this.wake();
    });
    this.closed = new Promise((resolve) =>
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
        this.wake();
      }),
    );
    ws.on('error', () => undefined);
  }

  static connect(url: string, options: ConnectOptions = {}): Promise<ConformanceClient> {
    const format = options.format ?? 'msgpack';
    const protocols = options.protocols ?? [SUBPROTOCOL[format]];
    const ws = new WebSocket(url, [...protocols], { headers: options.headers, autoPong: options.autoPong ?? true, perMessageDeflate: false });
    const client = new ConformanceClient(ws, format);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with HTTP ${res.statusCode}`)));
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  get isClosed(): boolean {
    return this.closeInfo !== undefined;
  }

  send(message: object): void {
    this.ws.send(encode(message, this.format));
  }

  sendRaw(data: Buffer | string, binary: boolean): void {
    this.ws.send(data, { binary });
  }

  /** Waits until `predicate` holds; fails with what was received so far. */
  async until(predicate: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0 || (this.isClosed && !predicate())) {
        const seen = JSON.stringify(this.messages, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)).slice(-2000);
        throw new Error(`${what} not reached${this.isClosed ? ` (closed ${this.closeInfo!.code})` : ''}; received ${seen}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The next message (after those already taken) that is not a results message or a pong. */
  async nextAnswer(timeoutMs = 10_000): Promise<Msg> {
    const find = (): number => this.messages.findIndex((m, i) => i >= this.cursor && m.type !== 'results' && m.type !== 'pong');
    await this.until(() => find() !== -1, timeoutMs, 'next welcome or error');
    const i = find();
    this.cursor = i + 1;
    return this.messages[i];
  }

  /** Sends a hello and returns its answer: a welcome, or an error refusing it. */
  async hello(streams: readonly string[] = [], extra: Record<string, unknown> = {}): Promise<Msg> {
    this.send({ type: 'hello', streams, ...extra });
    return this.nextAnswer();
  }

  /** Sends one put message and waits for one result per put (results are positional). */
  async put(puts: readonly unknown[], timeoutMs = 10_000): Promise<ReceivedResult[]> {
    this.send({ type: 'put', puts });
    return this.awaitResults(puts.length, timeoutMs);
  }

  /** Sends `frame` (a put message already encoded) and waits for `count` results. */
  async putRaw(frame: Buffer | string, count: number, timeoutMs = 10_000): Promise<ReceivedResult[]> {
    this.sendRaw(frame, typeof frame !== 'string');
    return this.awaitResults(count, timeoutMs);
  }

  /** Notes that `count` results are due for a put frame sent another way. */
  async awaitResults(count: number, timeoutMs = 10_000): Promise<ReceivedResult[]> {
    const start = this.putsSent;
    this.putsSent += count;
    await this.until(() => this.results.length >= start + count, timeoutMs, `${count} results`);
    return this.results.slice(start, start + count);
  }

  async ping(nonce?: unknown): Promise<Msg> {
    const before = this.messages.length;
    this.send(nonce === undefined ? { type: 'ping' } : { type: 'ping', nonce });
    const find = (): Msg => this.messages.slice(before).find((m) => m.type === 'pong');
    await this.until(() => find() !== undefined, 10_000, 'pong');
    return find();
  }

  close(): Promise<{ code: number; reason: string }> {
    if (!this.isClosed) this.ws.close();
    return this.closed;
  }
}

// ---- raw MessagePack walking: the exact bytes of a value inside a frame ----

/** Offset just past the MessagePack value starting at `pos`. */
export function skipValue(buf: Buffer, pos: number): number {
  const b = buf[pos]!;
  if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) return pos + 1;
  if (b >= 0xa0 && b <= 0xbf) return pos + 1 + (b & 0x1f);
  if (b >= 0x90 && b <= 0x9f) return skipItems(buf, pos + 1, b & 0x0f);
  if (b >= 0x80 && b <= 0x8f) return skipItems(buf, pos + 1, (b & 0x0f) * 2);
  switch (b) {
    case 0xc4:
    case 0xd9:
      return pos + 2 + buf.readUInt8(pos + 1);
    case 0xc5:
    case 0xda:
      return pos + 3 + buf.readUInt16BE(pos + 1);
    case 0xc6:
    case 0xdb:
      return pos + 5 + buf.readUInt32BE(pos + 1);
    case 0xca:
      return pos + 5;
    case 0xcb:
      return pos + 9;
    case 0xcc:
    case 0xd0:
      return pos + 2;
    case 0xcd:
    case 0xd1:
      return pos + 3;
    case 0xce:
    case 0xd2:
      return pos + 5;
    case 0xcf:
    case 0xd3:
      return pos + 9;
    case 0xdc:
      return skipItems(buf, pos + 3, buf.readUInt16BE(pos + 1));
    case 0xdd:
      return skipItems(buf, pos + 5, buf.readUInt32BE(pos + 1));
    case 0xde:
      return skipItems(buf, pos + 3, buf.readUInt16BE(pos + 1) * 2);
    case 0xdf:
      return skipItems(buf, pos + 5, buf.readUInt32BE(pos + 1) * 2);
    default:
      throw new Error(`unexpected MessagePack byte 0x${b.toString(16)} at ${pos}`);
  }
}

function skipItems(buf: Buffer, pos: number, n: number): number {
  for (let i = 0; i < n; i++) pos = skipValue(buf, pos);
  return pos;
}

/** [count, offset of the first item] of the array or map header at `pos`. */
function header(buf: Buffer, pos: number): { count: number; at: number; map: boolean } {
  const b = buf[pos]!;
  if (b >= 0x90 && b <= 0x9f) return { count: b & 0x0f, at: pos + 1, map: false };
  if (b >= 0x80 && b <= 0x8f) return { count: b & 0x0f, at: pos + 1, map: true };
  if (b === 0xdc) return { count: buf.readUInt16BE(pos + 1), at: pos + 3, map: false };
  if (b === 0xdd) return { count: buf.readUInt32BE(pos + 1), at: pos + 5, map: false };
  if (b === 0xde) return { count: buf.readUInt16BE(pos + 1), at: pos + 3, map: true };
  if (b === 0xdf) return { count: buf.readUInt32BE(pos + 1), at: pos + 5, map: true };
  throw new Error(`no array or map at ${pos}`);
}

/** Offset of the value stored under string key `name` in the map at `pos`. */
function mapValue(buf: Buffer, pos: number, name: string): number {
  const h = header(buf, pos);
  if (!h.map) throw new Error(`no map at ${pos}`);
  let at = h.at;
  for (let i = 0; i < h.count; i++) {
    const keyEnd = skipValue(buf, at);
    const key = unpackr.unpack(buf.subarray(at, keyEnd));
    if (key === name) return keyEnd;
    at = skipValue(buf, keyEnd);
  }
  throw new Error(`map at ${pos} has no "${name}"`);
}

/** The exact bytes of `results[index].ack` in a MessagePack results frame. */
export function ackBytes(frame: Buffer, index: number): Buffer {
  const list = header(frame, mapValue(frame, 0, 'results'));
  let at = list.at;
  for (let i = 0; i < index; i++) at = skipValue(frame, at);
  const ack = mapValue(frame, at, 'ack');
  return frame.subarray(ack, skipValue(frame, ack));
}

export function ackBytesOf(r: ReceivedResult): Buffer {
  if (typeof r.frame === 'string') throw new Error('a JSON result has no MessagePack bytes');
  return ackBytes(r.frame, r.index);
}

// ---- what the spec text says ----

const specPath = new URL('../../protocol/PROTOCOL.md', import.meta.url);
const vectorsDir = new URL('../../protocol/vectors/', import.meta.url);

export interface SpecError {
  readonly scope: string;
  readonly retryable: boolean;
  readonly closeCode: number | undefined;
}

/** The error-code table of PROTOCOL.md §10, by code. */
export function specErrors(): Map<string, SpecError> {
  const text = readFileSync(specPath, 'utf8');
  const section = text.slice(text.indexOf('## 10. Error codes'), text.indexOf('## 11.'));
  const out = new Map<string, SpecError>();
  for (const line of section.split('\n')) {
    const m = /^\| `([A-Z_]+)` \| (\w+) \| (yes|no) \| ([^|]+) \|/.exec(line);
    if (m === null) continue;
    const close = m[4]!.trim();
    out.set(m[1]!, { scope: m[2]!, retryable: m[3] === 'yes', closeCode: /^\d+$/.test(close) ? Number(close) : undefined });
  }
  return out;
}

export interface Vector {
  readonly name: string;
  readonly hex: string;
  readonly json: string | null;
  readonly decoded: Msg;
  readonly fingerprint?: string;
}

export function vector(file: string, name: string): Vector {
  const list = JSON.parse(readFileSync(new URL(file, vectorsDir), 'utf8')) as Vector[];
  const v = list.find((x) => x.name === name);
  if (v === undefined) throw new Error(`${file} has no vector ${name}`);
  return v;
}
