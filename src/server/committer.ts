import type { Logger } from 'pino';
import { reach } from '../crash-points.js';
import { failedBatch } from '../gate.js';
import type { DocResult, Put, PutResult, Store, Write } from '../store/store.js';

/**
 * Group commit. Puts that arrive within one event-loop turn, from any connection, are committed
 * in one store batch; batches run one at a time in arrival order, so two puts of one stream (or
 * two streams writing one key) behave exactly as if sent one by one.
 *
 * Batch formation: under load a batch is whatever arrived while the previous one committed. A
 * store that reports the commit before the batch is durable (Store.apply's `committed`) gets the
 * next batch while the previous one waits for its sync; results still go out in batch order. When
 * the committer is idle, the first put starts a batch at the end of its event-loop turn, or, with
 * `batchWaitMs` > 0, after waiting that long for others to join (fewer, larger commits at low
 * rates, for that much latency). A full batch (`maxBatchPuts`) never waits.
 */

interface Submission {
  readonly puts: readonly Write[];
  readonly resolve: (results: Array<PutResult | DocResult>) => void;
}

export interface BatchInfo {
  readonly puts: number;
  readonly submissions: number;
  readonly durationMs: number;
}

export class Committer {
  private queue: Submission[] = [];
  /** A batch is with the store and has not committed yet: the next one waits. */
  private committing = false;
  /** Batches handed to the store whose results are not delivered yet. */
  private unanswered = 0;
  private runningSize = 0;
  /** Settles when the last batch handed over has delivered its results: delivery is in order. */
  private delivered: Promise<void> = Promise.resolve();
  private scheduled = false;
  private waitTimer: NodeJS.Timeout | undefined;
  private queued = 0;
  private idleWaiters: Array<() => void> = [];
  /** The batch (by hand-over number) whose sync the queue waits for, if any: see run(). */
  private heldFor: number | undefined;
  private handedOver = 0;

  constructor(
    private readonly store: Store,
    private readonly maxBatchPuts: number,
    private readonly onBatch?: (info: BatchInfo) => void,
    private readonly log?: Logger,
    private readonly batchWaitMs = 0,
    private readonly pipelineMinPuts = 0,
  ) {}

  /** Resolves after the batch holding these puts has committed (or failed as a whole). */
  submit(puts: readonly Put[]): Promise<PutResult[]>;
  submit(writes: readonly Write[]): Promise<Array<PutResult | DocResult>>;
  submit(puts: readonly Write[]): Promise<Array<PutResult | DocResult>> {
    return new Promise((resolve) => {
      this.queue.push({ puts, resolve });
      this.queued += puts.length;
      this.schedule(true);
    });
  }

  /** Resolves once everything submitted before this call has committed. */
  barrier(): Promise<void> {
    return this.submit([]).then(() => undefined);
  }

  /** Resolves when the queue is empty and no batch is running. */
  idle(): Promise<void> {
    if (!this.committing && this.unanswered === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Writes received and not yet answered: queued plus the batches with the store. */
  get inFlight(): number {
    return this.queuedPuts + this.runningSize;
  }

  get queuedPuts(): number {
    return this.queued;
  }

  /** `fromIdle`: a put arrived while no batch ran; only then may the batch wait to fill. */
  private schedule(fromIdle: boolean): void {
    if (this.committing) {
      // Enough has gathered behind a batch waiting for its sync to be worth a commit of its own.
      if (this.heldFor !== undefined && this.queued >= this.pipelineMinPuts) this.releaseHold();
      return;
    }
    if (this.scheduled) {
      // A batch waiting to fill stops waiting once it is full.
      if (this.waitTimer !== undefined && this.queued >= this.maxBatchPuts) {
        clearTimeout(this.waitTimer);
        this.waitTimer = undefined;
        setImmediate(() => this.fire());
      }
      return;
    }
    this.scheduled = true;
    if (fromIdle && this.batchWaitMs > 0 && this.queued < this.maxBatchPuts) {
      this.waitTimer = setTimeout(() => {
        this.waitTimer = undefined;
        this.fire();
      }, this.batchWaitMs);
      return;
    }
    // setImmediate runs after the I/O phase, so every frame read in this turn joins the batch.
    setImmediate(() => this.fire());
  }

  private releaseHold(): void {
    this.heldFor = undefined;
    this.committing = false;
    if (this.queue.length > 0) this.schedule(false);
  }

  private fire(): void {
    if (!this.scheduled) return;
    this.scheduled = false;
    void this.run();
  }

  private async run(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    // One splice per batch: shift() per submission is quadratic when thousands are queued.
    let count = 0;
    let size = 0;
    while (count < this.queue.length) {
      const next = this.queue[count]!;
      if (count > 0 && size + next.puts.length > this.maxBatchPuts) break;
      size += next.puts.length;
      count++;
    }
    const taken = this.queue.splice(0, count);
    this.queued -= size;
    const batch: Write[] = [];
    for (const s of taken) for (const p of s.puts) batch.push(p);
    this.runningSize += batch.length;
    this.unanswered++;
    const number = ++this.handedOver;
    const started = performance.now();
    // Results are delivered in hand-over order, even when a later batch fails before an earlier one
    // is durable: a connection's answers follow the order of its frames (PROTOCOL.md §8.1).
    const prior = this.delivered;
    let release!: () => void;
    this.delivered = new Promise((resolve) => (release = resolve));
    // A store that says when the batch committed (before it is durable) may get the next batch
    // then, while this one waits for its sync. Only if that batch is large: puts committed during a
    // sync wait for the next sync anyway, so holding them until this sync ends costs them only the
    // time of their own commit, and one commit of everything that arrived during the sync costs
    // far less than one per event-loop turn (each commit rewrites the pages its puts share).
    let committed = false;
    const onCommitted = (): void => {
      if (committed) return;
      committed = true;
      if (this.queued < this.pipelineMinPuts) {
        this.heldFor = number;
        return;
      }
      this.committing = false;
      if (this.queue.length > 0) this.schedule(false);
    };
    let results: Array<PutResult | DocResult>;
    try {
      results = batch.length > 0 ? await this.store.apply(batch, onCommitted) : [];
    } catch (err) {
      // A store throws only when the batch did not commit, so every write gets the same
      // retryable answer; the cause goes to the log, since clients see only the summary.
      this.log?.warn({ err, writes: batch.length }, 'batch not committed; answered STORAGE_UNAVAILABLE');
      results = failedBatch(batch.length, err);
    }
    onCommitted();
    if (this.heldFor === number) this.releaseHold();
    await prior;
    if (results.some((r) => r.kind !== 'rejected' || r.outcome !== 'error')) reach('after-commit');
    this.onBatch?.({ puts: batch.length, submissions: taken.length, durationMs: performance.now() - started });
    let offset = 0;
    for (const s of taken) {
      s.resolve(results.slice(offset, offset + s.puts.length));
      offset += s.puts.length;
    }
    release();
    this.unanswered--;
    this.runningSize -= batch.length;
    if (this.queue.length > 0) this.schedule(false);
    else if (!this.committing && this.unanswered === 0) for (const w of this.idleWaiters.splice(0)) w();
  }
}
