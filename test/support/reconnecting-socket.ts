import { Packr, Unpackr } from 'msgpackr';
import WebSocket from 'ws';

/**
 * The transport half of a long-running test writer (the SIGKILL test's and the soak's clients, the
 * scale-out tests' PutDriver): one msgpack connection at a time that sends a hello when it opens
 * (if its owner wants one), hands welcomes and results to its owner, and after any death (a killed
 * server, a dropped connection) reconnects with jittered exponential backoff until stopped. What to send and how to judge the answers stays
 * with the owner; a message from a connection that has since been replaced is never delivered.
 */

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' as 'bigint' });

/** First reconnect delay, doubled per failed attempt up to the cap, then jittered by 0.5–1.5×. */
const BACKOFF_FIRST_MS = 10;
const BACKOFF_CAP_MS = 250;
const HANDSHAKE_TIMEOUT_MS = 5000;
/** How long stop() waits for the server to answer a close before cutting the connection. */
const CLOSE_GRACE_MS = 5000;

export interface ReconnectingSocketEvents {
  /** A connection opened; returns the streams its hello asks heads for, or null to send no hello. */
  readonly opened: () => readonly string[] | null;
  readonly welcome: (msg: Record<string, unknown>) => void;
  /** The results of one `results` message, in order. */
  readonly results: (results: Array<Record<string, unknown>>) => void;
  /** The server sent something a writer does not expect: a text frame, or another message type. */
  readonly problem: (description: string) => void;
  /** The connection died. Unless stopped, the next one is scheduled right after this returns. */
  readonly lost: () => void;
  /** Asked before each new connection; false stops reconnecting (the run has failed). */
  readonly mayConnect?: () => boolean;
  /** Delay before reconnect attempt `attempt` (0-based); the default doubles from 10 ms to 250 ms, jittered. */
  readonly reconnectDelayMs?: (attempt: number) => number;
}

export class ReconnectingSocket {
  private ws: WebSocket | undefined;
  private attempt = 0;
  private stopped = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  /** Connections that reached open. */
  connections = 0;

  constructor(
    private readonly url: () => string,
    private readonly rng: () => number,
    private readonly events: ReconnectingSocketEvents,
  ) {}

  get isOpen(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  start(): void {
    this.connect();
  }

  /** The server accepted this connection (welcome): the next loss starts the backoff afresh. */
  resetBackoff(): void {
    this.attempt = 0;
  }

  send(message: object): void {
    this.ws!.send(packr.pack(message));
  }

  /** Drops the current connection as a flaky network (abrupt) or a closing app would. */
  disconnect(abrupt: boolean): void {
    if (abrupt) this.ws?.terminate();
    else this.ws?.close(1000);
  }

  private connect(): void {
    this.reconnectTimer = undefined;
    if (this.stopped || this.events.mayConnect?.() === false) return;
    const ws = new WebSocket(this.url(), 'seqgate.v1', { perMessageDeflate: false, handshakeTimeout: HANDSHAKE_TIMEOUT_MS });
    ws.binaryType = 'nodebuffer';
    this.ws = ws;
    ws.on('open', () => {
      if (this.ws !== ws) return;
      this.connections++;
      const streams = this.events.opened();
      if (streams !== null) ws.send(packr.pack({ type: 'hello', protocol: 1, streams }));
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (this.ws !== ws) return;
      if (!isBinary) return this.events.problem(`text frame on a msgpack connection: ${data.toString().slice(0, 200)}`);
      const msg = unpackr.unpack(data) as Record<string, unknown>;
      if (msg.type === 'welcome') this.events.welcome(msg);
      else if (msg.type === 'results') this.events.results(msg.results as Array<Record<string, unknown>>);
      else this.events.problem(`unexpected message: ${JSON.stringify(msg).slice(0, 500)}`);
    });
    ws.on('error', () => undefined);
    ws.on('close', () => {
      if (this.ws !== ws) return;
      this.ws = undefined;
      this.events.lost();
      if (this.stopped) return;
      const delay = this.events.reconnectDelayMs?.(this.attempt) ?? Math.min(BACKOFF_CAP_MS, BACKOFF_FIRST_MS * 2 ** this.attempt) * (0.5 + this.rng());
      this.attempt++;
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
    });
  }

  /** Cuts the connection at once and for good: no close handshake, no reconnects. */
  terminate(): void {
    this.stopped = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.ws?.terminate();
  }

  /** Closes for good: no reconnects; waits for the close handshake, cutting it short after a grace period. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    const ws = this.ws;
    if (ws === undefined || ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate();
        resolve();
      }, CLOSE_GRACE_MS);
      ws.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.close(1000);
    });
  }
}
