import { isDeepStrictEqual } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { DbChecker } from './support/db-checker.js';
import { mulberry32 } from './support/random.js';
import { ReconnectingSocket } from './support/reconnecting-socket.js';

/**
 * The guarantee under SIGKILL: nothing acked is lost, nothing is applied twice.
 *
 * Pipelined clients write to streams they own while the real server process is killed with
 * SIGKILL at random moments and restarted on the same file. Every client resends what was not
 * acked, exactly as it was, and also repeats a few puts that were acked, whose stored ack must
 * come back unchanged. At the end the database file itself is read and every ack a client ever
 * received, every head and every document is compared with what the clients know.
 */

const CONNECTIONS = 10;
const STREAMS_PER_CONNECTION = 5;
const KILLS = 10;
/**
 * Most unanswered puts one connection keeps in flight. Clients send as fast as the window allows,
 * so the server is always busy and a kill lands inside a commit, or between a commit and its acks,
 * rather than in idle time.
 */
const WINDOW = 32;
/** Each stream gets at least this many puts, however slow the machine. */
const MIN_PUTS_PER_STREAM = 40;
/**
 * Streams grow while kills are still to come, so the number of puts follows the machine's speed
 * (tens of thousands here); this bounds it on a fast machine. The server keeps this many acks per
 * stream (--ack-cap-per-stream), so every ack of the run stays stored and can be checked.
 */
const MAX_PUTS_PER_STREAM = 10_000;
const DOCS_PER_STREAM = 3;
const EPOCH = 1;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface WireAck {
  stream: string;
  epoch: number;
  seq: number;
  key: string;
  version: number;
  deleted: boolean;
  ifVersion?: number;
  committedAt: number;
}

interface PutSpec {
  readonly id: string;
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly state: { readonly stream: string; readonly seq: number; readonly pad: Buffer };
}

/** new: never sent before. retry: sent before, never acked. reack: acked before, sent again on purpose. */
type SendKind = 'new' | 'retry' | 'reack';

interface Sent {
  readonly stream: StreamLoad;
  readonly put: PutSpec;
  readonly kind: SendKind;
}

interface Received {
  readonly replay: boolean;
  readonly kind: SendKind;
  readonly ack: WireAck;
}

function keyOf(stream: string, seq: number): string {
  return `${stream}/d${seq % DOCS_PER_STREAM}`;
}

/** How many puts of seq 1..seq target the same document as seq: its version once seq applied. */
function versionAfter(seq: number): number {
  return Math.floor((seq - 1) / DOCS_PER_STREAM) + 1;
}

class StreamLoad {
  /** puts[seq - 1]; grows while the run generates load. */
  readonly puts: PutSpec[] = [];
  /** Every ack received for a seq, first one first. */
  readonly received = new Map<number, Received[]>();
  ackedThrough = 0;
  /** Sent on the current connection. */
  sentThrough = 0;
  everSentThrough = 0;

  constructor(
    readonly name: string,
    private readonly rng: () => number,
  ) {}

  generate(): PutSpec {
    const seq = this.puts.length + 1;
    const pad = Buffer.alloc(16 + Math.floor(this.rng() * 48));
    for (let i = 0; i < pad.length; i++) pad[i] = Math.floor(this.rng() * 256);
    const put: PutSpec = {
      id: `${this.name}#${seq}`,
      stream: this.name,
      epoch: EPOCH,
      seq,
      key: keyOf(this.name, seq),
      state: { stream: this.name, seq, pad },
    };
    this.puts.push(put);
    return put;
  }

  get done(): boolean {
    return this.ackedThrough === this.puts.length;
  }
}

class Harness {
  readonly rng: () => number;
  url = '';
  incarnation = '';
  /** True while kills are still to come: streams keep growing. */
  killing = true;
  private firstFailure: string | undefined;
  readonly failed: Promise<never>;
  private rejectFailed!: (err: Error) => void;
  readonly stats = { retriesReplayed: 0, retriesApplied: 0, reacks: 0, headsAheadOfAcks: 0, welcomes: 0 };

  constructor(readonly seed: number) {
    this.rng = mulberry32(seed);
    this.failed = new Promise<never>((_, reject) => {
      this.rejectFailed = reject;
    });
    this.failed.catch(() => undefined);
  }

  /** Records the first discrepancy; the test stops on it with this message. */
  fail(message: string): void {
    if (this.firstFailure !== undefined) return;
    this.firstFailure = message;
    this.rejectFailed(new Error(`${message} (seed ${this.seed})`));
  }

