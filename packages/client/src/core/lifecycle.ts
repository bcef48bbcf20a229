import { AuthenticationError, ConnectionError, type SeqgateClientError } from '../errors.js';
import type { ConnectionState, WelcomeInfo } from '../types.js';
import { CLOSE_CODES } from '../wire/constants.js';

/**
 * The connection lifecycle as one state machine: a `phase` and a pure `transition` from
 * (phase, event, now) to the next phase and the instructions the client carries out (open a
 * socket, send the hello, close it, pump puts, emit a state change). Nothing here touches a
 * socket, a timer or the outbox, so every phase x event pair is table-tested
 * (test/client/lifecycle.test.ts) and client.ts stays a shell.
 *
 * Sockets are named by `id` (1, 2, ... in the order they are opened); an event naming a socket
 * other than the phase's is late news from a socket already given up on, and changes nothing.
 * The one timer of the client is derived, not instructed: `deadline(phase, ...)` says when the
 * next `tick` is due, and the shell re-arms after every transition and every send.
 */

export interface LifecycleConfig {
  /** Socket open plus welcome (and reconcile) must take less than this. */
  readonly connectTimeoutMs: number;
  readonly putTimeoutMs: number;
  readonly pingIntervalMs: number;
  readonly pongTimeoutMs: number;
  /** Reconnect and transient-error backoff: doubles from here ... */
  readonly initialDelayMs: number;
  /** ... up to here, with equal jitter. */
  readonly maxDelayMs: number;
}

/** While connected: either a ping is due at `nextAt`, or ping `nonce` went out at `sentAt`. */
export type Ping = { readonly nextAt: number; readonly nonce: number } | { readonly sentAt: number; readonly nonce: number };

/**
 * Transient refusals since the last ack (the exponent of the next pause) and when sending may
 * resume. Both outlive a connection, so a server that keeps refusing is not hammered through
 * reconnects.
 */
export interface Retry {
  readonly count: number;
  readonly until: number;
}

/** What a phase carries from one socket to the next until a welcome or an ack settles it. */
interface Carried {
  /** Contiguous mode left a hole in this epoch: reconnect, and the next welcome moves to a new epoch. */
  readonly rebase: boolean;
  readonly retry: Retry;
}

/** A welcomed socket: its id and its ping. */
interface Connected extends Carried {
  readonly id: number;
  readonly ping: Ping;
}

/** A socket on its way to a welcome. `attempt`: connections failed since the last welcome. */
interface Joining extends Carried {
  readonly id: number;
  /** When the socket was created; the connect timeout counts from here. */
  readonly since: number;
  readonly attempt: number;
}

export type Phase =
  /** The outbox is loading; no socket yet. */
  | { readonly kind: 'loading' }
  /** Socket `id` is opening. */
  | ({ readonly kind: 'connecting' } & Joining)
  /** The hello is sent; waiting for the welcome. */
  | ({ readonly kind: 'authenticating' } & Joining)
  /** Welcomed; the outbox is being reconciled with the welcome before anything is sent. */
  | ({ readonly kind: 'reconciling' } & Joining)
  /** Puts flow. */
  | ({ readonly kind: 'open' } & Connected)
  /** Connected, but the server refused a put with a retryable error: no sends until `retry.until`. */
  | ({ readonly kind: 'paused' } & Connected)
  /** No socket; the next one opens at `until`. `id`: the last socket's (0: none yet). */
  | ({ readonly kind: 'backoff'; readonly until: number; readonly id: number; readonly attempt: number } & Carried)
  /**
   * No more writes, for `error`. `id`: the socket kept open until the puts in flight on it are
   * answered (docs/CLIENT.md: they still get their own answers); null once there is none.
   */
  | { readonly kind: 'stopped'; readonly error: SeqgateClientError; readonly id: number | null }
  /** close() drained or timed out: the socket is closed; leftovers are being settled. */
  | { readonly kind: 'closing'; readonly shown: ConnectionState; readonly stopped: SeqgateClientError | null }
  | { readonly kind: 'closed'; readonly stopped: SeqgateClientError | null };

