import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * Two TypeScripts live side by side (CONTRIBUTING.md, "Lint and format"): the `tsc` command must be
 * TypeScript 7, the native compiler the build and type checks are written for, while the package
 * named `typescript` must be TypeScript 6, whose JavaScript API typescript-eslint needs. Both come
 * from package aliases, and two packages provide a `tsc` command, so a change of dependencies could
 * silently swap them; this says so at once.
 */

const ROOT = new URL('..', import.meta.url).pathname;

describe('toolchain', () => {
  it('runs TypeScript 7 as tsc and gives TypeScript 6 to the tools that import typescript', () => {
    const tsc = execFileSync(join(ROOT, 'node_modules/.bin/tsc'), ['--version'], { encoding: 'utf8' });
    expect(tsc).toMatch(/^Version 7\./);
    const api = createRequire(join(ROOT, 'package.json'))('typescript') as { version: string };
    expect(api.version).toMatch(/^6\./);
  });
});
