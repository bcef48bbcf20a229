import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { canonicalEncode, putFingerprint } from '../src/protocol/canonical.js';
import { PostgresStore } from '../src/store/postgres-store.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import type { DocResult, Put, PutResult, Store, Write } from '../src/store/store.js';
import type { Change } from '../src/store/change-log.js';
import { createTestDatabase, postgresAvailable, type TestDatabase } from './support/postgres.js';
import { ReferenceModel } from './support/reference-model.js';

/**
 * One contract, every store: the SQLite store, the PostgreSQL store and the in-memory reference
 * model of the spec must give the same result for every put. The PostgreSQL store runs on a
 * database created for this run (random name) and dropped at the end.
 */

const LIMITS = { maxBytes: 65536, maxDepth: 32, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };

interface PutSpec {
  stream?: string;
  epoch?: number;
  seq: number;
  key?: string;
  state?: unknown;
  delete?: boolean;
  ifVersion?: number | null;
  tenant?: string;
}

function mk(spec: PutSpec): Put {
  const key = spec.key ?? 'doc';
  const state = spec.delete ? null : canonicalEncode(spec.state ?? { v: spec.seq }, LIMITS, 'state');
  const ifVersion = spec.ifVersion ?? null;
  return {
    tenant: spec.tenant ?? 'default',
    stream: spec.stream ?? 's',
    epoch: spec.epoch ?? 1,
    seq: spec.seq,
    key,
    state,
    ifVersion,
    fingerprint: putFingerprint(key, state, ifVersion),
  };
}

interface StoreOptions {
  contiguous?: boolean;
  ackCapPerStream?: number;
  /** Chunked cap eviction; a store that does not take it is only run with 0 (see SLACK_STORES). */
  ackCapSlack?: number;
  /** PostgreSQL only: reuse an open store with these options (its tables emptied, its clock reset). */
  reuse?: boolean;
}
interface Harness {
  store: Store;
  clock: { now: number };
  fail(): Promise<void> | void;
  heal(): Promise<void> | void;
  /** SQLite: move recent acks to the per-stream table now (the model-based test interleaves it). */
  settle?(): void;
}

const PG = await postgresAvailable();
let pgDb: TestDatabase | undefined;
const opened: Store[] = [];
/** Failed moves of the 'stepped' layout: only the tests' injected faults (a read-only connection) may cause one. */
const settleErrors: Error[] = [];
const reusable = new Map<string, { store: PostgresStore; clock: { now: number } }>();
beforeAll(async () => {
  if (PG) pgDb = await createTestDatabase('seqgate_contract', { fastCommits: true });
});
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
  const unexpected = settleErrors.splice(0).filter((e) => !/readonly/i.test(e.message));
  expect(unexpected).toEqual([]);
});
afterAll(async () => {
  for (const { store } of reusable.values()) await store.close();
  await pgDb?.drop();
});

async function freshPostgres(o: StoreOptions): Promise<Harness> {
  const db = pgDb!;
  await db.query(`DO $$ BEGIN
    IF to_regclass('seqgate.streams') IS NOT NULL THEN
      DELETE FROM seqgate.streams; DELETE FROM seqgate.documents; DELETE FROM seqgate.acks; DELETE FROM seqgate.idempotency;
      DELETE FROM seqgate.changes; DELETE FROM seqgate.change_logs;
    END IF; END $$`);
  const cacheKey = `${o.contiguous ?? false}/${o.ackCapPerStream ?? 1000}/${o.ackCapSlack ?? 0}`;
  let cached = o.reuse ? reusable.get(cacheKey) : undefined;
  if (cached === undefined) {
    const c = { now: 1_000_000 };
    const s = await PostgresStore.open({
      connectionString: db.url,
      contiguous: o.contiguous ?? false,
      ackCapPerStream: o.ackCapPerStream ?? 1000,
      ackCapSlack: o.ackCapSlack ?? 0,
      now: () => c.now,
      poolSize: 2,
    });
    cached = { store: s, clock: c };
    if (o.reuse) reusable.set(cacheKey, cached);
    else opened.push(s);
  }
  const { store, clock } = cached;
  clock.now = 1_000_000;
  // A real storage fault: every ack insert violates a constraint, inside the batch's transaction.
  const fail = async () => {
    await db.query('ALTER TABLE seqgate.acks ADD CONSTRAINT injected_fault CHECK (false) NOT VALID');
  };
  const heal = async () => {
    await db.query('ALTER TABLE seqgate.acks DROP CONSTRAINT injected_fault');
  };
  return { store, clock, fail, heal };
}

/**
 * SQLite keeps new acks in commit order (recent_acks) and moves them to the per-stream table in
 * passes. `layout` picks where the acks of a test are: 'recent' (the default threshold is never
 * reached here, so all of them stay recent), 'settled' (moved after every committed batch),
 * 'stepped' (the store's own moves, started once 6 have gathered and made in steps of about 2 acks,
 * whole streams each, between the test's batches) or 'direct' (ackSettleRows 0: written straight
 * to the per-stream table).
 */