  get hasFailed(): boolean {
    return this.firstFailure !== undefined;
  }

  mayGenerate(s: StreamLoad): boolean {
    return s.puts.length < MAX_PUTS_PER_STREAM && (this.killing || s.puts.length < MIN_PUTS_PER_STREAM);
  }

  /** Waits for `predicate`, or fails the run after `timeoutMs` saying `what`. */
  async until(predicate: () => boolean, timeoutMs: number, what: () => string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (this.hasFailed) return this.failed;
      if (Date.now() > deadline) {
        this.fail(`timed out after ${timeoutMs} ms waiting for ${what()}`);
        return this.failed;
      }
      await sleep(5);
    }
  }

  /** Sleeps, but wakes with the failure if one is recorded meanwhile. */
  async pause(ms: number): Promise<void> {
    await Promise.race([sleep(ms), this.failed]);
  }
}

/** One pipelined connection that owns its streams and survives server deaths by reconnecting. */
class LoadClient {
  private readonly socket: ReconnectingSocket;
  private welcomed = false;
  private outstanding: Sent[] = [];
  private reacks: Sent[] = [];
  private rr = 0;

  constructor(
    readonly streams: StreamLoad[],
    private readonly h: Harness,
  ) {
    this.socket = new ReconnectingSocket(() => h.url, h.rng, {
      opened: () => this.streams.map((s) => s.name),
      welcome: (msg) => this.onWelcome(msg),
      results: (results) => this.onResults(results),
      problem: (description) => this.h.fail(description),
      lost: () => {
        this.welcomed = false;
        // Whatever was unanswered on this connection is resent, in order, on the next one.
        this.outstanding = [];
        this.reacks = [];
        for (const s of this.streams) s.sentThrough = s.ackedThrough;
      },
      mayConnect: () => !this.h.hasFailed,
    });
  }

  get isOpen(): boolean {
    return this.socket.isOpen;
  }

  get connections(): number {
    return this.socket.connections;
  }

  get isWelcomed(): boolean {
    return this.welcomed;
  }

  get inFlight(): number {
    return this.welcomed ? this.outstanding.length : 0;
  }

  get done(): boolean {
    return this.streams.every((s) => s.done && !this.h.mayGenerate(s)) && this.outstanding.length === 0;
  }

  start(): void {
    this.socket.start();
  }

  private onResults(results: Array<Record<string, unknown>>): void {
    for (const r of results) this.onResult(r);
    this.pump();
  }

  private onWelcome(msg: Record<string, unknown>): void {
    if (this.welcomed) return this.h.fail('a second welcome on one connection');
    if (msg.incarnation !== this.h.incarnation) {
      return this.h.fail(`welcome from incarnation ${String(msg.incarnation)}, expected ${this.h.incarnation}: the database was replaced`);
    }
    const heads = msg.heads as Array<{ stream: string; epoch: number; seq: number; prunedThrough: number }>;
    for (const s of this.streams) {
      const head = heads.find((x) => x.stream === s.name);
      if (head === undefined) return this.h.fail(`welcome lacks the head of ${s.name}`);
      const expectedEpoch = s.everSentThrough === 0 ? 0 : EPOCH;
      if (head.seq < s.ackedThrough || head.seq > s.everSentThrough || (head.seq > 0 && head.epoch !== expectedEpoch)) {
        return this.h.fail(
          `after restart ${s.name} has head (${head.epoch}, ${head.seq}) but ${s.ackedThrough} puts were acked ` +
            `and ${s.everSentThrough} ever sent: ${head.seq < s.ackedThrough ? 'an acked put was lost' : 'a put was invented'}`,
        );
      }
      if (head.seq > s.ackedThrough) this.h.stats.headsAheadOfAcks++;
    }
    this.h.stats.welcomes++;
    this.welcomed = true;
    this.socket.resetBackoff();
    // Repeat the newest acked put of each stream and one older one: both must be replayed from the stored ack.
    for (const s of this.streams) {
      if (s.ackedThrough === 0) continue;
      const seqs = new Set([s.ackedThrough]);
      if (s.ackedThrough > 1) seqs.add(1 + Math.floor(this.h.rng() * (s.ackedThrough - 1)));
      for (const seq of seqs) this.reacks.push({ stream: s, put: s.puts[seq - 1]!, kind: 'reack' });
    }
    this.pump();
  }

