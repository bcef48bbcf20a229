import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type WebSocket from 'ws';
import { reach } from '../crash-points.js';
import { ERRORS, errorBody, SeqgateError } from '../errors.js';
import { encodeMessage, type WireFormat } from '../protocol/codec.js';
import { IncomingFrame } from '../protocol/frame.js';
import { errorMessage, forbiddenResult, headsForWire, wireResult, type IncomingMessage, type Limits, type WireResult } from '../protocol/messages.js';
import type { Put, Store } from '../store/store.js';
import { mayReadStream, mayWrite, type Authenticator, type Principal } from './auth.js';
import type { Committer } from './committer.js';
import type { Metrics } from './metrics.js';
import { Subscriptions, type SubscriptionContext } from './subscription.js';

/**
 * One client connection: frames in, answers out in the order of the frames that caused them.
 * A put's result waits for its batch to commit; an `invalid` or an error answer waits behind
 * earlier answers so that order holds.
 *
 * What one connection may cost the server is bounded:
 * - every byte queued for it (results, pongs, errors, welcomes) counts against
 *   `outboundHighWaterBytes`: above it reading stops, and a client that leaves it there is closed;
 * - unanswered put bytes count against `connectionInFlightBytes` and the server-wide budget;
 * - a message still arriving (fragments included) counts against the server-wide budget;
 * - per event-loop turn it gets at most TURN_BUDGET_BYTES / TURN_BUDGET_FRAMES / TURN_BUDGET_MS of
 *   frame handling; what arrived beyond that waits, reading paused, for the next turn (or, after a
 *   turn that took longer than TURN_BUDGET_MS, for as long as that turn took), so one busy
 *   connection cannot hold up everyone else's puts;
 * - once the server decides to close it, nothing more it sends is handled, and the socket is
 *   destroyed CLOSE_GRACE_MS later whether or not the client completes the close handshake.
 */

/** Frame bytes one connection may have handled per event-loop turn before yielding. */
const TURN_BUDGET_BYTES = 64 * 1024;
/** Frames one connection may have handled per event-loop turn before yielding. */
const TURN_BUDGET_FRAMES = 64;
/**
 * Time one connection's frames may take in one turn, in ms. A connection whose frames took longer
 * (frames that are expensive to scan, such as a megabyte of tiny map entries) is not read from for
 * as long again, so that it gets at most about half of the event loop while others wait.
 */
const TURN_BUDGET_MS = 10;
/** The longest such pause, in ms. */
const MAX_COOLDOWN_MS = 1000;
/** How long a connection the server closes has to complete the close handshake, in ms. */
export const CLOSE_GRACE_MS = 1000;
/**
 * Bytes a closing connection is still read (never handled) to find the client's close frame behind
 * what it had in flight; a client that sends more is not read from again before it is dropped.
 */
const CLOSING_READ_BYTES = 64 * 1024;
/**
 * Unsent bytes an unauthenticated connection may have queued (its pongs and errors) before the
 * server stops reading from it: it has no results to wait for, so it needs far less than
 * outboundHighWaterBytes, and many of them must not add up to much.
 */
const UNAUTHENTICATED_OUTBOUND_BYTES = 16 * 1024;

interface FlowLimits {
  readonly connectionInFlightBytes: number;
  readonly outboundHighWaterBytes: number;
  readonly slowConsumerTimeoutMs: number;
  readonly authTimeoutMs: number;
}

/**
 * Shared across connections: the server-wide budget of unanswered frame bytes and of messages
 * still arriving. Unauthenticated connections' partial messages have a share of their own.
 */
export interface InFlightBudget {
  bytes: number;
  readonly maxBytes: number;
  readonly waiting: Set<Connection>;
  unauthenticatedPartialBytes: number;
  readonly maxUnauthenticatedPartialBytes: number;
  /** Unauthenticated connections paused because their share is used up. */
  readonly unauthenticatedWaiting: Set<Connection>;
}

