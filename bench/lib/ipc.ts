import type { HistogramJson } from './histogram.js';

/** Messages between the runner and its load-generator processes (child_process IPC). */

export interface GeneratorConfig {
  readonly url: string;
  /** Connections this process opens. */
  readonly connections: number;
  /** Global index of this process's first connection; stream i is loadStreamName(offset + i). */
  readonly connectionOffset: number;
  /** closed: keep `window` frames in flight. open: send on a fixed schedule. idle: connect and hold. */
  readonly mode: 'closed' | 'open' | 'idle';
  /** Frames in flight per connection (closed); the in-flight cap per connection (open). */
  readonly window: number;
  readonly putsPerFrame: number;
  readonly stateBytes: number;
  /** Share of puts (0..1) that are retries of a put this connection already saw acked. */
  readonly dupShare: number;
  /** open mode: puts per second for this process, spread evenly over its connections. */
  readonly rate: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  /** Longest wait for unanswered puts after the measurement window. */
  readonly drainMs: number;
  readonly connectConcurrency: number;
  /** true for arms that store acks: a retry must come back as replay: true. */
  readonly expectReplay: boolean;
  readonly seed: number;
}

export interface GeneratorResult {
  readonly connected: number;
  readonly connectFailures: number;
  readonly connectMs: number;
  /** Length of the measurement window actually observed, ms. */
  readonly measuredMs: number;
  /** Results with a stored outcome (applied or version_conflict), received inside the window. */
  readonly acked: number;
  /** ... of which answered a retry (replay: true). */
  readonly replays: number;
  /** Puts sent inside the window (open mode: scheduled inside the window). */
  readonly sent: number;
  readonly dupsSent: number;
  readonly errors: number;
  readonly errorKinds: Readonly<Record<string, number>>;
  /** Puts still unanswered when the drain wait ended. */
  readonly unanswered: number;
  /** Ack latency, µs: from the send (closed) or from the scheduled send time (open). */
  readonly latency: HistogramJson;
  /** open mode: how late each frame left after its scheduled time, µs (generator-side delay). */
  readonly sendLag: HistogramJson;
  /** open mode: frames that found the in-flight cap full at their scheduled time. */
  readonly capped: number;
  /** CPU the generator process used inside the window, ms. */
  readonly cpuMs: number;
  readonly unexpectedCloses: number;
}

export type ToGenerator =
  { readonly type: 'config'; readonly config: GeneratorConfig } | { readonly type: 'start'; readonly at: number } | { readonly type: 'close' };

export type FromGenerator =
  | { readonly type: 'ready'; readonly connected: number; readonly failures: number; readonly connectMs: number; readonly firstError?: string }
  | { readonly type: 'result'; readonly result: GeneratorResult }
  | { readonly type: 'fatal'; readonly message: string };
