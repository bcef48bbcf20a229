import { Packr } from 'msgpackr';
import { ReconnectingSocket } from './reconnecting-socket.js';

/**
 * A pipelined writer for the scale-out tests: sends a fixed list of puts over one msgpack
 * connection, keeps up to `window` unanswered, and after a lost connection reconnects (to
 * whichever server `url()` names then) and resends every unanswered put in its original order.
 * A retryable answer sends the put again. It records every answer each put got, and the raw ack
 * bytes (re-encoded from the decoded frame with the server's key order preserved) for byte
 * comparisons.
 */

const packr = new Packr({ useRecords: false });

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
  lostConnections = 0;
  private readonly socket: ReconnectingSocket;
  private next = 0;
  private readonly resend: DriverPut[] = [];
  private readonly inFlight = new Map<string, DriverPut>();
  private finished = 0;
  private done!: () => void;
  private failed!: (err: Error) => void;
  private stopped = false;

  constructor(
    url: () => string,
    private readonly puts: readonly DriverPut[],
    private readonly options: DriverOptions,
  ) {
    this.socket = new ReconnectingSocket(url, Math.random, {
      // No hello: the puts go out as soon as the connection is open.
      opened: () => {
        this.pump();
        return null;
      },
      welcome: () => undefined,
      results: (results) => {
        for (const r of results) this.onResult(r as unknown as WireResult);
        this.pump();
      },
      problem: () => undefined,
      lost: () => this.onLost(),
      reconnectDelayMs: () => 20 + Math.random() * 80,
    });
  }

  get connections(): number {
    return this.socket.connections;
  }

  /** Resolves once every put has a final (non-retryable) answer. */
  run(): Promise<void> {
    const finishedAll = new Promise<void>((resolve, reject) => {
      this.done = resolve;
      this.failed = reject;
    });
    const timer = setTimeout(
      () =>
        this.failed(
          new Error(
            `put driver timed out: ${this.finished}/${this.puts.length} answered, ${this.inFlight.size} in flight, ${this.lostConnections} connections lost`,
          ),
        ),
      this.options.timeoutMs,
    );
    this.socket.start();
    return finishedAll.finally(() => {
      clearTimeout(timer);
      this.stopped = true;
      this.socket.terminate();
    });
  }

  /** Final answer of a put. */
  final(id: string): WireResult | undefined {
    const list = this.answers.get(id);
    return list?.[list.length - 1];
  }

  private onLost(): void {
    if (this.stopped) return;
    this.lostConnections++;
    // Unanswered puts go back in front, in their original order.
    const lost = [...this.inFlight.values()];
    this.inFlight.clear();
    this.resend.unshift(...lost);
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
    if (!this.socket.isOpen) return;
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
      this.socket.send({
        type: 'put',
        puts: frame.map(({ id, stream, epoch, seq, key, state, ifVersion }) => ({
          id,
          stream,
          epoch,
          seq,
          key,
          state,
          ...(ifVersion !== undefined ? { ifVersion } : {}),
        })),
      });
    }
  }
}

/** The ack as bytes, to compare a replay with the original byte for byte. */
export function ackBytes(r: WireResult): Buffer {
  return packr.pack(r.ack);
}