export type LifecycleEvent =
  /** The outbox loaded: open the first socket. */
  | { readonly type: 'loaded' }
  /** The timer fired. `oldestSentAt`: when the oldest unanswered put went out (null: none). */
  | { readonly type: 'tick'; readonly oldestSentAt: number | null }
  /** The WebSocket constructor threw. */
  | { readonly type: 'socket-failed'; readonly id: number; readonly error: SeqgateClientError }
  | { readonly type: 'socket-open'; readonly id: number }
  /** The server closed the socket, or the network did. */
  | { readonly type: 'socket-closed'; readonly id: number; readonly code: number; readonly reason: string }
  /** A welcome arrived: a usable one, or `broken` (without this stream's head or an incarnation). */
  | { readonly type: 'welcome'; readonly id: number; readonly welcome: WelcomeInfo }
  | { readonly type: 'welcome'; readonly id: number; readonly broken: SeqgateClientError }
  /** The outbox is reconciled with the welcome. */
  | { readonly type: 'reconciled'; readonly id: number; readonly welcome: WelcomeInfo }
  | { readonly type: 'pong'; readonly id: number; readonly nonce: unknown }
  /**
   * The client gives up on socket `id`: a send failed, a frame did not decode, the reconcile
   * failed, the server refused the hello but said to retry. `report`: also an `error` event.
   */
  | { readonly type: 'lost'; readonly id: number; readonly error: SeqgateClientError; readonly report: boolean }
  /** A put was acked: transient refusals no longer count. */
  | { readonly type: 'acked' }
  /** A put was refused with a retryable error: pause sending, longer each time. */
  | { readonly type: 'transient' }
  /** Contiguous mode: a put was refused without consuming its seq. */
  | { readonly type: 'hole' }
  /** A `results` or `error` message was handled; `inflight` puts are still unanswered on `id`. */
  | { readonly type: 'answers'; readonly id: number; readonly inflight: number }
  /** Stop writing for good (fenced, another writer, refused hello or token, outbox load failed). */
  | { readonly type: 'stop'; readonly error: SeqgateClientError }
  /** close() drained, or stopped waiting. */
  | { readonly type: 'shutdown' }
  /** close() settled what was left. */
  | { readonly type: 'closed' };

export type Instruction =
  | { readonly type: 'open-socket'; readonly id: number }
  | { readonly type: 'send-hello'; readonly id: number }
  | { readonly type: 'send-ping'; readonly id: number; readonly nonce: number }
  /**
   * Forget socket `id`: its unanswered puts go back to the queue; close it, unless the peer did
   * (`peer`). `dropped`: given up on (ws can terminate at once). `shutdown`: close(1000).
   */
  | { readonly type: 'close-socket'; readonly id: number; readonly how: 'dropped' | 'peer' | 'shutdown' }
  /** Outbox reconcile with this welcome; `rebase`: move the open puts to a new epoch. */
  | { readonly type: 'reconcile'; readonly id: number; readonly welcome: WelcomeInfo; readonly rebase: boolean }
  /** The `welcome` event. */
  | { readonly type: 'welcomed'; readonly welcome: WelcomeInfo }
  /** Send what the window allows. */
  | { readonly type: 'pump' }
  /** Settle every queued put (and reject every unrecorded one) with the stop error. */
  | { readonly type: 'fail-queued' }
  /** The `stopped` event. */
  | { readonly type: 'stopped'; readonly error: SeqgateClientError }
  /** The `error` event. */
  | { readonly type: 'report'; readonly error: SeqgateClientError }
  /** A connection was given up as dead (stats.timeouts). */
  | { readonly type: 'count-timeout' }
  /** The `state` event; public states only change through this. */
  | { readonly type: 'emit-state'; readonly state: ConnectionState; readonly previous: ConnectionState; readonly error?: SeqgateClientError };

export interface Step {
  readonly phase: Phase;
  readonly instructions: readonly Instruction[];
}

export const INITIAL_PHASE: Phase = { kind: 'loading' };

/** The public ConnectionState of a phase (docs/CLIENT.md: Events). */
export function publicState(phase: Phase): ConnectionState {
  switch (phase.kind) {
    case 'loading':
    case 'connecting':
    case 'authenticating':
    case 'reconciling':
      return 'connecting';
    case 'open':
    case 'paused':
      return 'connected';
    case 'backoff':
      return 'disconnected';
    case 'stopped':
      return 'stopped';
    case 'closing':
      return phase.shown;
    case 'closed':
      return 'closed';
  }
}

