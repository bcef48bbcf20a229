import { decideOutcome } from './core/outcome.js';
import { Subscription, type OffsetStore, type SubscribeOptions } from './subscription.js';
import { later, numberBatch, renumber } from './core/numbering.js';
import { planReconcile } from './core/reconcile.js';
import {
  deadline,
  INITIAL_PHASE,
  publicState,
  stoppedBecause as whyStopped,
  transition,
  type Instruction,
  type LifecycleConfig,
  type LifecycleEvent,
  type Phase,
} from './core/lifecycle.js';
import { Emitter } from './emitter.js';
import {
  decodeMsgpack,
  encodePutJson,
  encodePutMsgpack,
  encodeState,
  JSON_FRAME_OVERHEAD,
  jsonPutFrame,
  msgpackMessage,
  MSGPACK_FRAME_OVERHEAD,
  msgpackPutFrame,
  nameProblem,
  StateProblem,
  utf8Length,
} from './encode.js';
import {
  AuthenticationError,
  ClientClosedError,
  ConnectionError,
  FencedError,
  ForbiddenError,
  InvalidPutError,
  OutboxError,
  ProtocolError,
  SeqgateClientError,
  ServerRollbackError,
  TransientError,
  WriterConflictError,
} from './errors.js';
import { CLOSE_CODES, PROTOCOL_VERSION, SUBPROTOCOLS } from './wire/constants.js';
import { loadAnswer, storeAnswer, type StoredAnswer } from './answer.js';
import { MemoryOutbox, type AnswerEntry, type Outbox, type OutboxEntry, type StreamRecord } from './outbox.js';
import {
  DEFAULT_LIMITS,
  type ClientStats,
  type CloseReport,
  type ConnectionState,
  type EpochChange,
  type Head,
  type Limits,
  type Position,
  type PutOptions,
  type PutRef,
  type PutResult,
  type PutSettlement,
  type RollbackInfo,
  type RollbackPolicy,
  type StateChange,
  type WelcomeInfo,
} from './types.js';

