import { describe, expect, it } from 'vitest';
import { comparePositions, later, numberBatch, renumber } from '../../packages/client/src/core/numbering.js';
import { decideOutcome, type OutcomeInstruction } from '../../packages/client/src/core/outcome.js';
import { planReconcile, type ReconcileInput } from '../../packages/client/src/core/reconcile.js';
import type { StreamRecord } from '../../packages/client/src/outbox.js';

/** The client's pure core, table by table: numbering, the outcome table, reconcile on a welcome. */

const rec = (over: Partial<StreamRecord> = {}): StreamRecord => ({
  epoch: 2,
  nextSeq: 5,
  lastAcked: { epoch: 2, seq: 3 },
  incarnation: 'inc-A',
  checkpoint: undefined,
  ...over,
});

describe('numbering', () => {
  it.each([
    [
      'numbers in call order from nextSeq',
      rec(),
      [undefined, undefined],
      [
        [2, 5],
        [2, 6],
      ],
      7,
      undefined,
    ],
    [
      'leaves puts unnumbered before the first welcome',
      rec({ epoch: null, nextSeq: 1 }),
      [undefined, undefined],
      [
        [0, 0],
        [0, 0],
      ],
      1,
      undefined,
    ],
    [
      'keeps the checkpoint of the last put carrying one',
      rec({ checkpoint: 'old' }),
      [{ value: 1 }, undefined, { value: 3 }, undefined],
      [
        [2, 5],
        [2, 6],
        [2, 7],
        [2, 8],
      ],
      9,
      3,
    ],
    ['keeps the old checkpoint when no put carries one', rec({ checkpoint: 'old' }), [undefined], [[2, 5]], 6, 'old'],
  ] as const)('%s', (_name, record, checkpoints, positions, nextSeq, checkpoint) => {
    const out = numberBatch(
      record,
      checkpoints.map((c) => ({ checkpoint: c })),
    );
    expect(out.positions.map((p) => [p.epoch, p.seq])).toEqual(positions);
    expect(out.record).toEqual({ ...record, nextSeq, checkpoint });
  });

  it('renumbers open puts from seq 1 of a new epoch, in order', () => {
    expect(renumber(rec(), 7, 3)).toEqual({
      positions: [
        { epoch: 7, seq: 1 },
        { epoch: 7, seq: 2 },
        { epoch: 7, seq: 3 },
      ],
      record: rec({ epoch: 7, nextSeq: 4 }),
    });
    expect(renumber(rec(), 7, 0).record.nextSeq).toBe(1);
  });

  it.each([
    [null, { epoch: 1, seq: 1 }, { epoch: 1, seq: 1 }],
    [
      { epoch: 1, seq: 9 },
      { epoch: 2, seq: 1 },
      { epoch: 2, seq: 1 },
    ],
    [
      { epoch: 2, seq: 9 },
      { epoch: 2, seq: 3 },
      { epoch: 2, seq: 9 },
    ],
  ])('later(%j, %j) is %j', (a, b, expected) => {
    expect(later(a, b)).toEqual(expected);
    expect(Math.sign(comparePositions(expected, b))).toBeGreaterThanOrEqual(0);
  });
});

describe('the outcome table', () => {
  const put = { stream: 's', epoch: 2, seq: 5, key: 'k' };
  const ack = { stream: 's', epoch: 2, seq: 5, key: 'k', version: 4, deleted: false, committedAt: 1 };
  const err = (outcome: string, error: Record<string, unknown>) => ({ id: 5, outcome, error: { message: outcome, retryable: false, ...error } });
  const summary = (d: OutcomeInstruction): unknown => {
    switch (d.kind) {
      case 'resolve':
        return ['resolve', d.result.replay];
      case 'reject':
        return ['reject', d.error.name, d.error.code, d.acked, d.stop?.name ?? null, d.hole];
      case 'requeue':
        return ['requeue', d.rebase];
      case 'retry':
        return ['retry', d.error.code];
    }
  };
  const open = new Set(['2:4']);
  const ctx = (lastAcked: { epoch: number; seq: number } | null = { epoch: 2, seq: 3 }) => ({
    put,
    lastAcked,
    isOpen: (p: { epoch: number; seq: number }) => open.has(`${p.epoch}:${p.seq}`),
  });

  it.each([
    ['applied', { outcome: 'applied', replay: false, ack }, ctx(), ['resolve', false]],
    ['applied as a replay', { outcome: 'applied', replay: true, ack }, ctx(), ['resolve', true]],
    [
      'version conflict: acked, settles, continues',
      { outcome: 'version_conflict', replay: false, ack: { ...ack, ifVersion: 3 } },
      ctx(),
      ['reject', 'VersionConflictError', 'VERSION_CONFLICT', true, null, false],
    ],
    ['fenced: stops with the same error', err('fenced', { code: 'FENCED', epoch: 3 }), ctx(), ['reject', 'FencedError', 'FENCED', false, 'FencedError', false]],
    [
      'stale by another writer: stops with a writer conflict',
      err('stale', { code: 'STALE', head: { epoch: 2, seq: 9 } }),
      ctx(),
      ['reject', 'StaleError', 'STALE', false, 'WriterConflictError', false],
    ],
    [
      'stale by its own later put: continues',
      err('stale', { code: 'STALE', head: { epoch: 2, seq: 9 } }),
      ctx({ epoch: 2, seq: 6 }),
      ['reject', 'StaleError', 'STALE', false, null, false],
    ],
    [
      'sequence reused: stops with a writer conflict',
      err('sequence_reused', { code: 'SEQUENCE_REUSED' }),
      ctx(),
      ['reject', 'SequenceReusedError', 'SEQUENCE_REUSED', false, 'WriterConflictError', false],
    ],
    [
      'expired: settles, continues',
      err('expired', { code: 'EXPIRED', head: { epoch: 2, seq: 9 }, prunedThrough: 6 }),
      ctx(),
      ['reject', 'ExpiredError', 'EXPIRED', false, null, false],
    ],
    ['gap for a lower seq still on its way: waits', err('gap', { code: 'GAP', expected: { epoch: 2, seq: 4 } }), ctx(), ['requeue', false]],
    ['gap for a lower seq that will never come: rebases', err('gap', { code: 'GAP', expected: { epoch: 2, seq: 2 } }), ctx(), ['requeue', true]],
    [
      'gap for another epoch: GapError, a hole',
      err('gap', { code: 'GAP', expected: { epoch: 3, seq: 1 } }),
      ctx(),
      ['reject', 'GapError', 'GAP', false, null, true],
    ],
    [
      'invalid: a hole',
      err('invalid', { code: 'LIMIT_EXCEEDED', field: 'state', limit: 'maxStateBytes', max: 10 }),
      ctx(),
      ['reject', 'InvalidPutError', 'LIMIT_EXCEEDED', false, null, true],
    ],
    ['forbidden: a hole', err('forbidden', { code: 'FORBIDDEN' }), ctx(), ['reject', 'ForbiddenError', 'FORBIDDEN', false, null, true]],
    ['a retryable error: retried', err('error', { code: 'STORAGE_UNAVAILABLE', retryable: true }), ctx(), ['retry', 'STORAGE_UNAVAILABLE']],
    [
      'an unknown outcome: ProtocolError, a hole',
      err('from_the_future', { code: 'NEW_THING' }),
      ctx(),
      ['reject', 'ProtocolError', 'NEW_THING', false, null, true],
    ],
  ] as const)('%s', (_name, answer, context, expected) => {
    expect(summary(decideOutcome(answer as unknown as Record<string, unknown>, context))).toEqual(expected);
  });
});