function sqliteHarness(o: StoreOptions, layout: 'recent' | 'settled' | 'stepped' | 'direct' | 'synced'): Harness {
  const clock = { now: 1_000_000 };
  const store = new SqliteStore({
    path: layout === 'synced' ? fileDb() : ':memory:',
    // 'synced': a file whose WAL is synced off the event loop (--wal-sync background), so every
    // result and read also waits for a real fdatasync, and whose WAL is bounded small enough that
    // the longer tests hold batches for the checkpoint worker and rewind it.
    ...(layout === 'synced' ? { walSync: 'background' as const, walCheckpoint: 'background' as const, maxWalBytes: 128 * 1024 } : {}),
    synchronous: 'full',
    contiguous: o.contiguous ?? false,
    ackCapPerStream: o.ackCapPerStream ?? 1000,
    ackCapSlack: o.ackCapSlack ?? 0,
    now: () => clock.now,
    ...(layout === 'direct' ? { ackSettleRows: 0 } : {}),
    ...(layout === 'stepped' ? { ackSettleRows: 6, settleStepRows: 2, onSettleError: (err: Error) => settleErrors.push(err) } : {}),
  });
  if (layout === 'settled') {
    const apply = store.apply.bind(store) as (batch: readonly Write[]) => Promise<Array<PutResult | DocResult>>;
    store.apply = (async (batch: readonly Write[]) => {
      const results = await apply(batch);
      store.settleAcks();
      return results;
    }) as SqliteStore['apply'];
  }
  // A real storage fault: the connection refuses writes (SQLITE_READONLY) inside the transaction.
  const fail = () => {
    store.database.pragma('query_only = ON');
  };
  const heal = () => {
    store.database.pragma('query_only = OFF');
  };
  if (layout === 'synced' || layout === 'stepped') opened.push(store);
  return { store, clock, fail, heal, settle: () => store.settleAcks() };
}

