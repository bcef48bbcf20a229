#!/usr/bin/env node
// Browser bundle size of each entry of @seqgate/client: esbuild (platform browser, minified, ESM),
// then gzip -9. Run after a build: `node packages/client/scripts/bundle-size.mjs [--json]`.
// A bundle that pulls a Node built-in fails here, so this is also the browser-safety check.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const entries = {
  'whole client (every export of @seqgate/client)': "export * from './dist/esm/index.js';",
  'typical app (SeqgateClient + MemoryOutbox)': "export { SeqgateClient, MemoryOutbox } from './dist/esm/index.js';",
  'wire module (@seqgate/client/wire)': "export * from './dist/esm/wire/index.js';",
};
const extra = { indexeddb: './dist/esm/indexeddb.js', 'async-storage': './dist/esm/async-storage.js' };
for (const [name, path] of Object.entries(extra)) {
  try {
    await import(new URL(path, new URL('../', import.meta.url)).href);
    entries[`client + ${name} outbox`] = `export * from './dist/esm/index.js'; export * from '${path}';`;
  } catch {
    // entry not built (yet)
  }
}

const rows = [];
for (const [name, contents] of Object.entries(entries)) {
  const result = await build({
    stdin: { contents, resolveDir: root, loader: 'js' },
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    write: false,
    logLevel: 'silent',
  });
  const code = result.outputFiles[0].contents;
  rows.push({ bundle: name, minifiedBytes: code.length, gzipBytes: gzipSync(code, { level: 9 }).length });
}
if (process.argv.includes('--json')) {
  console.log(JSON.stringify(rows));
} else {
  for (const r of rows) console.log(`${r.bundle}: ${(r.minifiedBytes / 1000).toFixed(1)} kB minified, ${(r.gzipBytes / 1000).toFixed(1)} kB min+gz`);
}
