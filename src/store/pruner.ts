import type { Logger } from 'pino';
import type { Store } from './store.js';

/**
 * Background ack pruning. Each pass walks acks older than the retention window in small steps and
 * pauses between steps for three times as long as the step took, so a large backlog takes about a
 * quarter of the event loop and ingestion is never stalled behind it.
 * Retention is a minimum: an ack may outlive it by up to one pass interval. A stream's latest ack
 * is never pruned, and heads are never deleted.
 */
export interface PrunerOptions {
  readonly retentionMs: number;
  readonly intervalMs: number;
  readonly batchRows: number;
  readonly now?: () => number;
  readonly onPruned?: (count: number) => void;
}

export class Pruner {
  private timer: NodeJS.Timeout | undefined;
  private pass: Promise<number> | undefined;
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly options: PrunerOptions,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.stopped = false;
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.runPass()
        .catch((err: Error) => this.log.warn({ err }, 'ack pruning pass failed; will retry'))
        .finally(() => this.schedule());
    }, this.options.intervalMs);
  }

  /** One full pass; returns how many acks it pruned. */
  runPass(): Promise<number> {
    this.pass ??= (async () => {
      const cutoff = (this.options.now ?? Date.now)() - this.options.retentionMs;
      let total = 0;
      try {
        for (;;) {
          if (this.stopped) break;
          const started = performance.now();
          const { pruned, done } = await this.store.prune(cutoff, this.options.batchRows);
          total += pruned;
          if (pruned > 0) this.options.onPruned?.(pruned);
          if (done) break;
          // Pace a backlog to about a quarter of the event loop, so puts keep their latency.
          const spent = performance.now() - started;
          await new Promise<void>((resolve) => setTimeout(resolve, Math.min(50, spent * 3)));
        }
      } finally {
        this.pass = undefined;
      }
      if (total > 0) this.log.debug({ pruned: total }, 'pruned acks');
      return total;
    })();
    return this.pass;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    await this.pass?.catch(() => undefined);
  }
}
