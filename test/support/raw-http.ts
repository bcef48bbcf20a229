import { connect, type Socket } from 'node:net';
import { TestClient } from './test-client.js';

/**
 * Bytes on a raw TCP socket, for requests no HTTP client would send (bad request lines, broken
 * headers, half-sent bodies), and a probe that proves a server still serves HTTP and WebSocket.
 */

export interface RawResponse {
  /** Status of the first response, or undefined when none arrived. */
  readonly status: number | undefined;
  /** Everything received, as latin1 text. */
  readonly text: string;
  /** The first response's body, when its head ended. */
  readonly body: string;
  /** True when the server closed (or reset) the connection before the wait ended. */
  readonly closedByServer: boolean;
  readonly error?: string;
}

export interface RawOptions {
  /** How long to wait for the server to answer and close. */
  readonly timeoutMs?: number;
  /** Resolve as soon as one complete response head (and its Content-Length body) arrived. */
  readonly untilResponse?: boolean;
  /** Reset the connection (RST) right after writing, without reading anything. */
  readonly resetAfterWrite?: boolean;
  readonly host?: string;
}

export function rawExchange(port: number, bytes: Buffer | string | readonly (Buffer | string)[], options: RawOptions = {}): Promise<RawResponse> {
  const { timeoutMs = 3000, untilResponse = false, resetAfterWrite = false, host = '127.0.0.1' } = options;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let closedByServer = false;
    let error: string | undefined;
    let settled = false;
    const socket: Socket = connect(port, host);
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      const split = text.indexOf('\r\n\r\n');
      const head = split === -1 ? '' : text.slice(0, split);
      let body = split === -1 ? '' : text.slice(split + 4);
      if (/\r\ntransfer-encoding: *chunked/i.test(head)) body = dechunk(body);
      resolve({ status: m ? Number(m[1]) : undefined, text, body, closedByServer, ...(error ? { error } : {}) });
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on('error', (err) => {
      error = err.message;
      closedByServer = true;
      finish();
    });
    socket.on('close', () => {
      closedByServer = true;
      finish();
    });
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (untilResponse && completeResponse(Buffer.concat(chunks).toString('latin1'))) finish();
    });
    socket.on('connect', () => {
      for (const part of Array.isArray(bytes) ? bytes : [bytes]) socket.write(part);
      if (resetAfterWrite) {
        socket.resetAndDestroy();
        setTimeout(finish, 50);
      }
    });
  });
}

function dechunk(text: string): string {
  let out = '';
  let at = 0;
  for (;;) {
    const eol = text.indexOf('\r\n', at);
    if (eol === -1) return out;
    const size = parseInt(text.slice(at, eol), 16);
    if (!(size > 0)) return out;
    out += text.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

function completeResponse(text: string): boolean {
  const split = text.indexOf('\r\n\r\n');
  if (split === -1) return false;
  const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, split));
  if (length !== null) return text.length - split - 4 >= Number(length[1]);
  if (/\r\ntransfer-encoding: *chunked/i.test(text.slice(0, split))) return text.endsWith('0\r\n\r\n');
  return true;
}

let probes = 0;

/**
 * Throws unless the server at `port` answers GET /healthz with 200 and applies a WebSocket put
 * (with `token` when given) within `timeoutMs`.
 */
export async function probeServing(port: number, token?: string, timeoutMs = 5000): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
  if (res.status !== 200) throw new Error(`GET /healthz answered ${res.status}`);
  await res.arrayBuffer();
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const c = await TestClient.connect(`ws://127.0.0.1:${port}`, 'msgpack', { headers });
  try {
    const n = ++probes;
    c.send({ type: 'put', puts: [{ id: n, stream: `probe-${process.pid}`, epoch: 1, seq: n, key: 'probe', state: { n } }] });
    const [r] = await c.waitResults(1, timeoutMs);
    if (r.outcome !== 'applied') throw new Error(`probe put answered ${JSON.stringify(r)}`);
  } finally {
    c.ws.terminate();
  }
}
