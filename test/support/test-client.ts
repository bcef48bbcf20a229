import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr, Unpackr } from 'msgpackr';
import { pino } from 'pino';
import WebSocket from 'ws';
import type { Config } from '../../src/config.js';
import { SeqgateServer, type StartOptions } from '../../src/server/websocket-server.js';

/** A minimal protocol client for tests: raw frames in, decoded messages out, nothing hidden. */

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, int64AsType: 'auto' as 'bigint' });
// Echoed values (a pong's nonce) may hold maps with non-string keys, which plain objects cannot.
const mapUnpackr = new Unpackr({ useRecords: false, int64AsType: 'auto' as 'bigint', mapsAsObjects: false });

function decodeMsgpack(data: Buffer): Msg {
  try {
    return unpackr.unpack(data);
  } catch {
    return objectify(mapUnpackr.unpack(data));
  }
}

/** Maps whose keys are all strings become plain objects; others stay Maps. */
function objectify(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(objectify);
  if (v instanceof Map) {
    const entries = [...v].map(([k, x]) => [k, objectify(x)] as const);
    return entries.every(([k]) => typeof k === 'string') ? Object.fromEntries(entries) : new Map(entries);
  }
  return v;
}

export type Format = 'msgpack' | 'json';
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- tests read any decoded field and let assertions judge it
export type Msg = any;

export class TestClient {
  readonly messages: Msg[] = [];
  /** Raw bytes of each received frame, parallel to `messages`. */
  readonly frames: Buffer[] = [];
  private waiters: Array<() => void> = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(
    readonly ws: WebSocket,
    readonly format: Format,
  ) {
    ws.on('message', (data: Buffer) => {
      this.frames.push(data);
      this.messages.push(format === 'msgpack' ? decodeMsgpack(data) : JSON.parse(data.toString('utf8')));
      for (const w of this.waiters.splice(0)) w();
    });
    this.closed = new Promise((resolve) =>
      ws.on('close', (code, reason) => {
        resolve({ code, reason: reason.toString() });
        for (const w of this.waiters.splice(0)) w();
      }),
    );
    ws.on('error', () => undefined);
  }

  static connect(url: string, format: Format = 'msgpack', options: WebSocket.ClientOptions = {}): Promise<TestClient> {
    const protocol = format === 'json' ? 'seqgate.v1.json' : 'seqgate.v1';
    const ws = new WebSocket(url, protocol, options);
    const client = new TestClient(ws, format);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('error', reject);
    });
  }

  encode(message: object): Buffer | string {
    return this.format === 'msgpack' ? packr.pack(message) : JSON.stringify(message);
  }

  send(message: object): void {
    this.ws.send(this.encode(message));
  }

  sendRaw(data: Buffer | string, binary = typeof data !== 'string'): void {
    this.ws.send(data, { binary });
  }

  /** Waits until `count` messages have arrived in total (not counting earlier ones taken). */
  async waitFor(predicate: () => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; received ${JSON.stringify(this.messages, bigintSafe).slice(0, 2000)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** All put results received so far, flattened in order. */
  results(): Msg[] {
    return this.messages.filter((m) => m.type === 'results').flatMap((m) => m.results);
  }

  async waitResults(n: number, timeoutMs = 5000): Promise<Msg[]> {
    await this.waitFor(() => this.results().length >= n, timeoutMs);
    return this.results();
  }

  async waitMessage(type: string, timeoutMs = 5000): Promise<Msg> {
    await this.waitFor(() => this.messages.some((m) => m.type === type), timeoutMs);
    return this.messages.find((m) => m.type === type);
  }

  close(): Promise<{ code: number; reason: string }> {
    this.ws.close();
    return this.closed;
  }
}

export function bigintSafe(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

export interface TestServer {
  readonly server: SeqgateServer;
  readonly url: string;
  readonly dir: string;
  readonly dbPath: string;
  stop(): Promise<void>;
}

/** An in-process server on a free port with its own temporary database. */
export async function startTestServer(overrides: Partial<Config> = {}, options: StartOptions = {}): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-test-'));
  const dbPath = join(dir, 'seqgate.db');
  const server = await SeqgateServer.start({ port: 0, dbPath, pruneIntervalMs: 3_600_000, ...overrides }, { logger: pino({ level: 'silent' }), ...options });
  return {
    server,
    url: server.url,
    dir,
    dbPath,
    async stop() {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let seqCounter = 0;
/** A put with defaults filled in; override any field. */
export function put(fields: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: ++seqCounter, stream: 's', epoch: 1, seq: 1, key: 'k', state: { n: 1 }, ...fields };
}
