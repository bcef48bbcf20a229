import type { OffsetStore, Outbox, OutboxEntry, StoredAnswer, StreamRecord, VersionStore } from '@seqgate/client';

/**
 * The one contract every outbox implementation must keep (MQTT.js style: one suite, every store).
 * Plain async functions without a test framework, so that the same cases run under vitest (memory,
 * SQLite, AsyncStorage-shaped key-value store) and inside a real Chromium page (IndexedDB; see
 * indexeddb.test.ts). `make` returns a fresh, empty outbox; `reopen` (when the store can) a new
 * instance on the same storage, as after a restart; `share` a second instance on the same storage
 * while the first stays open, as a second tab or a second process would hold.
 *
 * `offsetContract` is the part for outboxes that also keep a subscription's offsets and an
 * IdempotentConsumer's applied versions (OffsetStore, VersionStore): its cases fail, rather than
 * skip, on an outbox that lacks those methods, so run it for exactly the outboxes that claim them.
 */

export interface OutboxMaker {
  make(): Promise<Outbox> | Outbox;
  reopen?(o: Outbox): Promise<Outbox> | Outbox;
  share?(o: Outbox): Promise<Outbox> | Outbox;
}

export interface ContractCase {
  readonly name: string;
  run(m: OutboxMaker): Promise<void>;
}

export const record = (over: Partial<StreamRecord> = {}): StreamRecord => ({
  epoch: 3,
  nextSeq: 10,
  lastAcked: { epoch: 3, seq: 7 },
  incarnation: 'inc-1',
  checkpoint: { offset: 41, file: 'log-2' },
  ...over,
});
export const entry = (pos: number, over: Partial<OutboxEntry> = {}): OutboxEntry => ({
  pos,
  epoch: 3,
  seq: pos + 7,
  key: `k${pos}`,
  state: Uint8Array.of(0x81, 0xa1, 0x61, pos & 0x7f),
  ifVersion: null,
  createdAt: 1_700_000_000_000 + pos,
  ...over,
});
const applied = (seq: number): StoredAnswer => ({
  ok: true,
  replay: false,
  ack: { stream: 's', epoch: 3, seq, key: `k${seq}`, version: 2, deleted: false, committedAt: 1_700_000_000_123 },
});
const refused: StoredAnswer = {
  ok: false,
  name: 'StaleError',
  code: 'STALE',
  message: 'not applied',
  detail: { head: { epoch: 3, seq: 12 }, prunedThrough: 0, ownSkip: true },
};

/** Entries as plain data: states as arrays, an absent answer as null. */
export function plain(entries: readonly OutboxEntry[]): unknown[] {
  return entries.map((e) => ({ ...e, state: e.state === null ? null : Array.from(e.state), answer: e.answer ?? null }));
}

function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) =>
    x !== null && typeof x === 'object' && !Array.isArray(x)
      ? Object.fromEntries(
          Object.entries(x as Record<string, unknown>)
            .filter(([, y]) => y !== undefined)
            .sort(([a], [b]) => (a < b ? -1 : 1)),
        )
      : x,
  );
}

export function same(actual: unknown, expected: unknown, what: string): void {
  const a = canonicalJson(actual);
  const e = canonicalJson(expected);
  if (a !== e) throw new Error(`${what}:\n  expected ${e}\n  got      ${a}`);
}

async function reopened(m: OutboxMaker, o: Outbox): Promise<Outbox> {
  return m.reopen === undefined ? o : m.reopen(o);
}

