import { describe, expect, it } from 'vitest';
import {
  backoffDelay,
  deadline,
  INITIAL_PHASE,
  publicState,
  stoppedBecause,
  transition,
  type Instruction,
  type LifecycleConfig,
  type LifecycleEvent,
  type Phase,
} from '../../packages/client/src/core/lifecycle.js';
import { ConnectionError, FencedError, ProtocolError } from '../../packages/client/src/errors.js';
import { DEFAULT_LIMITS, type ConnectionState, type WelcomeInfo } from '../../packages/client/src/types.js';

/**
 * The connection lifecycle (packages/client/src/core/lifecycle.ts), phase by event. The matrix
 * below feeds every sample event to every sample phase: the pairs listed in EFFECTS must give
 * exactly the phase and instructions listed; every other pair must change nothing and instruct
 * nothing (an event that does not belong to a phase, or names a socket already given up on).
 */

const CONFIG: LifecycleConfig = { connectTimeoutMs: 1000, putTimeoutMs: 2000, pingIntervalMs: 3000, pongTimeoutMs: 500, initialDelayMs: 100, maxDelayMs: 1000 };
const NOW = 10_000;
const HALF = (): number => 0.5;
const step = (phase: Phase, event: LifecycleEvent, now = NOW, jitter = HALF) => transition(CONFIG, phase, event, now, jitter);

const FENCED = new FencedError(9);
const WELCOME: WelcomeInfo = {
  server: 's',
  incarnation: 'inc',
  contiguous: false,
  head: { stream: 'a', epoch: 1, seq: 0, prunedThrough: 0 },
  limits: DEFAULT_LIMITS,
};
const BROKEN = new ProtocolError('PROTOCOL', 'broken welcome', false);
const UNDECODABLE = new ConnectionError('UNDECODABLE', 'bad frame');
const CONNECT_FAILED = new ConnectionError('CONNECT_FAILED', 'no socket');

// Backoff with HALF jitter: base/2 + base/4. Attempt 0: base 100 -> 75; attempt 1: base 200 -> 150.
const AFTER_0 = NOW + 75;
const AFTER_1 = NOW + 150;

const NONE = { count: 0, until: 0 };

const PHASES = {
  loading: INITIAL_PHASE,
  connecting: { kind: 'connecting', id: 2, since: 9900, attempt: 1, rebase: false, retry: NONE },
  authenticating: { kind: 'authenticating', id: 2, since: 9900, attempt: 1, rebase: false, retry: NONE },
  reconciling: { kind: 'reconciling', id: 2, since: 9900, attempt: 1, rebase: false, retry: NONE },
  open: { kind: 'open', id: 2, ping: { nextAt: 12_000, nonce: 0 }, rebase: false, retry: NONE },
  paused: { kind: 'paused', id: 2, ping: { sentAt: 9800, nonce: 1 }, rebase: false, retry: { count: 1, until: 10_500 } },
  backoff: { kind: 'backoff', until: 10_100, id: 2, attempt: 1, rebase: false, retry: NONE },
  'stopped, answers awaited': { kind: 'stopped', error: FENCED, id: 2 },
  stopped: { kind: 'stopped', error: FENCED, id: null },
  closing: { kind: 'closing', shown: 'connected', stopped: null },
  closed: { kind: 'closed', stopped: null },
} satisfies Record<string, Phase>;
type PhaseName = keyof typeof PHASES;

