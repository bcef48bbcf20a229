import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { mulberry32 } from '../support/random.js';
import { ReconnectingSocket } from '../support/reconnecting-socket.js';
import type { Value } from './canonical.js';

/**
 * The soak's clients and what they remember.
 *
 * Every put a client ever creates is a PutRecord. Its status is what the client knows about it:
 * `ok` (acked; the ack received first is kept), `failed` (a definite refusal that consumed
 * nothing: stale, sequence_reused) or `unknown` (sent, and the connection died before the answer).
 * Unknown puts are resent unchanged (same stream, epoch, seq, payload) on the next connection,
 * first and in their original order, until each is ok or failed.
 *
 * Design of the writes, so that the checker knows the expected final state exactly:
 * - One epoch (1). Owned streams have one writer; each put's seq is the writer's previous seq + 1,
 *   or more (a gap: the skipped seqs are never sent as writes). Keys belong to one stream:
 *   `<stream>/d<seq mod 3>`, so per key the applied puts are ordered by seq, and a key's document
 *   is the payload of the highest applied seq that wrote it (the head seq's key holds the head's
 *   payload). Some puts are deletes.
 * - The shared stream has two writers on two connections. Writer 0 takes even seqs, writer 1 odd
 *   seqs, each above the higher of its own last seq and the head it last heard of. Both race, so a
 *   put of either may be passed by the other's higher seq: that put is `stale` (failed, never
 *   applied), and its writer continues above the head the refusal reported. Which puts applied is
 *   therefore decided by the server; the clients learn it from the answers, and the checker
 *   verifies the database against exactly those answers.
 * - Faults the clients inject: `late` puts (a previously skipped seq, now below the acked head:
 *   must be stale), `reuse` puts (an acked seq with another payload: must be sequence_reused),
 *   deliberate duplicates of acked puts (must replay the ack first received, unchanged) and
 *   disconnects (abrupt or clean) at random moments.
 */

export const EPOCH = 1;
export const DOCS_PER_STREAM = 3;

export type Kind = 'new' | 'late' | 'reuse';
export type Status = 'unsent' | 'pending' | 'unknown' | 'ok' | 'failed';
type SendMode = 'first' | 'resend' | 'dup';

export interface WireAck {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
  readonly ifVersion?: number;
  readonly committedAt: number;
}

export function keyOf(stream: string, seq: number): string {
  return `${stream}/d${seq % DOCS_PER_STREAM}`;
}

export class PutRecord {
  status: Status = 'unsent';
  /** The first ack received, kept as its two free fields (the rest follows from the put) to keep records small. */
  ackVersion = -1;
  ackCommittedAt = 0;
  failure: string | undefined;
  sends = 0;
  /** Position of the first send among all of its client's sends; unknowns are resent in this order. */
  order = -1;

  constructor(
    readonly book: StreamBook,
    readonly seq: number,
    readonly kind: Kind,
    /** 0 for a write, > 0 for the other payloads of `late` and `reuse` puts. */
    readonly variant: number,
    readonly deleted: boolean,
  ) {}

  get stream(): string {
    return this.book.name;
  }

  get key(): string {
    return keyOf(this.book.name, this.seq);
  }

  /** The ack first received; its other fields were checked against the put when it arrived. */
  get ack(): WireAck | undefined {
    if (this.ackVersion < 0) return undefined;
    return {
      stream: this.book.name,
      epoch: EPOCH,
      seq: this.seq,
      key: this.key,
      version: this.ackVersion,
      deleted: this.deleted,
      committedAt: this.ackCommittedAt,
    };
  }

  get label(): string {
    return `${this.kind} put ${this.book.name}#${this.seq}${this.variant > 0 ? `/v${this.variant}` : ''}${this.deleted ? ' (delete)' : ''}`;
  }
}

/** Everything ever created for one stream, by all of its writers. */
export class StreamBook {
  readonly records: PutRecord[] = [];
  /** Highest seq acked to any writer. */
  maxOk = 0;
  /** Highest seq of a write ever sent. */
  maxSent = 0;
  /** Reuse puts created so far; numbers their payload variants. */
  reuses = 0;

  constructor(
    readonly name: string,
    readonly shared: boolean,
  ) {}

  add(rec: PutRecord): PutRecord {
    this.records.push(rec);
    return rec;
  }
}