/** Why the client stopped writing, in any phase after it did. */
export function stoppedBecause(phase: Phase): SeqgateClientError | undefined {
  if (phase.kind === 'stopped') return phase.error;
  if (phase.kind === 'closing' || phase.kind === 'closed') return phase.stopped ?? undefined;
  return undefined;
}

/** The socket the phase holds, if any. */
function socketOf(phase: Phase): number | null {
  switch (phase.kind) {
    case 'connecting':
    case 'authenticating':
    case 'reconciling':
    case 'open':
    case 'paused':
    case 'stopped':
      return phase.id;
    default:
      return null;
  }
}

/** When the next `tick` is due (Infinity: none). `oldestSentAt` as in the tick event. */
export function deadline(phase: Phase, config: LifecycleConfig, oldestSentAt: number | null): number {
  switch (phase.kind) {
    case 'connecting':
    case 'authenticating':
    case 'reconciling':
      return phase.since + config.connectTimeoutMs;
    case 'backoff':
      return phase.until;
    case 'open':
    case 'paused': {
      let at = 'sentAt' in phase.ping ? phase.ping.sentAt + config.pongTimeoutMs : phase.ping.nextAt;
      if (oldestSentAt !== null) at = Math.min(at, oldestSentAt + config.putTimeoutMs);
      if (phase.kind === 'paused') at = Math.min(at, phase.retry.until);
      return at;
    }
    case 'stopped':
      return phase.id !== null && oldestSentAt !== null ? oldestSentAt + config.putTimeoutMs : Infinity;
    default:
      return Infinity;
  }
}

/** Exponential backoff with equal jitter: never hammer (at least half), never in lockstep. */
export function backoffDelay(config: LifecycleConfig, attempt: number, jitter: () => number): number {
  const base = Math.min(config.maxDelayMs, config.initialDelayMs * 2 ** Math.min(attempt, 30));
  return base / 2 + (jitter() * base) / 2;
}

const NOTHING: readonly Instruction[] = [];
const FRESH: Carried = { rebase: false, retry: { count: 0, until: 0 } };

function same(phase: Phase): Step {
  return { phase, instructions: NOTHING };
}

/** `instructions`, with the `state` event spliced in at `at` when the public state changes. */
function to(from: Phase, phase: Phase, instructions: Instruction[], error?: SeqgateClientError, at = instructions.length): Step {
  const previous = publicState(from);
  const state = publicState(phase);
  if (state !== previous)
    instructions.splice(at, 0, error === undefined ? { type: 'emit-state', state, previous } : { type: 'emit-state', state, previous, error });
  return { phase, instructions };
}

/**
 * Gives up on the phase's socket (or on the socket that never opened: `how` null), then waits
 * before the next one; `immediate` for a reconnect on purpose (REBASE). A stopped client stays
 * stopped, and what was in flight fails.
 */
function disconnect(
  from: Phase,
  how: 'dropped' | 'peer' | null,
  error: SeqgateClientError,
  now: number,
  config: LifecycleConfig,
  jitter: () => number,
  immediate = false,
): Step {
  const id = socketOf(from);
  const close: Instruction[] = how !== null && id !== null ? [{ type: 'close-socket', id, how }] : [];
  if (from.kind === 'stopped') return to(from, { kind: 'stopped', error: from.error, id: null }, [...close, { type: 'fail-queued' }]);
  const joining = from.kind === 'connecting' || from.kind === 'authenticating' || from.kind === 'reconciling';
  const attempt = joining ? from.attempt : 0;
  const carried: Carried = 'rebase' in from ? { rebase: from.rebase, retry: from.retry } : FRESH;
  const until = now + (immediate ? 0 : backoffDelay(config, attempt, jitter));
  return to(from, { kind: 'backoff', until, id: id ?? 0, attempt: attempt + 1, ...carried }, close, error);
}

/**
 * Stops for good. Puts in flight on a welcomed socket still get their answers, so that socket
 * stays (unless the peer closed it); a socket before its welcome has none and closes.
 */
function stop(from: Phase, error: SeqgateClientError, peer?: 'peer'): Step {
  const id = socketOf(from);
  const keep = peer === undefined && (from.kind === 'open' || from.kind === 'paused');
  const close: Instruction[] = id !== null && !keep ? [{ type: 'close-socket', id, how: peer ?? 'dropped' }] : [];
  const instructions: Instruction[] = [...close, { type: 'fail-queued' }, { type: 'stopped', error }];
  return to(from, { kind: 'stopped', error, id: keep ? id : null }, instructions, error, instructions.length - 1);
}