export const outboxContract: ContractCase[] = [
  {
    name: 'starts with no record and no entries for a stream',
    async run(m) {
      same(await (await m.make()).load('s'), { record: null, entries: [] }, 'empty load');
    },
  },
  {
    name: 'keeps appended entries in order with the record, per stream, and removes seen ones',
    async run(m) {
      let o = await m.make();
      await o.append('s', record(), [entry(1), entry(2, { state: null }), entry(3, { ifVersion: 0 })]);
      await o.append('other', record({ epoch: 1 }), [entry(1, { key: 'x' })]);
      await o.settle('s', record({ lastAcked: { epoch: 3, seq: 9 } }), [], [2]);
      o = await reopened(m, o);
      const loaded = await o.load('s');
      same(loaded.record, record({ lastAcked: { epoch: 3, seq: 9 } }), 'record');
      same(plain(loaded.entries), plain([entry(1), entry(3, { ifVersion: 0 })]), 'entries');
      same(
        (await o.load('other')).entries.map((e) => e.key),
        ['x'],
        'other stream',
      );
    },
  },
  {
    name: 'keeps a state of nil (c0), an empty state, a delete (null) and binary bytes apart',
    async run(m) {
      let o = await m.make();
      const states = [Uint8Array.of(0xc0), new Uint8Array(0), null, Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff)];
      await o.append(
        's',
        record(),
        states.map((state, i) => entry(i + 1, { state })),
      );
      o = await reopened(m, o);
      same(
        (await o.load('s')).entries.map((e) => (e.state === null ? null : Array.from(e.state))),
        states.map((s) => (s === null ? null : Array.from(s))),
        'states',
      );
    },
  },
  {
    name: 'stores a record whose epoch is not decided yet, with unnumbered entries, and a record without checkpoint',
    async run(m) {
      let o = await m.make();
      await o.append('s', record({ epoch: null, nextSeq: 1, lastAcked: null, incarnation: null, checkpoint: undefined }), [entry(1, { epoch: 0, seq: 0 })]);
      o = await reopened(m, o);
      const loaded = await o.load('s');
      same(loaded.record, { epoch: null, nextSeq: 1, lastAcked: null, incarnation: null }, 'record');
      if (loaded.record?.checkpoint !== undefined) throw new Error('an absent checkpoint must load as undefined');
      same(plain(loaded.entries), plain([entry(1, { epoch: 0, seq: 0 })]), 'entries');
    },
  },
  {
    name: 'stores answers in their entries until they are seen; an answer for a gone entry stays gone',
    async run(m) {
      let o = await m.make();
      await o.append('s', record(), [entry(1), entry(2), entry(3)]);
      await o.settle(
        's',
        record({ lastAcked: { epoch: 3, seq: 9 } }),
        [
          { pos: 1, answer: applied(8) },
          { pos: 2, answer: refused },
          { pos: 7, answer: applied(14) },
        ],
        [],
      );
      o = await reopened(m, o);
      same(plain((await o.load('s')).entries), plain([entry(1, { answer: applied(8) }), entry(2, { answer: refused }), entry(3)]), 'answered');
      await o.settle('s', record({ lastAcked: { epoch: 3, seq: 10 } }), [{ pos: 3, answer: applied(10) }], [1, 2]);
      o = await reopened(m, o);
      const loaded = await o.load('s');
      same(loaded.record?.lastAcked, { epoch: 3, seq: 10 }, 'record');
      same(plain(loaded.entries), plain([entry(3, { answer: applied(10) })]), 'after seen');
    },
  },
  {
    name: 'replaces the record and every unanswered entry at once; answered entries stay; forget drops the stream',
    async run(m) {
      let o = await m.make();
      await o.append('s', record(), [entry(1), entry(2), entry(3)]);
      await o.settle('s', record(), [{ pos: 1, answer: applied(8) }], []);
      await o.replace('s', record({ epoch: 4, nextSeq: 2, lastAcked: null, checkpoint: undefined }), [entry(3, { epoch: 4, seq: 1 })]);
      o = await reopened(m, o);
      const loaded = await o.load('s');
      same(loaded.record, record({ epoch: 4, nextSeq: 2, lastAcked: null, checkpoint: undefined }), 'record');
      same(plain(loaded.entries), plain([entry(1, { answer: applied(8) }), entry(3, { epoch: 4, seq: 1 })]), 'entries');
      await o.forget('s');
      o = await reopened(m, o);
      same(await o.load('s'), { record: null, entries: [] }, 'forgotten');
    },
  },
  {
    name: 'keeps the order of many entries across many writes',
    async run(m) {
      let o = await m.make();
      for (let i = 0; i < 10; i++)
        await o.append(
          's',
          record({ nextSeq: 100 + i }),
          Array.from({ length: 50 }, (_, j) => entry(1 + i * 50 + j)),
        );
      await o.settle(
        's',
        record({ nextSeq: 200 }),
        [],
        Array.from({ length: 250 }, (_, j) => 2 * j + 1),
      );
      o = await reopened(m, o);
      const loaded = await o.load('s');
      same(
        loaded.entries.map((e) => e.pos),
        Array.from({ length: 250 }, (_, j) => 2 * j + 2),
        'positions',
      );
      same(loaded.record?.nextSeq, 200, 'record');
    },
  },
];

type FeedOutbox = Outbox & OffsetStore & VersionStore;

function feed(o: Outbox): FeedOutbox {
  const f = o as Partial<FeedOutbox>;
  for (const m of ['loadOffset', 'saveOffset', 'appliedVersion', 'markApplied'] as const) {
    if (typeof f[m] !== 'function') throw new Error(`this outbox has no ${m}(): it does not keep offsets and versions`);
  }
  return o as FeedOutbox;
}