/** The put's state, derived from the seed so that records stay small and a run can be replayed. */
export function stateOf(seed: number, rec: PutRecord): Value {
  const h = createHash('sha256').update(`${seed}|${rec.stream}|${rec.seq}|${rec.variant}`).digest();
  return { s: rec.stream, q: rec.seq, v: rec.variant, p: Buffer.from(h.subarray(0, 8 + (h[31]! % 25))) };
}

export interface WorkloadStats {
  frames: number;
  /** Puts on the wire, every kind of send counted. */
  putsSent: number;
  firstSends: number;
  /** Unknown puts sent again after a reconnect. */
  resends: number;
  resendsReplayed: number;
  resendsAppliedFresh: number;
  resendsRefused: number;
  /** Deliberate duplicates of acked puts. */
  duplicatesSent: number;
  duplicatesReplayed: number;
  lateSent: number;
  reusesSent: number;
  skippedSeqs: number;
  deletesCreated: number;
  /** Writes of the shared stream passed by the other writer. */
  sharedStale: number;
  unknownsCreated: number;
  clientDisconnects: number;
  connectionsOpened: number;
  welcomes: number;
  storageErrors: number;
}

export interface Probabilities {
  readonly gap: number;
  readonly duplicate: number;
  readonly late: number;
  readonly reuse: number;
  readonly delete: number;
}

export const DEFAULT_PROBABILITIES: Probabilities = { gap: 0.08, duplicate: 0.03, late: 0.01, reuse: 0.005, delete: 0.04 };

/** State shared by all clients of one run: seed, server address, stats, violations. */
export class Workload {
  readonly rng: () => number;
  url = '';
  incarnation = '';
  /** No new puts, no injected faults: only unknowns are resolved. */
  draining = false;
  acked = 0;
  failed = 0;
  readonly stats: WorkloadStats = {
    frames: 0,
    putsSent: 0,
    firstSends: 0,
    resends: 0,
    resendsReplayed: 0,
    resendsAppliedFresh: 0,
    resendsRefused: 0,
    duplicatesSent: 0,
    duplicatesReplayed: 0,
    lateSent: 0,
    reusesSent: 0,
    skippedSeqs: 0,
    deletesCreated: 0,
    sharedStale: 0,
    unknownsCreated: 0,
    clientDisconnects: 0,
    connectionsOpened: 0,
    welcomes: 0,
    storageErrors: 0,
  };
  readonly violations: string[] = [];
  violationCount = 0;

  constructor(
    readonly seed: number,
    readonly p: Probabilities = DEFAULT_PROBABILITIES,
    /** Mean time between a client's own disconnects. */
    readonly disconnectMeanMs = 1500,
  ) {
    this.rng = mulberry32(seed);
  }

  violation(message: string): void {
    this.violationCount++;
    if (this.violations.length < 200) this.violations.push(message);
  }
}

/** One writer's view of one stream. */
export class Lane {
  /** Last seq this writer assigned. */
  last = 0;
  /** Highest head this writer heard of (welcome, stale refusal). */
  knownHead = 0;
  /** Seqs this writer skipped and has not yet sent as late puts. */
  readonly skipped: number[] = [];
  /** This writer's acked writes, for duplicates and reuses. */
  readonly acked: PutRecord[] = [];
  /** book.maxOk when the last hello went out: the welcome's head may not be below it. */
  helloFloor = 0;

  constructor(
    readonly book: StreamBook,
    /** Shared-stream writers keep to seqs of one parity; owned streams use null. */
    readonly parity: 0 | 1 | null,
  ) {}

  nextSeq(w: Workload): number {
    const step = this.parity === null ? 1 : 2;
    const base = Math.max(this.last, this.knownHead);
    let seq = base + 1;
    if (this.parity !== null && seq % 2 !== this.parity) seq++;
    if (w.rng() < w.p.gap) seq += step * (1 + Math.floor(w.rng() * 3));
    if (this.parity === null) {
      for (let s = base + 1; s < seq; s++) this.skipped.push(s);
      w.stats.skippedSeqs += seq - base - 1;
    }
    this.last = seq;
    return seq;
  }
}

interface Send {
  readonly rec: PutRecord;
  readonly mode: SendMode;
  readonly id: string;
}