const EVENTS = {
  loaded: { type: 'loaded' },
  'tick, nothing due': { type: 'tick', oldestSentAt: null },
  'socket-failed 2': { type: 'socket-failed', id: 2, error: CONNECT_FAILED },
  'socket-open 2': { type: 'socket-open', id: 2 },
  'socket-closed 2 (1006)': { type: 'socket-closed', id: 2, code: 1006, reason: '' },
  'socket-closed 2 (4401)': { type: 'socket-closed', id: 2, code: 4401, reason: 'unauthorized' },
  'welcome 2': { type: 'welcome', id: 2, welcome: WELCOME },
  'welcome 2, broken': { type: 'welcome', id: 2, broken: BROKEN },
  'reconciled 2': { type: 'reconciled', id: 2, welcome: WELCOME },
  'pong 2, nonce 1': { type: 'pong', id: 2, nonce: 1 },
  'pong 2, nonce 7': { type: 'pong', id: 2, nonce: 7 },
  'lost 2, reported': { type: 'lost', id: 2, error: UNDECODABLE, report: true },
  acked: { type: 'acked' },
  transient: { type: 'transient' },
  hole: { type: 'hole' },
  'answers 2, none in flight': { type: 'answers', id: 2, inflight: 0 },
  'answers 2, 3 in flight': { type: 'answers', id: 2, inflight: 3 },
  stop: { type: 'stop', error: FENCED },
  shutdown: { type: 'shutdown' },
  closed: { type: 'closed' },
  // Late news from socket 1, given up on before socket 2 opened.
  'socket-failed 1': { type: 'socket-failed', id: 1, error: CONNECT_FAILED },
  'socket-open 1': { type: 'socket-open', id: 1 },
  'socket-closed 1 (1006)': { type: 'socket-closed', id: 1, code: 1006, reason: '' },
  'socket-closed 1 (4401)': { type: 'socket-closed', id: 1, code: 4401, reason: '' },
  'welcome 1': { type: 'welcome', id: 1, welcome: WELCOME },
  'reconciled 1': { type: 'reconciled', id: 1, welcome: WELCOME },
  'pong 1, nonce 1': { type: 'pong', id: 1, nonce: 1 },
  'lost 1, reported': { type: 'lost', id: 1, error: UNDECODABLE, report: true },
  'answers 1, none in flight': { type: 'answers', id: 1, inflight: 0 },
} satisfies Record<string, LifecycleEvent>;
type EventName = keyof typeof EVENTS;

const code = (c: string) => expect.objectContaining({ code: c });
const state = (s: ConnectionState, previous: ConnectionState, error?: unknown): Instruction =>
  (error === undefined ? { type: 'emit-state', state: s, previous } : { type: 'emit-state', state: s, previous, error }) as Instruction;

type Effect = readonly [Phase, readonly unknown[]];

/** What a joining phase (connecting, authenticating, reconciling; socket 2, attempt 1) does with the events every one of them handles. */
function joining(kind: 'connecting' | 'authenticating' | 'reconciling'): Partial<Record<EventName, Effect>> {
  const backoff: Phase = { kind: 'backoff', until: AFTER_1, id: 2, attempt: 2, rebase: false, retry: NONE };
  return {
    'socket-closed 2 (1006)': [backoff, [{ type: 'close-socket', id: 2, how: 'peer' }, state('disconnected', 'connecting', code('CONNECTION_CLOSED'))]],
    'socket-closed 2 (4401)': [
      { kind: 'stopped', error: code('UNAUTHORIZED'), id: null } as unknown as Phase,
      [
        { type: 'close-socket', id: 2, how: 'peer' },
        { type: 'fail-queued' },
        state('stopped', 'connecting', code('UNAUTHORIZED')),
        { type: 'stopped', error: code('UNAUTHORIZED') },
      ],
    ],
    'lost 2, reported': [
      backoff,
      [{ type: 'report', error: UNDECODABLE }, { type: 'close-socket', id: 2, how: 'dropped' }, state('disconnected', 'connecting', UNDECODABLE)],
    ],
    stop: [
      { kind: 'stopped', error: FENCED, id: null },
      [{ type: 'close-socket', id: 2, how: 'dropped' }, { type: 'fail-queued' }, state('stopped', 'connecting', FENCED), { type: 'stopped', error: FENCED }],
    ],
    shutdown: [{ kind: 'closing', shown: 'connecting', stopped: null }, [{ type: 'close-socket', id: 2, how: 'shutdown' }]],
    ...(kind === 'connecting'
      ? {
          'socket-failed 2': [backoff, [{ type: 'report', error: CONNECT_FAILED }, state('disconnected', 'connecting', CONNECT_FAILED)]],
          'socket-open 2': [{ ...PHASES.connecting, kind: 'authenticating' }, [{ type: 'send-hello', id: 2 }]],
        }
      : {}),
    ...(kind === 'authenticating'
      ? {
          'welcome 2': [{ ...PHASES.authenticating, kind: 'reconciling' }, [{ type: 'reconcile', id: 2, welcome: WELCOME, rebase: false }]],
          'welcome 2, broken': [
            backoff,
            [{ type: 'report', error: BROKEN }, { type: 'close-socket', id: 2, how: 'dropped' }, state('disconnected', 'connecting', BROKEN)],
          ],
        }
      : {}),
    ...(kind === 'reconciling'
      ? {
          'reconciled 2': [
            { kind: 'open', id: 2, ping: { nextAt: NOW + 3000, nonce: 0 }, rebase: false, retry: NONE },
            [{ type: 'welcomed', welcome: WELCOME }, state('connected', 'connecting'), { type: 'pump' }],
          ],
        }
      : {}),
  } as Partial<Record<EventName, Effect>>;
}

