import type { Logger } from 'pino';
import { processClock, type RetentionClock } from './retention-clock.js';
import type { Store } from './store.js';

/**
 * Background pruning of acks and Idempotency-Key records. Each pass walks acks older than the
 * retention window in small steps and pauses between steps for three times as long as the step
 * took (at most MAX_STEP_PAUSE_MS), so a large backlog takes about a quarter of the event loop and
 * ingestion is never stalled behind it; then it deletes expired Idempotency-Key records the same way.
 * Retention is a minimum: a record may outlive it by up to one pass interval, and a wall-clock step
 * never shortens it (the cutoff comes from the RetentionClock, which measures age by the monotonic
 * clock). A stream's latest ack is never pruned, and heads are never deleted.
 */
/**
 * Longest pause between two steps. A step slowed down by a busy moment (a checkpoint, a burst of
 * puts) would otherwise stall the rest of the backlog for three times that long.
 */
const MAX_STEP_PAUSE_MS = 50;
/** The pause is this many times the step it follows: the step gets about 1 / (1 + 3) of the loop. */
const PAUSE_PER_STEP_TIME = 3;

interface PrunerOptions {
  readonly retentionMs: number;
  /** Idempotency-Key record retention; records are not pruned when absent. */
  readonly idempotencyRetentionMs?: number;
  readonly intervalMs: number;
  readonly batchRows: number;
  /** Where cutoffs come from; the process clock that stores stamp with, unless a test says otherwise. */
  readonly clock?: RetentionClock;
  readonly onPruned?: (count: number) => void;
}

export class Pruner {
  private timer: NodeJS.Timeout | undefined;
  private pass: Promise<number> | undefined;
  private stopped = false;
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly store: Store,
    private readonly options: PrunerOptions,
    private readonly log: Logger,
  ) {}

  private get clock(): RetentionClock {
    return this.options.clock ?? processClock;
  }

  start(): void {
    this.stopped = false;
    this.unsubscribe ??= this.clock.onStep((stepMs) => {
      this.log.warn({ stepMs: Math.round(stepMs) }, 'wall clock stepped; retention keeps measuring elapsed time, so nothing is pruned early');
    });
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.runPass()
        .catch((err: unknown) => this.log.warn({ err }, 'pruning pass failed; will retry'))
        .finally(() => this.schedule());
    }, this.options.intervalMs);
  }

  /** One full pass; returns how many acks it pruned. */
  runPass(): Promise<number> {
    this.pass ??= (async () => {
      const cutoff = this.clock.cutoff(this.options.retentionMs);
      let total = 0;
      try {
        for (;;) {
          if (this.stopped) break;
          const started = performance.now();
          const { pruned, done } = await this.store.prune(cutoff, this.options.batchRows);
          total += pruned;
          if (pruned > 0) this.options.onPruned?.(pruned);
          if (done) break;
          await this.pace(started);
        }
        if (this.options.idempotencyRetentionMs !== undefined) await this.pruneIdempotency(this.options.idempotencyRetentionMs);
      } finally {
        this.pass = undefined;
      }
      if (total > 0) this.log.debug({ pruned: total }, 'pruned acks');
      return total;
    })();
    return this.pass;
  }

  private async pruneIdempotency(retentionMs: number): Promise<void> {
    const cutoff = this.clock.cutoff(retentionMs);
    for (;;) {
      if (this.stopped) return;
      const started = performance.now();
      const deleted = await this.store.pruneIdempotency(cutoff, this.options.batchRows);
      if (deleted < this.options.batchRows) return;
      await this.pace(started);
    }
  }

  /** Pace a backlog to about a quarter of the event loop, so puts keep their latency. */
  private pace(started: number): Promise<void> {
    const spent = performance.now() - started;
    return new Promise<void>((resolve) => setTimeout(resolve, Math.min(MAX_STEP_PAUSE_MS, spent * PAUSE_PER_STEP_TIME)));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    await this.pass?.catch(() => undefined);
  }
}