const fileDirs: string[] = [];
afterAll(() => {
  for (const d of fileDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function fileDb(): string {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-contract-'));
  fileDirs.push(dir);
  return join(dir, 'db');
}

const stores: Array<[string, (o: StoreOptions) => Harness | Promise<Harness>]> = [
  ['SqliteStore', (o) => sqliteHarness(o, 'recent')],
  [
    'ReferenceModel',
    (o) => {
      const clock = { now: 1_000_000 };
      const options = {
        contiguous: o.contiguous ?? false,
        ackCapPerStream: o.ackCapPerStream ?? 1000,
        ackCapSlack: o.ackCapSlack ?? 0,
        now: () => clock.now,
        failNext: false,
      };
      return {
        store: new ReferenceModel(options),
        clock,
        fail: () => {
          options.failNext = true;
        },
        heal: () => {
          options.failNext = false;
        },
      };
    },
  ],
  ['SqliteStore (acks settled after every batch)', (o) => sqliteHarness(o, 'settled')],
  ['SqliteStore (acks moved by the store, in steps between batches)', (o) => sqliteHarness(o, 'stepped')],
  ['SqliteStore (ackSettleRows 0)', (o) => sqliteHarness(o, 'direct')],
  ['SqliteStore (file, WAL synced off the event loop)', (o) => sqliteHarness(o, 'synced')],
  ...(PG ? [['PostgresStore', freshPostgres] as [string, (o: StoreOptions) => Promise<Harness>]] : []),
];

function outcomes(results: PutResult[]): string[] {
  return results.map((r) => (r.kind === 'ack' ? (r.replay ? `${r.ack.outcome}*` : r.ack.outcome) : r.outcome));
}

async function run(store: Store, ...specs: PutSpec[]): Promise<PutResult[]> {
  return store.apply(specs.map(mk));
}

/** Stores that take `ackCapSlack`: all of them. */
const SLACK_STORES = new Set(stores.map(([name]) => name));

describe.each(stores)('%s store contract', (name, make) => {
  it('applies a first put and acks stream, epoch, seq, key, version 1 and commit time', async () => {
    const { store } = await make({});
    const [r] = await run(store, { seq: 1 });
    expect(r).toEqual({
      kind: 'ack',
      replay: false,
      ack: { outcome: 'applied', stream: 's', epoch: 1, seq: 1, key: 'doc', version: 1, deleted: false, committedAt: 1_000_000 },
    });
    expect(await store.heads('default', ['s', 'other'])).toEqual([
      { stream: 's', epoch: 1, seq: 1, prunedThrough: 0 },
      { stream: 'other', epoch: 0, seq: 0, prunedThrough: 0 },
    ]);
  });

  it('replays the stored ack for a retry with the same payload, even after later puts', async () => {
    const { store, clock } = await make({});
    const [first] = await run(store, { seq: 1 });
    clock.now += 5000;
    await run(store, { seq: 2 }, { seq: 3 });
    const [again] = await run(store, { seq: 1 });
    expect(again).toEqual({ ...first, replay: true });
  });

  it('answers sequence_reused when a stored seq comes back with a different payload, changing nothing', async () => {
    const { store } = await make({});
    await run(store, { seq: 1, state: 'a' });
    expect(outcomes(await run(store, { seq: 1, state: 'b' }))).toEqual(['sequence_reused']);
    expect(outcomes(await run(store, { seq: 1, state: 'a', ifVersion: 7 }))).toEqual(['sequence_reused']);
    expect((await store.heads('default', ['s']))[0]!.seq).toBe(1);
  });

  it('decides dedup before fencing, so a retry from an old epoch still gets its ack', async () => {
    const { store } = await make({});
    await run(store, { epoch: 1, seq: 1 });
    await run(store, { epoch: 2, seq: 1 });
    expect(outcomes(await run(store, { epoch: 1, seq: 1 }))).toEqual(['applied*']);
    const [fenced] = await run(store, { epoch: 1, seq: 2 });
    expect(fenced).toMatchObject({ outcome: 'fenced', epoch: 2 });
  });

  it('decides dedup before ifVersion, so a retry of a successful conditional write is not a conflict', async () => {
    const { store } = await make({});
    await run(store, { seq: 1, ifVersion: 0 });
    expect(outcomes(await run(store, { seq: 1, ifVersion: 0 }))).toEqual(['applied*']);
  });

  it('answers stale with the head for a skipped seq at or below the head', async () => {
    const { store } = await make({});
    await run(store, { seq: 1 }, { seq: 5 });
    const [r] = await run(store, { seq: 3 });
    expect(r).toMatchObject({ outcome: 'stale', head: { epoch: 1, seq: 5, prunedThrough: 0 } });
  });

  it('answers expired for a seq whose ack was evicted by the per-stream cap', async () => {
    const { store } = await make({ ackCapPerStream: 2 });
    await run(store, { seq: 1 }, { seq: 2 }, { seq: 3 }, { seq: 4 });
    expect(outcomes(await run(store, { seq: 1 }, { seq: 2 }, { seq: 3 }, { seq: 4 }))).toEqual(['expired', 'expired', 'applied*', 'applied*']);
    expect((await store.heads('default', ['s']))[0]).toMatchObject({ seq: 4, prunedThrough: 2 });
  });

  it.skipIf(!SLACK_STORES.has(name))('with slack, keeps up to cap + slack acks, then evicts slack + 1 of them, back to the cap', async () => {
    const { store } = await make({ ackCapPerStream: 2, ackCapSlack: 2 });
    await run(store, { seq: 1 }, { seq: 2 }, { seq: 3 }, { seq: 4 });
    // 4 acks = cap + slack: nothing evicted yet, every retry replays.
    expect(outcomes(await run(store, { seq: 1 }, { seq: 4 }))).toEqual(['applied*', 'applied*']);
    expect((await store.heads('default', ['s']))[0]).toMatchObject({ seq: 4, prunedThrough: 0 });
    await run(store, { seq: 5 });
    // The fifth ack takes the stream past cap + slack: 1, 2 and 3 go, the newest two (the cap) stay.
    expect(outcomes(await run(store, { seq: 1 }, { seq: 3 }, { seq: 4 }, { seq: 5 }))).toEqual(['expired', 'expired', 'applied*', 'applied*']);
    expect((await store.heads('default', ['s']))[0]).toMatchObject({ seq: 5, prunedThrough: 3 });
    await run(store, { seq: 6 }, { seq: 7 });
    expect(outcomes(await run(store, { seq: 4 }, { seq: 7 }))).toEqual(['applied*', 'applied*']);
  });

  it("prunes acks older than the window but never a stream's latest ack, and never its head", async () => {
    const { store, clock } = await make({});
    await run(store, { stream: 'busy', seq: 1 }, { stream: 'busy', seq: 2 }, { stream: 'quiet', seq: 1 });
    clock.now += 10_000;
    await run(store, { stream: 'busy', seq: 3 });
    let total = 0;
    for (;;) {
      const { pruned, done } = await store.prune(clock.now - 5_000, 1);
      total += pruned;
      if (done) break;
    }
    expect(total).toBe(2);
    expect(outcomes(await run(store, { stream: 'busy', seq: 1 }, { stream: 'busy', seq: 3 }, { stream: 'quiet', seq: 1 }))).toEqual([
      'expired',
      'applied*',
      'applied*',
    ]);
    expect(outcomes(await run(store, { stream: 'busy', seq: 2 }))).toEqual(['expired']);
  });

  it('fences a lower epoch and lets a higher epoch take over the stream', async () => {
    const { store } = await make({});
    await run(store, { epoch: 3, seq: 10 });
    expect(outcomes(await run(store, { epoch: 2, seq: 11 }, { epoch: 4, seq: 1 }, { epoch: 3, seq: 11 }))).toEqual(['fenced', 'applied', 'fenced']);
    expect((await store.heads('default', ['s']))[0]).toMatchObject({ epoch: 4, seq: 1 });
  });

  it('in contiguous mode answers gap with the expected seq, and requires seq 1 in a new epoch', async () => {
    const { store } = await make({ contiguous: true });
    const r = await run(store, { seq: 1 }, { seq: 3 }, { seq: 2 }, { epoch: 2, seq: 2 }, { epoch: 2, seq: 1 });
    expect(outcomes(r)).toEqual(['applied', 'gap', 'applied', 'gap', 'applied']);
    expect(r[1]).toMatchObject({ expected: { epoch: 1, seq: 2 } });
    expect(r[3]).toMatchObject({ expected: { epoch: 2, seq: 1 } });
  });

  it('allows gaps by default and then answers the skipped seqs stale', async () => {
    const { store } = await make({});
    expect(outcomes(await run(store, { seq: 1 }, { seq: 10 }, { seq: 5 }))).toEqual(['applied', 'applied', 'stale']);
  });

  it("stores a version conflict as the seq's answer and replays it", async () => {
    const { store } = await make({});
    await run(store, { seq: 1 });
    const [c] = await run(store, { seq: 2, ifVersion: 5 });
    expect(c).toMatchObject({ kind: 'ack', replay: false, ack: { outcome: 'version_conflict', version: 1, deleted: false, ifVersion: 5 } });
    expect(await run(store, { seq: 2, ifVersion: 5 })).toEqual([{ ...c, replay: true }]);
    expect((await store.heads('default', ['s']))[0]!.seq).toBe(2);
  });

  it('treats ifVersion 0 as "must not exist", which a deleted document satisfies', async () => {
    const { store } = await make({});
    const r = await run(
      store,
      { seq: 1, ifVersion: 0 },
      { seq: 2, ifVersion: 0 },
      { seq: 3, delete: true },
      { seq: 4, ifVersion: 2 },
      { seq: 5, ifVersion: 0 },
    );
    expect(outcomes(r)).toEqual(['applied', 'version_conflict', 'applied', 'version_conflict', 'applied']);
    expect(r[4]).toMatchObject({ ack: { version: 3, deleted: false } });
  });

  it('never restarts versions: delete bumps, re-create continues, a repeated delete changes nothing', async () => {
    const { store } = await make({});
    const r = await run(store, { seq: 1 }, { seq: 2 }, { seq: 3, delete: true }, { seq: 4, delete: true }, { seq: 5 }, { seq: 6, key: 'never', delete: true });
    expect(r.map((x) => (x.kind === 'ack' ? [x.ack.version, x.ack.deleted] : null))).toEqual([
      [1, false],
      [2, false],
      [3, true],
      [3, true],
      [4, false],
      [0, true],
    ]);
  });

  it('behaves within one batch exactly as if the puts were sent one by one', async () => {
    const a = await make({});
    const specs: PutSpec[] = [
      { stream: 'x', seq: 1, key: 'shared' },
      { stream: 'y', seq: 1, key: 'shared', ifVersion: 1 },
      { stream: 'x', seq: 1, key: 'shared' },
      { stream: 'x', seq: 2, key: 'shared', ifVersion: 1 },
      { stream: 'x', seq: 2, key: 'other' },
      { stream: 'y', seq: 0 + 1, key: 'shared', ifVersion: 1 },
    ];
    const together = await a.store.apply(specs.map(mk));
    // Made after the first side is done: the PostgreSQL harness gives each store a fresh database state.
    const b = await make({});
    const oneByOne: PutResult[] = [];
    for (const s of specs) oneByOne.push(...(await b.store.apply([mk(s)])));
    expect(together).toEqual(oneByOne);
    expect(outcomes(together)).toEqual(['applied', 'applied', 'applied*', 'version_conflict', 'sequence_reused', 'applied*']);
  });

  it('fails a whole batch with a retryable error on a storage fault, consuming nothing', async () => {
    const { store, fail, heal } = await make({});
    await run(store, { seq: 1 });
    await fail();
    await expect(run(store, { seq: 2 }, { stream: 'new', seq: 1 })).rejects.toThrow();
    expect(await store.heads('default', ['s', 'new'])).toEqual([
      { stream: 's', epoch: 1, seq: 1, prunedThrough: 0 },
      { stream: 'new', epoch: 0, seq: 0, prunedThrough: 0 },
    ]);
    await heal();
    expect(outcomes(await run(store, { seq: 2 }, { stream: 'new', seq: 1 }))).toEqual(['applied', 'applied']);
  });

  it('replaces a document without a stream, leaves it unchanged when the same state comes again, and checks ifVersion', async () => {
    const { store } = await make({});
    const st = (v: unknown) => canonicalEncode(v, LIMITS, 'state');
    const r = await store.apply([
      { op: 'replace', tenant: 'default', key: 'd', state: st({ a: 1 }), ifVersion: 0 },
      { op: 'replace', tenant: 'default', key: 'd', state: st({ a: 1 }), ifVersion: null },
      { op: 'replace', tenant: 'default', key: 'd', state: st({ a: 2 }), ifVersion: 5 },
      { op: 'replace', tenant: 'default', key: 'd', state: st({ a: 2 }), ifVersion: 1 },
      { op: 'replace', tenant: 'default', key: 'd', state: null, ifVersion: null },
      { op: 'replace', tenant: 'default', key: 'd', state: null, ifVersion: null },
    ]);
    expect(r.map((x) => ('version' in x ? [x.kind, x.version, x.deleted, 'changed' in x ? x.changed : '-'] : x.kind))).toEqual([
      ['written', 1, false, true],
      ['written', 1, false, false],
      ['precondition_failed', 1, false, '-'],
      ['written', 2, false, true],
      ['written', 3, true, true],
      ['written', 3, true, false],
    ]);
    expect(await store.document('default', 'd')).toMatchObject({ version: 3, deleted: true, state: null });
    const [viaPut] = await run(store, { seq: 1, key: 'd', state: { a: 3 } });
    expect(viaPut).toMatchObject({ ack: { version: 4 } });
    expect((await store.document('default', 'd'))!.state).toEqual(st({ a: 3 }));
  });

  it('creates once per Idempotency-Key: a retry gets the first answer, a different payload is refused', async () => {
    const { store, clock } = await make({});
    const st = canonicalEncode({ hello: 'world' }, LIMITS, 'state');
    const create = (key: string, fingerprint: Buffer, idempotencyKey = 'k-1', tenant = 'default') => ({
      op: 'create' as const,
      tenant,
      scope: 'POST /v1/docs',
      idempotencyKey,
      fingerprint,
      key,
      state: st,
    });
    const [first] = await store.apply([create('doc-a', Buffer.alloc(16, 1))]);
    clock.now += 1000;
    const [again, other, elsewhere] = await store.apply([
      create('doc-b', Buffer.alloc(16, 1)),
      create('doc-c', Buffer.alloc(16, 2)),
      create('doc-d', Buffer.alloc(16, 1), 'k-1', 'other'),
    ]);
    expect(first).toEqual({ kind: 'created', key: 'doc-a', version: 1, deleted: false, createdAt: 1_000_000, replay: false });
    expect(again).toEqual({ ...first, replay: true });
    expect(other).toEqual({ kind: 'idempotency_key_reused' });
    expect(elsewhere).toMatchObject({ kind: 'created', key: 'doc-d', replay: false });
    expect(await store.document('default', 'doc-b')).toBeUndefined();
    expect(await store.pruneIdempotency(1_000_001, 100)).toBe(1);
    const [afterPrune] = await store.apply([create('doc-e', Buffer.alloc(16, 2))]);
    expect(afterPrune).toMatchObject({ kind: 'created', key: 'doc-e', replay: false });
  });

  it('answers a second create with the same Idempotency-Key in the same batch as a replay of the first', async () => {
    const { store } = await make({});
    const st = canonicalEncode({ once: true }, LIMITS, 'state');
    const create = (key: string) => ({
      op: 'create' as const,
      tenant: 'default',
      scope: 'POST /v1/docs',
      idempotencyKey: 'same',
      fingerprint: Buffer.alloc(16, 3),
      key,
      state: st,
    });
    const [first, second] = await store.apply([create('doc-1'), create('doc-2')]);
    expect(first).toMatchObject({ kind: 'created', key: 'doc-1', replay: false });
    expect(second).toEqual({ ...first, replay: true });
    expect(await store.document('default', 'doc-2')).toBeUndefined();
  });

  it('keeps tenants apart: the same stream and key names never collide', async () => {
    const { store } = await make({});
    expect(outcomes(await run(store, { tenant: 't1', seq: 1 }, { tenant: 't2', seq: 1, state: 'different' }))).toEqual(['applied', 'applied']);
    const [r] = await run(store, { tenant: 't2', seq: 2 });
    expect(r).toMatchObject({ ack: { version: 2 } });
  });
});

describe('every store against the reference model', () => {
  it('gives the same result for every put of random sequences of puts, retries, prunes and epochs', { timeout: 120_000 }, async () => {
    const putArb = fc.record({
      stream: fc.constantFrom('a', 'b'),
      epoch: fc.integer({ min: 0, max: 3 }),
      seq: fc.integer({ min: 1, max: 8 }),
      key: fc.constantFrom('k1', 'k2'),
      state: fc.constantFrom(1, 2, 'x'),
      delete: fc.boolean(),
      ifVersion: fc.option(fc.integer({ min: 0, max: 4 }), { nil: null }),
    });
    // Half the runs with slack 0, so that every store is compared in those.
    const slackArb = fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 3 }));
    const stepArb = fc.oneof(
      fc.record({ kind: fc.constant('batch' as const), puts: fc.array(putArb, { minLength: 1, maxLength: 6 }) }),
      fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 2000 }) }),
      fc.record({ kind: fc.constant('prune' as const), windowMs: fc.integer({ min: 0, max: 3000 }) }),
      fc.constant({ kind: 'settle' as const }),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(stepArb, { minLength: 1, maxLength: 25 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 4 }),
        slackArb,
        async (steps, contiguous, cap, slack) => {
          const sides: Harness[] = [];
          for (const [name, make] of stores) {
            if (slack === 0 || SLACK_STORES.has(name)) sides.push(await make({ contiguous, ackCapPerStream: cap, ackCapSlack: slack, reuse: true }));
          }
          for (const step of steps) {
            const answers: unknown[] = [];
            for (const side of sides) {
              if (step.kind === 'batch') answers.push(await side.store.apply(step.puts.map((p) => mk({ ...p, delete: p.delete }))));
              else if (step.kind === 'tick') side.clock.now += step.ms;
              else if (step.kind === 'settle') side.settle?.();
              else {
                let done = false;
                while (!done) done = (await side.store.prune(side.clock.now - step.windowMs, 3)).done;
              }
            }
            if (step.kind === 'batch') for (const other of answers.slice(1)) expect(other).toEqual(answers[0]);
          }
          const streams = ['a', 'b'];
          const model = await sides.find((s) => s.store instanceof ReferenceModel)!.store.heads('default', streams);
          for (const side of sides) expect(await side.store.heads('default', streams)).toEqual(model);
        },
      ),
      { numRuns: PG ? 100 : 300 },
    );
  });
});