/** What open and paused (socket 2, connected) share. */
function connected(from: 'open' | 'paused'): Partial<Record<EventName, Effect>> {
  // The pause and the count of transient refusals outlive the socket.
  const backoff: Phase = { kind: 'backoff', until: AFTER_0, id: 2, attempt: 1, rebase: false, retry: PHASES[from].retry };
  return {
    'socket-closed 2 (1006)': [backoff, [{ type: 'close-socket', id: 2, how: 'peer' }, state('disconnected', 'connected', code('CONNECTION_CLOSED'))]],
    'socket-closed 2 (4401)': [
      { kind: 'stopped', error: code('UNAUTHORIZED'), id: null } as unknown as Phase,
      [
        { type: 'close-socket', id: 2, how: 'peer' },
        { type: 'fail-queued' },
        state('stopped', 'connected', code('UNAUTHORIZED')),
        { type: 'stopped', error: code('UNAUTHORIZED') },
      ],
    ],
    'lost 2, reported': [
      backoff,
      [{ type: 'report', error: UNDECODABLE }, { type: 'close-socket', id: 2, how: 'dropped' }, state('disconnected', 'connected', UNDECODABLE)],
    ],
    // Puts in flight on a welcomed socket still get their answers: the socket stays.
    stop: [{ kind: 'stopped', error: FENCED, id: 2 }, [{ type: 'fail-queued' }, state('stopped', 'connected', FENCED), { type: 'stopped', error: FENCED }]],
    shutdown: [{ kind: 'closing', shown: 'connected', stopped: null }, [{ type: 'close-socket', id: 2, how: 'shutdown' }]],
    hole: [{ ...PHASES[from], rebase: true } as Phase, []],
  };
}

