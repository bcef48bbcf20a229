import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sdk from '@seqgate/client';
import { describe, expect, it } from 'vitest';

/**
 * One list of the client's own error codes (CLIENT_ERROR_CODES in errors.ts), documented in
 * docs/CLIENT.md ("Error codes") exactly, both ways, and used by the source and nothing more.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SRC = join(ROOT, 'packages/client/src');

function documented(): Map<string, string> {
  const doc = readFileSync(join(ROOT, 'docs/CLIENT.md'), 'utf8');
  const section = doc.split(/^### Error codes\s*$/m)[1]?.split(/^#{2,3} /m)[0];
  if (section === undefined) throw new Error('docs/CLIENT.md has no "### Error codes" section');
  const rows = new Map<string, string>();
  for (const m of section.matchAll(/^\| `([A-Z_]+)` \| `(\w+)` \|/gm)) rows.set(m[1]!, m[2]!);
  return rows;
}

describe('client error codes', () => {
  it('are documented in docs/CLIENT.md exactly, with their classes', () => {
    expect(Object.fromEntries(documented())).toEqual({ ...sdk.CLIENT_ERROR_CODES });
  });

  it('name classes the package exports, subclasses of SeqgateClientError', () => {
    for (const name of new Set(Object.values(sdk.CLIENT_ERROR_CODES))) {
      const cls = (sdk as unknown as Record<string, unknown>)[name] as { prototype: unknown } | undefined;
      expect(cls, name).toBeTypeOf('function');
      expect(cls!.prototype instanceof sdk.SeqgateClientError || cls === sdk.SeqgateClientError, name).toBe(true);
    }
  });

  it('cover every code the source gives an error of its own', () => {
    const used = new Set<string>();
    for (const file of readdirSync(SRC, { recursive: true })
      .map(String)
      .filter((f) => f.endsWith('.ts'))) {
      const text = readFileSync(join(SRC, file), 'utf8');
      for (const m of text.matchAll(/new (?:\w+Error)\(\s*'([A-Z_]+)'/g)) used.add(m[1]!);
      for (const m of text.matchAll(/super\('([A-Z_]+)'/g)) used.add(m[1]!);
      for (const line of text.split('\n').filter((l) => l.includes('Error('))) {
        for (const m of line.matchAll(/\? '([A-Z_]{4,})' : '([A-Z_]{4,})'/g)) used.add(m[1]!).add(m[2]!);
      }
    }
    expect(used.size).toBeGreaterThan(15);
    for (const code of used) expect(Object.keys(sdk.CLIENT_ERROR_CODES), `${code} is given in the source`).toContain(code);
  });
});
