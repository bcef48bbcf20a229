import { createServer, type IncomingMessage as HttpRequest, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Config } from '../../src/config.js';
import { ERRORS, SeqgateError } from '../../src/errors.js';
import { encodeMessage, PROTOCOL_VERSION, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, type WireFormat } from '../../src/protocol/codec.js';
import { IncomingFrame } from '../../src/protocol/frame.js';
import { limitsOf, type IncomingMessage } from '../../src/protocol/messages.js';
import { DEFAULT_TENANT } from '../../src/store/store.js';

/**
 * What the baseline arms share with seqgate's own server: the HTTP upgrade path, the ws options
 * (maxPayload, no permessage-deflate, subprotocol choice), the frame reader (scan, decode, validation),
 * and the message encoder. Only what happens to a validated put differs between arms.
 */

export interface ArmConnection {
  readonly ws: WebSocket;
  readonly format: WireFormat;
  send(message: object): void;
}

export interface ArmHandlers {
  /** A decoded, validated message, or the message-scope error that rejected the frame. */
  message(conn: ArmConnection, message: IncomingMessage | SeqgateError): void;
  /** Called on SIGTERM/SIGINT before the process exits. */
  shutdown?(): Promise<void>;
}

export { limitsOf };

export function welcomeMessage(arm: string, config: Config, incarnation: string, heads: readonly object[]): object {
  return {
    type: 'welcome',
    protocol: PROTOCOL_VERSION,
    server: `bench-${arm}`,
    incarnation,
    contiguous: config.contiguous,
    limits: limitsOf(config),
    heads,
  };
}

export const TENANT = DEFAULT_TENANT;

function handleHttp(_req: HttpRequest, res: ServerResponse): void {
  res.writeHead(426, { 'content-type': 'text/plain; charset=utf-8', upgrade: 'websocket' });
  res.end('bench arm: WebSocket only\n');
}

export async function startArmServer(arm: string, config: Config, handlers: ArmHandlers): Promise<string> {
  const limits = limitsOf(config);
  const http = createServer(handleHttp);
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: config.maxFrameBytes,
    perMessageDeflate: false,
    handleProtocols: (protocols) => {
      if (protocols.has(SUBPROTOCOL_JSON)) return SUBPROTOCOL_JSON;
      if (protocols.has(SUBPROTOCOL_MSGPACK)) return SUBPROTOCOL_MSGPACK;
      return false;
    },
  });
  let connections = 0;
  let stopping = false;

  http.on('upgrade', (req, socket, head) => {
    if (stopping) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      if (connections >= config.maxConnections) {
        ws.close(ERRORS.TOO_MANY_CONNECTIONS.closeCode, 'TOO_MANY_CONNECTIONS');
        return;
      }
      connections++;
      const format: WireFormat = ws.protocol === SUBPROTOCOL_JSON ? 'json' : 'msgpack';
      const conn: ArmConnection = {
        ws,
        format,
        send(message) {
          if (ws.readyState === ws.OPEN) ws.send(encodeMessage(message, format));
        },
      };
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        let message: IncomingMessage;
        try {
          // The server's own reader (src/server/connection.ts): scan, then decode only what is needed.
          message = IncomingFrame.open(data, isBinary, format, limits).message(limits, TENANT);
        } catch (err) {
          if (!(err instanceof SeqgateError)) throw err;
          handlers.message(conn, err);
          return;
        }
        handlers.message(conn, message);
      });
      ws.on('close', () => {
        connections--;
      });
      ws.on('error', () => undefined);
    });
  });

  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(config.port, config.host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const { port } = http.address() as AddressInfo;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const url = `ws://${host}:${port}`;

  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    const hard = setTimeout(() => process.exit(1), 10_000);
    hard.unref();
    void (handlers.shutdown?.() ?? Promise.resolve()).finally(() => {
      for (const ws of wss.clients) ws.terminate();
      process.exit(0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // One JSON line, shaped like seqgate's pino line, so the runner finds every arm's address alike.
  process.stdout.write(JSON.stringify({ level: 30, time: Date.now(), msg: `bench ${arm} listening`, url }) + '\n');
  return url;
}

export function newIncarnation(): string {
  return randomUUID();
}
