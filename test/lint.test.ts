import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

/**
 * `npm test` lints: ESLint with eslint.config.js (typescript-eslint, the import boundaries of the
 * client and wire code, described disables). A violation fails this one test and names every
 * file, line and rule, rather than stopping the whole run. `npm run lint` shows the same report.
 */

const ROOT = new URL('..', import.meta.url).pathname;

describe('lint', () => {
  it('finds no ESLint problem anywhere in the repository', async () => {
    const eslint = new ESLint({ cwd: ROOT });
    const results = await eslint.lintFiles(['.']);
    // A config that matched no files would pass by linting nothing.
    expect(results.map((r) => r.filePath.slice(ROOT.length))).toEqual(expect.arrayContaining(['src/gate.ts', 'packages/client/src/client.ts', 'test/lint.test.ts']));
    const problems = results.flatMap((r) =>
      r.messages.map((m) => `${r.filePath.slice(ROOT.length)}:${m.line}:${m.column} ${m.ruleId ?? 'parse'}: ${m.message}`),
    );
    expect(problems, 'run `npm run lint` for the same report').toEqual([]);
  }, 180_000);
});