  private onResult(r: Record<string, unknown>): void {
    const sent = this.outstanding.shift();
    if (sent === undefined) return this.h.fail(`result for ${String(r.id)} with nothing outstanding`);
    const { put, kind, stream: s } = sent;
    const what = `${kind} ${put.id}`;
    if (r.id !== put.id) return this.h.fail(`results out of order: expected ${put.id}, got ${String(r.id)}`);
    if (r.outcome !== 'applied') {
      return this.h.fail(`${what} was answered ${String(r.outcome)}, not applied: ${JSON.stringify(r)}`);
    }
    const ack = r.ack as WireAck;
    const replay = r.replay;
    const expected = {
      stream: put.stream,
      epoch: put.epoch,
      seq: put.seq,
      key: put.key,
      version: versionAfter(put.seq),
      deleted: false,
    };
    const { committedAt, ...rest } = ack;
    if (!isDeepStrictEqual(rest, expected) || typeof committedAt !== 'number' || typeof replay !== 'boolean') {
      return this.h.fail(
        `${what} got ack ${JSON.stringify(r)}; expected ${JSON.stringify(expected)} ` + '(a wrong version means a put was applied twice or lost)',
      );
    }
    const list = s.received.get(put.seq) ?? [];
    if (kind === 'reack') {
      this.h.stats.reacks++;
      if (!replay) return this.h.fail(`${what}, acked before, was applied again (replay false): ${JSON.stringify(r)}`);
      const first = list[0]!.ack;
      if (!isDeepStrictEqual(ack, first)) {
        return this.h.fail(`${what} replayed ack ${JSON.stringify(ack)} differs from the ack first received ${JSON.stringify(first)}`);
      }
    } else {
      if (kind === 'new' && replay) return this.h.fail(`${what} was never sent before but came back as a replay: ${JSON.stringify(r)}`);
      if (kind === 'retry') {
        if (replay) this.h.stats.retriesReplayed++;
        else this.h.stats.retriesApplied++;
      }
      if (put.seq !== s.ackedThrough + 1) {
        return this.h.fail(`${what} acked while ${s.name} was acked through ${s.ackedThrough}: acks out of sequence`);
      }
      s.ackedThrough = put.seq;
    }
    list.push({ replay, kind, ack });
    s.received.set(put.seq, list);
  }

  private nextPut(): Sent | undefined {
    const reack = this.reacks.shift();
    if (reack !== undefined) return reack;
    for (let i = 0; i < this.streams.length; i++) {
      const s = this.streams[(this.rr + i) % this.streams.length]!;
      if (s.sentThrough === s.puts.length) {
        if (!this.h.mayGenerate(s)) continue;
        s.generate();
      }
      this.rr = (this.rr + i + 1) % this.streams.length;
      const seq = ++s.sentThrough;
      const kind: SendKind = seq <= s.everSentThrough ? 'retry' : 'new';
      s.everSentThrough = Math.max(s.everSentThrough, seq);
      return { stream: s, put: s.puts[seq - 1]!, kind };
    }
    return undefined;
  }

  /** Sends frames of 1 to 4 puts while the window allows. */
  pump(): void {
    if (!this.welcomed || !this.socket.isOpen || this.h.hasFailed) return;
    for (;;) {
      const want = 1 + Math.floor(this.h.rng() * 4);
      const frame: Sent[] = [];
      while (frame.length < want && this.outstanding.length + frame.length < WINDOW) {
        const next = this.nextPut();
        if (next === undefined) break;
        frame.push(next);
      }
      if (frame.length === 0) return;
      this.outstanding.push(...frame);
      this.socket.send({ type: 'put', puts: frame.map((f) => f.put) });
    }
  }

  /** Closes for good once everything is acked. */
  stop(): Promise<void> {
    return this.socket.stop();
  }
}

/** The file after a SIGKILL: sound, every stream's head at or past its last ack, that ack stored as received. */
function checkAfterCrash(path: string, streams: readonly StreamLoad[], h: Harness, k: number): void {
  const checker = new DbChecker(path);
  try {
    const integrity = checker.integrityCheck();
    if (!isDeepStrictEqual(integrity, ['ok'])) return h.fail(`after kill ${k}: integrity_check says ${integrity.join('; ')}`);
    for (const s of streams) {
      const head = checker.head(s.name);
      const seq = head?.seq ?? 0;
      if (seq < s.ackedThrough || seq > s.everSentThrough) {
        return h.fail(`after kill ${k}: ${s.name} has head ${seq} on disk but ${s.ackedThrough} puts were acked and ${s.everSentThrough} ever sent`);
      }
      if (s.ackedThrough === 0) continue;
      const received = s.received.get(s.ackedThrough)![0]!.ack;
      const row = checker.ack(s.name, EPOCH, s.ackedThrough);
      if (row === undefined || row.version !== received.version || row.key !== received.key || row.committedAt !== received.committedAt) {
        return h.fail(`after kill ${k}: stored ack of ${s.name}#${s.ackedThrough} is ${JSON.stringify(row)}, the client received ${JSON.stringify(received)}`);
      }
    }
  } finally {
    checker.close();
  }
}

