import { defineConfig } from 'vitest/config';

/**
 * Test files that measure the server against a bound that another suite's CPU use would move: a
 * control client's p99 before and during an attack, CPU milliseconds spent on attack frames,
 * resident memory, or how many SIGKILLs land inside a commit window. They run after every other
 * file, one at a time. (Vitest runs one file at a time on 2 cores anyway; two at a time made the
 * whole run slower here, 644 s against 597 s, as most files drive a server process of their own.)
 */
const TIMING = [
  'test/exhaustion.test.ts',
  'test/hostile-websocket.test.ts',
  'test/http-limits.test.ts',
  'test/backpressure.test.ts',
  'test/changefeed-http-slow.test.ts',
  'test/crash-kill9.test.ts',
  'test/soak/crash-loop.test.ts',
];

const shared = {
  pool: 'forks' as const,
  testTimeout: 30_000,
  hookTimeout: 30_000,
};

export default defineConfig({
  test: {
    // The JSON report feeds the plain "N passed, N failed" line that .ci/run prints.
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-report.json' },
    projects: [
      {
        test: { ...shared, name: 'suite', include: ['test/**/*.test.ts'], exclude: TIMING, sequence: { groupOrder: 0 } },
      },
      {
        test: { ...shared, name: 'timing', include: TIMING, fileParallelism: false, sequence: { groupOrder: 1 } },
      },
    ],
  },
});
