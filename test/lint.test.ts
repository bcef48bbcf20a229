import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

/**
 * `npm test` lints: ESLint with eslint.config.js (typescript-eslint, the import boundaries of the
 * client and wire code, described disables), and Prettier over the code (.prettierrc.json,
 * .prettierignore). A violation fails its test and names every file (and line and rule), rather
 * than stopping the whole run. `npm run lint` and `npm run format:check` show the same reports.
 */

const ROOT = new URL('..', import.meta.url).pathname;

describe('lint', () => {
  it('finds no ESLint problem anywhere in the repository', async () => {
    const eslint = new ESLint({ cwd: ROOT });
    const results = await eslint.lintFiles(['.']);
    // A config that matched no files would pass by linting nothing.
    expect(results.map((r) => r.filePath.slice(ROOT.length))).toEqual(
      expect.arrayContaining(['src/gate.ts', 'packages/client/src/client.ts', 'test/lint.test.ts']),
    );
    const problems = results.flatMap((r) =>
      r.messages.map((m) => `${r.filePath.slice(ROOT.length)}:${m.line}:${m.column} ${m.ruleId ?? 'parse'}: ${m.message}`),
    );
    expect(problems, 'run `npm run lint` for the same report').toEqual([]);
  }, 180_000);

  it('finds every code file formatted as Prettier formats it', () => {
    let unformatted: string[] = [];
    try {
      execFileSync(join(ROOT, 'node_modules/.bin/prettier'), ['--list-different', '.'], { cwd: ROOT, encoding: 'utf8', stdio: 'pipe' });
    } catch (err) {
      // Exit 1 with the files on stdout means "not formatted"; anything else (exit 2) is an error of its own.
      const e = err as { status?: number; stdout?: string; stderr?: string };
      if (e.status !== 1) throw err;
      unformatted = (e.stdout ?? '').split('\n').filter((line) => line !== '');
    }
    expect(unformatted, 'run `npm run format`').toEqual([]);
  }, 180_000);
});