const EFFECTS: Record<PhaseName, Partial<Record<EventName, Effect>>> = {
  loading: {
    loaded: [{ kind: 'connecting', id: 1, since: NOW, attempt: 0, rebase: false, retry: NONE }, [{ type: 'open-socket', id: 1 }]],
    stop: [{ kind: 'stopped', error: FENCED, id: null }, [{ type: 'fail-queued' }, state('stopped', 'connecting', FENCED), { type: 'stopped', error: FENCED }]],
    shutdown: [{ kind: 'closing', shown: 'connecting', stopped: null }, []],
  },
  connecting: joining('connecting'),
  authenticating: joining('authenticating'),
  reconciling: joining('reconciling'),
  open: {
    ...connected('open'),
    transient: [{ ...PHASES.open, kind: 'paused', retry: { count: 1, until: AFTER_0 } }, []],
    'answers 2, none in flight': [PHASES.open, [{ type: 'pump' }]],
    'answers 2, 3 in flight': [PHASES.open, [{ type: 'pump' }]],
  },
  paused: {
    ...connected('paused'),
    'pong 2, nonce 1': [{ ...PHASES.paused, ping: { nextAt: NOW + 3000, nonce: 1 } }, []],
    acked: [{ ...PHASES.paused, retry: { count: 0, until: 10_500 } }, []],
    // A second refusal never shortens the pause (count 1 alone would end it at AFTER_1 < 10 500).
    transient: [{ ...PHASES.paused, retry: { count: 2, until: 10_500 } }, []],
  },
  backoff: {
    stop: [
      { kind: 'stopped', error: FENCED, id: null },
      [{ type: 'fail-queued' }, state('stopped', 'disconnected', FENCED), { type: 'stopped', error: FENCED }],
    ],
    shutdown: [{ kind: 'closing', shown: 'disconnected', stopped: null }, []],
  },
  'stopped, answers awaited': {
    'socket-closed 2 (1006)': [PHASES.stopped, [{ type: 'close-socket', id: 2, how: 'peer' }, { type: 'fail-queued' }]],
    'socket-closed 2 (4401)': [PHASES.stopped, [{ type: 'close-socket', id: 2, how: 'peer' }, { type: 'fail-queued' }]],
    'lost 2, reported': [PHASES.stopped, [{ type: 'report', error: UNDECODABLE }, { type: 'close-socket', id: 2, how: 'dropped' }, { type: 'fail-queued' }]],
    'answers 2, none in flight': [PHASES.stopped, [{ type: 'close-socket', id: 2, how: 'dropped' }, { type: 'fail-queued' }]],
    shutdown: [{ kind: 'closing', shown: 'stopped', stopped: FENCED }, [{ type: 'close-socket', id: 2, how: 'shutdown' }]],
  },
  stopped: {
    shutdown: [{ kind: 'closing', shown: 'stopped', stopped: FENCED }, []],
  },
  closing: {
    closed: [{ kind: 'closed', stopped: null }, [state('closed', 'connected')]],
  },
  closed: {},
};

describe('lifecycle: every phase x event', () => {
  const cases = Object.keys(PHASES).flatMap((p) => Object.keys(EVENTS).map((e) => [p as PhaseName, e as EventName] as const));

  it.each(cases)('%s + %s', (p, e) => {
    const phase = PHASES[p];
    const out = step(phase, EVENTS[e]);
    const effect = EFFECTS[p][e];
    if (effect === undefined) {
      expect(out.phase).toEqual(phase);
      expect(out.instructions).toEqual([]);
      return;
    }
    expect(out.phase).toEqual(effect[0]);
    expect(out.instructions).toEqual(effect[1]);
  });

  it('lists effects only for events and phases the matrix has', () => {
    for (const [p, effects] of Object.entries(EFFECTS)) {
      expect(Object.keys(PHASES)).toContain(p);
      for (const e of Object.keys(effects)) expect(Object.keys(EVENTS)).toContain(e);
    }
  });
});

