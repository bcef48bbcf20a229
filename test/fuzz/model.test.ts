import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.js';
import { parsePut } from '../../src/protocol/messages.js';
import { SeqgateServer } from '../../src/server/websocket-server.js';
import { DEFAULT_TENANT, type PutResult } from '../../src/store/store.js';
import { DbChecker } from '../support/db-checker.js';
import { createTestDatabase, PgChecker, postgresAvailable, type TestDatabase } from '../support/postgres.js';
import { ReferenceModel } from '../support/reference-model.js';
import { bigintSafe, TestClient, type Msg } from '../support/test-client.js';
import { runProperty } from './harness.js';

/**
 * Model-based test of the gate: random sequences of commands -- new puts (some skipping seqs),
 * duplicates of earlier puts, stale seqs, a seq reused with another payload, epoch changes up and
 * down, puts pipelined or packed into one frame, puts over a second connection, reconnects (with
 * either subprotocol) and restarts of the server on the same database file -- run against the real
 * server and, put by put, against ReferenceModel (test/support/reference-model.ts, an independent
 * reading of PROTOCOL.md's gate). Every result must match: outcome, replay flag, the whole ack
 * (the model's clock is pinned to the server's committedAt, so replays must carry the original
 * commit time), and every error detail. Heads are compared after each reconnect and restart, and
 * at the end of each sequence the database file (raw SQL) must hold exactly the model's heads,
 * acks (with fingerprints, after cap eviction) and documents. The whole suite runs once on the
 * SQLite store and once on the PostgreSQL store (a database created for the run, then dropped).
 */

const PG = await postgresAvailable();

const ACK_CAP = 4;
/** Chunked eviction: a stream holds up to ACK_CAP + ACK_SLACK acks, then drops back to ACK_CAP. */
const ACK_SLACK = 2;
const STREAMS = 3;
const KEYS = 3;

type Body =
  { readonly kind: 'state'; readonly value: unknown; readonly ifVersion: number | null } | { readonly kind: 'delete'; readonly ifVersion: number | null };

type PutCmd =
  | { readonly c: 'new'; readonly stream: number; readonly key: number; readonly skip: number; readonly body: Body }
  | { readonly c: 'dup'; readonly pick: number }
  | { readonly c: 'stale'; readonly stream: number; readonly key: number; readonly back: number; readonly body: Body }
  | { readonly c: 'reuse'; readonly pick: number; readonly body: Body };

type Cmd =
  | PutCmd
  | { readonly c: 'epoch'; readonly stream: number; readonly delta: number }
  | { readonly c: 'pipeline'; readonly cmds: readonly PutCmd[] }
  | { readonly c: 'frame'; readonly cmds: readonly PutCmd[] }
  | { readonly c: 'other'; readonly cmd: PutCmd }
  | { readonly c: 'reconnect'; readonly format: 'msgpack' | 'json' }
  | { readonly c: 'restart' };

