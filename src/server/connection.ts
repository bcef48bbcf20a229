import type { Logger } from 'pino';
import type WebSocket from 'ws';
import { reach } from '../crash-points.js';
import { ERRORS, SeqgateError } from '../errors.js';
import { decodeFrame, encodeMessage, ENVELOPE_DEPTH, type WireFormat } from '../protocol/codec.js';
import {
  errorMessage, forbiddenResult, headsForWire, parseMessage, wireResult, type Limits, type WireResult,
} from '../protocol/messages.js';
import type { Put, Store } from '../store/store.js';
import { mayReadStream, mayWrite, type Authenticator, type Principal } from './auth.js';
import type { Committer } from './committer.js';
import type { Metrics } from './metrics.js';
import { Subscriptions, type SubscriptionContext } from './subscription.js';

/**
 * One client connection: frames in, answers out in the order of the frames that caused them.
 * A put's result waits for its batch to commit; an `invalid` or an error answer waits behind
 * earlier answers so that order holds. Reading stops while this connection has too many
 * unanswered bytes or too many unsent ones (backpressure), and a client that never reads is closed.
 */

export interface FlowLimits {
  readonly connectionInFlightBytes: number;
  readonly outboundHighWaterBytes: number;
  readonly slowConsumerTimeoutMs: number;
}

/** Shared across connections: the server-wide budget of unanswered frame bytes. */
export interface InFlightBudget {
  bytes: number;
  readonly maxBytes: number;
  readonly waiting: Set<Connection>;
}

export interface ConnectionContext {
  readonly store: Store;
  readonly committer: Committer;
  readonly limits: Limits;
  readonly flow: FlowLimits;
  readonly budget: InFlightBudget;
  readonly auth: Authenticator;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly welcome: () => object;
  readonly onClose: (conn: Connection) => void;
  /** The changefeed's subscriptions (absent: subscribe is an unknown type). */
  readonly changes?: SubscriptionContext;
}

type Entry =
  | { kind: 'results'; results: Array<WireResult | undefined>; pending: number; bytes: number }
  | { kind: 'message'; message: object | undefined };

export class Connection {
  /** Set by the heartbeat sweep, cleared by any sign of life. */
  alive = true;
  private readonly outbox: Entry[] = [];
  private inFlightBytes = 0;
  private paused = false;
  private slowTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private stoppedForGood = false;
  private flushScheduled = false;
  private readonly subscriptions: Subscriptions | undefined;

  constructor(
    readonly ws: WebSocket,
    readonly format: WireFormat,
    private readonly ctx: ConnectionContext,
    /** Known from the upgrade request, or learnt from the first hello's token (browsers). */
    private principalOrNone: Principal | undefined,
  ) {
    ws.on('message', (data: Buffer, isBinary: boolean) => this.receive(data, isBinary));
    ws.on('pong', () => { this.alive = true; });
    ws.on('close', () => this.onClosed());
    ws.on('error', (err) => ctx.log.debug({ err }, 'connection error'));
    this.subscriptions = ctx.changes && new Subscriptions(ctx.changes, this);
  }

  /** True while reading is paused; the heartbeat sweep leaves such connections to the flow rules. */
  get isPaused(): boolean {
    return this.paused;
  }

  /** True when every frame read so far has been answered and handed to the socket. */
  get settled(): boolean {
    return this.outbox.length === 0;
  }