interface ConnectionContext {
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
  /** The connection authenticated with a hello's token. */
  readonly onAuthenticated: (conn: Connection) => void;
  /** The changefeed's subscriptions (absent: subscribe is an unknown type). */
  readonly changes?: SubscriptionContext;
}

type Entry = { kind: 'results'; results: Array<WireResult | undefined>; pending: number; bytes: number } | { kind: 'message'; message: object | undefined };

interface Inbound {
  readonly data: Buffer;
  readonly isBinary: boolean;
}

export class Connection {
  /** Set by the heartbeat sweep, cleared by any sign of life. */
  alive = true;
  /** When the connection opened (performance.now()); the oldest unauthenticated one is evicted first. */
  readonly openedAt = performance.now();
  /** Answers in the order their frames were read; a put's waits here until its batch commits. */
  private readonly pendingAnswers: Entry[] = [];
  private inFlightBytes = 0;
  /** Over a flow limit (hysteresis: until all are back under half). */
  private flowPaused = false;
  /** Whether the socket is paused right now, for whatever reason. */
  private socketPaused = false;
  /** Unauthenticated, and the unauthenticated share of half-sent messages is used up. */
  private partialPaused = false;
  private slowTimer: NodeJS.Timeout | undefined;
  private authTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The server decided to close: nothing read from now on is handled. */
  private closing = false;
  /** Bytes still to be read (unhandled) after the close decision, to find the client's close frame. */
  private closingReadBytes = CLOSING_READ_BYTES;
  /** Shutdown: no more reading, but what was read is still answered. */
  private stoppedForGood = false;
  private flushScheduled = false;
  private readonly subscriptions: Subscriptions | undefined;
  private readonly inbound: Inbound[] = [];
  private turnBytes = 0;
  private turnFrames = 0;
  private turnMs = 0;
  /** Bytes read from the socket this turn (frames being received included). */
  private turnReadBytes = 0;
  private readStarted = 0;
  /** Of the current read, the time already counted by handle(). */
  private handledInRead = 0;
  /** Sitting out after a turn that took more than TURN_BUDGET_MS. */
  private cooldown: NodeJS.Timeout | undefined;
  private turnScheduled: NodeJS.Immediate | undefined;
  /** Bytes of a message still arriving (an upper bound: what was read since the last whole one). */
  private partialBytes = 0;