function timeout(why: string): SeqgateClientError {
  return new ConnectionError('TIMEOUT', `connection considered dead: ${why}`);
}

export function transition(config: LifecycleConfig, phase: Phase, event: LifecycleEvent, now: number, jitter: () => number): Step {
  if (phase.kind === 'closed') return same(phase);
  if (phase.kind === 'closing') return event.type === 'closed' ? to(phase, { kind: 'closed', stopped: phase.stopped }, []) : same(phase);
  switch (event.type) {
    case 'loaded':
      if (phase.kind !== 'loading') return same(phase);
      return to(phase, { kind: 'connecting', id: 1, since: now, attempt: 0, ...FRESH }, [{ type: 'open-socket', id: 1 }], undefined, 0);

    case 'stop':
      return phase.kind === 'stopped' ? same(phase) : stop(phase, event.error);

    case 'shutdown': {
      const id = socketOf(phase);
      const shown = publicState(phase);
      const stopped = phase.kind === 'stopped' ? phase.error : null;
      return to(phase, { kind: 'closing', shown, stopped }, id !== null ? [{ type: 'close-socket', id, how: 'shutdown' }] : []);
    }

    case 'closed':
      // Only after a shutdown.
      return same(phase);

    case 'tick':
      return tick(config, phase, event.oldestSentAt, now, jitter);

    case 'socket-failed':
      if (phase.kind !== 'connecting' || phase.id !== event.id) return same(phase);
      return to(phase, disconnect(phase, null, event.error, now, config, jitter).phase, [{ type: 'report', error: event.error }], event.error);

    case 'socket-open':
      if (phase.kind !== 'connecting' || phase.id !== event.id) return same(phase);
      return to(phase, { ...phase, kind: 'authenticating' }, [{ type: 'send-hello', id: phase.id }]);

    case 'socket-closed': {
      if (socketOf(phase) !== event.id) return same(phase);
      const { code, reason } = event;
      const detail = `${code}${reason ? ' ' + reason : ''}`;
      if (code === CLOSE_CODES.UNAUTHORIZED || code === CLOSE_CODES.TOKEN_REVOKED) {
        const error = new AuthenticationError(
          code === CLOSE_CODES.UNAUTHORIZED ? 'UNAUTHORIZED' : 'TOKEN_REVOKED',
          `the server closed the connection (${detail}): get a new token, retrying cannot succeed`,
          code,
        );
        if (phase.kind === 'stopped') return to(phase, { ...phase, id: null }, [{ type: 'close-socket', id: event.id, how: 'peer' }, { type: 'fail-queued' }]);
        return stop(phase, error, 'peer');
      }
      const error = new ConnectionError('CONNECTION_CLOSED', `connection closed (${detail})`, code);
      return disconnect(phase, 'peer', error, now, config, jitter);
    }

    case 'welcome':
      if (phase.kind !== 'authenticating' || phase.id !== event.id) return same(phase);
      if ('broken' in event) {
        const step = disconnect(phase, 'dropped', event.broken, now, config, jitter);
        return { phase: step.phase, instructions: [{ type: 'report', error: event.broken }, ...step.instructions] };
      }
      return to(phase, { ...phase, kind: 'reconciling' }, [{ type: 'reconcile', id: phase.id, welcome: event.welcome, rebase: phase.rebase }]);

    case 'reconciled': {
      if (phase.kind !== 'reconciling' || phase.id !== event.id) return same(phase);
      // The reconcile moved past any hole. A pause from before the reconnect still holds.
      const paused = now < phase.retry.until;
      return to(
        phase,
        { kind: paused ? 'paused' : 'open', id: phase.id, ping: { nextAt: now + config.pingIntervalMs, nonce: 0 }, rebase: false, retry: phase.retry },
        paused ? [{ type: 'welcomed', welcome: event.welcome }] : [{ type: 'welcomed', welcome: event.welcome }, { type: 'pump' }],
        undefined,
        1,
      );
    }

    case 'pong':
      if ((phase.kind !== 'open' && phase.kind !== 'paused') || phase.id !== event.id) return same(phase);
      if (!('sentAt' in phase.ping) || phase.ping.nonce !== event.nonce) return same(phase);
      return same({ ...phase, ping: { nextAt: now + config.pingIntervalMs, nonce: phase.ping.nonce } });

    case 'lost': {
      if (socketOf(phase) !== event.id) return same(phase);
      const step = disconnect(phase, 'dropped', event.error, now, config, jitter);
      return event.report ? { phase: step.phase, instructions: [{ type: 'report', error: event.error }, ...step.instructions] } : step;
    }

    case 'acked':
      if ((phase.kind !== 'open' && phase.kind !== 'paused') || phase.retry.count === 0) return same(phase);
      return same({ ...phase, retry: { count: 0, until: phase.retry.until } });

    case 'transient': {
      if (phase.kind !== 'open' && phase.kind !== 'paused') return same(phase);
      const until = Math.max(phase.retry.until, now + backoffDelay(config, phase.retry.count, jitter));
      return same({ ...phase, kind: 'paused', retry: { count: phase.retry.count + 1, until } });
    }

    case 'hole':
      if ((phase.kind !== 'open' && phase.kind !== 'paused') || phase.rebase) return same(phase);
      return same({ ...phase, rebase: true });

    case 'answers':
      if (socketOf(phase) !== event.id) return same(phase);
      if (phase.kind === 'stopped') {
        return event.inflight === 0
          ? to(phase, { ...phase, id: null }, [{ type: 'close-socket', id: event.id, how: 'dropped' }, { type: 'fail-queued' }])
          : same(phase);
      }
      if (phase.kind !== 'open' && phase.kind !== 'paused') return same(phase);
      // Contiguous mode cannot pass the hole in this epoch: reconnect at once and re-number (reconcile).
      if (phase.rebase) return disconnect(phase, 'dropped', new ConnectionError('REBASE', 'moving to a new epoch past a hole'), now, config, jitter, true);
      return phase.kind === 'open' ? { phase, instructions: [{ type: 'pump' }] } : same(phase);
  }
}