/** Buffers and other Uint8Arrays compare by content only. */
function normalize(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex');
  if (Array.isArray(v)) return v.map(normalize);
  if (v instanceof Map) return Object.fromEntries([...v.entries()].map(([k, x]) => [String(k), normalize(x)]));
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x)]));
  return v;
}

let db: TempDb | undefined;
let child: ChildServer | undefined;
let clients: LoadClient[] = [];

afterAll(async () => {
  await Promise.all(clients.map((c) => c.stop()));
  await child?.dispose();
  db?.remove();
});

describe('seqgate killed with SIGKILL under pipelined load', () => {
  it('loses no acked put and applies none twice across repeated SIGKILLs and restarts on the same file', async () => {
    const started = Date.now();
    const seed = Number(process.env.SEQGATE_CRASH_SEED ?? Math.floor(Math.random() * 2 ** 31));
    const h = new Harness(seed);
    db = tempDb('seqgate-crash-');
    // A WAL bound of 1 MiB (the least allowed) rewinds the WAL many times a second under this load,
    // so kills also land while batches are held for the checkpoint worker and right after a rewind.
    child = new ChildServer({ dbPath: db.dbPath, args: ['--ack-cap-per-stream', String(MAX_PUTS_PER_STREAM), '--max-wal-bytes', String(1024 * 1024)] });
    const first = await child.start();
    h.url = first.url;
    h.incarnation = first.incarnation;

    const streamsByName = new Map<string, StreamLoad>();
    clients = [];
    for (let c = 0; c < CONNECTIONS; c++) {
      const owned: StreamLoad[] = [];
      for (let i = 0; i < STREAMS_PER_CONNECTION; i++) {
        const s = new StreamLoad(`c${c}-s${i}`, mulberry32(seed + 1 + c * STREAMS_PER_CONNECTION + i));
        owned.push(s);
        streamsByName.set(s.name, s);
      }
      clients.push(new LoadClient(owned, h));
    }
    const inFlight = (): number => clients.reduce((n, c) => n + c.inFlight, 0);
    for (const c of clients) c.start();

    const inFlightAtKill: number[] = [];
    // A kill lands in the window between a COMMIT and its acks reaching the client (what the
    // final check needs) most of the time, but on a loaded machine ten in a row have missed it:
    // then up to twenty more kills, rather than a run that tested less than it claims.
    for (let k = 1; k <= KILLS || (h.stats.headsAheadOfAcks === 0 && k <= 3 * KILLS); k++) {
      await h.until(
        () => inFlight() > 0,
        30_000,
        () => {
          const welcomed = clients.filter((c) => c.isWelcomed).length;
          const opened = clients.reduce((n, c) => n + c.connections, 0);
          return (
            `puts in flight before kill ${k}: ${welcomed}/${clients.length} clients welcomed, ` +
            `${opened} connections opened so far, server running: ${child!.running}` +
            (welcomed > 0 ? ' (the load ran out: raise MAX_PUTS_PER_STREAM)' : '') +
            `\n--- server stdout ---\n${child!.stdout.slice(-3000)}\n--- server stderr ---\n${child!.stderr.slice(-3000)}`
          );
        },
      );
      await h.pause(100 + h.rng() * 500);
      inFlightAtKill.push(inFlight());
      const exit = await child.kill('SIGKILL');
      if (exit.signal !== 'SIGKILL') h.fail(`kill ${k}: server ended with ${JSON.stringify(exit)} before SIGKILL reached it\n${child.stdout}`);
      // Read the file as the crash left it, before a restart's recovery, once every ack the dead
      // server managed to send has been taken in.
      await h.until(
        () => clients.every((c) => !c.isOpen),
        10_000,
        () => 'clients to see the dead server close their connections',
      );
      checkAfterCrash(db.dbPath, [...streamsByName.values()], h, k);
      const ready = await child.restart();
      if (ready.incarnation !== h.incarnation) h.fail(`restart ${k} reports incarnation ${ready.incarnation}, expected ${h.incarnation}`);
      h.url = ready.url;
    }
    h.killing = false;
    await h.until(
      () => clients.every((c) => c.done),
      90_000,
      () => {
        const left = [...streamsByName.values()].filter((s) => !s.done).map((s) => `${s.name} acked ${s.ackedThrough}/${s.puts.length}`);
        return `every put to be acked; still open: ${left.slice(0, 10).join(', ')}`;
      },
    );
    await Promise.all(clients.map((c) => c.stop()));
    const exit = await child.kill('SIGTERM');
    expect(exit, `SIGTERM after the run\n${child.stderr}`).toEqual({ code: 0, signal: null });

    const checker = new DbChecker(db.dbPath);
    try {
      expect(checker.integrityCheck(), 'PRAGMA integrity_check').toEqual(['ok']);
      expect(checker.incarnation(), 'incarnation in meta').toBe(h.incarnation);
      expect(checker.streams(), 'streams in the database').toEqual([...streamsByName.keys()].sort());
      const expectedKeys: string[] = [];
      for (const s of streamsByName.values()) {
        const n = s.puts.length;
        expect(n, `${s.name} got at least ${MIN_PUTS_PER_STREAM} puts`).toBeGreaterThanOrEqual(MIN_PUTS_PER_STREAM);
        expect(checker.head(s.name), `head of ${s.name}`).toMatchObject({ epoch: EPOCH, seq: n, prunedThrough: 0, ackCount: n });
        expect(checker.countAcks(s.name), `ack rows of ${s.name}`).toBe(n);
        for (const put of s.puts) {
          const got = s.received.get(put.seq) ?? [];
          if (got.length === 0) expect.fail(`no ack was ever received for ${put.id}`);
          const first = got[0]!.ack;
          for (const later of got.slice(1)) {
            if (!isDeepStrictEqual(later.ack, first)) expect(later.ack, `ack of ${put.id} across a replay`).toEqual(first);
          }
          const row = checker.ack(s.name, put.epoch, put.seq);
          const stored = row && {
            outcome: row.outcome,
            key: row.key,
            version: row.version,
            deleted: row.deleted,
            ifVersion: row.ifVersion,
            committedAt: row.committedAt,
          };
          const expected = { outcome: 'applied', key: first.key, version: first.version, deleted: false, ifVersion: null, committedAt: first.committedAt };
          // expect() only on a mismatch: it runs once per put, tens of thousands of times.
          if (!isDeepStrictEqual(stored, expected)) expect(stored, `stored ack of ${put.id}`).toEqual(expected);
        }
        for (let d = 0; d < DOCS_PER_STREAM; d++) {
          const targeting = s.puts.filter((p) => p.seq % DOCS_PER_STREAM === d);
          if (targeting.length === 0) continue;
          const key = keyOf(s.name, d);
          expectedKeys.push(key);
          const doc = checker.document(key);
          expect(doc, `document ${key}`).toBeDefined();
          expect({ version: doc!.version, deleted: doc!.deleted }, `document ${key}: one version per put that targeted it`).toEqual({
            version: targeting.length,
            deleted: false,
          });
          expect(normalize(doc!.state), `state of ${key} is that of its last put`).toEqual(normalize(targeting[targeting.length - 1]!.state));
        }
      }
      expect(checker.documentKeys(), 'documents in the database').toEqual(expectedKeys.sort());
    } finally {
      checker.close();
    }

    const totalPuts = [...streamsByName.values()].reduce((n, s) => n + s.puts.length, 0);
    console.log(
      `crash-kill9: seed ${seed}, ${totalPuts} puts over ${streamsByName.size} streams, ${inFlightAtKill.length} SIGKILLs, ` +
        `in flight at each kill [${inFlightAtKill.join(', ')}], stats ${JSON.stringify(h.stats)}, ${Date.now() - started} ms`,
    );
    // Without these the run would not have tested what it claims: kills while puts were in flight,
    // and retries of puts that had committed but whose acks were lost, the case a double apply hides in.
    expect(inFlightAtKill.filter((n) => n > 0).length, 'kills that hit puts in flight').toBeGreaterThanOrEqual(KILLS / 2);
    expect(h.stats.retriesReplayed, 'retries of puts committed before a kill but never acked').toBeGreaterThan(0);
  }, 240_000);
});