  private receive(data: Buffer, isBinary: boolean): void {
    if (this.stoppedForGood) return;
    this.alive = true;
    let message;
    try {
      const value = decodeFrame(data, isBinary, this.format, this.ctx.limits.maxStateDepth + ENVELOPE_DEPTH);
      message = parseMessage(value, this.ctx.limits, this.principalOrNone?.tenant ?? '');
      if (this.principalOrNone === undefined) this.authenticate(message);
    } catch (caught) {
      // A bug in validation must cost this frame, never the process and everyone else's puts.
      const err = caught instanceof SeqgateError ? caught : new SeqgateError('INVALID_MESSAGE', 'the message could not be processed');
      if (!(caught instanceof SeqgateError)) this.ctx.log.error({ err: caught }, 'unexpected error while reading a frame');
      this.ctx.log.debug({ code: err.code }, 'rejected frame');
      this.ctx.metrics.rejectedFrames.inc({ code: err.code });
      this.outbox.push({ kind: 'message', message: errorMessage(err) });
      this.flush();
      if (err.code === 'UNAUTHORIZED') this.close(ERRORS.UNAUTHORIZED.closeCode, 'UNAUTHORIZED');
      return;
    }
    const principal = this.principalOrNone!;

    switch (message.type) {
      case 'subscribe':
      case 'unsubscribe':
        if (this.subscriptions === undefined) {
          this.outbox.push({ kind: 'message', message: errorMessage(new SeqgateError('UNKNOWN_TYPE', `unknown message type "${message.type}"`, { field: 'type' })) });
          this.flush();
        } else if (message.type === 'subscribe') this.subscriptions.subscribe(message, principal);
        else this.subscriptions.unsubscribe(message.id);
        return;
      case 'ping':
        // Answered at once, ahead of pending results: it measures liveness, not progress.
        this.send({ type: 'pong', nonce: message.nonce });
        return;
      case 'hello': {
        const denied = message.streams.find((stream) => !mayReadStream(principal, stream));
        if (denied !== undefined) {
          this.outbox.push({ kind: 'message', message: errorMessage(new SeqgateError('FORBIDDEN', `token may not read stream ${denied}`, { stream: denied })) });
          this.flush();
          return;
        }
        const entry: Entry = { kind: 'message', message: undefined };
        this.outbox.push(entry);
        // Heads are read after every earlier put has committed, so they include this client's own.
        void this.ctx.committer.barrier()
          .then(() => this.ctx.store.heads(principal.tenant, message.streams))
          .then((heads) => { entry.message = { ...this.ctx.welcome(), heads: headsForWire(heads) }; })
          .catch((err: Error) => {
            entry.message = { type: 'error', code: 'STORAGE_UNAVAILABLE', message: `heads unavailable: ${err.message}`, retryable: true };
          })
          .finally(() => this.flush());
        return;
      }
      case 'put': {
        const results: Array<WireResult | undefined> = [];
        const valid: Put[] = [];
        const slots: number[] = [];
        const ids: Array<string | number | null> = [];
        for (const parsed of message.puts) {
          if (parsed.ok && !mayWrite(principal, parsed.put.stream, parsed.put.key)) {
            results.push(forbiddenResult(parsed.id));
          } else if (parsed.ok) {
            slots.push(results.length);
            ids.push(parsed.id);
            valid.push(parsed.put);
            results.push(undefined);
          } else {
            results.push(parsed.result);
          }
        }
        const entry: Entry = { kind: 'results', results, pending: valid.length, bytes: data.length };
        this.outbox.push(entry);
        if (valid.length === 0) {
          for (const r of results) this.ctx.metrics.countOutcome(r!.outcome, false, 'ws');
          this.flush();
          return;
        }
        this.addInFlight(data.length);
        // Check the limits now, not when answers go out: a slow commit must stop reading too.
        this.updateFlow();
        void this.ctx.committer.submit(valid).then((stored) => {
          for (let i = 0; i < stored.length; i++) results[slots[i]!] = wireResult(ids[i]!, stored[i]!);
          for (const r of results) this.ctx.metrics.countOutcome(r!.outcome, 'replay' in r! && r.replay, 'ws');
          entry.pending = 0;
          this.addInFlight(-data.length);
          this.scheduleFlush();
        });
        return;
      }
    }
  }

  /** Before authentication only a hello carrying a valid token (or a ping) is accepted. */
  private authenticate(message: { type: string; token?: string | undefined }): void {
    if (message.type === 'ping') return;
    const principal = message.type === 'hello' ? this.ctx.auth.authenticate(message.token) : undefined;
    if (principal === undefined) {
      throw new SeqgateError('UNAUTHORIZED', 'send a hello with a valid token (or a bearer token on the upgrade) first');
    }
    this.principalOrNone = principal;
  }

  /** The token this connection authenticated with, if any yet. */
  get principal(): Principal | undefined {
    return this.principalOrNone;
  }