describe('reconcile on a welcome', () => {
  const input = (over: Partial<ReconcileInput> = {}): ReconcileInput => ({
    stream: 's',
    record: rec(),
    head: { stream: 's', epoch: 2, seq: 4, prunedThrough: 0 },
    incarnation: 'inc-A',
    policy: 'reject',
    needRebase: false,
    open: 1,
    ...over,
  });
  const head = (epoch: number, seq: number) => ({ stream: 's', epoch, seq, prunedThrough: 0 });

  it.each([
    ['same server, nothing to do', input(), { kind: 'continue', rollback: null, renumber: null, store: null }],
    [
      'first welcome of a record without incarnation: store it',
      input({ record: rec({ incarnation: null }) }),
      { kind: 'continue', rollback: null, renumber: null, store: rec() },
    ],
    [
      'new stream: epoch 1',
      input({ record: rec({ epoch: null, nextSeq: 1, lastAcked: null, incarnation: null }), head: head(0, 0) }),
      {
        kind: 'continue',
        rollback: null,
        store: null,
        renumber: { base: rec({ epoch: null, nextSeq: 1, lastAcked: null }), epoch: { epoch: 1, previous: null, reason: 'new-stream', head: head(0, 0) } },
      },
    ],
    [
      'counter loss: above the head epoch',
      input({ record: rec({ epoch: null, nextSeq: 1, lastAcked: null, incarnation: null }), head: head(4, 17) }),
      {
        kind: 'continue',
        rollback: null,
        store: null,
        renumber: { base: rec({ epoch: null, nextSeq: 1, lastAcked: null }), epoch: { epoch: 5, previous: null, reason: 'counter-loss', head: head(4, 17) } },
      },
    ],
    [
      'contiguous hole: a new epoch',
      input({ needRebase: true, head: head(2, 4) }),
      { kind: 'continue', rollback: null, store: null, renumber: { base: rec(), epoch: { epoch: 3, previous: 2, reason: 'gap', head: head(2, 4) } } },
    ],
  ] as const)('%s', (_name, i, plan) => {
    expect(planReconcile(i)).toEqual(plan);
  });

  it('a replaced database with policy reject: every open put rejected, a new epoch above both', () => {
    const plan = planReconcile(input({ incarnation: 'inc-B', head: head(6, 1), open: 3 }));
    expect(plan).toMatchObject({
      kind: 'reject-open',
      rollback: {
        reason: 'incarnation',
        previousIncarnation: 'inc-A',
        incarnation: 'inc-B',
        lastAcked: { epoch: 2, seq: 3 },
        head: { epoch: 6, seq: 1 },
        pending: 3,
        policy: 'reject',
        epoch: 7,
      },
      record: rec({ epoch: 7, nextSeq: 1, lastAcked: null, incarnation: 'inc-B' }),
      epoch: { epoch: 7, previous: 2, reason: 'rollback' },
    });
  });

  it('a head behind what was acked with policy resend: acks forgotten, puts resent in their epoch', () => {
    const plan = planReconcile(input({ head: head(2, 1), policy: 'resend' }));
    expect(plan).toMatchObject({
      kind: 'continue',
      renumber: null,
      store: null,
      rollback: { info: { reason: 'head-behind', epoch: 2, policy: 'resend' }, record: rec({ lastAcked: null }) },
    });
  });
});