  constructor(
    readonly ws: WebSocket,
    socket: Socket,
    readonly format: WireFormat,
    private readonly ctx: ConnectionContext,
    /** Known from the upgrade request, or learnt from the first hello's token (browsers). */
    private principalOrNone: Principal | undefined,
  ) {
    // Counted before ws parses the bytes, so a message that completes in this read is released
    // by its 'message' event right after.
    // Before and after ws parses a read: the time between is what this connection's bytes cost
    // (copying, unmasking, and the frames handled), counted against its share of the turn.
    socket.prependListener('data', (chunk: Buffer) => {
      this.readStarted = performance.now();
      this.handledInRead = 0;
      this.arrived(chunk.length);
    });
    socket.on('data', () => {
      if (this.closed) return;
      this.turnMs += performance.now() - this.readStarted - this.handledInRead;
      this.scheduleTurn();
      this.coolDownIfOver();
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => this.receive(data, isBinary));
    ws.on('ping', () => {
      this.releasePartial();
      this.updateFlow();
    });
    ws.on('pong', () => {
      this.releasePartial();
      this.alive = true;
    });
    ws.on('close', () => this.onClosed());
    ws.on('error', (err) => {
      // ws closes on its own after a protocol error (1002, 1007, 1009): the same rules apply.
      ctx.log.debug({ err }, 'connection error');
      this.decidedToClose();
    });
    this.subscriptions = ctx.changes && new Subscriptions(ctx.changes, this);
    if (principalOrNone === undefined) {
      this.authTimer = setTimeout(() => {
        this.authTimer = undefined;
        this.ctx.log.debug('closing a connection that did not authenticate in time');
        this.close(ERRORS.UNAUTHORIZED.closeCode, 'UNAUTHORIZED');
      }, ctx.flow.authTimeoutMs);
    }
  }

  /** True while reading is paused; the heartbeat sweep leaves such connections to the flow rules. */
  get isPaused(): boolean {
    return this.socketPaused;
  }

  /** True when every frame read so far has been answered and handed to the socket. */
  get settled(): boolean {
    return this.pendingAnswers.length === 0;
  }

  get authenticated(): boolean {
    return this.principalOrNone !== undefined;
  }

  /** The token this connection authenticated with, if any yet. */
  get principal(): Principal | undefined {
    return this.principalOrNone;
  }

  private arrived(bytes: number): void {
    if (this.closed) return;
    this.turnReadBytes += bytes;
    if (this.closing) {
      this.closingReadBytes -= bytes;
      if (this.closingReadBytes <= 0) this.applyPause();
    }
    this.partialBytes += bytes;
    this.addBudget(bytes);
    if (this.principalOrNone === undefined) {
      const budget = this.ctx.budget;
      budget.unauthenticatedPartialBytes += bytes;
      // Reading more would only hold more: what is read stays in memory until the message ends.
      // Not reading leaves it in the kernel's buffers, and the auth deadline ends the wait.
      if (budget.unauthenticatedPartialBytes > budget.maxUnauthenticatedPartialBytes && this.partialBytes > 0) {
        this.partialPaused = true;
        budget.unauthenticatedWaiting.add(this);
      }
    }
    this.updateFlow();
  }

  private releasePartial(): void {
    if (this.partialBytes === 0) return;
    if (this.principalOrNone === undefined) this.releaseUnauthenticatedShare(this.partialBytes);
    this.addBudget(-this.partialBytes);
    this.partialBytes = 0;
  }

  private releaseUnauthenticatedShare(bytes: number): void {
    const budget = this.ctx.budget;
    budget.unauthenticatedPartialBytes -= bytes;
    budget.unauthenticatedWaiting.delete(this);
    this.partialPaused = false;
    if (budget.unauthenticatedPartialBytes <= budget.maxUnauthenticatedPartialBytes / 2 && budget.unauthenticatedWaiting.size > 0) {
      for (const conn of [...budget.unauthenticatedWaiting]) {
        budget.unauthenticatedWaiting.delete(conn);
        conn.partialPaused = false;
        conn.applyPause();
      }
    }
  }

  private receive(data: Buffer, isBinary: boolean): void {
    this.releasePartial();
    // Once the server has decided to close (or stopped reading for shutdown), what still comes is
    // not even decoded: the client learns from the close code to resend it elsewhere.
    if (this.closing || this.stoppedForGood) return;
    this.alive = true;
    if (this.inbound.length === 0 && !this.flowPaused && this.turnHasRoom()) {
      this.handle(data, isBinary);
      return;
    }
    // Beyond this turn's share: wait for the next turn, reading paused. What waits is only what
    // ws had already read (at most a read or a frame), so this queue stays short.
    this.inbound.push({ data, isBinary });
    this.applyPause();
    this.scheduleTurn();
  }

  private turnHasRoom(): boolean {
    return this.cooldown === undefined && this.turnBytes < TURN_BUDGET_BYTES && this.turnFrames < TURN_BUDGET_FRAMES && this.turnMs < TURN_BUDGET_MS;
  }

  /** Handles waiting frames as far as this turn's share and the flow limits allow. */
  private drain(): void {
    while (this.inbound.length > 0 && !this.flowPaused && !this.closing && !this.stoppedForGood && this.turnHasRoom()) {
      const next = this.inbound.shift()!;
      this.handle(next.data, next.isBinary);
    }
    if (this.inbound.length > 0 && !this.flowPaused && this.cooldown === undefined) this.scheduleTurn();
    this.applyPause();
  }

  /** The next turn starts with a fresh share, and handles what waited. */
  private scheduleTurn(): void {
    this.turnScheduled ??= setImmediate(() => {
      this.turnScheduled = undefined;
      this.turnBytes = 0;
      this.turnFrames = 0;
      if (this.cooldown === undefined) {
        this.turnMs = 0;
        this.turnReadBytes = 0;
        this.drain();
      }
    });
  }

  private handle(data: Buffer, isBinary: boolean): void {
    const started = performance.now();
    try {
      this.handleFrame(data, isBinary);
    } finally {
      const ms = performance.now() - started;
      this.turnMs += ms;
      this.handledInRead += ms;
      this.coolDownIfOver();
    }
  }

  /**
   * Over this turn's time with more than a turn's bytes: sit out as long as the turn took (reading
   * paused, frames wait). Small frames never do: a slow turn for them is the machine's (a cold
   * start, another process), not theirs.
   */
  private coolDownIfOver(): void {
    if (this.turnMs < TURN_BUDGET_MS || this.turnReadBytes < TURN_BUDGET_BYTES) return;
    if (this.cooldown !== undefined || this.closing || this.closed) return;
    const ms = Math.min(this.turnMs, MAX_COOLDOWN_MS);
    this.cooldown = setTimeout(() => {
      this.cooldown = undefined;
      this.turnMs = 0;
      this.turnReadBytes = 0;
      this.drain();
    }, ms);
    this.applyPause();
  }

  private handleFrame(data: Buffer, isBinary: boolean): void {
    this.turnBytes += data.length;
    this.turnFrames++;
    this.scheduleTurn();
    let message: IncomingMessage;
    try {
      const frame = IncomingFrame.open(data, isBinary, this.format, this.ctx.limits);
      // Authentication first: before it, only a ping or a hello is looked at any further.
      if (this.principalOrNone === undefined && frame.type !== 'ping' && frame.type !== 'hello') {
        // A frame that is no message at all (not a map, no string type, an unknown type) keeps
        // its own code; that costs only its type. A put is not looked into.
        if (frame.type !== 'put') frame.message(this.ctx.limits, '');
        throw unauthorized();
      }
      message = frame.message(this.ctx.limits, this.principalOrNone?.tenant ?? '');
      if (this.principalOrNone === undefined) this.authenticate(message);
    } catch (caught) {
      this.refuse(caught);
      return;
    }
    const principal = this.principalOrNone!;

    switch (message.type) {
      case 'subscribe':
      case 'unsubscribe':
        if (this.subscriptions === undefined) {
          this.pendingAnswers.push({
            kind: 'message',
            message: errorMessage(new SeqgateError('UNKNOWN_TYPE', `unknown message type "${message.type}"`, { field: 'type' })),
          });
          this.flush();
        } else if (message.type === 'subscribe') this.subscriptions.subscribe(message, principal);
        else this.subscriptions.unsubscribe(message.id);
        return;
      case 'ping':
        // Answered at once, ahead of pending results: it measures liveness, not progress.
        this.send({ type: 'pong', nonce: message.nonce });
        this.updateFlow();
        return;
      case 'hello': {
        const denied = message.streams.find((stream) => !mayReadStream(principal, stream));
        if (denied !== undefined) {
          this.pendingAnswers.push({
            kind: 'message',
            message: errorMessage(new SeqgateError('FORBIDDEN', `token may not read stream ${denied}`, { stream: denied })),
          });
          this.flush();
          return;
        }
        const entry: Entry = { kind: 'message', message: undefined };
        this.pendingAnswers.push(entry);
        // Heads are read after every earlier put has committed, so they include this client's own.
        void this.ctx.committer
          .barrier()
          .then(() => this.ctx.store.heads(principal.tenant, message.streams))
          .then((heads) => {
            entry.message = { ...this.ctx.welcome(), heads: headsForWire(heads) };
          })
          .catch((err: Error) => {
            entry.message = { type: 'error', ...errorBody('STORAGE_UNAVAILABLE', `heads unavailable: ${err.message}`) };
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
        this.pendingAnswers.push(entry);
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

  /** A frame refused as a whole: its error takes its place among the answers. */
  private refuse(caught: unknown): void {
    // A bug in validation must cost this frame, never the process and everyone else's puts.
    const err = caught instanceof SeqgateError ? caught : new SeqgateError('INVALID_MESSAGE', 'the message could not be processed');
    if (!(caught instanceof SeqgateError)) this.ctx.log.error({ err: caught }, 'unexpected error while reading a frame');
    this.ctx.log.debug({ code: err.code }, 'rejected frame');
    this.ctx.metrics.rejectedFrames.inc({ code: err.code });
    this.pendingAnswers.push({ kind: 'message', message: errorMessage(err) });
    this.flush();
    if (err.code === 'UNAUTHORIZED') this.close(ERRORS.UNAUTHORIZED.closeCode, 'UNAUTHORIZED');
  }

  /** Before authentication only a hello carrying a valid token (or a ping) is accepted. */
  private authenticate(message: IncomingMessage): void {
    if (message.type === 'ping') return;
    const principal = message.type === 'hello' ? this.ctx.auth.authenticate(message.token) : undefined;
    if (principal === undefined) throw unauthorized();
    // Its partial-message bytes move from the unauthenticated share to the common one.
    this.releaseUnauthenticatedShare(this.partialBytes);
    this.principalOrNone = principal;
    clearTimeout(this.authTimer);
    this.authTimer = undefined;
    this.ctx.onAuthenticated(this);
    this.updateFlow();
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

  /** Sends every answer at the front of pendingAnswers that is ready; results coalesce into one frame. */
  private flush(): void {
    let batch: WireResult[] = [];
    while (this.pendingAnswers.length > 0) {
      const head = this.pendingAnswers[0]!;
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
      this.pendingAnswers.shift();
    }
    if (batch.length > 0) this.send({ type: 'results', results: batch }, () => reach('after-ack'));
    this.updateFlow();
  }

  /** Every byte the server queues for this connection goes through here, and is checked against its bound. */
  private send(message: object, sent?: () => void): void {
    if (this.closed) return;
    let frame: Buffer | string;
    try {
      frame = encodeMessage(message, this.format);
    } catch (err) {
      // Only echoed client values (a ping's nonce) can make encoding fail; answer, never crash.
      this.ctx.log.warn({ err }, 'could not encode an answer');
      frame = encodeMessage({ type: 'error', ...errorBody('INVALID_MESSAGE', 'the answer could not be encoded') }, this.format);
    }
    this.ws.send(frame, (err) => {
      if (err === undefined || err === null) sent?.();
      this.updateFlow();
    });
  }

  private addInFlight(bytes: number): void {
    this.inFlightBytes += bytes;
    this.addBudget(bytes);
  }

  private addBudget(bytes: number): void {
    const budget = this.ctx.budget;
    budget.bytes += bytes;
    if (bytes < 0 && budget.bytes <= budget.maxBytes / 2 && budget.waiting.size > 0) {
      for (const conn of [...budget.waiting]) {
        budget.waiting.delete(conn);
        conn.updateFlow();
      }
    }
  }

  private get outboundLimit(): number {
    const { outboundHighWaterBytes } = this.ctx.flow;
    return this.principalOrNone === undefined ? Math.min(outboundHighWaterBytes, UNAUTHENTICATED_OUTBOUND_BYTES) : outboundHighWaterBytes;
  }

  /** Pauses reading above the high-water marks, resumes below half of them. */
  updateFlow(): void {
    if (this.closed) return;
    const { flow, budget } = this.ctx;
    const outbound = this.ws.bufferedAmount;
    const outboundLimit = this.outboundLimit;
    const over = this.inFlightBytes > flow.connectionInFlightBytes || outbound > outboundLimit || budget.bytes > budget.maxBytes;
    const under = this.inFlightBytes <= flow.connectionInFlightBytes / 2 && outbound <= outboundLimit / 2 && budget.bytes <= budget.maxBytes / 2;

    if (budget.bytes > budget.maxBytes) budget.waiting.add(this);
    if (over) this.flowPaused = true;
    else if (under && this.flowPaused) {
      this.flowPaused = false;
      if (this.inbound.length > 0) this.scheduleTurn();
    }
    this.applyPause();

    // Paused with unread answers: the client has that long to start reading. (Paused only for
    // unanswered puts is the server's own delay and never closes anyone.)
    if (this.flowPaused && outbound > outboundLimit / 2 && !this.closing) {
      this.slowTimer ??= setTimeout(() => this.closeSlowConsumer(), flow.slowConsumerTimeoutMs);
    } else if (this.slowTimer !== undefined) {
      clearTimeout(this.slowTimer);
      this.slowTimer = undefined;
    }
  }

  /**
   * Reading is paused while over a flow limit, while frames wait for the next turn, and after
   * shutdown stopped it. A closing connection reads again (dropping every frame unhandled) only to
   * find the client's close frame: only if the client reads (one that leaves its answers unread
   * will not answer the close either), and only CLOSING_READ_BYTES of it, because even unhandled,
   * a client's megabyte frames cost copying and unmasking. A client that is not read sees the
   * close code anyway, in the close frame it was sent.
   */
  private applyPause(): void {
    if (this.closed) return;
    const pause = this.closing
      ? this.closingReadBytes <= 0 || this.ws.bufferedAmount > this.outboundLimit
      : this.stoppedForGood || this.flowPaused || this.partialPaused || this.cooldown !== undefined || this.inbound.length > 0;
    if (pause === this.socketPaused) return;
    this.socketPaused = pause;
    if (pause) this.ws.pause();
    else this.ws.resume();
  }

  /** Stops reading for good (shutdown): frames already handled are still answered. */
  stop(): void {
    this.stoppedForGood = true;
    // Frames that waited for their turn were never handled: like frames still on the wire, they
    // go unanswered and the client resends them.
    this.inbound.length = 0;
    this.applyPause();
  }

  private closeSlowConsumer(): void {
    this.slowTimer = undefined;
    if (this.ws.bufferedAmount <= this.outboundLimit / 2) return;
    this.ctx.log.warn({ bufferedBytes: this.ws.bufferedAmount, authenticated: this.authenticated }, 'closing slow consumer');
    this.ctx.metrics.slowConsumers.inc({ transport: 'ws' });
    this.close(ERRORS.SLOW_CONSUMER.closeCode, 'SLOW_CONSUMER');
  }

  /**
   * Closes with `code`. From this decision on nothing the client sends is handled (frames that
   * waited for their turn are dropped unanswered; the client resends them), and the socket is
   * destroyed CLOSE_GRACE_MS later if the close handshake has not completed by then.
   */
  close(code: number, reason: string): void {
    if (this.closing || this.closed) return;
    this.decidedToClose();
    this.ws.close(code, reason);
  }

  private decidedToClose(): void {
    if (this.closed) return;
    this.closing = true;
    this.inbound.length = 0;
    clearTimeout(this.authTimer);
    this.authTimer = undefined;
    clearTimeout(this.slowTimer);
    this.slowTimer = undefined;
    this.applyPause();
    // A client that does not read will not answer the close handshake either.
    this.graceTimer ??= setTimeout(() => this.ws.terminate(), CLOSE_GRACE_MS);
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing = true;
    this.subscriptions?.closeAll();
    this.inbound.length = 0;
    clearTimeout(this.slowTimer);
    clearTimeout(this.authTimer);
    clearTimeout(this.graceTimer);
    clearTimeout(this.cooldown);
    if (this.turnScheduled !== undefined) clearImmediate(this.turnScheduled);
    this.releasePartial();
    // Unanswered puts still commit (the client may retry them); their bytes leave the budget then.
    this.ctx.budget.waiting.delete(this);
    this.ctx.onClose(this);
  }
}

function unauthorized(): SeqgateError {
  return new SeqgateError('UNAUTHORIZED', 'send a hello with a valid token (or a bearer token on the upgrade) first');
}