  /**
   * A batch resolves every submission in one go, each in its own microtask; flushing once after
   * all of them puts a connection's answers from one batch into one frame (one syscall).
   */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Sends every answer at the front of the outbox that is ready; results coalesce into one frame. */
  private flush(): void {
    let batch: WireResult[] = [];
    while (this.outbox.length > 0) {
      const head = this.outbox[0]!;
      if (head.kind === 'results') {
        if (head.pending > 0) break;
        for (const r of head.results) batch.push(r!);
      } else {
        if (head.message === undefined) break;
        if (batch.length > 0) {
          this.send({ type: 'results', results: batch });
          batch = [];
        }
        this.send(head.message);
      }
      this.outbox.shift();
    }
    if (batch.length > 0) this.send({ type: 'results', results: batch }, () => reach('after-ack'));
    this.updateFlow();
  }

  private send(message: object, sent?: () => void): void {
    if (this.closed) return;
    let frame: Buffer | string;
    try {
      frame = encodeMessage(message, this.format);
    } catch (err) {
      // Only echoed client values (a ping's nonce) can make encoding fail; answer, never crash.
      this.ctx.log.warn({ err }, 'could not encode an answer');
      frame = encodeMessage({ type: 'error', code: 'INVALID_MESSAGE', message: 'the answer could not be encoded', retryable: false }, this.format);
    }
    this.ws.send(frame, (err) => {
      if (err === undefined || err === null) sent?.();
      this.updateFlow();
    });
  }

  private addInFlight(bytes: number): void {
    this.inFlightBytes += bytes;
    const budget = this.ctx.budget;
    budget.bytes += bytes;
    if (bytes < 0 && budget.bytes <= budget.maxBytes / 2 && budget.waiting.size > 0) {
      for (const conn of [...budget.waiting]) {
        budget.waiting.delete(conn);
        conn.updateFlow();
      }
    }
  }

  /** Pauses reading above the high-water marks, resumes below half of them. */
  updateFlow(): void {
    if (this.closed) return;
    const { flow, budget } = this.ctx;
    const outbound = this.ws.bufferedAmount;
    const over = this.inFlightBytes > flow.connectionInFlightBytes
      || outbound > flow.outboundHighWaterBytes
      || budget.bytes > budget.maxBytes;
    const under = this.inFlightBytes <= flow.connectionInFlightBytes / 2
      && outbound <= flow.outboundHighWaterBytes / 2
      && budget.bytes <= budget.maxBytes / 2;

    if (budget.bytes > budget.maxBytes) budget.waiting.add(this);
    if (over && !this.paused) {
      this.paused = true;
      this.ws.pause();
    } else if (under && this.paused && !this.stoppedForGood) {
      this.paused = false;
      this.ws.resume();
    }

    // Paused with unread answers: the client has that long to start reading. (Paused only for
    // unanswered puts is the server's own delay and never closes anyone.)
    if (this.paused && outbound > flow.outboundHighWaterBytes / 2) {
      this.slowTimer ??= setTimeout(() => this.closeSlowConsumer(), flow.slowConsumerTimeoutMs);
    } else if (this.slowTimer !== undefined) {
      clearTimeout(this.slowTimer);
      this.slowTimer = undefined;
    }
  }

  /** Stops reading for good (shutdown): frames already read are still answered. */
  stop(): void {
    this.stoppedForGood = true;
    this.paused = true;
    this.ws.pause();
  }

  private closeSlowConsumer(): void {
    this.slowTimer = undefined;
    if (this.ws.bufferedAmount <= this.ctx.flow.outboundHighWaterBytes / 2) return;
    this.ctx.log.warn({ bufferedBytes: this.ws.bufferedAmount }, 'closing slow consumer');
    // Nothing read after this decision is processed: its answers could never be delivered.
    this.stoppedForGood = true;
    this.ws.close(ERRORS.SLOW_CONSUMER.closeCode, 'SLOW_CONSUMER');
    // A client that does not read will not answer the close handshake either.
    setTimeout(() => this.ws.terminate(), 1000).unref();
  }

  /**
   * Closes with `code`. A stopped connection resumes reading only so the close handshake can
   * complete; frames that arrive after stop() are dropped unanswered, and the client resends them.
   */
  close(code: number, reason: string): void {
    if (this.stoppedForGood) this.ws.resume();
    this.ws.close(code, reason);
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.subscriptions?.closeAll();
    if (this.slowTimer !== undefined) clearTimeout(this.slowTimer);
    // Unanswered puts still commit (the client may retry them); their bytes leave the budget then.
    this.ctx.budget.waiting.delete(this);
    this.ctx.onClose(this);
  }
}
