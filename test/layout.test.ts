import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * README's "Layout" is the map of the architecture; this keeps it true, the way config.test.ts
 * keeps the options table true. Granularity: every folder under src/ and under each package's
 * src/ (packages/<name>/src/), and every file directly in one of those, must be on the map (a new
 * module or folder is a change of architecture), while files inside a subfolder may be listed or
 * not. Every path that is on the map must exist, as a folder when it ends in "/" and as a file
 * otherwise.
 *
 * The map is the first fenced block under "## Layout". Each line is `<indent><path>  <meaning>`;
 * a path is relative to the nearest less-indented folder above it, or to the repository root.
 */

const ROOT = new URL('..', import.meta.url).pathname;

function mapPaths(readme: string): string[] {
  const section = readme.split(/^## Layout\s*$/m)[1];
  if (section === undefined) throw new Error('README.md has no "## Layout" section');
  const block = /```[^\n]*\n([\s\S]*?)```/.exec(section.split(/^## /m)[0]!)?.[1];
  if (block === undefined) throw new Error("README.md's Layout section has no fenced map");
  const paths: string[] = [];
  const parents: Array<{ indent: number; path: string }> = [];
  for (const line of block.split('\n')) {
    const m = /^( *)(\S+)/.exec(line);
    if (m === null) continue;
    const indent = m[1]!.length;
    while (parents.length > 0 && parents[parents.length - 1]!.indent >= indent) parents.pop();
    const path = (parents[parents.length - 1]?.path ?? '') + m[2]!;
    paths.push(path);
    if (path.endsWith('/')) parents.push({ indent, path });
  }
  return paths;
}

/** Every way the map and the tree under `root` disagree, one sentence each. */
function layoutProblems(readme: string, root: string): string[] {
  const problems: string[] = [];
  const mapped = mapPaths(readme);
  const onMap = new Set(mapped);
  for (const path of mapped) {
    const full = join(root, path.replace(/\/$/, ''));
    if (!existsSync(full)) problems.push(`the map lists ${path}, which does not exist`);
    else if (path.endsWith('/') !== statSync(full).isDirectory()) {
      problems.push(`the map lists ${path} as a ${path.endsWith('/') ? 'folder' : 'file'}, but it is not one`);
    }
  }
  const walk = (top: string, dir: string): void => {
    for (const entry of readdirSync(join(root, dir), { withFileTypes: true })) {
      if (entry.name.startsWith('.')) continue;
      const path = `${dir}${entry.name}${entry.isDirectory() ? '/' : ''}`;
      const required = entry.isDirectory() || dir === top;
      if (required && !onMap.has(path)) problems.push(`${path} is not on the map`);
      if (entry.isDirectory()) walk(top, path);
    }
  };
  const packages = existsSync(join(root, 'packages')) ? readdirSync(join(root, 'packages')) : [];
  for (const top of ['src/', ...packages.map((p) => `packages/${p}/src/`)]) {
    if (existsSync(join(root, top))) walk(top, top);
  }
  return problems;
}

describe('README layout', () => {
  it('lists every folder of src/ and every file directly in src/, and nothing that does not exist', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    expect(layoutProblems(readme, ROOT), 'update the map in README.md ("## Layout")').toEqual([]);
  });

  it('notices a missing folder (also in a package), a missing top-level file, a listed path that is gone and a file listed as a folder', () => {
    const root = mkdtempSync(join(tmpdir(), 'seqgate-layout-'));
    try {
      mkdirSync(join(root, 'src/store/sql'), { recursive: true });
      writeFileSync(join(root, 'src/gate.ts'), '');
      writeFileSync(join(root, 'src/cli.ts'), '');
      writeFileSync(join(root, 'src/store/store.ts'), '');
      mkdirSync(join(root, 'packages/web/src/wire'), { recursive: true });
      writeFileSync(join(root, 'packages/web/src/index.ts'), '');
      writeFileSync(join(root, 'packages/web/src/wire/codec.ts'), '');
      const readme = [
        '## Layout',
        '',
        '```',
        'src/           the code',
        '  gate.ts      decides',
        '  store/       stores',
        '    store.ts/  wrongly a folder',
        '    gone.ts    removed',
        'test/          not there',
        'packages/web/  a package',
        '  src/index.ts its entry',
        '```',
        '',
        '## Next',
        '```',
        'src/ignored.ts',
        '```',
      ].join('\n');
      expect(mapPaths(readme)).toEqual([
        'src/',
        'src/gate.ts',
        'src/store/',
        'src/store/store.ts/',
        'src/store/gone.ts',
        'test/',
        'packages/web/',
        'packages/web/src/index.ts',
      ]);
      expect(layoutProblems(readme, root).sort()).toEqual([
        'packages/web/src/wire/ is not on the map',
        'src/cli.ts is not on the map',
        'src/store/sql/ is not on the map',
        'the map lists src/store/gone.ts, which does not exist',
        'the map lists src/store/store.ts/ as a folder, but it is not one',
        'the map lists test/, which does not exist',
      ]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
