import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root, found from the compiled file's place in dist/bench/lib/. */
export function repoRoot(): string {
  return fileURLToPath(new URL('../../../', import.meta.url));
}

/** True when the module at `metaUrl` is the script node was started with. */
export function isMain(metaUrl: string): boolean {
  return process.argv[1] !== undefined && fileURLToPath(metaUrl) === process.argv[1];
}

/**
 * The node flags the server runs with in production: those between `node` and `dist/src/cli.js`
 * in package.json's start script (the Docker image uses the same; test/launch-flags.test.ts).
 * Every server arm gets them, so the arms differ only in what they do.
 */
export function productionNodeFlags(): string[] {
  const pkg = JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')) as { scripts: { start: string } };
  const m = /\bnode\s+(.*?)\s*dist\/src\/cli\.js/.exec(pkg.scripts.start);
  if (m === null) throw new Error(`package.json start script does not run dist/src/cli.js with node: ${pkg.scripts.start}`);
  return m[1]!.split(/\s+/).filter(Boolean);
}
