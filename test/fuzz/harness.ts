import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { expect } from 'vitest';

/**
 * Running fast-check properties against a live server: an explicit minimum number of cases per
 * property, a seed that is printed before the run and in every failure (with the exact command
 * that replays it), and a JSON summary of every run for the reliability report.
 *
 * Environment:
 * - SEQGATE_FUZZ_SEED=<n>: use this seed instead of a random one (replays a failure);
 * - SEQGATE_FUZZ_PATH=<path>: with the seed, replay only the shrunk counterexample fast-check
 *   printed (pair it with `-t "<test name>"` so that only that property runs);
 * - SEQGATE_FUZZ_RUNS_FACTOR=<n>: run n times the stated number of cases (longer fuzzing);
 * - SEQGATE_FUZZ_SUMMARY=<file>: where the summary goes (default test/fuzz/.last-run.json).
 */

/**
 * The tokens a fuzzed server runs with (`--tokens`, or the `tokens` option), fresh each run: the fuzzer's
 * own tenant, and another for the control client, whose data the fuzzer can therefore never reach.
 */
export const FUZZ_TOKEN = `F${randomBytes(18).toString('base64url')}`;
export const CONTROL_TOKEN = `C${randomBytes(18).toString('base64url')}`;
export const TOKENS = JSON.stringify({
  tokens: [
    { token: FUZZ_TOKEN, tenant: 'fuzz' },
    { token: CONTROL_TOKEN, tenant: 'control' },
  ],
});

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SUMMARY_PATH = process.env.SEQGATE_FUZZ_SUMMARY ?? resolve(REPO, 'test', 'fuzz', '.last-run.json');

function envSeed(): number | undefined {
  const raw = process.env.SEQGATE_FUZZ_SEED;
  if (raw === undefined || raw === '') return undefined;
  const seed = Number(raw);
  if (!Number.isInteger(seed)) throw new Error(`SEQGATE_FUZZ_SEED must be an integer, got ${raw}`);
  return seed;
}

function runsFactor(): number {
  const raw = process.env.SEQGATE_FUZZ_RUNS_FACTOR;
  if (raw === undefined || raw === '') return 1;
  const f = Number(raw);
  if (!(f > 0)) throw new Error(`SEQGATE_FUZZ_RUNS_FACTOR must be a positive number, got ${raw}`);
  return f;
}

export interface PropertyRecord {
  readonly file: string;
  /** The stated minimum (times SEQGATE_FUZZ_RUNS_FACTOR). */
  readonly numRuns: number;
  /** Cases actually run, shrinking excluded. */
  readonly casesRun: number;
  readonly seed: number;
  readonly failed: boolean;
  readonly counterexamplePath: string | null;
  readonly durationMs: number;
  readonly finishedAt: string;
  /** Property-specific counters (frames sent, puts compared, restarts, ...). */
  readonly counters: Readonly<Record<string, number>>;
  readonly error?: string;
}

export interface Summary {
  version: 1;
  updatedAt: string;
  properties: Record<string, PropertyRecord>;
  totals: { properties: number; casesRun: number; failed: number };
}

/** Serialises writers of the summary across the test processes that vitest runs side by side. */
function withLock<T>(fn: () => T): T {
  const lock = `${SUMMARY_PATH}.lock`;
  mkdirSync(dirname(SUMMARY_PATH), { recursive: true });
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      closeSync(openSync(lock, 'wx'));
      break;
    } catch {
      // A lock left by a killed process is stale after a few seconds.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 5000) rmSync(lock, { force: true });
      } catch {
        // it went away meanwhile
      }
      if (Date.now() > deadline) throw new Error(`cannot lock ${lock}`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { force: true });
  }
}

export function recordProperty(name: string, record: PropertyRecord): void {
  withLock(() => {
    let summary: Summary;
    try {
      summary = JSON.parse(readFileSync(SUMMARY_PATH, 'utf8')) as Summary;
      if (summary.version !== 1 || typeof summary.properties !== 'object') throw new Error('old format');
    } catch {
      summary = { version: 1, updatedAt: '', properties: {}, totals: { properties: 0, casesRun: 0, failed: 0 } };
    }
    summary.properties[name] = record;
    const all = Object.values(summary.properties);
    summary.totals = {
      properties: all.length,
      casesRun: all.reduce((n, p) => n + p.casesRun, 0),
      failed: all.filter((p) => p.failed).length,
    };
    summary.updatedAt = new Date().toISOString();
    const tmp = `${SUMMARY_PATH}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(summary, null, 2) + '\n');
    renameSync(tmp, SUMMARY_PATH);
  });
}

export interface RunOptions {
  /** The file the property lives in, for the replay command (import.meta.url). */
  readonly fileUrl: string;
  /** Short name of the property: its key in the summary and its label in the output. */
  readonly name: string;
  /** Stated minimum number of cases. */
  readonly numRuns: number;
  /** Counters the property fills in while it runs; recorded in the summary. */
  readonly counters?: Record<string, number>;
}

/**
 * Runs an async property with an explicit number of cases and a printed, replayable seed; throws
 * fast-check's report (counterexample, seed, path) plus the replay command when it fails.
 */
export async function runProperty<Ts>(property: fc.IAsyncPropertyWithHooks<Ts>, options: RunOptions): Promise<fc.RunDetails<Ts>> {
  const file = relative(REPO, fileURLToPath(options.fileUrl));
  const seed = envSeed() ?? (Date.now() ^ Math.floor(Math.random() * 0x1_0000_0000)) | 0;
  const path = process.env.SEQGATE_FUZZ_PATH || undefined;
  const numRuns = Math.max(1, Math.round(options.numRuns * runsFactor()));
  // vitest's -t is a pattern over the test's title: the it() title, regex-escaped, selects just it.
  const title = (expect.getState().currentTestName ?? options.name).split(' > ').pop()!;
  const filter = `-t '${title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/'/g, "'\\''")}'`;
  const replay = (p?: string): string => `SEQGATE_FUZZ_SEED=${seed}${p ? ` SEQGATE_FUZZ_PATH=${p}` : ''} npx vitest run ${file} ${filter}`;
  process.stdout.write(`[fuzz] ${options.name}: ${numRuns} cases, seed ${seed}${path ? `, path ${path}` : ''}\n[fuzz]   replay: ${replay()}\n`);

  const started = performance.now();
  const details = await fc.check(property, { numRuns, seed, ...(path ? { path } : {}) });
  const durationMs = Math.round(performance.now() - started);
  const report = details.failed ? ((await fc.asyncDefaultReportMessage(details)) ?? 'property failed') : undefined;
  recordProperty(options.name, {
    file,
    numRuns,
    casesRun: details.numRuns,
    seed: details.seed,
    failed: details.failed,
    counterexamplePath: details.counterexamplePath,
    durationMs,
    finishedAt: new Date().toISOString(),
    counters: { ...options.counters },
    ...(report !== undefined
      ? { error: `${report}\n${details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance)}`.slice(0, 4000) }
      : {}),
  });
  process.stdout.write(
    `[fuzz] ${options.name}: ${details.numRuns} cases ${details.failed ? 'FAILED' : 'passed'} in ${durationMs} ms; summary in ${SUMMARY_PATH}\n`,
  );
  if (details.failed) {
    const cause = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
    throw new Error(`${report}\n\nError of the shrunk counterexample:\n${cause}\n\nReplay it with:\n  ${replay(details.counterexamplePath ?? undefined)}`);
  }
  return details;
}
