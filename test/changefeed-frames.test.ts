import { describe, expect, it } from 'vitest';
import { changeForMsgpack, changeJson } from '../src/feed/change-wire.js';
import { ChangesFrames } from '../src/feed/changes-frames.js';
import { formatOffset } from '../src/feed/offset.js';
import { canonicalEncode } from '../src/protocol/canonical.js';
import { encodeMessage } from '../src/protocol/codec.js';
import type { Change, ChangePage } from '../src/store/change-log.js';

/**
 * The shared `changes` messages must be exactly what encoding each subscriber's message on its
 * own produced: same bytes in both formats, cut at the same places, for every kind of id.
 */

const INCARNATION = 'db-1';
const LIMITS = { maxBytes: 65536, maxDepth: 32, bytesLimitName: 'maxStateBytes', depthLimitName: 'maxStateDepth' };

function change(offset: number, bytes = 20): Change {
  return {
    offset,
    key: `k/${offset}`,
    version: offset,
    deleted: offset % 5 === 0,
    state: offset % 5 === 0 ? null : canonicalEncode({ n: offset, pad: 'x'.repeat(bytes) }, LIMITS, 'state'),
    origin: offset % 2 === 0 ? { stream: 's', epoch: 1, seq: offset } : { route: 'PUT /v1/docs/{key}' },
    // Past 2^32: encoded as an int64 in msgpack, the case the widening exists for.
    committedAt: 1_764_000_000_000 + offset,
  };
}

function page(changes: Change[], next: number, tail: number): ChangePage {
  return { expired: false, changes, next, tail, trimmedThrough: 0 };
}

/** What the server sent before the messages were shared: one message encoded per subscriber. */
function separately(p: ChangePage, id: string | number | null, format: 'json' | 'msgpack', cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (const end of cuts) {
    const last = end === p.changes.length;
    const slice = p.changes.slice(start, end);
    const message = {
      type: 'changes',
      id,
      changes: format === 'json' ? slice.map((c) => JSON.parse(changeJson(c, INCARNATION)) as unknown) : slice.map((c) => changeForMsgpack(c, INCARNATION)),
      next: formatOffset(last ? p.next : slice[slice.length - 1]!.offset, INCARNATION),
      upToDate: last && p.next >= p.tail,
    };
    const encoded = encodeMessage(message, format);
    out.push(typeof encoded === 'string' ? Buffer.from(encoded) : encoded);
    start = end;
  }
  return out;
}

describe('ChangesFrames', () => {
  for (const format of ['json', 'msgpack'] as const) {
    for (const id of [1, 'feed-ü', null, 2 ** 40]) {
      it(`${format}, id ${JSON.stringify(id)}: the same bytes as encoding the message alone`, () => {
        const frames = new ChangesFrames(INCARNATION, 1 << 20);
        const p = page(
          [1, 2, 3, 4, 5, 6].map((n) => change(n)),
          9,
          9,
        );
        const messages = frames.messages(p, format);
        expect(messages.map((m) => m.count)).toEqual([6]);
        expect(messages.map((m) => m.frame(id))).toEqual(separately(p, id, format, [6]));
      });
    }

    it(`${format}: a page over the byte budget is cut into several messages, the last one up to date`, () => {
      // Each change is estimated at about 1,200 bytes (JSON doubles the state): 3 or 2 per 4 KiB.
      const frames = new ChangesFrames(INCARNATION, 4096);
      const p = page(
        [1, 2, 3, 4, 6, 7, 8].map((n) => change(n, 1000)),
        12,
        12,
      );
      const messages = frames.messages(p, format);
      const cuts = messages.reduce<number[]>((acc, m) => [...acc, (acc.at(-1) ?? 0) + m.count], []);
      expect(messages.length).toBeGreaterThan(1);
      expect(messages.map((m) => m.frame('x'))).toEqual(separately(p, 'x', format, cuts));
      expect(messages.at(-1)!.through).toBe(12);
    });
  }

  it('shares: the same page and id give the same Buffer; another id its own message', () => {
    const frames = new ChangesFrames(INCARNATION, 1 << 20);
    const p = page([change(1), change(2)], 2, 3);
    const a = frames.messages(p, 'msgpack')[0]!;
    expect(frames.messages(p, 'msgpack')[0]).toBe(a);
    expect(a.frame(1)).toBe(a.frame(1));
    expect(a.frame(2)).not.toEqual(a.frame(1));
    expect(a.frame('1')).not.toEqual(a.frame(1));
    // Not up to date: the page stopped below the tail.
    expect(separately(p, 1, 'msgpack', [2])[0]).toEqual(a.frame(1));
  });
});
