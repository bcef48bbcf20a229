import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

/**
 * The node flags of a production launch (README.md, "Node flags") live in two places: package.json's
 * start script and the Docker image's CMD. The benchmark reads them from the start script.
 */
const read = (path: string): string => readFileSync(new URL(`../${path}`, import.meta.url), 'utf8');

function startFlags(): string[] {
  const start = (JSON.parse(read('package.json')) as { scripts: { start: string } }).scripts.start;
  const m = /\bnode\s+(.*?)\s*dist\/src\/cli\.js/.exec(start);
  expect(m, `start script: ${start}`).not.toBeNull();
  return m![1]!.split(/\s+/).filter(Boolean);
}

function dockerFlags(): string[] {
  const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(read('Dockerfile'));
  expect(cmd, 'Dockerfile has an exec-form CMD').not.toBeNull();
  const argv = JSON.parse(cmd![1]!) as string[];
  expect(argv[0]).toBe('node');
  expect(argv[argv.length - 1]).toBe('dist/src/cli.js');
  return argv.slice(1, -1);
}

describe('production node flags', () => {
  it('are the same in npm start and the Docker image, and README.md names each', () => {
    const flags = startFlags();
    expect(flags.length).toBeGreaterThan(0);
    expect(dockerFlags()).toEqual(flags);
    const readme = read('README.md');
    for (const f of flags) expect(readme).toContain(f);
  });
});
