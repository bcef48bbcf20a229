/**
 * The soak runner: `npm run soak -- [--minutes N] [options]`. Runs the crash-loop soak, prints
 * progress, regenerates docs/RELIABILITY.md and exits 1 if the run found a violation or fell short
 * of its targets. Compiled with test/soak/tsconfig.json into dist/test/soak/run.js; it spawns the
 * server from dist/src/cli.js (`npm run build`).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HELP = `Usage: npm run soak -- [options]

Without --minutes: the short run of the test suite (kills until at least 10 kills and 10,000
acked puts). With --minutes N: kills the server for N minutes, then drains and checks.

  --minutes N        length of the kill phase (fractions allowed)
  --seed S           payload and fault seed (default: random; printed)
  --clients N        clients owning streams (default 16)
  --streams N        streams per client (default 8)
  --rate N           new puts per second over all clients, released in bursts every 50 ms;
                     0 = unthrottled (default: 4000 for the short run, 2000 with --minutes: every
                     put's record stays in memory until the final check, about 140 bytes each,
                     and the database grows by about 70 bytes per put)
  --report PATH      report file (default docs/RELIABILITY.md)
  --no-report        do not write the report
  --fuzz-summary F   the fuzz suite's summary to include (default test/fuzz/.last-run.json,
                     or SEQGATE_FUZZ_SUMMARY)
  --keep-db          keep the database folder and print its path
  --store S          sqlite (default) or postgres: the server runs with --store postgres on a
                     database created for the run on --pg-url, dropped afterwards
  --pg-url URL       PostgreSQL admin URL for --store postgres
                     (default postgres://postgres@127.0.0.1:5432/postgres)
`;

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root (package.json) above the soak runner');
    dir = up;
  }
  return dir;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string' },
      seed: { type: 'string' },
      clients: { type: 'string' },
      streams: { type: 'string' },
      rate: { type: 'string' },
      report: { type: 'string' },
      'no-report': { type: 'boolean' },
      'fuzz-summary': { type: 'string' },
      'keep-db': { type: 'boolean' },
      store: { type: 'string' },
      'pg-url': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) {
    process.stdout.write(HELP);
    return 0;
  }
  const num = (name: string, text: string | undefined, fallback: number): number => {
    if (text === undefined) return fallback;
    const v = Number(text);
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} must be a non-negative number, not ${text}`);
    return v;
  };
  const root = repoRoot();
  // child-server.ts finds the CLI relative to its own source file; compiled into dist/ that guess is wrong.
  process.env.SEQGATE_TEST_CLI ??= join(root, 'dist', 'src', 'cli.js');
  if (!existsSync(process.env.SEQGATE_TEST_CLI)) throw new Error(`${process.env.SEQGATE_TEST_CLI} is missing: run \`npm run build\` first`);
  const { runSoak, SHORT_RUN, verdict } = await import('./soak.js');
  const { FUZZ_SUMMARY, readFuzzSummary, renderReport } = await import('./report.js');
  const { keepMeasuredSections } = await import('./report-sections.js');

  if (values.store !== undefined && values.store !== 'sqlite' && values.store !== 'postgres')
    throw new Error(`--store must be sqlite or postgres, not ${values.store}`);
  const minutes = values.minutes === undefined ? undefined : num('minutes', values.minutes, 0);
  const seed = Math.floor(num('seed', values.seed, Math.floor(Math.random() * 2 ** 31)));
  const killMs = minutes === undefined ? undefined : Math.round(minutes * 60_000);
  const options = {
    ...SHORT_RUN,
    seed,
    clients: Math.floor(num('clients', values.clients, SHORT_RUN.clients)),
    streamsPerClient: Math.floor(num('streams', values.streams, SHORT_RUN.streamsPerClient)),
    rate: num('rate', values.rate, minutes === undefined ? (SHORT_RUN.rate ?? 0) : 2000),
    ...(killMs === undefined ? {} : { minDurationMs: killMs, maxKillPhaseMs: killMs, drainTimeoutMs: 60_000 }),
    keepDb: values['keep-db'] === true,
    ...(values.store === 'postgres' ? { postgresAdminUrl: values['pg-url'] ?? 'postgres://postgres@127.0.0.1:5432/postgres' } : {}),
    log: (line: string) => process.stdout.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}\n`),
  };
  const command = ['npm run soak --', ...process.argv.slice(2)].join(' ').replace(/ --$/, '');
  options.log(
    `seed ${seed}; ${minutes === undefined ? 'short run' : `${minutes} minutes of kills`}; store ${values.store ?? 'sqlite'}; server ${process.env.SEQGATE_TEST_CLI}`,
  );

  const result = await runSoak(options);
  const failures = verdict(result);
  const mem = process.memoryUsage();
  options.log(
    `${result.kills.length} kills, ${result.acked} acked, ${result.failed} failed, ${result.stats.putsSent} puts sent, ` +
      `${result.violationCount} violations, ${(result.durationMs / 1000).toFixed(1)} s, heap ${(mem.heapUsed / 2 ** 20).toFixed(0)} MiB`,
  );
  for (const v of result.violations.slice(0, 20)) options.log(`violation: ${v}`);
  if (result.options.keepDb === true) options.log(`database kept at ${result.dbPath}`);

  if (values['no-report'] !== true) {
    const reportPath = resolve(root, values.report ?? join('docs', 'RELIABILITY.md'));
    const fuzz = readFuzzSummary(resolve(root, values['fuzz-summary'] ?? FUZZ_SUMMARY));
    mkdirSync(dirname(reportPath), { recursive: true });
    const previous = existsSync(reportPath) ? readFileSync(reportPath, 'utf8') : '';
    const rendered = renderReport(result, { command, passed: failures.length === 0, failures, repoRoot: root }, fuzz);
    writeFileSync(reportPath, keepMeasuredSections(previous, rendered));
    options.log(`report written to ${relative(process.cwd(), reportPath) || reportPath}`);
  }
  for (const f of failures) process.stderr.write(`soak FAILED: ${f}\n`);
  if (failures.length === 0) options.log('PASS');
  return failures.length === 0 ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`soak runner: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 2;
  },
);