/** Every change of a tenant's log from the start, read in small pages as a consumer would. */
async function allChanges(store: Store, tenant = 'default', prefixes: readonly string[] = ['']): Promise<Change[]> {
  const out: Change[] = [];
  let after = 0;
  for (;;) {
    const page = await store.readChanges(tenant, { after, prefixes, limit: 3, maxScan: 5 });
    expect(page.expired).toBe(false);
    out.push(...page.changes);
    if (page.next === after && page.changes.length === 0) return out;
    after = page.next;
  }
}

function doc(key: string, state: unknown, tenant = 'default'): Write {
  return { op: 'replace', tenant, key, state: canonicalEncode(state, LIMITS, 'state'), ifVersion: null };
}

describe.each(stores)('%s change log contract', (_name, make) => {
  it('appends one change per applied put, in the same batch, with origin, version and commit time', async () => {
    const { store } = await make({});
    await run(store, { seq: 1, key: 'a', state: { x: 1 } }, { seq: 2, key: 'b', state: { x: 2 } }, { seq: 3, key: 'a', delete: true });
    const changes = await allChanges(store);
    expect(changes.map((c) => [c.offset, c.key, c.version, c.deleted, c.origin, c.committedAt])).toEqual([
      [1, 'a', 1, false, { stream: 's', epoch: 1, seq: 1 }, 1_000_000],
      [2, 'b', 1, false, { stream: 's', epoch: 1, seq: 2 }, 1_000_000],
      [3, 'a', 2, true, { stream: 's', epoch: 1, seq: 3 }, 1_000_000],
    ]);
    expect(changes[0]!.state).toEqual(canonicalEncode({ x: 1 }, LIMITS, 'state'));
    expect(changes[2]!.state).toBeNull();
    expect(await store.changeTail('default')).toBe(3);
  });

  it('appends nothing for a replay, a rejection, a version conflict or a delete of nothing', async () => {
    const { store } = await make({});
    await run(store, { seq: 5, key: 'a' });
    await run(
      store,
      { seq: 5, key: 'a' }, // replay
      { seq: 5, key: 'a', state: { other: true } }, // sequence_reused
      { seq: 3, key: 'a' }, // stale
      { seq: 6, key: 'a', ifVersion: 7 }, // version_conflict
      { seq: 7, key: 'never', delete: true }, // deleting nothing
      { seq: 1, epoch: 0, key: 'a' }, // fenced
    );
    expect((await allChanges(store)).map((c) => c.offset)).toEqual([1]);
    expect(await store.changeTail('default')).toBe(1);
  });

  it('appends nothing when a batch fails to commit, and continues at the next offset afterwards', async () => {
    const { store, fail, heal } = await make({});
    await run(store, { seq: 1 });
    await fail();
    await expect(store.apply([mk({ seq: 2 }), mk({ seq: 3 })])).rejects.toThrow();
    await heal();
    expect(await store.changeTail('default')).toBe(1);
    await run(store, { seq: 2 });
    expect((await allChanges(store)).map((c) => [c.offset, c.origin])).toEqual([
      [1, { stream: 's', epoch: 1, seq: 1 }],
      [2, { stream: 's', epoch: 1, seq: 2 }],
    ]);
  });

  it('logs document writes that change something, with their route, and nothing for unchanged or refused ones', async () => {
    const { store } = await make({});
    await store.apply([doc('d', { v: 1 })]);
    await store.apply([doc('d', { v: 1 })]); // same state: unchanged
    await store.apply([{ op: 'replace', tenant: 'default', key: 'd', state: null, ifVersion: 5 }]); // precondition failed
    await store.apply([{ op: 'replace', tenant: 'default', key: 'd', state: null, ifVersion: null }]);
    await store.apply([{ op: 'replace', tenant: 'default', key: 'd', state: null, ifVersion: null }]); // deleting nothing
    const create: Write = {
      op: 'create',
      tenant: 'default',
      scope: 'POST /v1/docs',
      idempotencyKey: 'k1',
      fingerprint: Buffer.alloc(16, 1),
      key: 'gen-1',
      state: canonicalEncode({ c: 1 }, LIMITS, 'state'),
    };
    await store.apply([create]);
    await store.apply([{ ...create, key: 'gen-2' }]); // replay of the same key: nothing new
    expect((await allChanges(store)).map((c) => [c.offset, c.key, c.version, c.deleted, c.origin])).toEqual([
      [1, 'd', 1, false, { route: 'PUT /v1/docs/{key}' }],
      [2, 'd', 2, true, { route: 'DELETE /v1/docs/{key}' }],
      [3, 'gen-1', 1, false, { route: 'POST /v1/docs' }],
    ]);
  });

  it('numbers each tenant on its own, strictly increasing, and never reuses an offset after retention emptied the log', async () => {
    const { store, clock } = await make({});
    await run(store, { seq: 1, tenant: 't1' }, { seq: 1, tenant: 't2' }, { seq: 2, tenant: 't1' });
    expect((await allChanges(store, 't1')).map((c) => c.offset)).toEqual([1, 2]);
    expect((await allChanges(store, 't2')).map((c) => c.offset)).toEqual([1]);
    clock.now += 10_000;
    let done = false;
    while (!done) done = (await store.trimChanges({ olderThan: clock.now, maxChanges: 0, compact: false }, 100)).done;
    const gone = await store.readChanges('t1', { after: 0, prefixes: [''], limit: 10, maxScan: 10 });
    expect(gone).toMatchObject({ expired: true, changes: [], tail: 2, trimmedThrough: 2 });
    await run(store, { seq: 3, tenant: 't1' });
    const page = await store.readChanges('t1', { after: 2, prefixes: [''], limit: 10, maxScan: 10 });
    expect(page.changes.map((c) => c.offset)).toEqual([3]);
    expect(page).toMatchObject({ expired: false, next: 3, tail: 3 });
  });

  it('filters by key prefix and limit; next moves past what was looked at even when nothing matched', async () => {
    const { store } = await make({});
    await run(store, ...Array.from({ length: 8 }, (_, i) => ({ seq: i + 1, key: i % 4 === 0 ? `a/${i}` : `b/${i}` })));
    const first = await store.readChanges('default', { after: 0, prefixes: ['a/'], limit: 1, maxScan: 100 });
    expect(first.changes.map((c) => c.key)).toEqual(['a/0']);
    expect(first.next).toBe(1);
    const second = await store.readChanges('default', { after: 1, prefixes: ['a/'], limit: 10, maxScan: 3 });
    expect(second.changes).toEqual([]);
    expect(second.next).toBe(4);
    const third = await store.readChanges('default', { after: 4, prefixes: ['a/', 'b/7'], limit: 10, maxScan: 100 });
    expect(third.changes.map((c) => c.key)).toEqual(['a/4', 'b/7']);
    expect(third).toMatchObject({ next: 8, tail: 8 });
    expect((await store.readChanges('default', { after: 0, prefixes: [], limit: 10, maxScan: 100 })).changes).toEqual([]);
  });

  it('retention by count removes the oldest changes and marks readers behind them expired', async () => {
    const { store } = await make({});
    await run(store, ...Array.from({ length: 6 }, (_, i) => ({ seq: i + 1, key: `k${i % 2}` })));
    await store.trimChanges({ olderThan: -Infinity, maxChanges: 4, compact: false }, 100);
    expect((await store.readChanges('default', { after: 1, prefixes: [''], limit: 10, maxScan: 10 })).expired).toBe(true);
    const page = await store.readChanges('default', { after: 2, prefixes: [''], limit: 10, maxScan: 10 });
    expect(page.changes.map((c) => c.offset)).toEqual([3, 4, 5, 6]);
  });

  it('compaction keeps the latest change of each key, so the log still replays to the documents', async () => {
    const { store, clock } = await make({});
    await run(
      store,
      { seq: 1, key: 'a', state: 1 },
      { seq: 2, key: 'b', state: 2 },
      { seq: 3, key: 'a', state: 3 },
      { seq: 4, key: 'b', delete: true },
      { seq: 5, key: 'c', state: 5 },
    );
    clock.now += 10_000;
    await run(store, { seq: 6, key: 'c', state: 6 });
    let done = false;
    while (!done) done = (await store.trimChanges({ olderThan: clock.now, maxChanges: 0, compact: true }, 100)).done;
    const changes = await allChanges(store);
    // a@1, b@2 and c@5 are older than the window and superseded; c@6 is inside the window.
    expect(changes.map((c) => [c.offset, c.key, c.version])).toEqual([
      [3, 'a', 2],
      [4, 'b', 2],
      [6, 'c', 2],
    ]);
    expect((await store.readChanges('default', { after: 0, prefixes: [''], limit: 10, maxScan: 10 })).expired).toBe(false);
  });

  it('snapshots the current documents under the prefixes with the offset they correspond to, in pages', async () => {
    const { store } = await make({});
    await run(
      store,
      { seq: 1, key: 'a/1', state: 1 },
      { seq: 2, key: 'a/2', state: 2 },
      { seq: 3, key: 'b/1', state: 3 },
      { seq: 4, key: 'a/3', state: 4 },
      { seq: 5, key: 'a/2', delete: true },
    );
    const one = await store.snapshot('default', ['a/'], null, 1);
    expect(one.offset).toBe(5);
    expect(one.documents.map((d) => [d.key, d.version])).toEqual([['a/1', 1]]);
    expect(one.nextKey).toBe('a/1');
    const two = await store.snapshot('default', ['a/'], one.nextKey, 10);
    expect(two.documents.map((d) => [d.key, d.version])).toEqual([['a/3', 1]]);
    expect(two.nextKey).toBeNull();
    const both = await store.snapshot('default', ['b/', 'a/3'], null, 10);
    expect(both.documents.map((d) => d.key)).toEqual(['a/3', 'b/1']);
    expect(both.documents[1]!.state).toEqual(canonicalEncode(3, LIMITS, 'state'));
  });
});

