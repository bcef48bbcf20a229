import { Packr, Unpackr } from 'msgpackr';
import WebSocket from 'ws';

/**
 * A pipelined writer for the scale-out tests: sends a fixed list of puts over one msgpack
 * connection, keeps up to `window` unanswered, and after a lost connection reconnects (to
 * whichever server `url()` names then) and resends every unanswered put in its original order.
 * A retryable answer sends the put again. It records every answer each put got, and the raw ack
 * bytes (re-encoded from the decoded frame with the server's key order preserved) for byte
 * comparisons.
 */

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

export interface DriverPut {
  readonly id: string;
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly state: unknown;
  readonly ifVersion?: number;
}

export interface WireResult {
  readonly id: string;
  readonly outcome: string;
  readonly replay?: boolean;
  readonly ack?: Record<string, unknown>;
  readonly error?: { code: string; retryable: boolean; message: string };
}

export interface DriverOptions {
  readonly window: number;
  readonly perFrame: number;
  /** Stop after this long without every put finally answered. */
  readonly timeoutMs: number;
}

export class PutDriver {
  /** Every answer each put got, in arrival order; the last one is final unless retryable. */
  readonly answers = new Map<string, WireResult[]>();
  connections = 0;
  lostConnections = 0;
  private ws: WebSocket | undefined;
  private next = 0;
  private readonly resend: DriverPut[] = [];
  private readonly inFlight = new Map<string, DriverPut>();
  private finished = 0;
  private done!: () => void;
  private failed!: (err: Error) => void;
  private stopped = false;

  constructor(
    private readonly url: () => string,
    private readonly puts: readonly DriverPut[],
    private readonly options: DriverOptions,
  ) {}

  /** Resolves once every put has a final (non-retryable) answer. */
  run(): Promise<void> {
    const finishedAll = new Promise<void>((resolve, reject) => { this.done = resolve; this.failed = reject; });
    const timer = setTimeout(() => this.failed(new Error(
      `put driver timed out: ${this.finished}/${this.puts.length} answered, ${this.inFlight.size} in flight, ${this.lostConnections} connections lost`,
    )), this.options.timeoutMs);
    this.connect();
    return finishedAll.finally(() => {
      clearTimeout(timer);
      this.stopped = true;
      this.ws?.terminate();
    });
  }

  /** Final answer of a put. */
  final(id: string): WireResult | undefined {
    const list = this.answers.get(id);
    return list?.[list.length - 1];
  }

  private connect(): void {
    if (this.stopped) return;
    const ws = new WebSocket(this.url(), 'seqgate.v1', { perMessageDeflate: false, handshakeTimeout: 5000 });
    ws.binaryType = 'nodebuffer';
    this.ws = ws;
    ws.on('open', () => {
      this.connections++;
      this.pump();
    });
    ws.on('message', (data: Buffer) => {
      if (this.ws !== ws) return;
      const msg = unpackr.unpack(data) as { type: string; results?: WireResult[] };
      if (msg.type !== 'results') return;
      for (const r of msg.results!) this.onResult(r);
      this.pump();
    });
    ws.on('error', () => undefined);
    ws.on('close', () => {
      if (this.ws !== ws || this.stopped) return;
      this.lostConnections++;
      // Unanswered puts go back in front, in their original order.
      const lost = [...this.inFlight.values()];
      this.inFlight.clear();
      this.resend.unshift(...lost);
      this.ws = undefined;
      setTimeout(() => this.connect(), 20 + Math.random() * 80);
    });
  }

  private onResult(r: WireResult): void {
    const put = this.inFlight.get(r.id);
    if (put === undefined) return;
    this.inFlight.delete(r.id);
    const list = this.answers.get(r.id) ?? [];
    list.push(r);
    this.answers.set(r.id, list);
    if (r.error?.retryable) {
      this.resend.push(put);
      return;
    }
    this.finished++;
    if (this.finished === this.puts.length) this.done();
  }

  private pump(): void {
    const ws = this.ws;
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return;
    while (this.inFlight.size < this.options.window) {
      const frame: DriverPut[] = [];
      while (frame.length < this.options.perFrame && this.inFlight.size + frame.length < this.options.window) {
        const p = this.resend.shift() ?? this.puts[this.next++];
        if (p === undefined) {
          if (this.next > this.puts.length) this.next = this.puts.length;
          break;
        }
        frame.push(p);
      }
      if (frame.length === 0) return;
      for (const p of frame) this.inFlight.set(p.id, p);
      ws.send(packr.pack({ type: 'put', puts: frame.map(({ id, stream, epoch, seq, key, state, ifVersion }) => ({ id, stream, epoch, seq, key, state, ...(ifVersion !== undefined ? { ifVersion } : {}) })) }));
    }
  }
}

/** The ack as bytes, to compare a replay with the original byte for byte. */
export function ackBytes(r: WireResult): Buffer {
  return packr.pack(r.ack);
}
