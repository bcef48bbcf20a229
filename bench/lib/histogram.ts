/**
 * Latency histogram in integer microseconds, log-linear like HdrHistogram with two significant
 * digits: exact below 256 µs, then 128 sub-buckets per power of two (at most 0.8 % wide), up to
 * 2^32 µs. Recording is O(1) and allocation-free, and histograms from several generator processes
 * merge by adding counts, so percentiles never come from averaging percentiles.
 */

const LINEAR = 256;
const SUB = 128;
const MAX_SHIFT = 24;
export const BUCKETS = LINEAR + MAX_SHIFT * SUB;
const MAX_VALUE = 0xffff_ffff;

export type SparseCounts = Array<[index: number, count: number]>;

export interface HistogramJson {
  readonly counts: SparseCounts;
  readonly total: number;
  readonly max: number;
  readonly sum: number;
}

export function bucketIndex(value: number): number {
  const v = Math.min(MAX_VALUE, Math.max(0, Math.round(value)));
  if (v < LINEAR) return v;
  const msb = 31 - Math.clz32(v);
  const shift = msb - 7;
  const top = v >>> shift;
  return LINEAR + (shift - 1) * SUB + (top - SUB);
}

/** The highest value that falls into bucket `index` (reported values never understate). */
export function bucketUpper(index: number): number {
  if (index < LINEAR) return index;
  const shift = Math.floor((index - LINEAR) / SUB) + 1;
  const top = ((index - LINEAR) % SUB) + SUB;
  return (top + 1) * 2 ** shift - 1;
}

export class Histogram {
  private readonly counts = new Float64Array(BUCKETS);
  total = 0;
  max = 0;
  sum = 0;

  record(micros: number): void {
    this.counts[bucketIndex(micros)]! += 1;
    this.total += 1;
    this.sum += micros;
    if (micros > this.max) this.max = micros;
  }

  merge(other: Histogram | HistogramJson): void {
    const json = other instanceof Histogram ? other.toJSON() : other;
    for (const [i, c] of json.counts) this.counts[i]! += c;
    this.total += json.total;
    this.sum += json.sum;
    if (json.max > this.max) this.max = json.max;
  }

  /** Value at percentile p (0..100), in microseconds; NaN when empty. */
  percentile(p: number): number {
    if (this.total === 0) return NaN;
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(bucketUpper(i), this.max);
    }
    return this.max;
  }

  mean(): number {
    return this.total === 0 ? NaN : this.sum / this.total;
  }

  toJSON(): HistogramJson {
    const counts: SparseCounts = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i]! > 0) counts.push([i, this.counts[i]!]);
    return { counts, total: this.total, max: this.max, sum: this.sum };
  }

  static from(json: HistogramJson): Histogram {
    const h = new Histogram();
    h.merge(json);
    return h;
  }
}
