import { defineConfig } from 'vitest/config';

/**
 * Test files that compare latencies measured in the same test (a control client's p99 before and
 * during an attack). They run after every other file, one at a time: beside another suite on a
 * 2-core machine the comparison measures that suite's CPU use, not the server's fairness.
 */
const TIMING = ['test/exhaustion.test.ts'];

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
