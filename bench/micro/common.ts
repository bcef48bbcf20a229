import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Bench } from 'tinybench';
import { repoRoot } from '../lib/paths.js';

/** Shared runner for the tinybench micro-benchmarks: one suite per file, rows for RESULTS.md. */

export interface MicroRow {
  readonly suite: string;
  readonly task: string;
  readonly meanUs: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly opsPerSec: number;
  readonly samples: number;
  /** What one operation processes (e.g. 100 puts), for a per-unit rate. */
  readonly unitsPerOp: number;
  readonly unit: string;
}

export interface MicroOptions {
  readonly quick: boolean;
  readonly workDir: string;
}

export interface MicroTask {
  readonly name: string;
  readonly fn: () => unknown;
  readonly unitsPerOp?: number;
  readonly unit?: string;
}

export async function runSuite(suite: string, tasks: readonly MicroTask[], options: MicroOptions): Promise<MicroRow[]> {
  const bench = new Bench({
    name: suite,
    time: options.quick ? 150 : 1500,
    warmupTime: options.quick ? 30 : 250,
    throws: true,
  });
  for (const t of tasks) bench.add(t.name, t.fn);
  await bench.run();
  return bench.tasks.map((task, i) => {
    const r = task.result;
    if (r.state !== 'completed') throw new Error(`${suite} / ${task.name}: ${r.state}`);
    const t = tasks[i]!;
    return {
      suite,
      task: task.name,
      meanUs: r.latency.mean * 1000,
      p50Us: r.latency.p50 * 1000,
      p99Us: r.latency.p99 * 1000,
      opsPerSec: 1000 / r.latency.mean,
      samples: r.latency.samplesCount,
      unitsPerOp: t.unitsPerOp ?? 1,
      unit: t.unit ?? 'ops',
    };
  });
}

export function printRows(rows: readonly MicroRow[]): void {
  console.table(
    rows.map((r) => ({
      suite: r.suite,
      task: r.task,
      'mean µs': r.meanUs.toFixed(2),
      'p99 µs': r.p99Us.toFixed(2),
      'ops/s': Math.round(r.opsPerSec),
      [`units/s`]: `${Math.round(r.opsPerSec * r.unitsPerOp)} ${r.unit}`,
      samples: r.samples,
    })),
  );
}

/** Runs a suite as a script: `node dist/bench/micro/x.bench.js [--quick] [--work-dir DIR]`. */
export async function main(run: (options: MicroOptions) => Promise<MicroRow[]>): Promise<void> {
  const argv = process.argv.slice(2);
  const at = argv.indexOf('--work-dir');
  const workDir = at >= 0 && argv[at + 1] !== undefined ? argv[at + 1]! : join(repoRoot(), 'bench', '.work');
  mkdirSync(workDir, { recursive: true });
  const rows = await run({ quick: argv.includes('--quick'), workDir });
  if (process.send) process.send({ type: 'micro', rows });
  else printRows(rows);
}

/** Keeps results observable so the optimiser cannot drop the work being measured. */
export const sink: { value: unknown } = { value: undefined };
