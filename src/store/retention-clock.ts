/**
 * Time for retention: wall-clock stamps, and cutoffs that a wall-clock step cannot bring forward.
 *
 * Acks and Idempotency-Key records are stamped with the wall clock (it is what clients see, and
 * it is all that survives a restart), and retention promises to keep each one *at least* its
 * duration. A cutoff of `Date.now() - retention` breaks that promise whenever the clock steps
 * forward: two days ahead, and records two seconds old look two days old. The monotonic clock
 * (performance.now) never steps, so this clock measures age by it:
 *
 * Every reading (each stamp and each cutoff) records the offset `wall - monotonic` it was taken
 * at. A clock step starts a new *segment* of readings with a different offset. A stamp taken
 * with offset `o` at monotonic time `m` equals `o + m`, so with `O` the smallest offset of any
 * segment that may still hold stamps younger than the retention, the cutoff
 * `O + monotonicNow - retention` is below every stamp whose monotonic age is under the retention.
 * A segment stops counting once its last reading is older than the retention: everything stamped
 * in it is old enough by then, whatever its stamp says.
 *
 * Consequences: a forward step never shortens retention. A backward step (or a process that starts
 * with its clock behind and is corrected later) lengthens it for the records stamped before the
 * correction, until they are a full retention old by the monotonic clock. Across a restart only
 * the wall clock is known: stamps from before the start are judged by the wall clock at start,
 * so time spent down, and a step while down, count in full.
 */

export interface ClockSource {
  /** Wall-clock milliseconds since the Unix epoch. */
  wall(): number;
  /** Monotonic milliseconds (any origin). */
  mono(): number;
}

const SYSTEM: ClockSource = { wall: () => Date.now(), mono: () => performance.now() };

/**
 * Offsets closer than this are one segment, which keeps the smallest: Date.now has 1 ms steps, and
 * a process descheduled between its two clock reads on a busy machine sees a jitter of that much.
 * Merging is always safe (a smaller offset only keeps records longer); it only spares the log.
 */
const SAME_SEGMENT_MS = 1000;
/** Segments kept at most; beyond, the two oldest merge (smallest offset, latest reading: only ever more cautious). */
const MAX_SEGMENTS = 32;

interface Segment {
  offset: number;
  lastMono: number;
}

export class RetentionClock {
  private readonly segments: Segment[] = [];
  private readonly stepListeners = new Set<(stepMs: number) => void>();

  constructor(private readonly source: ClockSource = SYSTEM) {
    this.read();
  }

  /** Wall-clock time for a stamp (a commit time, an Idempotency-Key record's creation). */
  now(): number {
    return this.read().wall;
  }

  /**
   * Stamps below this are at least `retentionMs` old by the monotonic clock (stamps from before
   * this process: by the wall clock at its start). Never later than `Date.now() - retentionMs`.
   */
  cutoff(retentionMs: number): number {
    const { mono } = this.read();
    let offset = Infinity;
    for (const s of this.segments) if (s.lastMono >= mono - retentionMs) offset = Math.min(offset, s.offset);
    return offset + mono - retentionMs;
  }

  /** Calls `listener` with the size of each wall-clock step noticed (positive: forward); returns the unsubscribe. */
  onStep(listener: (stepMs: number) => void): () => void {
    this.stepListeners.add(listener);
    return () => this.stepListeners.delete(listener);
  }

  private read(): { wall: number; mono: number } {
    const wall = this.source.wall();
    const mono = this.source.mono();
    const offset = wall - mono;
    const current = this.segments[this.segments.length - 1];
    if (current !== undefined && Math.abs(offset - current.offset) <= SAME_SEGMENT_MS) {
      current.offset = Math.min(current.offset, offset);
      current.lastMono = mono;
    } else {
      this.segments.push({ offset, lastMono: mono });
      if (this.segments.length > MAX_SEGMENTS) {
        const [a, b] = this.segments.splice(0, 2) as [Segment, Segment];
        this.segments.unshift({ offset: Math.min(a.offset, b.offset), lastMono: Math.max(a.lastMono, b.lastMono) });
      }
      if (current !== undefined) {
        for (const listener of this.stepListeners) {
          try {
            listener(offset - current.offset);
          } catch {
            // A listener (a log line) must not turn a stamp into a failed batch.
          }
        }
      }
    }
    return { wall, mono };
  }
}

/** The process's clock: every store stamps with it and every pruner cuts off by it. */
export const processClock = new RetentionClock();