function tick(config: LifecycleConfig, phase: Phase, oldestSentAt: number | null, now: number, jitter: () => number): Step {
  switch (phase.kind) {
    case 'backoff':
      if (now < phase.until) return same(phase);
      return to(
        phase,
        { kind: 'connecting', id: phase.id + 1, since: now, attempt: phase.attempt, rebase: phase.rebase, retry: phase.retry },
        [{ type: 'open-socket', id: phase.id + 1 }],
        undefined,
        0,
      );
    case 'connecting':
    case 'authenticating':
    case 'reconciling': {
      if (now - phase.since < config.connectTimeoutMs) return same(phase);
      const step = disconnect(phase, 'dropped', timeout('no welcome within connectTimeoutMs'), now, config, jitter);
      return { phase: step.phase, instructions: [{ type: 'count-timeout' }, ...step.instructions] };
    }
    case 'stopped': {
      if (phase.id === null || oldestSentAt === null || now - oldestSentAt < config.putTimeoutMs) return same(phase);
      return {
        phase: { ...phase, id: null },
        instructions: [{ type: 'count-timeout' }, { type: 'close-socket', id: phase.id, how: 'dropped' }, { type: 'fail-queued' }],
      };
    }
    case 'open':
    case 'paused': {
      let why: string | null = null;
      if (oldestSentAt !== null && now - oldestSentAt >= config.putTimeoutMs) why = 'a put unanswered for putTimeoutMs';
      else if ('sentAt' in phase.ping && now - phase.ping.sentAt >= config.pongTimeoutMs) why = 'no pong within pongTimeoutMs';
      if (why !== null) {
        const step = disconnect(phase, 'dropped', timeout(why), now, config, jitter);
        return { phase: step.phase, instructions: [{ type: 'count-timeout' }, ...step.instructions] };
      }
      const instructions: Instruction[] = [];
      let next: Phase = phase;
      if ('nextAt' in phase.ping && now >= phase.ping.nextAt) {
        const nonce = phase.ping.nonce + 1;
        next = { ...phase, ping: { sentAt: now, nonce } };
        instructions.push({ type: 'send-ping', id: phase.id, nonce });
      }
      if (next.kind === 'paused' && now >= next.retry.until) {
        next = { ...next, kind: 'open' };
        instructions.push({ type: 'pump' });
      }
      return { phase: next, instructions };
    }
    default:
      return same(phase);
  }
}