/**
 * The standard WebSocket API, as much of it as the client uses: browsers, React Native, and `ws`
 * in Node (which has no global WebSocket before version 22).
 */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- browsers, React Native and ws type their events differently
  onopen: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- browsers, React Native and ws type their events differently
  onmessage: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- browsers, React Native and ws type their events differently
  onclose: ((event: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- browsers, React Native and ws type their events differently
  onerror: ((event: any) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** Server URL, e.g. `ws://127.0.0.1:8787`. */
  readonly url: string;
  /** The stream this client writes; one writer per stream (a device id, an install id). */
  readonly stream: string;
  /** WebSocket constructor; defaults to `globalThis.WebSocket`. In Node 20 pass `ws`'s default export. */
  readonly WebSocket?: WebSocketConstructor;
  /** Defaults to a new MemoryOutbox. */
  readonly outbox?: Outbox;
  /** `msgpack` (default, subprotocol seqgate.v1) or `json` (seqgate.v1.json: states must be JSON values). */
  readonly format?: 'msgpack' | 'json';
  /** Sent in the hello, for servers that require tokens. */
  readonly token?: string;
  /** Most puts sent and not yet answered. Default 256. */
  readonly window?: number;
  /** A put unanswered this long means the connection is dead: reconnect and resend. Default 10 000. */
  readonly putTimeoutMs?: number;
  /** Socket open plus welcome must take less than this. Default 10 000. */
  readonly connectTimeoutMs?: number;
  /** Application-level ping period while connected. Default 15 000. */
  readonly pingIntervalMs?: number;
  /** A ping unanswered this long means the connection is dead. Default 10 000. */
  readonly pongTimeoutMs?: number;
  /** Reconnect backoff: doubles from initialDelayMs up to maxDelayMs, with jitter. Defaults 250 and 30 000. */
  readonly reconnect?: { readonly initialDelayMs?: number; readonly maxDelayMs?: number };
  /** What to do with unanswered puts when the server went back in time. Default `reject`. */
  readonly onRollback?: RollbackPolicy;
  /** Limits to check puts against before the first welcome; the welcome's limits replace them. */
  readonly limits?: Partial<Limits>;
  /** Monotonic clock in milliseconds. Default performance.now(). */
  readonly now?: () => number;
  /** Source of jitter in [0, 1). Default Math.random. */
  readonly random?: () => number;
  /**
   * When an answer counts as seen, so that the outbox may forget it. `auto` (default): once the
   * put's promise has settled and every `result` listener has returned. `manual`: only when the
   * application calls `client.confirm(settlement)`. Until then a durable outbox keeps the answer,
   * and a client started on it after a crash reports it again (`recovered: true`).
   */
  readonly confirmResults?: 'auto' | 'manual';
}

export interface ClientEvents {
  /** Connection state changes. */
  state: StateChange;
  /** Every welcome (after the client has compared and, if needed, moved its epoch). */
  welcome: WelcomeInfo;
  /** The client's epoch changed; see EpochChange.reason. */
  epoch: EpochChange;
  /** The server went back in time; see RollbackInfo and the `onRollback` option. */
  rollback: RollbackInfo;
  /** Every settled put, including those recovered from a durable outbox. */
  result: PutSettlement;
  /** The server could not commit a put; the client resends it after a backoff. */
  transientError: TransientError;
  /** The client stopped writing for good; the error says why. */
  stopped: SeqgateClientError;
  /** Problems that belong to no put: outbox failures, undecodable frames. */
  error: SeqgateClientError;
}

interface Waiter {
  readonly resolve: (result: PutResult) => void;
  readonly reject: (error: Error) => void;
}

type Status = 'new' | 'queued' | 'inflight' | 'settling';

interface Live {
  readonly pos: number;
  epoch: number;
  seq: number;
  readonly key: string;
  readonly state: Uint8Array | null;
  readonly ifVersion: number | null;
  readonly createdAt: number;
  readonly checkpoint: { value: unknown } | undefined;
  readonly waiter: Waiter | undefined;
  readonly recovered: boolean;
  status: Status;
  appended: boolean;
  sentBefore: boolean;
  sentAt: number;
  wire: Uint8Array | string | undefined;
  wireBytes: number;
}

/** An open socket and the puts sent on it; the lifecycle phase says what the socket is doing. */
interface Link {
  /** The lifecycle's name for this socket. */
  readonly id: number;
  readonly ws: WebSocketLike;
  /** Puts sent on this connection and not yet answered, by correlation id (= seq). */
  readonly inflight: Map<number, Live>;
  /** Put frames sent, oldest first, for matching an `error` message to its frame. */
  frames: Live[][];
}

function asRecord(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

function num(v: unknown, fallback = 0): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}

function defaultNow(): () => number {
  const perf = (globalThis as { performance?: { now(): number } }).performance;
  return perf !== undefined && typeof perf.now === 'function' ? () => perf.now() : () => Date.now();
}

/**
 * A writer of one stream. See docs/CLIENT.md for the guarantees and the policies.
 *
 * Every change of the outbox runs through one serial queue (`run`): recording new puts, settling
 * answered ones and re-numbering after a welcome never interleave, so the record in the outbox
 * always matches the entries written with it.
 */
export class SeqgateClient extends Emitter<ClientEvents> {
  readonly stream: string;
  /** Resolves once the outbox is loaded (rejects with OutboxError if it cannot be). */
  readonly ready: Promise<void>;

  private readonly url: string;
  private readonly WebSocketCtor: WebSocketConstructor;
  private readonly outbox: Outbox;
  private readonly format: 'msgpack' | 'json';
  private readonly token: string | undefined;
  private readonly window: number;
  private readonly lifecycle: LifecycleConfig;
  private readonly rollbackPolicy: RollbackPolicy;
  private readonly now: () => number;
  private readonly random: () => number;

  private limits: Limits;
  private contiguous = false;
  private record: StreamRecord = { epoch: null, nextSeq: 1, lastAcked: null, incarnation: null, checkpoint: undefined };
  private nextPos = 1;
  private fresh: Live[] = [];
  private entries: Live[] = [];
  private toSettle: Array<{ entry: Live; result?: PutResult; error?: SeqgateClientError }> = [];
  private appendScheduled = false;
  /** Recordings scheduled or running; the client is not drained while one is. */
  private appending = 0;
  private settleScheduled = false;
  private io: Promise<void> = Promise.resolve();

  /** The connection lifecycle (core/lifecycle.ts); changed only by dispatch(). */
  private phase: Phase = INITIAL_PHASE;
  /**
   * The event being handled, then those raised while its instructions run: they wait their turn,
   * so each sees a settled phase.
   */
  private readonly events: LifecycleEvent[] = [];
  /** The socket the phase holds, with its in-flight puts. */
  private link: Link | null = null;
  /** The one platform timer, set for deadline(phase). */
  private timer: { readonly at: number; readonly handle: ReturnType<typeof setTimeout> } | undefined;

  /** close()'s answer; once set, put() refuses. */
  private closePromise: Promise<CloseReport> | undefined;
  private drainWaiters: Array<() => void> = [];
  private readonly confirmMode: 'auto' | 'manual';
  /** Positions of answers delivered to the application and not yet seen/confirmed, by settlement. */
  private readonly unconfirmed = new WeakMap<PutSettlement, number>();
  private unconfirmedCount = 0;
  /** Positions whose answers were seen, to remove from the outbox with its next write. */
  private seen: number[] = [];
  private seenFlushScheduled = false;

  private readonly counters = { sent: 0, resent: 0, applied: 0, replayed: 0, rejected: 0, connections: 0, timeouts: 0 };

  constructor(options: ClientOptions) {
    super();
    const streamProblem = nameProblem(options.stream, 'stream', options.limits?.maxStreamBytes ?? DEFAULT_LIMITS.maxStreamBytes);
    if (streamProblem !== null) throw new TypeError(`seqgate client: ${streamProblem.message}`);
    const Ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Ctor === undefined) throw new TypeError('seqgate client: no global WebSocket; pass one as options.WebSocket (in Node: the `ws` package)');
    this.stream = options.stream;
    this.url = options.url;
    this.WebSocketCtor = Ctor;
    this.outbox = options.outbox ?? new MemoryOutbox();
    this.format = options.format ?? 'msgpack';
    this.token = options.token;
    this.window = Math.max(1, options.window ?? 256);
    this.lifecycle = {
      putTimeoutMs: options.putTimeoutMs ?? 10_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      pingIntervalMs: options.pingIntervalMs ?? 15_000,
      pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
      initialDelayMs: options.reconnect?.initialDelayMs ?? 250,
      maxDelayMs: options.reconnect?.maxDelayMs ?? 30_000,
    };
    this.rollbackPolicy = options.onRollback ?? 'reject';
    this.now = options.now ?? defaultNow();
    this.random = options.random ?? Math.random;
    this.confirmMode = options.confirmResults ?? 'auto';
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };

    this.ready = this.run(() => this.load());
    this.ready.catch(() => undefined);
  }

  // ---- public API -------------------------------------------------------------------------

  /**
   * Writes `state` as the full state of document `key`. Resolves when the server has applied it
   * (`replay: true` if an earlier send already had). Rejects with one error class per other
   * outcome (see errors.ts). The put is in the outbox, with its seq, before its first send.
   */
  put(key: string, state: unknown, options: PutOptions = {}): Promise<PutResult> {
    return this.submit(key, state, false, options);
  }

  /** Deletes document `key`; answered like put(). */
  delete(key: string, options: PutOptions = {}): Promise<PutResult> {
    return this.submit(key, undefined, true, options);
  }

  get state(): ConnectionState {
    return publicState(this.phase);
  }

  /** The epoch this client writes; null until its first welcome. */
  get epoch(): number | null {
    return this.record.epoch;
  }

  get nextSeq(): number {
    return this.record.nextSeq;
  }

  /** The highest position the server acked to this client. */
  get lastAcked(): Position | null {
    return this.record.lastAcked;
  }

  /** The checkpoint of the last put recorded in the outbox (see PutOptions.checkpoint). */
  get checkpoint(): unknown {
    return this.record.checkpoint;
  }

  /** Puts accepted by put() and not yet settled. */
  get pending(): number {
    return this.fresh.length + this.entries.filter((e) => e.status !== 'settling').length;
  }

  get stats(): ClientStats {
    return { ...this.counters };
  }

  /** Why the client stopped writing, if it did. */
  get stoppedBecause(): SeqgateClientError | undefined {
    return whyStopped(this.phase);
  }

  /**
   * Says the application has seen (and, with `confirmResults: 'manual'`, dealt with) the answer of
   * this settlement, a value a `result` event carried: the outbox may forget it. Returns false when
   * there is nothing to confirm (already confirmed, or the put never reached the outbox). In `auto`
   * mode the client confirms by itself; calling this is harmless.
   */
  confirm(settlement: PutSettlement): boolean {
    const pos = this.unconfirmed.get(settlement);
    if (pos === undefined) return false;
    this.unconfirmed.delete(settlement);
    this.unconfirmedCount--;
    this.seen.push(pos);
    this.scheduleSeenFlush();
    return true;
  }

  /** Answers delivered but not yet confirmed (`confirmResults: 'manual'`, or `auto` in the same turn). */
  get unconfirmedResults(): number {
    return this.unconfirmedCount;
  }

  /**
   * Stops taking puts, waits up to `timeoutMs` (default 10 000) for every accepted put to be
   * answered, then closes the socket. Puts still unanswered reject with ClientClosedError and are
   * listed in the report; a durable outbox keeps them for the next client.
   */
  /**
   * Follows the changefeed (PROTOCOL.md §16) under `prefix` on its own connection, with this
   * client's URL, WebSocket and token. The offset is kept in this client's outbox when the outbox
   * can hold offsets (SqliteOutbox does), so a restarted app resumes where it stopped; otherwise
   * in memory. See subscription.ts.
   */
  subscribe(prefix: string, options: Omit<SubscribeOptions, 'url' | 'prefix' | 'WebSocket' | 'token'>): Promise<Subscription> {
    const outbox = this.outbox as Partial<OffsetStore>;
    const offsets =
      options.offsets ?? (typeof outbox.loadOffset === 'function' && typeof outbox.saveOffset === 'function' ? (outbox as OffsetStore) : undefined);
    return Subscription.start({
      ...options,
      url: this.url,
      prefix,
      WebSocket: this.WebSocketCtor,
      ...(this.token !== undefined ? { token: this.token } : {}),
      ...(offsets !== undefined ? { offsets } : {}),
    });
  }

  close(options: { timeoutMs?: number } = {}): Promise<CloseReport> {
    this.closePromise ??= this.shutdown(options.timeoutMs ?? 10_000);
    return this.closePromise;
  }

  // ---- recording puts ---------------------------------------------------------------------

  private submit(key: string, state: unknown, isDelete: boolean, options: PutOptions): Promise<PutResult> {
    const ref: PutRef = { stream: this.stream, epoch: this.record.epoch ?? 0, seq: 0, key };
    if (this.closePromise !== undefined)
      return Promise.reject(new ClientClosedError(false, { put: ref, message: 'the client is closed or closing; the put was not recorded' }));
    if (this.stoppedBecause !== undefined) return Promise.reject(this.stoppedError(ref));

    const keyProblem = nameProblem(key, 'key', this.limits.maxKeyBytes);
    if (keyProblem !== null) {
      return Promise.reject(
        new InvalidPutError(
          keyProblem.code,
          keyProblem.message,
          'key',
          keyProblem.code === 'LIMIT_EXCEEDED' ? 'maxKeyBytes' : undefined,
          keyProblem.code === 'LIMIT_EXCEEDED' ? this.limits.maxKeyBytes : undefined,
          true,
          { put: ref },
        ),
      );
    }
    const ifVersion = options.ifVersion ?? null;
    if (ifVersion !== null && !(Number.isSafeInteger(ifVersion) && ifVersion >= 0)) {
      return Promise.reject(
        new InvalidPutError('INVALID_FIELD', 'ifVersion must be a safe integer >= 0', 'ifVersion', undefined, undefined, true, { put: ref }),
      );
    }
    let encoded: Uint8Array | null = null;
    if (!isDelete) {
      try {
        encoded = encodeState(state, this.limits, this.format === 'json');
      } catch (err) {
        if (!(err instanceof StateProblem)) throw err;
        return Promise.reject(
          new InvalidPutError(err.code, err.message, 'state', err.limit, err.limit === undefined ? undefined : this.limits[err.limit], true, { put: ref }),
        );
      }
    }
    if (options.checkpoint !== undefined) {
      try {
        JSON.stringify(options.checkpoint);
      } catch (err) {
        return Promise.reject(
          new InvalidPutError('INVALID_FIELD', 'checkpoint must be a JSON value', 'checkpoint', undefined, undefined, true, { put: ref, cause: err }),
        );
      }
    }
    // A put that cannot fit in a frame alone would close the connection (1009) on every resend.
    const widest = { stream: this.stream, epoch: Number.MAX_SAFE_INTEGER, seq: Number.MAX_SAFE_INTEGER, key, state: encoded, ifVersion };
    const size = this.format === 'msgpack' ? encodePutMsgpack(widest).length + MSGPACK_FRAME_OVERHEAD : utf8Length(encodePutJson(widest)) + JSON_FRAME_OVERHEAD;
    if (size > this.limits.maxFrameBytes) {
      return Promise.reject(
        new InvalidPutError(
          'LIMIT_EXCEEDED',
          `the put exceeds maxFrameBytes ${this.limits.maxFrameBytes}`,
          'state',
          'maxFrameBytes',
          this.limits.maxFrameBytes,
          true,
          { put: ref },
        ),
      );
    }

    return new Promise<PutResult>((resolve, reject) => {
      this.fresh.push({
        pos: this.nextPos++,
        epoch: 0,
        seq: 0,
        key,
        state: encoded,
        ifVersion,
        createdAt: Date.now(),
        checkpoint: options.checkpoint === undefined ? undefined : { value: options.checkpoint },
        waiter: { resolve, reject },
        recovered: false,
        status: 'new',
        appended: false,
        sentBefore: false,
        sentAt: 0,
        wire: undefined,
        wireBytes: 0,
      });
      this.scheduleAppend();
    });
  }

  private run(op: () => Promise<void>): Promise<void> {
    const p = this.io.then(op);
    this.io = p.catch(() => undefined);
    return p;
  }

  private async load(): Promise<void> {
    let loaded;
    try {
      loaded = await this.outbox.load(this.stream);
    } catch (err) {
      const error = new OutboxError(`cannot load the outbox: ${(err as Error).message}`, { cause: err });
      this.dispatch({ type: 'stop', error });
      throw error;
    }
    if (loaded.record !== null) this.record = { ...loaded.record };
    const answered: Array<{ entry: Live; answer: StoredAnswer }> = [];
    for (const e of loaded.entries) {
      if (e.pos >= this.nextPos) this.nextPos = e.pos + 1;
      if (e.answer !== undefined && e.answer !== null) {
        // Answered before the last process ended, but never seen by its application.
        answered.push({
          entry: {
            ...e,
            checkpoint: undefined,
            waiter: undefined,
            recovered: true,
            status: 'settling',
            appended: true,
            sentBefore: true,
            sentAt: 0,
            wire: undefined,
            wireBytes: 0,
          },
          answer: e.answer,
        });
        continue;
      }
      this.entries.push({
        ...e,
        checkpoint: undefined,
        waiter: undefined,
        recovered: true,
        status: 'queued',
        appended: true,
        sentBefore: true,
        sentAt: 0,
        wire: undefined,
        wireBytes: 0,
      });
    }
    // Positions handed out before the load finished must stay above the loaded ones.
    for (const f of this.fresh) if (f.pos < this.nextPos) (f as { pos: number }).pos = this.nextPos++;
    this.dispatch({ type: 'loaded' });
    // After the constructor's caller has attached its listeners (load is asynchronous).
    for (const { entry, answer } of answered) this.deliver(entry, loadAnswer(answer, this.refOf(entry)));
  }

  private scheduleAppend(): void {
    if (this.appendScheduled) return;
    this.appendScheduled = true;
    this.appending++;
    void this.run(() =>
      this.recordFresh().finally(() => {
        this.appending--;
        this.checkDrain();
      }),
    );
  }

  /** Records the puts put() accepted since the last recording, numbering them if the epoch is known. */
  private async recordFresh(): Promise<void> {
    this.appendScheduled = false;
    const batch = this.fresh;
    this.fresh = [];
    if (batch.length === 0) return;
    if (this.stoppedBecause !== undefined) {
      for (const e of batch) e.waiter?.reject(this.stoppedError(this.refOf(e)));
      return;
    }
    const { positions, record } = numberBatch(this.record, batch);
    batch.forEach((e, i) => {
      e.epoch = positions[i]!.epoch;
      e.seq = positions[i]!.seq;
    });
    try {
      await this.outbox.append(this.stream, record, batch.map(toOutboxEntry));
    } catch (err) {
      for (const e of batch) {
        e.waiter?.reject(new OutboxError(`the outbox could not record the put: ${(err as Error).message}`, { cause: err, put: this.refOf(e) }));
      }
      this.emit('error', new OutboxError(`outbox append failed: ${(err as Error).message}`, { cause: err }));
      return;
    }
    this.record = record;
    for (const e of batch) {
      e.status = 'queued';
      e.appended = true;
      this.entries.push(e);
    }
    this.pump();
  }

  // ---- settling ---------------------------------------------------------------------------

  private settle(entry: Live, outcome: { result?: PutResult; error?: SeqgateClientError }): void {
    if (entry.status === 'settling') return;
    entry.status = 'settling';
    this.toSettle.push({ entry, ...outcome });
    if (this.settleScheduled) return;
    this.settleScheduled = true;
    void this.run(async () => {
      this.settleScheduled = false;
      const batch = this.toSettle;
      this.toSettle = [];
      if (batch.length === 0) return;
      const answers: AnswerEntry[] = batch.filter((b) => b.entry.appended).map((b) => ({ pos: b.entry.pos, answer: storeAnswer(b) }));
      const seen = this.takeSeen();
      try {
        if (answers.length > 0 || seen.length > 0) await this.outbox.settle(this.stream, this.record, answers, seen);
      } catch (err) {
        // The answers are real; the outbox will resend these puts after a restart and get replays.
        this.emit('error', new OutboxError(`outbox settle failed: ${(err as Error).message}`, { cause: err }));
      }
      const done = new Set(batch.map((b) => b.entry));
      this.entries = this.entries.filter((e) => !done.has(e));
      for (const b of batch) this.deliver(b.entry, b);
      this.checkDrain();
    });
  }

  private deliver(entry: Live, outcome: { result?: PutResult; error?: SeqgateClientError }): void {
    const put = this.refOf(entry);
    let settlement: PutSettlement;
    if (outcome.result !== undefined) {
      this.counters.applied++;
      if (outcome.result.replay) this.counters.replayed++;
      entry.waiter?.resolve(outcome.result);
      settlement = { put, recovered: entry.recovered, result: outcome.result };
    } else {
      this.counters.rejected++;
      const err = outcome.error ?? new SeqgateClientError('PROTOCOL', 'no outcome');
      entry.waiter?.reject(err);
      settlement = { put, recovered: entry.recovered, error: err };
    }
    if (entry.appended) {
      this.unconfirmed.set(settlement, entry.pos);
      this.unconfirmedCount++;
    }
    this.emit('result', settlement);
    // Seen: the listeners have returned; the promise's reactions run before the flush (a macrotask).
    if (entry.appended && this.confirmMode === 'auto') this.confirm(settlement);
  }

  private takeSeen(): number[] {
    const seen = this.seen;
    this.seen = [];
    return seen;
  }

  /**
   * Seen answers leave the outbox with its next write; when none comes soon, with one of their
   * own. A crash before that reports them again at the next start (at least once).
   */
  private scheduleSeenFlush(): void {
    if (this.seenFlushScheduled) return;
    this.seenFlushScheduled = true;
    setTimeout(() => {
      this.seenFlushScheduled = false;
      // After close() the outbox may be closed too; what is left is reported again next time.
      if (this.phase.kind === 'closing' || this.phase.kind === 'closed' || this.seen.length === 0 || this.settleScheduled) return;
      void this.run(() => this.flushSeen());
    }, 0);
  }

  private async flushSeen(): Promise<void> {
    const seen = this.takeSeen();
    if (seen.length === 0) return;
    try {
      await this.outbox.settle(this.stream, this.record, [], seen);
    } catch (err) {
      this.emit('error', new OutboxError(`outbox write failed: ${(err as Error).message}`, { cause: err }));
    }
  }

  private refOf(e: { epoch: number; seq: number; key: string }): PutRef {
    return { stream: this.stream, epoch: e.epoch, seq: e.seq, key: e.key };
  }

  // ---- the lifecycle shell ----------------------------------------------------------------

  /**
   * Feeds one event to the lifecycle (core/lifecycle.ts) and carries out its instructions.
   * Events raised while instructions run (a send that fails inside a pump) queue behind them.
   */
  private dispatch(event: LifecycleEvent): void {
    if (this.events.push(event) > 1) return;
    try {
      for (let e: LifecycleEvent | undefined = event; e !== undefined; e = this.events[0]) {
        const step = transition(this.lifecycle, this.phase, e, this.now(), this.random);
        this.phase = step.phase;
        for (const i of step.instructions) this.carryOut(i);
        this.events.shift();
      }
    } finally {
      // Only a bug throws here; the events behind it must not wedge every later dispatch.
      this.events.length = 0;
    }
    this.armTimer();
  }

  private carryOut(i: Instruction): void {
    switch (i.type) {
      case 'open-socket':
        this.openSocket(i.id);
        return;
      case 'send-hello': {
        const hello: Record<string, string | number | readonly string[]> = { type: 'hello', protocol: PROTOCOL_VERSION, streams: [this.stream] };
        if (this.token !== undefined) hello.token = this.token;
        this.sendMessage(i.id, hello);
        return;
      }
      case 'send-ping':
        this.sendMessage(i.id, { type: 'ping', nonce: i.nonce });
        return;
      case 'close-socket':
        this.closeSocket(i.id, i.how);
        return;
      case 'reconcile':
        this.startReconcile(i.id, i.welcome, i.rebase);
        return;
      case 'welcomed':
        this.emit('welcome', i.welcome);
        return;
      case 'pump':
        this.pump();
        return;
      case 'fail-queued':
        this.failQueued();
        return;
      case 'stopped':
        this.emit('stopped', i.error);
        return;
      case 'report':
        this.emit('error', i.error);
        return;
      case 'count-timeout':
        this.counters.timeouts++;
        return;
      case 'emit-state':
        this.emit('state', i.error === undefined ? { state: i.state, previous: i.previous } : { state: i.state, previous: i.previous, error: i.error });
        return;
    }
  }

  /** When the oldest put still unanswered on the socket went out; the lifecycle's put timeout counts from it. */
  private oldestSentAt(): number | null {
    const oldest = this.link?.inflight.values().next();
    return oldest === undefined || oldest.done === true ? null : oldest.value.sentAt;
  }

  /** One timer for every deadline of the phase: reconnect, connect, put and pong timeouts, ping, retry pause. */
  private armTimer(): void {
    const at = deadline(this.phase, this.lifecycle, this.oldestSentAt());
    if (this.timer !== undefined) {
      if (this.timer.at === at) return;
      clearTimeout(this.timer.handle);
      this.timer = undefined;
    }
    if (at === Infinity) return;
    const handle = setTimeout(
      () => {
        this.timer = undefined;
        this.dispatch({ type: 'tick', oldestSentAt: this.oldestSentAt() });
      },
      Math.max(0, Math.ceil(at - this.now())),
    );
    this.timer = { at, handle };
  }

  private openSocket(id: number): void {
    let ws: WebSocketLike;
    try {
      ws = new this.WebSocketCtor(this.url, [SUBPROTOCOLS[this.format]]);
      ws.binaryType = 'arraybuffer';
    } catch (err) {
      const error = new ConnectionError('CONNECT_FAILED', `cannot open a WebSocket to ${this.url}: ${(err as Error).message}`, undefined, { cause: err });
      this.dispatch({ type: 'socket-failed', id, error });
      return;
    }
    const link: Link = { id, ws, inflight: new Map(), frames: [] };
    this.link = link;
    this.counters.connections++;
    ws.onopen = () => this.dispatch({ type: 'socket-open', id });
    ws.onmessage = (event: { data: unknown }) => {
      if (link === this.link) this.onMessage(link, event.data);
    };
    ws.onclose = (event: { code?: number; reason?: string }) =>
      this.dispatch({ type: 'socket-closed', id, code: event.code ?? 1006, reason: event.reason ?? '' });
    ws.onerror = () => undefined; // a close event always follows
  }

  /** Forgets socket `id`: closes it (unless the peer did), and its unanswered puts go back to the queue. */
  private closeSocket(id: number, how: 'dropped' | 'peer' | 'shutdown'): void {
    const link = this.link;
    if (link === null || link.id !== id) return;
    this.link = null;
    const ws = link.ws as WebSocketLike & { terminate?: () => void };
    ws.onmessage = null;
    if (how !== 'peer') {
      try {
        if (how === 'shutdown') ws.close(1000, 'client closed');
        // `ws` can drop a dead TCP connection at once; browsers only offer the close handshake.
        else if (typeof ws.terminate === 'function') ws.terminate();
        else ws.close(4000, 'client gave up on this connection');
      } catch {
        // already closed
      }
    }
    for (const e of link.inflight.values()) if (e.status === 'inflight') e.status = 'queued';
    link.inflight.clear();
  }

  private sendMessage(id: number, message: Record<string, string | number | readonly string[]>): void {
    const link = this.link;
    if (link !== null && link.id === id) this.sendRaw(link, this.format === 'msgpack' ? msgpackMessage(message) : JSON.stringify(message));
  }

  private sendRaw(link: Link, data: Uint8Array | string): boolean {
    try {
      link.ws.send(data);
      return true;
    } catch (err) {
      const error = new ConnectionError('SEND_FAILED', `send failed: ${(err as Error).message}`, undefined, { cause: err });
      this.dispatch({ type: 'lost', id: link.id, error, report: false });
      return false;
    }
  }

  private onMessage(link: Link, data: unknown): void {
    let msg: Record<string, unknown>;
    try {
      if (typeof data === 'string') msg = asRecord(JSON.parse(data));
      else if (ArrayBuffer.isView(data)) msg = asRecord(decodeMsgpack(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)));
      // instanceof fails for an ArrayBuffer from another realm (some React Native and test setups).
      else if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === '[object ArrayBuffer]') {
        msg = asRecord(decodeMsgpack(new Uint8Array(data as ArrayBuffer)));
      } else throw new Error('unexpected frame data type');
    } catch (err) {
      const error = new ConnectionError('UNDECODABLE', `undecodable frame from the server: ${(err as Error).message}`, undefined, { cause: err });
      this.dispatch({ type: 'lost', id: link.id, error, report: true });
      return;
    }
    switch (msg.type) {
      case 'welcome':
        this.onWelcome(link, msg);
        break;
      case 'results':
        if (Array.isArray(msg.results)) this.onResults(link, msg.results);
        break;
      case 'pong':
        this.dispatch({ type: 'pong', id: link.id, nonce: msg.nonce });
        break;
      case 'error':
        this.onErrorMessage(link, msg);
        break;
      default:
        // Unknown message types are ignored (PROTOCOL.md §14).
        break;
    }
    this.armTimer();
  }

  private onWelcome(link: Link, msg: Record<string, unknown>): void {
    const heads = Array.isArray(msg.heads) ? msg.heads.map(asRecord) : [];
    const h = heads.find((x) => x.stream === this.stream);
    if (h === undefined || typeof msg.incarnation !== 'string') {
      const broken = new ProtocolError('PROTOCOL', "welcome without this stream's head or without an incarnation", false);
      this.dispatch({ type: 'welcome', id: link.id, broken });
      return;
    }
    const head: Head = { stream: this.stream, epoch: num(h.epoch), seq: num(h.seq), prunedThrough: num(h.prunedThrough) };
    const limits = asRecord(msg.limits);
    const merged: Record<string, number> = { ...this.limits };
    for (const name of Object.keys(DEFAULT_LIMITS)) if (typeof limits[name] === 'number') merged[name] = limits[name] as number;
    const welcome: WelcomeInfo = {
      server: String(msg.server ?? ''),
      incarnation: msg.incarnation,
      contiguous: msg.contiguous === true,
      head,
      limits: merged as unknown as Limits,
    };
    this.dispatch({ type: 'welcome', id: link.id, welcome });
  }

  /** The lifecycle's `reconcile`: the welcome's limits apply from now, then the outbox catches up with it. */
  private startReconcile(id: number, welcome: WelcomeInfo, rebase: boolean): void {
    this.limits = welcome.limits;
    this.contiguous = welcome.contiguous;
    const current = (): boolean => this.phase.kind === 'reconciling' && this.phase.id === id;
    void this.run(async () => {
      if (!current()) return;
      await this.reconcile(welcome.head, welcome.incarnation, rebase);
      this.dispatch({ type: 'reconciled', id, welcome });
    }).catch((err: unknown) => {
      const error = err instanceof SeqgateClientError ? err : new OutboxError(`outbox write failed after a welcome: ${(err as Error).message}`, { cause: err });
      this.dispatch({ type: 'lost', id, error, report: true });
    });
  }

  /**
   * Compares the welcome with what the outbox remembers, before anything is sent on the new
   * connection: fixes the epoch of a new record, detects a server that went back in time, and
   * re-numbers after a hole in contiguous mode.
   */
  private async reconcile(head: Head, incarnation: string, rebase: boolean): Promise<void> {
    const open = this.entries.filter((e) => e.status !== 'settling');
    const plan = planReconcile({
      stream: this.stream,
      record: this.record,
      head,
      incarnation,
      policy: this.rollbackPolicy,
      needRebase: rebase,
      open: open.length,
    });
    if (plan.kind === 'reject-open') {
      await this.outbox.replace(this.stream, plan.record, []);
      this.record = plan.record;
      this.emit('rollback', plan.rollback);
      this.emit('epoch', plan.epoch);
      for (const e of open) {
        e.appended = false;
        this.settle(e, { error: new ServerRollbackError(plan.rollback, { put: this.refOf(e) }) });
      }
      // Puts recorded after this point get the new epoch; ones waiting in `fresh` too.
      return;
    }
    if (plan.rollback !== null) {
      this.record = plan.rollback.record;
      await this.outbox.settle(this.stream, this.record, [], this.takeSeen());
      this.emit('rollback', plan.rollback.info);
    }
    if (plan.renumber !== null) {
      // The outbox is written first: a put must never go out under a number the outbox does not
      // hold, or a restart could number it again.
      const { positions, record } = renumber(plan.renumber.base, plan.renumber.epoch.epoch, open.length);
      await this.outbox.replace(
        this.stream,
        record,
        open.map((e, i) => ({ ...toOutboxEntry(e), ...positions[i]! })),
      );
      this.record = record;
      open.forEach((e, i) => {
        e.epoch = positions[i]!.epoch;
        e.seq = positions[i]!.seq;
        e.wire = undefined;
        if (e.status === 'inflight') e.status = 'queued';
      });
      this.emit('epoch', plan.renumber.epoch);
      return;
    }
    if (plan.store !== null) {
      await this.outbox.settle(this.stream, plan.store, [], this.takeSeen());
      this.record = plan.store;
    }
  }

  // ---- sending ----------------------------------------------------------------------------

  private wireOf(e: Live): Uint8Array | string {
    if (e.wire !== undefined) return e.wire;
    const p = { stream: this.stream, epoch: e.epoch, seq: e.seq, key: e.key, state: e.state, ifVersion: e.ifVersion };
    if (this.format === 'msgpack') {
      const bytes = encodePutMsgpack(p);
      e.wire = bytes;
      e.wireBytes = bytes.length;
    } else {
      const text = encodePutJson(p);
      e.wire = text;
      e.wireBytes = utf8Length(text) + 1;
    }
    return e.wire;
  }

  private pump(): void {
    const link = this.link;
    // Only an open phase sends: not before the welcome is reconciled, not while paused, not once stopped.
    if (link === null || this.phase.kind !== 'open' || this.phase.id !== link.id) return;
    let room = this.window - link.inflight.size;
    if (room <= 0) return;
    const overhead = this.format === 'msgpack' ? MSGPACK_FRAME_OVERHEAD : JSON_FRAME_OVERHEAD;
    let batch: Live[] = [];
    let bytes = overhead;
    for (const e of this.entries) {
      if (room <= 0) break;
      if (e.status !== 'queued' || e.seq === 0) continue;
      if (this.format === 'json' && e.recovered && e.wire === undefined && !this.jsonSafe(e)) continue;
      this.wireOf(e);
      if (batch.length > 0 && (bytes + e.wireBytes > this.limits.maxFrameBytes || batch.length >= this.limits.maxPutsPerFrame)) {
        if (!this.sendFrame(link, batch)) return;
        batch = [];
        bytes = overhead;
      }
      batch.push(e);
      bytes += e.wireBytes;
      room--;
    }
    if (batch.length > 0) this.sendFrame(link, batch);
    this.armTimer();
  }

  /** A recovered put recorded under msgpack must survive the trip to JSON unchanged, or it is refused. */
  private jsonSafe(e: Live): boolean {
    if (e.state === null) return true;
    try {
      const again = encodeState(decodeMsgpack(e.state), { maxStateBytes: 2 ** 31, maxStateDepth: 1024 }, true);
      if (again.length === e.state.length && again.every((b, i) => b === e.state![i])) return true;
    } catch {
      // refused below
    }
    this.settle(e, {
      error: new InvalidPutError('INVALID_FIELD', 'a put recorded as MessagePack cannot be sent as JSON unchanged', 'state', undefined, undefined, true, {
        put: this.refOf(e),
      }),
    });
    this.noteHole();
    return false;
  }

  private sendFrame(link: Link, batch: Live[]): boolean {
    const frame = this.format === 'msgpack' ? msgpackPutFrame(batch.map((e) => e.wire as Uint8Array)) : jsonPutFrame(batch.map((e) => e.wire as string));
    if (!this.sendRaw(link, frame)) return false;
    const t = this.now();
    for (const e of batch) {
      e.status = 'inflight';
      e.sentAt = t;
      link.inflight.set(e.seq, e);
      this.counters.sent++;
      if (e.sentBefore) this.counters.resent++;
      e.sentBefore = true;
    }
    link.frames.push(batch);
    return true;
  }

  // ---- answers ----------------------------------------------------------------------------

  private onResults(link: Link, results: unknown[]): void {
    for (const raw of results) {
      const r = asRecord(raw);
      const entry = typeof r.id === 'number' ? link.inflight.get(r.id) : undefined;
      // A result for a put that is not in flight (a duplicated frame) changes nothing.
      if (entry === undefined) continue;
      link.inflight.delete(r.id as number);
      this.onResult(entry, r);
    }
    this.afterAnswers(link);
  }

  private afterAnswers(link: Link): void {
    while (link.frames.length > 0 && link.frames[0]!.every((e) => link.inflight.get(e.seq) !== e)) link.frames.shift();
    this.dispatch({ type: 'answers', id: link.id, inflight: link.inflight.size });
  }

  private onResult(entry: Live, r: Record<string, unknown>): void {
    const d = decideOutcome(r, {
      put: this.refOf(entry),
      lastAcked: this.record.lastAcked,
      isOpen: (p) => this.entries.some((e) => e.status !== 'settling' && e.epoch === p.epoch && e.seq === p.seq),
    });
    switch (d.kind) {
      case 'resolve':
        this.acked(entry);
        this.settle(entry, { result: d.result });
        return;
      case 'reject':
        if (d.acked) this.acked(entry);
        this.settle(entry, { error: d.error });
        if (d.stop !== null) this.dispatch({ type: 'stop', error: d.stop });
        if (d.hole) this.noteHole();
        return;
      case 'requeue':
        if (d.rebase) this.dispatch({ type: 'hole' });
        entry.status = 'queued';
        return;
      case 'retry':
        this.retryLater(entry, d.error);
        return;
    }
  }

  private acked(entry: Live): void {
    this.record = { ...this.record, lastAcked: later(this.record.lastAcked, { epoch: entry.epoch, seq: entry.seq }) };
    this.dispatch({ type: 'acked' });
  }

  /** A put refused without consuming its seq leaves a hole, which contiguous mode never passes. */
  private noteHole(): void {
    if (this.contiguous) this.dispatch({ type: 'hole' });
  }

  private retryLater(entry: Live, error: TransientError): void {
    entry.status = 'queued';
    this.dispatch({ type: 'transient' });
    this.emit('transientError', error);
  }

  private onErrorMessage(link: Link, msg: Record<string, unknown>): void {
    const code = typeof msg.code === 'string' ? msg.code : 'UNKNOWN';
    const message = typeof msg.message === 'string' ? msg.message : code;
    const retryable = msg.retryable === true;
    if (this.phase.kind === 'authenticating' || this.phase.kind === 'reconciling') {
      // The answer to our hello.
      if (retryable) {
        this.dispatch({ type: 'lost', id: link.id, error: new ProtocolError(code, message, true), report: false });
        return;
      }
      const error =
        code === 'FORBIDDEN'
          ? new ForbiddenError(`the server refused the hello: ${message}`)
          : code === 'UNAUTHORIZED' || code === 'TOKEN_REVOKED'
            ? new AuthenticationError(code, `the server refused the token: ${message}; get a new token, retrying cannot succeed`, CLOSE_CODES[code])
            : new ProtocolError(code, `the server refused the hello: ${message}`, false);
      this.dispatch({ type: 'stop', error });
      return;
    }
    // The answer to the oldest put frame not yet answered, refused as a whole.
    const frame = link.frames.find((f) => f.some((e) => link.inflight.get(e.seq) === e));
    if (frame === undefined) return;
    for (const e of frame) link.inflight.delete(e.seq);
    if (code === 'TOO_MANY_PUTS' && typeof msg.max === 'number' && msg.max > 0) {
      this.limits = { ...this.limits, maxPutsPerFrame: msg.max };
      for (const e of frame) e.status = 'queued';
    } else if (retryable) {
      for (const e of frame) this.retryLater(e, new TransientError(code, message, { put: this.refOf(e) }));
    } else {
      for (const e of frame) this.settle(e, { error: new ProtocolError(code, message, false, { put: this.refOf(e) }) });
      this.noteHole();
    }
    this.afterAnswers(link);
  }

  // ---- stopping ---------------------------------------------------------------------------

  /**
   * The lifecycle's `fail-queued`, once stopped: puts in flight keep waiting for their own
   * answers; the rest reject with the reason.
   */
  private failQueued(): void {
    for (const e of this.entries) if (e.status === 'queued') this.settle(e, { error: this.stoppedError(this.refOf(e)) });
    const fresh = this.fresh;
    this.fresh = [];
    for (const e of fresh) e.waiter?.reject(this.stoppedError(this.refOf(e)));
    this.checkDrain();
  }

  /** The error for a put refused because the client stopped; `cause` is why it stopped. */
  private stoppedError(put: PutRef): SeqgateClientError {
    const why = this.stoppedBecause!;
    if (why instanceof FencedError) {
      return new FencedError(why.epoch, { cause: why, put, message: `client stopped: fenced by a writer at epoch ${why.epoch}` });
    }
    if (why instanceof WriterConflictError) return new WriterConflictError(why.message, { cause: why.cause ?? why, put });
    if (why instanceof ForbiddenError) return new ForbiddenError(why.message, { cause: why, put });
    if (why instanceof OutboxError) return new OutboxError(why.message, { cause: why, put });
    if (why instanceof AuthenticationError)
      return new AuthenticationError(why.code as 'UNAUTHORIZED' | 'TOKEN_REVOKED', why.message, why.closeCode, { cause: why, put });
    return new ProtocolError(why.code, `client stopped: ${why.message}`, false, { cause: why, put });
  }

  // ---- closing ----------------------------------------------------------------------------

  private checkDrain(): void {
    if (this.drainWaiters.length === 0 || !this.drained()) return;
    for (const w of this.drainWaiters.splice(0)) w();
  }

  private drained(): boolean {
    if (this.fresh.length > 0 || this.appending > 0) return false;
    return this.entries.length === 0;
  }

  private async shutdown(timeoutMs: number): Promise<CloseReport> {
    await this.ready.catch(() => undefined);
    if (!this.drained()) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, timeoutMs);
        this.drainWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.dispatch({ type: 'shutdown' });
    // Recordings and settlements already queued still run; whatever is unanswered after them is left.
    await this.io;
    await this.run(() => this.flushSeen()).catch(() => undefined);
    const left: Live[] = [...this.fresh, ...this.entries.filter((e) => e.status !== 'settling')];
    this.fresh = [];
    for (const e of left) {
      this.counters.rejected++;
      const error = new ClientClosedError(this.outbox.durable && e.appended, { put: this.refOf(e) });
      e.waiter?.reject(error);
      this.emit('result', { put: this.refOf(e), recovered: e.recovered, error });
    }
    this.entries = [];
    this.dispatch({ type: 'closed' });
    return { drained: left.length === 0, left: left.map((e) => this.refOf(e)) };
  }
}

function toOutboxEntry(e: Live): OutboxEntry {
  return { pos: e.pos, epoch: e.epoch, seq: e.seq, key: e.key, state: e.state, ifVersion: e.ifVersion, createdAt: e.createdAt };
}