describe('change log against the reference model', () => {
  it('logs the same changes as the model, and replaying the log from 0 yields exactly the stored documents', async () => {
    const keyArb = fc.constantFrom('a', 'b', 'c/1', 'c/2');
    const putArb = fc.record({
      stream: fc.constantFrom('s1', 's2'),
      epoch: fc.integer({ min: 1, max: 2 }),
      seq: fc.integer({ min: 1, max: 8 }),
      key: keyArb,
      state: fc.integer({ min: 0, max: 2 }),
      delete: fc.boolean(),
      ifVersion: fc.option(fc.integer({ min: 0, max: 3 }), { nil: null }),
    });
    const docArb = fc.record({ key: keyArb, state: fc.option(fc.integer({ min: 0, max: 2 }), { nil: null }) });
    const stepArb = fc.oneof(
      fc.record({ kind: fc.constant('batch' as const), puts: fc.array(putArb, { minLength: 1, maxLength: 5 }) }),
      fc.record({ kind: fc.constant('doc' as const), writes: fc.array(docArb, { minLength: 1, maxLength: 3 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 20 }), async (steps) => {
        const sides: Harness[] = [];
        for (const [, make] of stores) sides.push(await make({ reuse: true }));
        for (const step of steps) {
          for (const side of sides) {
            if (step.kind === 'batch') await side.store.apply(step.puts.map((p) => mk(p)));
            else {
              await side.store.apply(
                step.writes.map((w): Write => ({
                  op: 'replace',
                  tenant: 'default',
                  key: w.key,
                  ifVersion: null,
                  state: w.state === null ? null : canonicalEncode(w.state, LIMITS, 'state'),
                })),
              );
            }
          }
        }
        const logs = await Promise.all(sides.map((s) => allChanges(s.store)));
        for (const log of logs) expect(log).toEqual(logs[1]);
        for (const side of sides) {
          const replayed = new Map<string, Change>();
          for (const c of await allChanges(side.store)) replayed.set(c.key, c);
          for (const key of ['a', 'b', 'c/1', 'c/2']) {
            const stored = await side.store.document('default', key);
            const last = replayed.get(key);
            if (stored === undefined || (stored.deleted && last === undefined)) {
              expect(last).toBeUndefined();
              continue;
            }
            expect(last).toBeDefined();
            expect([last!.version, last!.deleted, last!.state]).toEqual([stored.version, stored.deleted, stored.state]);
          }
        }
      }),
      { numRuns: PG ? 60 : 200 },
    );
  });
});