const stateArb = fc.oneof(
  fc.integer({ min: 0, max: 5 }),
  fc.constantFrom('a', 'b', ''),
  fc.constant(null),
  fc.record({ n: fc.integer({ min: 0, max: 3 }) }),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.array(fc.integer({ min: -2, max: 2 }), { maxLength: 3 }),
);
const bodyArb: fc.Arbitrary<Body> = fc.oneof(
  { weight: 6, arbitrary: stateArb.map((value) => ({ kind: 'state' as const, value, ifVersion: null })) },
  { weight: 2, arbitrary: fc.constant({ kind: 'delete' as const, ifVersion: null }) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.boolean(), stateArb, fc.integer({ min: 0, max: 4 }))
      .map(([del, value, ifVersion]) => (del ? { kind: 'delete' as const, ifVersion } : { kind: 'state' as const, value, ifVersion })),
  },
);
const putCmdArb: fc.Arbitrary<PutCmd> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      c: fc.constant('new' as const),
      stream: fc.nat(STREAMS - 1),
      key: fc.nat(KEYS - 1),
      skip: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) }),
      body: bodyArb,
    }),
  },
  { weight: 3, arbitrary: fc.record({ c: fc.constant('dup' as const), pick: fc.nat() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      c: fc.constant('stale' as const),
      stream: fc.nat(STREAMS - 1),
      key: fc.nat(KEYS - 1),
      back: fc.integer({ min: 0, max: 6 }),
      body: bodyArb,
    }),
  },
  { weight: 2, arbitrary: fc.record({ c: fc.constant('reuse' as const), pick: fc.nat(), body: bodyArb }) },
);
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 12, arbitrary: putCmdArb },
  { weight: 1, arbitrary: fc.record({ c: fc.constant('epoch' as const), stream: fc.nat(STREAMS - 1), delta: fc.constantFrom(-2, -1, 1, 2) }) },
  { weight: 1, arbitrary: fc.record({ c: fc.constant('pipeline' as const), cmds: fc.array(putCmdArb, { minLength: 2, maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ c: fc.constant('frame' as const), cmds: fc.array(putCmdArb, { minLength: 2, maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ c: fc.constant('other' as const), cmd: putCmdArb }) },
  { weight: 1, arbitrary: fc.record({ c: fc.constant('reconnect' as const), format: fc.constantFrom('msgpack' as const, 'json' as const) }) },
  { weight: 1, arbitrary: fc.constant({ c: 'restart' as const }) },
);

// ---------------------------------------------------------------------------------------------

type RawPut = Record<string, unknown>;

interface Run {
  readonly prefix: string;
  readonly writers: Array<{ epoch: number; next: number }>;
  readonly history: RawPut[];
  readonly model: ReferenceModel;
  readonly clock: { now: number };
  readonly log: string[];
  main: TestClient;
  other: TestClient;
  mainFormat: 'msgpack' | 'json';
}

class Harness {
  server!: SeqgateServer;
  readonly dir = mkdtempSync(join(tmpdir(), 'seqgate-model-'));
  readonly dbPath = join(this.dir, 'seqgate.db');
  private ids = 0;
  private runs = 0;
  readonly counters: Record<string, number> = {};

  private pg: TestDatabase | undefined;

  constructor(readonly config: Partial<Config>) {}

  async start(): Promise<void> {
    if (this.config.store === 'postgres' && this.pg === undefined) {
      this.pg = await createTestDatabase('seqgate_model', { fastCommits: true });
      (this.config as { databaseUrl?: string }).databaseUrl = this.pg.url;
    }
    this.server = await SeqgateServer.start(
      { port: 0, dbPath: this.dbPath, synchronous: 'normal', ackCapPerStream: ACK_CAP, ackCapSlack: ACK_SLACK, pruneIntervalMs: 3_600_000, ...this.config },
      { logger: pino({ level: 'silent' }) },
    );
  }

  async dispose(): Promise<void> {
    await this.server?.close();
    rmSync(this.dir, { recursive: true, force: true });
    await this.pg?.drop();
  }

  bump(name: string, by = 1): void {
    this.counters[name] = (this.counters[name] ?? 0) + by;
  }

  private connect(format: 'msgpack' | 'json'): Promise<TestClient> {
    return TestClient.connect(this.server.url, format);
  }

  /** Runs one command sequence on fresh stream and key names; throws on the first mismatch. */
  async run(cmds: readonly Cmd[]): Promise<void> {
    const prefix = `r${++this.runs}-`;
    const run: Run = {
      prefix,
      writers: Array.from({ length: STREAMS }, () => ({ epoch: 1, next: 1 })),
      history: [],
      model: new ReferenceModel({ contiguous: this.config.contiguous ?? false, ackCapPerStream: ACK_CAP, ackCapSlack: ACK_SLACK, now: () => run.clock.now }),
      clock: { now: 0 },
      log: [],
      main: await this.connect('msgpack'),
      other: await this.connect('msgpack'),
      mainFormat: 'msgpack',
    };
    try {
      for (const cmd of cmds) await this.step(run, cmd);
      await this.compareHeads(run, 'at the end');
      await this.compareFile(run);
    } finally {
      run.main.ws.terminate();
      run.other.ws.terminate();
    }
  }

  private streamName(run: Run, i: number): string {
    return `${run.prefix}s${i}`;
  }

  private keyName(run: Run, i: number): string {
    return `${run.prefix}k${i}`;
  }

  /** Turns a put command into the put to send, or null when it has nothing to refer to. */
  private resolve(run: Run, cmd: PutCmd): RawPut | null {
    const bodyFields = (b: Body): RawPut => ({
      ...(b.kind === 'state' ? { state: b.value } : { delete: true }),
      ...(b.ifVersion !== null ? { ifVersion: b.ifVersion } : {}),
    });
    switch (cmd.c) {
      case 'new': {
        const w = run.writers[cmd.stream]!;
        const seq = w.next + cmd.skip;
        w.next = seq + 1;
        return { stream: this.streamName(run, cmd.stream), epoch: w.epoch, seq, key: this.keyName(run, cmd.key), ...bodyFields(cmd.body) };
      }
      case 'dup':
        return run.history.length === 0 ? null : { ...run.history[cmd.pick % run.history.length]! };
      case 'stale': {
        const w = run.writers[cmd.stream]!;
        const seq = Math.max(1, w.next - 1 - cmd.back);
        return { stream: this.streamName(run, cmd.stream), epoch: w.epoch, seq, key: this.keyName(run, cmd.key), ...bodyFields(cmd.body) };
      }
      case 'reuse': {
        if (run.history.length === 0) return null;
        const old = run.history[cmd.pick % run.history.length]!;
        return { stream: old.stream, epoch: old.epoch, seq: old.seq, key: old.key, ...bodyFields(cmd.body) };
      }
    }
  }

  private async step(run: Run, cmd: Cmd): Promise<void> {
    switch (cmd.c) {
      case 'epoch': {
        const w = run.writers[cmd.stream]!;
        w.epoch = Math.max(0, w.epoch + cmd.delta);
        w.next = 1;
        run.log.push(`epoch of s${cmd.stream} -> ${w.epoch}`);
        return;
      }
      case 'reconnect': {
        run.main.ws.terminate();
        run.main = await this.connect(cmd.format);
        run.mainFormat = cmd.format;
        run.log.push(`reconnect (${cmd.format})`);
        this.bump('reconnects');
        await this.compareHeads(run, `after reconnecting with ${cmd.format}`);
        return;
      }
      case 'restart': {
        run.main.ws.terminate();
        run.other.ws.terminate();
        await this.server.close();
        await this.start();
        run.main = await this.connect(run.mainFormat);
        run.other = await this.connect('msgpack');
        run.log.push('restart');
        this.bump('restarts');
        await this.compareHeads(run, 'after a restart');
        return;
      }
      case 'other': {
        const put = this.resolve(run, cmd.cmd);
        if (put !== null) await this.exchange(run, run.other, [[put]], 'other connection');
        return;
      }
      case 'pipeline':
      case 'frame': {
        const puts = cmd.cmds.map((c) => this.resolve(run, c)).filter((p): p is RawPut => p !== null);
        if (puts.length === 0) return;
        await this.exchange(run, run.main, cmd.c === 'frame' ? [puts] : puts.map((p) => [p]), cmd.c);
        return;
      }
      default: {
        const put = this.resolve(run, cmd);
        if (put !== null) await this.exchange(run, run.main, [[put]], cmd.c);
      }
    }
  }

  /** Sends the frames without waiting in between, then compares each put's result with the model. */
  private async exchange(run: Run, client: TestClient, frames: RawPut[][], how: string): Promise<void> {
    const sent: Array<{ id: number; put: RawPut }> = [];
    for (const frame of frames) {
      const puts = frame.map((p) => ({ id: ++this.ids, ...p }));
      for (const p of puts) sent.push({ id: p.id, put: p });
      client.send({ type: 'put', puts });
      run.history.push(...frame);
    }
    const ids = new Set(sent.map((s) => s.id));
    await client.waitFor(() => client.results().filter((r: Msg) => ids.has(r.id)).length === sent.length, 15_000);
    const byId = new Map<number, Msg>(
      client
        .results()
        .filter((r: Msg) => ids.has(r.id))
        .map((r: Msg) => [r.id, r]),
    );

    for (const { id, put } of sent) {
      const actual = byId.get(id)!;
      const parsed = parsePut(put, this.server.limits, DEFAULT_TENANT);
      if (!parsed.ok) throw new Error(`the test generated an invalid put: ${JSON.stringify(parsed.result)}`);
      if (actual.ack !== undefined) run.clock.now = actual.ack.committedAt;
      const [expected] = await run.model.apply([parsed.put]);
      const want = projectModel(expected!);
      const got = projectServer(actual);
      run.log.push(`${how} ${JSON.stringify(put)} -> ${JSON.stringify(got, bigintSafe)}`);
      this.bump('putsCompared');
      this.bump(`outcome:${got.outcome}${got.replay ? ':replay' : ''}`);
      if (!isDeepStrictEqual(got, want)) {
        throw new Error(
          `result differs from the model for ${JSON.stringify(put)} (${how}, format ${client.format})\n` +
            `server: ${JSON.stringify(got, bigintSafe)}\nmodel:  ${JSON.stringify(want, bigintSafe)}\n` +
            `steps so far:\n  ${run.log.slice(-40).join('\n  ')}`,
        );
      }
    }
  }

  private async compareHeads(run: Run, when: string): Promise<void> {
    const streams = Array.from({ length: STREAMS }, (_, i) => this.streamName(run, i));
    const before = run.main.messages.length;
    run.main.send({ type: 'hello', streams });
    await run.main.waitFor(() => run.main.messages.slice(before).some((m: Msg) => m.type === 'welcome'), 15_000);
    const welcome = run.main.messages.slice(before).find((m: Msg) => m.type === 'welcome');
    const expected = await run.model.heads(DEFAULT_TENANT, streams);
    if (!isDeepStrictEqual(welcome.heads, expected)) {
      throw new Error(
        `heads ${when} differ from the model\nserver: ${JSON.stringify(welcome.heads)}\nmodel:  ${JSON.stringify(expected)}\n` +
          `steps so far:\n  ${run.log.slice(-40).join('\n  ')}`,
      );
    }
  }

  /** The file, read with raw SQL, holds exactly the model's heads, acks and documents. */
  private async compareFile(run: Run): Promise<void> {
    const sqlite = this.pg === undefined ? new DbChecker(this.dbPath) : undefined;
    const db = sqlite ?? new PgChecker(this.pg!);
    try {
      const problems: string[] = [];
      for (let i = 0; i < STREAMS; i++) {
        const name = this.streamName(run, i);
        const s = run.model.streams.get(`${DEFAULT_TENANT}/${name}`);
        const head = await db.head(name);
        if (s === undefined) {
          if (head !== undefined) problems.push(`${name}: stored head ${JSON.stringify(head)}, model has none`);
          continue;
        }
        const want = { epoch: s.epoch, seq: s.seq, prunedThrough: s.prunedThrough, ackCount: s.acks.length };
        if (head === undefined || !isDeepStrictEqual({ epoch: head.epoch, seq: head.seq, prunedThrough: head.prunedThrough, ackCount: head.ackCount }, want)) {
          problems.push(`${name}: head ${JSON.stringify(head)}, model ${JSON.stringify(want)}`);
        }
        const count = await db.countAcks(name);
        if (count !== s.acks.length) problems.push(`${name}: ${count} ack rows, model ${s.acks.length}`);
        for (const a of s.acks) {
          const stored = await db.ack(name, a.epoch, a.seq);
          const want = {
            outcome: a.ack.outcome,
            key: a.ack.key,
            version: a.ack.version,
            deleted: a.ack.deleted,
            ifVersion: a.ack.ifVersion ?? null,
            committedAt: a.ack.committedAt,
            fingerprint: a.fingerprint,
          };
          const got = stored && { ...stored, fingerprint: stored.fingerprint.toString('hex') };
          if (!isDeepStrictEqual(got, want)) problems.push(`${name} (${a.epoch}, ${a.seq}): stored ack ${JSON.stringify(got)}, model ${JSON.stringify(want)}`);
        }
      }
      for (let i = 0; i < KEYS; i++) {
        const key = this.keyName(run, i);
        const d = run.model.docs.get(`${DEFAULT_TENANT}/${key}`);
        const stored = await db.document(key);
        const got = stored && { version: stored.version, deleted: stored.deleted, state: stored.stateBytes?.toString('hex') ?? null };
        const want = d && { version: d.version, deleted: d.deleted, state: d.state?.toString('hex') ?? null };
        if (!isDeepStrictEqual(got, want)) problems.push(`${key}: stored ${JSON.stringify(got)}, model ${JSON.stringify(want)}`);
      }
      if (problems.length > 0)
        throw new Error(`the database differs from the model:\n  ${problems.join('\n  ')}\nsteps:\n  ${run.log.slice(-40).join('\n  ')}`);
    } finally {
      sqlite?.close();
    }
  }
}

/** The comparable part of a result as the server sent it (messages are for humans). */
function projectServer(r: Msg): Record<string, unknown> {
  if (r.ack !== undefined) return { outcome: r.outcome, replay: r.replay, ack: { ...r.ack } };
  const { message: _message, ...error } = r.error;
  return { outcome: r.outcome, error };
}

/** The result the model decided, in the wire shape of PROTOCOL.md §3.4. */
function projectModel(m: PutResult): Record<string, unknown> {
  if (m.kind === 'ack') {
    const a = m.ack;
    return {
      outcome: a.outcome,
      replay: m.replay,
      ack: {
        stream: a.stream,
        epoch: a.epoch,
        seq: a.seq,
        key: a.key,
        version: a.version,
        deleted: a.deleted,
        ...(a.ifVersion !== undefined ? { ifVersion: a.ifVersion } : {}),
        committedAt: a.committedAt,
      },
    };
  }
  switch (m.outcome) {
    case 'sequence_reused':
      return { outcome: m.outcome, error: { code: m.code, retryable: false } };
    case 'fenced':
      return { outcome: m.outcome, error: { code: m.code, retryable: false, epoch: m.epoch } };
    case 'stale':
    case 'expired':
      return {
        outcome: m.outcome,
        error: { code: m.code, retryable: false, head: { epoch: m.head.epoch, seq: m.head.seq }, prunedThrough: m.head.prunedThrough },
      };
    case 'gap':
      return { outcome: m.outcome, error: { code: m.code, retryable: false, expected: m.expected } };
    case 'error':
      return { outcome: m.outcome, error: { code: m.code, retryable: true } };
  }
}

// ---------------------------------------------------------------------------------------------

describe.each([
  // 120 and 60 keep `npm test` near its 10 minutes on a slow 2-core machine; SEQGATE_FUZZ_RUNS_FACTOR
  // multiplies them for a longer search (test/fuzz/harness.ts).
  { mode: 'default', store: 'sqlite' as const, contiguous: false, numRuns: 120 },
  { mode: 'contiguous', store: 'sqlite' as const, contiguous: true, numRuns: 60 },
  // Fewer runs on PostgreSQL: each command is a round trip to a database server, not a file.
  ...(PG
    ? [
        { mode: 'default, PostgreSQL', store: 'postgres' as const, contiguous: false, numRuns: 40 },
        { mode: 'contiguous, PostgreSQL', store: 'postgres' as const, contiguous: true, numRuns: 20 },
      ]
    : []),
])('the gate in $mode mode, against the reference model', ({ mode, store, contiguous, numRuns }) => {
  const h = new Harness({ contiguous, store });
  beforeAll(() => h.start());
  afterAll(() => h.dispose());

  it(`gives every put of random command sequences (${mode} mode) the model's result, and the file holds the model's state`, async () => {
    await runProperty(
      fc.asyncProperty(fc.array(cmdArb, { minLength: 1, maxLength: 60, size: 'max' }), (cmds) => h.run(cmds)),
      { fileUrl: import.meta.url, name: `model-based gate (${mode})`, numRuns, counters: h.counters },
    );
    expect(h.counters.putsCompared ?? 0).toBeGreaterThan(numRuns * 5);
    expect(h.counters.restarts ?? 0).toBeGreaterThan(0);
    process.stdout.write(`[fuzz] model-based gate (${mode}): ${JSON.stringify(h.counters)}\n`);
  }, 120_000);
});