describe('lifecycle: deadlines', () => {
  it.each([
    ['backoff', PHASES.backoff, null, 10_100],
    ['connecting', PHASES.connecting, null, 9900 + 1000],
    ['authenticating', PHASES.authenticating, null, 9900 + 1000],
    ['reconciling', PHASES.reconciling, null, 9900 + 1000],
    ['open, idle: the next ping', PHASES.open, null, 12_000],
    ['open, a put in flight: its timeout when earlier', PHASES.open, 9000, 11_000],
    ['paused: the pong timeout before the end of the pause', PHASES.paused, null, 10_300],
    ['stopped with puts in flight: their timeout', PHASES['stopped, answers awaited'], 9000, 11_000],
    ['stopped, nothing in flight', PHASES['stopped, answers awaited'], null, Infinity],
    ['stopped, no socket', PHASES.stopped, 9000, Infinity],
    ['loading', PHASES.loading, null, Infinity],
    ['closing', PHASES.closing, 9000, Infinity],
    ['closed', PHASES.closed, 9000, Infinity],
  ] as const)('%s', (_name, phase, oldest, at) => {
    expect(deadline(phase, CONFIG, oldest)).toBe(at);
  });

  it('a paused phase wakes at the end of its pause when that comes first', () => {
    expect(deadline({ ...PHASES.paused, retry: { count: 1, until: 10_200 } }, CONFIG, null)).toBe(10_200);
  });
});

describe('lifecycle: ticks that find something due', () => {
  it('backoff over: opens the next socket and says connecting first', () => {
    expect(step(PHASES.backoff, { type: 'tick', oldestSentAt: null }, 10_100)).toEqual({
      phase: { kind: 'connecting', id: 3, since: 10_100, attempt: 1, rebase: false, retry: NONE },
      instructions: [state('connecting', 'disconnected'), { type: 'open-socket', id: 3 }],
    });
  });

  it.each(['connecting', 'authenticating', 'reconciling'] as const)('%s past connectTimeoutMs: counts a timeout and backs off longer', (kind) => {
    const out = step(PHASES[kind], { type: 'tick', oldestSentAt: null }, 10_900);
    expect(out.phase).toEqual({ kind: 'backoff', until: 10_900 + 150, id: 2, attempt: 2, rebase: false, retry: NONE });
    expect(out.instructions).toEqual([
      { type: 'count-timeout' },
      { type: 'close-socket', id: 2, how: 'dropped' },
      state('disconnected', 'connecting', code('TIMEOUT')),
    ]);
  });

  it.each([
    ['a put unanswered for putTimeoutMs', PHASES.open, 8000],
    ['a ping unanswered for pongTimeoutMs', { ...PHASES.paused, ping: { sentAt: 9500, nonce: 1 } }, null],
  ] as const)('connected, %s: the connection is dead', (_name, phase, oldest) => {
    const out = step(phase, { type: 'tick', oldestSentAt: oldest });
    expect(out.phase).toEqual({ kind: 'backoff', until: AFTER_0, id: 2, attempt: 1, rebase: false, retry: phase.retry });
    expect(out.instructions).toEqual([
      { type: 'count-timeout' },
      { type: 'close-socket', id: 2, how: 'dropped' },
      state('disconnected', 'connected', code('TIMEOUT')),
    ]);
  });

  it('open, ping due: sends ping 1 and waits for its pong', () => {
    expect(step(PHASES.open, { type: 'tick', oldestSentAt: null }, 12_000)).toEqual({
      phase: { ...PHASES.open, ping: { sentAt: 12_000, nonce: 1 } },
      instructions: [{ type: 'send-ping', id: 2, nonce: 1 }],
    });
  });

  it('paused, pause over and ping due: pings, opens and pumps', () => {
    const phase: Phase = { ...PHASES.paused, ping: { nextAt: 10_400, nonce: 1 } };
    expect(step(phase, { type: 'tick', oldestSentAt: null }, 10_500)).toEqual({
      phase: { kind: 'open', id: 2, ping: { sentAt: 10_500, nonce: 2 }, rebase: false, retry: { count: 1, until: 10_500 } },
      instructions: [{ type: 'send-ping', id: 2, nonce: 2 }, { type: 'pump' }],
    });
  });

  it('stopped, the puts awaited unanswered for putTimeoutMs: gives the socket up, and they fail', () => {
    expect(step(PHASES['stopped, answers awaited'], { type: 'tick', oldestSentAt: 8000 })).toEqual({
      phase: PHASES.stopped,
      instructions: [{ type: 'count-timeout' }, { type: 'close-socket', id: 2, how: 'dropped' }, { type: 'fail-queued' }],
    });
  });
});