/** One connection's worth of writers: owns its lanes, pipelines up to `window` puts, reconnects after any death. */
export class SoakClient {
  private readonly socket: ReconnectingSocket;
  private welcomed = false;
  private outstanding: Send[] = [];
  private resend: PutRecord[] = [];
  private rr = 0;
  private sendCounter = 0;
  private disconnectTimer: NodeJS.Timeout | undefined;
  /**
   * Sends other than resends this client may still make; Infinity means unthrottled. A rate
   * limit refills every client alike, so that no client (nor the shared stream) starves.
   */
  tokens = Number.POSITIVE_INFINITY;

  constructor(
    readonly name: string,
    readonly lanes: readonly Lane[],
    private readonly w: Workload,
    private readonly window: number,
  ) {
    this.socket = new ReconnectingSocket(() => w.url, w.rng, {
      opened: () => {
        this.w.stats.connectionsOpened++;
        for (const lane of this.lanes) lane.helloFloor = lane.book.maxOk;
        return this.lanes.map((l) => l.book.name);
      },
      welcome: (msg) => this.onWelcome(msg),
      results: (results) => this.onResults(results),
      problem: (description) => this.w.violation(`${this.name}: ${description}`),
      lost: () => this.onLost(),
    });
  }

  get inFlight(): number {
    return this.welcomed ? this.outstanding.length : 0;
  }

  get isOpen(): boolean {
    return this.socket.isOpen;
  }

  /** Nothing of this client is unanswered: every put it created is ok or failed. */
  get settled(): boolean {
    return this.welcomed && this.resend.length === 0 && this.outstanding.length === 0;
  }

  start(): void {
    this.socket.start();
  }

  private onLost(): void {
    this.welcomed = false;
    if (this.disconnectTimer !== undefined) clearTimeout(this.disconnectTimer);
    this.disconnectTimer = undefined;
    for (const s of this.outstanding) {
      if (s.mode === 'dup' || s.rec.status !== 'pending') continue;
      s.rec.status = 'unknown';
      this.resend.push(s.rec);
      this.w.stats.unknownsCreated++;
    }
    this.outstanding = [];
    this.resend.sort((a, b) => a.order - b.order);
  }

  private onResults(results: Array<Record<string, unknown>>): void {
    for (const r of results) this.onResult(r);
    this.pump();
  }

  private onWelcome(msg: Record<string, unknown>): void {
    if (this.welcomed) return this.w.violation(`${this.name}: a second welcome on one connection`);
    if (msg.incarnation !== this.w.incarnation) {
      this.w.violation(`${this.name}: welcome from incarnation ${String(msg.incarnation)}, expected ${this.w.incarnation}`);
    }
    const heads = msg.heads as Array<{ stream: string; epoch: number; seq: number }>;
    for (const lane of this.lanes) {
      const book = lane.book;
      const head = heads.find((x) => x.stream === book.name);
      if (head === undefined) {
        this.w.violation(`${this.name}: welcome lacks the head of ${book.name}`);
        continue;
      }
      if (head.seq < lane.helloFloor) {
        this.w.violation(`${book.name}: welcome head ${head.seq} is below ${lane.helloFloor}, acked before the hello: an acked put was lost`);
      }
      if (head.seq > book.maxSent) this.w.violation(`${book.name}: welcome head ${head.seq} is beyond every write sent (${book.maxSent})`);
      if (head.seq > 0 && head.epoch !== EPOCH) this.w.violation(`${book.name}: welcome head epoch ${head.epoch}, only ${EPOCH} was used`);
      lane.knownHead = Math.max(lane.knownHead, head.seq);
    }
    this.w.stats.welcomes++;
    this.welcomed = true;
    this.socket.resetBackoff();
    if (!this.w.draining && this.w.disconnectMeanMs > 0) {
      const delay = this.w.disconnectMeanMs * (0.2 + 1.6 * this.w.rng());
      const abrupt = this.w.rng() < 0.5;
      this.disconnectTimer = setTimeout(() => this.disconnect(abrupt), delay);
    }
    this.pump();
  }

  /** A client-side fault: drop the connection with puts in flight, as a flaky network or a killed app would. */
  private disconnect(abrupt: boolean): void {
    this.disconnectTimer = undefined;
    if (!this.socket.isOpen || this.w.draining) return;
    this.w.stats.clientDisconnects++;
    this.socket.disconnect(abrupt);
  }

