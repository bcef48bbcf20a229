import { fileURLToPath } from 'node:url';

/** The repository root, found from the compiled file's place in dist/bench/lib/. */
export function repoRoot(): string {
  return fileURLToPath(new URL('../../../', import.meta.url));
}

/** True when the module at `metaUrl` is the script node was started with. */
export function isMain(metaUrl: string): boolean {
  return process.argv[1] !== undefined && fileURLToPath(metaUrl) === process.argv[1];
}