describe('lifecycle: contiguous mode steps over a hole', () => {
  it('reconnects at once after the answers, and the next welcome re-numbers', () => {
    let phase: Phase = step(PHASES.open, { type: 'hole' }).phase;
    const dropped = step(phase, { type: 'answers', id: 2, inflight: 0 });
    expect(dropped.phase).toEqual({ kind: 'backoff', until: NOW, id: 2, attempt: 1, rebase: true, retry: NONE });
    expect(dropped.instructions).toEqual([{ type: 'close-socket', id: 2, how: 'dropped' }, state('disconnected', 'connected', code('REBASE'))]);
    phase = step(dropped.phase, { type: 'tick', oldestSentAt: null }).phase;
    expect(phase).toEqual({ kind: 'connecting', id: 3, since: NOW, attempt: 1, rebase: true, retry: NONE });
    // The hole survives a connection that fails before its welcome.
    phase = step(phase, { type: 'socket-closed', id: 3, code: 1006, reason: '' }).phase;
    expect(phase).toMatchObject({ kind: 'backoff', rebase: true });
    phase = step(phase, { type: 'tick', oldestSentAt: null }, NOW + 1000).phase;
    phase = step(phase, { type: 'socket-open', id: 4 }).phase;
    const welcomed = step(phase, { type: 'welcome', id: 4, welcome: WELCOME });
    expect(welcomed.instructions).toEqual([{ type: 'reconcile', id: 4, welcome: WELCOME, rebase: true }]);
    expect(step(welcomed.phase, { type: 'reconciled', id: 4, welcome: WELCOME }).phase).toMatchObject({ kind: 'open', rebase: false });
  });
});

describe('lifecycle: transient refusals', () => {
  /** Through a reconnect (socket 2 closes, socket 3 opens) to a reconciled welcome at `at`. */
  function reconnect(from: Phase, at: number): { phase: Phase; instructions: readonly Instruction[] } {
    let phase = step(from, { type: 'socket-closed', id: 2, code: 1006, reason: '' }).phase;
    phase = step(phase, { type: 'tick', oldestSentAt: null }, NOW + 100).phase;
    phase = step(phase, { type: 'socket-open', id: 3 }, NOW + 100).phase;
    phase = step(phase, { type: 'welcome', id: 3, welcome: WELCOME }, NOW + 100).phase;
    return step(phase, { type: 'reconciled', id: 3, welcome: WELCOME }, at);
  }

  it('a pause outlives the socket: a connection welcomed before its end starts paused, without pumping', () => {
    const out = reconnect(PHASES.paused, 10_400);
    expect(out.phase).toMatchObject({ kind: 'paused', id: 3, retry: { count: 1, until: 10_500 } });
    expect(out.instructions.map((i) => i.type)).toEqual(['welcomed', 'emit-state']);
    expect(deadline(out.phase, CONFIG, null)).toBe(10_500);
  });

  it('a connection welcomed after the pause opens and pumps; refusals keep counting until an ack', () => {
    const out = reconnect(PHASES.paused, 10_600);
    expect(out.phase).toMatchObject({ kind: 'open', id: 3, retry: { count: 1 } });
    expect(out.instructions.map((i) => i.type)).toEqual(['welcomed', 'emit-state', 'pump']);
    // Count 1: base 200, so 150 with HALF jitter (a fresh count would give 75).
    const again = step(out.phase, { type: 'transient' }, 10_600);
    expect(again.phase).toMatchObject({ kind: 'paused', retry: { count: 2, until: 10_750 } });
    const acked = step(again.phase, { type: 'acked' }, 10_600).phase;
    expect(step(step(acked, { type: 'tick', oldestSentAt: null }, 10_750).phase, { type: 'transient' }, 10_750).phase).toMatchObject({
      retry: { count: 1, until: 10_750 + 75 },
    });
  });
});