  private onResult(r: Record<string, unknown>): void {
    const s = this.outstanding.shift();
    if (s === undefined) return this.w.violation(`${this.name}: result ${String(r.id)} with nothing outstanding`);
    const { rec, mode } = s;
    if (r.id !== s.id) return this.w.violation(`${this.name}: results out of order: expected ${s.id}, got ${String(r.id)}`);
    const outcome = r.outcome;
    if (outcome === 'applied') return this.onApplied(s, r);
    if (outcome === 'stale' || outcome === 'sequence_reused') return this.onRefused(s, outcome, r);
    const error = r.error as { code?: string; retryable?: boolean } | undefined;
    if (outcome === 'error' && error?.retryable === true && mode !== 'dup') {
      // Nothing was consumed (§8.3): the put goes back to be sent again.
      this.w.stats.storageErrors++;
      rec.status = 'unknown';
      this.resend.push(rec);
      this.resend.sort((a, b) => a.order - b.order);
      return;
    }
    this.w.violation(`${rec.label} (${mode}) answered ${JSON.stringify(r).slice(0, 300)}`);
  }

  private onApplied(s: Send, r: Record<string, unknown>): void {
    const { rec, mode } = s;
    const ack = r.ack as WireAck;
    const replay = r.replay;
    const what = `${rec.label} (${mode})`;
    if (rec.kind !== 'new') this.w.violation(`${what} was applied; it should have been refused: ${JSON.stringify(r)}`);
    const { version, committedAt, ...rest } = ack;
    const expected = { stream: rec.stream, epoch: EPOCH, seq: rec.seq, key: rec.key, deleted: rec.deleted };
    if (!isDeepStrictEqual(rest, expected) || !Number.isSafeInteger(version) || typeof committedAt !== 'number' || typeof replay !== 'boolean') {
      this.w.violation(`${what} got ack ${JSON.stringify(r)}; expected fields ${JSON.stringify(expected)}`);
    }
    if (rec.status === 'ok') {
      if (mode === 'dup') this.w.stats.duplicatesReplayed += replay === true ? 1 : 0;
      if (replay !== true) this.w.violation(`${what}, acked before, was applied again (replay false): ${JSON.stringify(r)}`);
      if (!isDeepStrictEqual(ack, rec.ack)) {
        this.w.violation(`${what}: replayed ack ${JSON.stringify(ack)} differs from the ack first received ${JSON.stringify(rec.ack)}`);
      }
      return;
    }
    if (rec.status === 'failed') this.w.violation(`${what} was refused (${rec.failure}) before and is applied now: ${JSON.stringify(r)}`);
    if (mode === 'first' && replay !== false) this.w.violation(`${what} was never sent before but came back as a replay: ${JSON.stringify(r)}`);
    if (mode === 'resend') {
      if (replay === true) this.w.stats.resendsReplayed++;
      else this.w.stats.resendsAppliedFresh++;
    }
    rec.status = 'ok';
    rec.ackVersion = version;
    rec.ackCommittedAt = committedAt;
    rec.book.maxOk = Math.max(rec.book.maxOk, rec.seq);
    this.laneOf(rec).acked.push(rec);
    this.w.acked++;
  }

  private onRefused(s: Send, outcome: 'stale' | 'sequence_reused', r: Record<string, unknown>): void {
    const { rec, mode } = s;
    const what = `${rec.label} (${mode})`;
    if (rec.status === 'ok') {
      return this.w.violation(`${what} was acked with ${JSON.stringify(rec.ack)} and is now answered ${outcome}: its ack is gone`);
    }
    const expected = rec.kind === 'late' ? 'stale' : rec.kind === 'reuse' ? 'sequence_reused' : rec.book.shared ? 'stale' : 'applied';
    if (outcome !== expected) this.w.violation(`${what} answered ${outcome}, expected ${expected}: ${JSON.stringify(r).slice(0, 300)}`);
    if (mode === 'resend') this.w.stats.resendsRefused++;
    if (rec.status !== 'failed') {
      rec.status = 'failed';
      rec.failure = outcome;
      this.w.failed++;
      if (rec.kind === 'new' && rec.book.shared) this.w.stats.sharedStale++;
    }
    if (outcome === 'stale') {
      const head = (r.error as { head?: { seq?: number } } | undefined)?.head;
      if (typeof head?.seq !== 'number' || head.seq < rec.seq) {
        this.w.violation(`${what}: stale with head ${JSON.stringify(head)}, not at or above the put`);
      } else {
        const lane = this.laneOf(rec);
        lane.knownHead = Math.max(lane.knownHead, head.seq);
      }
    }
  }