async function makeFeed(m: OutboxMaker): Promise<FeedOutbox> {
  return feed(await m.make());
}

async function reopenedFeed(m: OutboxMaker, o: FeedOutbox): Promise<FeedOutbox> {
  if (m.reopen === undefined) throw new Error('the offset contract needs reopen(): offsets must survive a restart');
  return feed(await m.reopen(o));
}

/** Offsets as the server writes them: fixed width, lexically sortable, with the database's id. */
const offset = (n: number): string => `${String(n).padStart(16, '0')}_5eed0f5e`;

export const offsetContract: ContractCase[] = [
  {
    name: 'starts with no offset and no applied version',
    async run(m) {
      const o = await makeFeed(m);
      same(await o.loadOffset('room/'), null, 'offset');
      same(await o.appliedVersion('room/1'), undefined, 'version');
    },
  },
  {
    name: 'saves an offset that loads after a reopen, and a later save overwrites it',
    async run(m) {
      let o = await makeFeed(m);
      await o.saveOffset('room/', offset(7));
      o = await reopenedFeed(m, o);
      same(await o.loadOffset('room/'), offset(7), 'after reopen');
      await o.saveOffset('room/', offset(12));
      same(await o.loadOffset('room/'), offset(12), 'overwritten');
      o = await reopenedFeed(m, o);
      same(await o.loadOffset('room/'), offset(12), 'overwritten, after reopen');
    },
  },
  {
    name: 'keeps the offsets of different names apart, including the empty prefix and names alike but for a character',
    async run(m) {
      let o = await makeFeed(m);
      const names = ['', 'room', 'room/', 'room/a', 'Room/', 'zimmer/ü', 'a:b', 'offset', 'version'];
      for (const [i, name] of names.entries()) await o.saveOffset(name, offset(100 + i));
      await o.saveOffset('room/', offset(999));
      o = await reopenedFeed(m, o);
      same(
        await Promise.all(names.map((n) => o.loadOffset(n))),
        names.map((n, i) => (n === 'room/' ? offset(999) : offset(100 + i))),
        'offsets by name',
      );
      same(await o.loadOffset('room/b'), null, 'a name never saved');
    },
  },
  {
    name: 'keeps the highest applied version per key across a reopen; a lower one never lowers it',
    async run(m) {
      let o = await makeFeed(m);
      await o.markApplied('a', 1);
      await o.markApplied('a', 3);
      await o.markApplied('b', 2);
      await o.markApplied('a', 2);
      o = await reopenedFeed(m, o);
      same([await o.appliedVersion('a'), await o.appliedVersion('b'), await o.appliedVersion('c')], [3, 2, undefined], 'versions');
      // Concurrent marks of one key, as two consumers of one outbox could make: the highest wins.
      await Promise.all([5, 9, 6, 8, 7].map((v) => o.markApplied('a', v)));
      o = await reopenedFeed(m, o);
      same(await o.appliedVersion('a'), 9, 'after concurrent marks');
    },
  },
  {
    name: 'keeps offsets and versions apart from streams of the same names; forgetting a stream leaves them',
    async run(m) {
      let o = await makeFeed(m);
      await o.saveOffset('s', offset(3));
      await o.markApplied('s', 4);
      await o.append('s', record(), [entry(1)]);
      o = await reopenedFeed(m, o);
      same(plain((await o.load('s')).entries), plain([entry(1)]), 'stream entries');
      same(await o.load('offset'), { record: null, entries: [] }, 'no stream appeared');
      await o.forget('s');
      o = await reopenedFeed(m, o);
      same(await o.load('s'), { record: null, entries: [] }, 'stream forgotten');
      same([await o.loadOffset('s'), await o.appliedVersion('s')], [offset(3), 4], 'offset and version kept');
    },
  },
  {
    name: 'a second instance on the same storage sees what the first saved, and the other way round (nothing cached per instance)',
    async run(m) {
      if (m.share === undefined) throw new Error('the offset contract needs share()');
      const a = await makeFeed(m);
      await a.saveOffset('room/', offset(1));
      await a.markApplied('k', 1);
      const b = feed(await m.share(a));
      same([await b.loadOffset('room/'), await b.appliedVersion('k')], [offset(1), 1], 'b sees a');
      await b.saveOffset('room/', offset(2));
      await b.markApplied('k', 2);
      same([await a.loadOffset('room/'), await a.appliedVersion('k')], [offset(2), 2], 'a sees b');
    },
  },
];