describe('lifecycle: backoff', () => {
  it.each([
    [0, 0, 50],
    [0, 0.999, 99.95],
    [1, 0, 100],
    [3, 0.5, 600],
    [4, 0, 500],
    [4, 0.999, 999.5],
    [60, 0.5, 750],
  ])('attempt %i, jitter %d: %d ms (at least half the base, doubling, capped)', (attempt, jitter, ms) => {
    expect(backoffDelay(CONFIG, attempt, () => jitter)).toBeCloseTo(ms, 6);
  });

  it('an immediate reconnect draws no jitter; a scheduled one draws exactly one', () => {
    let draws = 0;
    const count = (): number => {
      draws++;
      return 0.5;
    };
    step({ ...PHASES.open, rebase: true }, { type: 'answers', id: 2, inflight: 0 }, NOW, count);
    expect(draws).toBe(0);
    step(PHASES.open, { type: 'socket-closed', id: 2, code: 1006, reason: '' }, NOW, count);
    expect(draws).toBe(1);
  });
});

describe('lifecycle: the public view', () => {
  it.each([
    ['loading', 'connecting'],
    ['connecting', 'connecting'],
    ['authenticating', 'connecting'],
    ['reconciling', 'connecting'],
    ['open', 'connected'],
    ['paused', 'connected'],
    ['backoff', 'disconnected'],
    ['stopped, answers awaited', 'stopped'],
    ['stopped', 'stopped'],
    ['closing', 'connected'],
    ['closed', 'closed'],
  ] as const)('%s shows as %s', (p, s) => {
    expect(publicState(PHASES[p])).toBe(s);
  });

  it('remembers why it stopped through close', () => {
    let phase: Phase = step(PHASES.open, { type: 'stop', error: FENCED }).phase;
    expect(stoppedBecause(phase)).toBe(FENCED);
    phase = step(phase, { type: 'shutdown' }).phase;
    expect(stoppedBecause(phase)).toBe(FENCED);
    phase = step(phase, { type: 'closed' }).phase;
    expect(stoppedBecause(phase)).toBe(FENCED);
    expect(stoppedBecause(PHASES.open)).toBeUndefined();
  });

  it('a whole life emits the documented state sequence, each change once', () => {
    const events: LifecycleEvent[] = [
      { type: 'loaded' },
      { type: 'socket-open', id: 1 },
      { type: 'welcome', id: 1, welcome: WELCOME },
      { type: 'reconciled', id: 1, welcome: WELCOME },
      { type: 'transient' },
      { type: 'tick', oldestSentAt: null },
      { type: 'socket-closed', id: 1, code: 1006, reason: '' },
      { type: 'tick', oldestSentAt: null },
      { type: 'socket-failed', id: 2, error: CONNECT_FAILED },
      { type: 'tick', oldestSentAt: null },
      { type: 'socket-open', id: 3 },
      { type: 'welcome', id: 3, welcome: WELCOME },
      { type: 'reconciled', id: 3, welcome: WELCOME },
      { type: 'stop', error: FENCED },
      { type: 'answers', id: 3, inflight: 0 },
      { type: 'shutdown' },
      { type: 'closed' },
    ];
    let phase: Phase = INITIAL_PHASE;
    let now = NOW;
    const seen: string[] = [];
    for (const event of events) {
      now += 1000;
      const out = step(phase, event, now);
      phase = out.phase;
      for (const i of out.instructions) if (i.type === 'emit-state') seen.push(`${i.previous}>${i.state}`);
    }
    expect(seen).toEqual([
      'connecting>connected',
      'connected>disconnected',
      'disconnected>connecting',
      'connecting>disconnected',
      'disconnected>connecting',
      'connecting>connected',
      'connected>stopped',
      'stopped>closed',
    ]);
  });
});