  private laneOf(rec: PutRecord): Lane {
    return this.lanes.find((l) => l.book === rec.book)!;
  }

  /** The next put to send: unknowns first, then sometimes an injected fault, else a new write. */
  private next(): Send | undefined {
    const id = `${this.name}.${this.sendCounter}`;
    const unknown = this.resend.shift();
    if (unknown !== undefined) return { rec: unknown, mode: 'resend', id };
    const w = this.w;
    if (w.draining || this.tokens < 1) return undefined;
    this.tokens--;
    const lane = this.lanes[this.rr++ % this.lanes.length]!;
    const roll = w.rng();
    let threshold = w.p.duplicate;
    if (roll < threshold && lane.acked.length > 0) {
      // Mostly recent puts (the ones a real retry would repeat), sometimes an old one.
      const n = lane.acked.length;
      const i = w.rng() < 0.7 ? n - 1 - Math.floor(w.rng() * Math.min(n, 8)) : Math.floor(w.rng() * n);
      w.stats.duplicatesSent++;
      return { rec: lane.acked[i]!, mode: 'dup', id };
    }
    threshold += w.p.late;
    if (roll < threshold && lane.skipped.length > 0 && lane.skipped[0]! < lane.book.maxOk) {
      const seq = lane.skipped.shift()!;
      w.stats.lateSent++;
      return { rec: lane.book.add(new PutRecord(lane.book, seq, 'late', 1, false)), mode: 'first', id };
    }
    threshold += w.p.reuse;
    if (roll < threshold && lane.acked.length > 0) {
      const original = lane.acked[Math.floor(w.rng() * lane.acked.length)]!;
      const variant = 2 + lane.book.reuses++;
      w.stats.reusesSent++;
      return { rec: lane.book.add(new PutRecord(lane.book, original.seq, 'reuse', variant, false)), mode: 'first', id };
    }
    const seq = lane.nextSeq(w);
    const deleted = w.rng() < w.p.delete;
    if (deleted) w.stats.deletesCreated++;
    lane.book.maxSent = Math.max(lane.book.maxSent, seq);
    return { rec: lane.book.add(new PutRecord(lane.book, seq, 'new', 0, deleted)), mode: 'first', id };
  }

  private wire(s: Send): Record<string, unknown> {
    const { rec } = s;
    const base = { id: s.id, stream: rec.stream, epoch: EPOCH, seq: rec.seq, key: rec.key };
    return rec.deleted ? { ...base, delete: true } : { ...base, state: stateOf(this.w.seed, rec) };
  }

  /** Sends frames of 1 to 8 puts while the window allows. */
  pump(): void {
    if (!this.welcomed || !this.socket.isOpen) return;
    for (;;) {
      const want = 1 + Math.floor(this.w.rng() * 8);
      const frame: Send[] = [];
      while (frame.length < want && this.outstanding.length + frame.length < this.window) {
        const next = this.next();
        if (next === undefined) break;
        this.sendCounter++;
        const { rec, mode } = next;
        if (mode !== 'dup') {
          rec.status = 'pending';
          if (rec.order < 0) rec.order = this.sendCounter;
        }
        rec.sends++;
        if (mode === 'first') this.w.stats.firstSends++;
        if (mode === 'resend') this.w.stats.resends++;
        frame.push(next);
      }
      if (frame.length === 0) return;
      this.outstanding.push(...frame);
      this.w.stats.frames++;
      this.w.stats.putsSent += frame.length;
      this.socket.send({ type: 'put', puts: frame.map((s) => this.wire(s)) });
    }
  }

  /** Wakes the client after the workload switched to draining. */
  nudge(): void {
    if (this.disconnectTimer !== undefined) clearTimeout(this.disconnectTimer);
    this.disconnectTimer = undefined;
    this.pump();
  }

  stop(): Promise<void> {
    if (this.disconnectTimer !== undefined) clearTimeout(this.disconnectTimer);
    return this.socket.stop();
  }
}
