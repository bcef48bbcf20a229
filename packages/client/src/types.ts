/** Public types of the client SDK. The wire shapes follow protocol/PROTOCOL.md §3. */
import type { SeqgateClientError } from './errors.js';
import { DEFAULT_WIRE_LIMITS } from './wire/constants.js';

/** A stream position, ordered by epoch, then seq. */
export interface Position {
  readonly epoch: number;
  readonly seq: number;
}

/** A stream's head as the welcome reports it. */
export interface Head extends Position {
  readonly stream: string;
  readonly prunedThrough: number;
}

/** The stored answer of a put that consumed its seq (PROTOCOL.md §3.4). */
export interface Ack {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
  readonly ifVersion?: number;
  readonly committedAt: number;
}

/** Which put an answer or error belongs to. `seq` is 0 while the put waits for its epoch. */
export interface PutRef {
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
}

/**
 * What `put()` resolves with: the put is applied. `replay` is true when an earlier send of this
 * same put had already been applied (a lost answer); `ack` is then the original, stored ack.
 */
export interface PutResult {
  readonly outcome: 'applied';
  readonly replay: boolean;
  readonly ack: Ack;
}

export interface PutOptions {
  /** Apply only if the document is at this version (0: only if it does not exist). */
  readonly ifVersion?: number;
  /**
   * Any JSON value, stored in the outbox in the same write as this put. After a restart
   * `client.checkpoint` returns the checkpoint of the last put the outbox recorded, so a device can
   * resume its own source (sensor log, queue) exactly where its puts stopped.
   */
  readonly checkpoint?: unknown;
}

/** Limits the client checks before it assigns a seq; taken from each welcome. */
export interface Limits {
  readonly maxFrameBytes: number;
  readonly maxPutsPerFrame: number;
  readonly maxStateBytes: number;
  readonly maxStateDepth: number;
  readonly maxKeyBytes: number;
  readonly maxStreamBytes: number;
}

/** The server defaults (PROTOCOL.md §11.1), used until the first welcome. */
export const DEFAULT_LIMITS: Limits = {
  maxFrameBytes: DEFAULT_WIRE_LIMITS.maxFrameBytes,
  maxPutsPerFrame: DEFAULT_WIRE_LIMITS.maxPutsPerFrame,
  maxStateBytes: DEFAULT_WIRE_LIMITS.maxStateBytes,
  maxStateDepth: DEFAULT_WIRE_LIMITS.maxStateDepth,
  maxKeyBytes: DEFAULT_WIRE_LIMITS.maxKeyBytes,
  maxStreamBytes: DEFAULT_WIRE_LIMITS.maxStreamBytes,
};

export type ConnectionState =
  /** Loading the outbox, opening a socket, or waiting for the welcome. */
  | 'connecting'
  /** Welcome received; puts flow. */
  | 'connected'
  /** No connection; a reconnect is scheduled. */
  | 'disconnected'
  /** Fenced, in conflict with another writer, or refused for good: no more writes. */
  | 'stopped'
  /** close() finished. */
  | 'closed';

export interface StateChange {
  readonly state: ConnectionState;
  readonly previous: ConnectionState;
  /** Why the connection ended or the client stopped, when known. */
  readonly error?: SeqgateClientError;
}

/**
 * The server went back in time. `incarnation`: the database was replaced (its incarnation id
 * changed). `head-behind`: same database, but the stream's head is below a position the server
 * had acked to this client (a restore from an older copy, or power loss under synchronous=normal).
 */
export interface RollbackInfo {
  readonly reason: 'incarnation' | 'head-behind';
  readonly stream: string;
  readonly previousIncarnation: string | null;
  readonly incarnation: string;
  /** The last position the server acked to this client before. */
  readonly lastAcked: Position | null;
  /** The stream's head in the welcome that revealed the rollback. */
  readonly head: Position;
  /** Puts sent or queued but not yet answered when it was detected. */
  readonly pending: number;
  /** What the client does with them: `reject` or `resend` (the `onRollback` option). */
  readonly policy: RollbackPolicy;
  /** The epoch the client writes from now on. */
  readonly epoch: number;
}

/**
 * `reject` (default): every unanswered put rejects with ServerRollbackError, and the client moves
 * to a new epoch (above the server's and its own) at seq 1 for new puts. The application decides
 * what to write again; nothing is resent behind its back.
 * `resend`: unanswered puts are resent unchanged (original epoch and seq); the gate decides each,
 * as after any reconnect. Acked puts that the server lost are not resent by either policy.
 */
export type RollbackPolicy = 'reject' | 'resend';

export interface EpochChange {
  readonly epoch: number;
  readonly previous: number | null;
  /**
   * `new-stream`: first write of a stream the server has never seen. `counter-loss`: an outbox
   * without a record for a stream the server knows (see docs/CLIENT.md). `rollback`: after a
   * server rollback with policy `reject`. `gap`: contiguous mode, to step over a hole the client
   * left (a put the server refused without consuming its seq).
   */
  readonly reason: 'new-stream' | 'counter-loss' | 'rollback' | 'gap';
  readonly head: Position;
}

/** Every settled put, including puts recovered from a durable outbox after a restart. */
export interface PutSettlement {
  readonly put: PutRef;
  /** True for puts loaded from the outbox at start (their promises died with the old process). */
  readonly recovered: boolean;
  readonly result?: PutResult;
  readonly error?: SeqgateClientError;
}

export interface WelcomeInfo {
  readonly server: string;
  readonly incarnation: string;
  readonly contiguous: boolean;
  readonly head: Head;
  readonly limits: Limits;
}

export interface ClientStats {
  /** Put transmissions, first sends and resends together. */
  readonly sent: number;
  /** Transmissions of a put that had been sent before. */
  readonly resent: number;
  readonly applied: number;
  readonly replayed: number;
  readonly rejected: number;
  /** Connections opened (the first included). */
  readonly connections: number;
  /** Connections given up as dead (put timeout, missing pong, connect timeout). */
  readonly timeouts: number;
}

export interface CloseReport {
  /** True when every put was answered before the socket closed. */
  readonly drained: boolean;
  /** Puts left unanswered; they stay in a durable outbox, and are dropped from a memory outbox. */
  readonly left: readonly PutRef[];
}
