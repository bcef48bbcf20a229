import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * The published client, as a user gets it: `npm pack` the workspace package, install the tarball
 * into an empty app in a temp folder (offline: the client has no dependencies), then import it
 * as ESM, require it as CommonJS, and type-check an app under `tsc --strict` with moduleResolution
 * NodeNext and Bundler. The server package's file list is checked too.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLIENT_DIR = join(ROOT, 'packages/client');
const TSC = join(ROOT, 'node_modules/.bin/tsc');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

let dir = '';
let app = '';
let tarball = '';
let packed: string[] = [];
let install = { ms: 0, packages: [] as string[] };

function run(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_update_notifier: 'false' } });
}

function installedPackages(nodeModules: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(nodeModules)) {
    if (name.startsWith('.')) continue;
    if (name.startsWith('@')) for (const sub of readdirSync(join(nodeModules, name))) out.push(`${name}/${sub}`);
    else out.push(name);
  }
  return out.sort();
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'seqgate-pack-'));
  // `npm test` built the package already (pretest); prepack would build it again, which the
  // test of the package.json below checks instead of paying for.
  const info = JSON.parse(run(NPM, ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], CLIENT_DIR)) as Array<{
    filename: string;
    files: Array<{ path: string }>;
  }>;
  tarball = join(dir, info[0]!.filename);
  packed = info[0]!.files.map((f) => f.path).sort();

  app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'scratch-app', version: '1.0.0', private: true }));
  const started = performance.now();
  run(NPM, ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts=false', tarball], app);
  install = { ms: performance.now() - started, packages: installedPackages(join(app, 'node_modules')) };
  console.log(`client alone into an empty app: ${install.packages.length} package(s) (${install.packages.join(', ')}) in ${Math.round(install.ms)} ms`);
}, 120_000);

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('the @seqgate/client tarball', () => {
  it('is built by prepare (git installs, workspace installs) and prepack (npm pack, publish)', async () => {
    const pkg = JSON.parse((await import('node:fs')).readFileSync(join(CLIENT_DIR, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.prepare).toBe('npm run build');
    expect(pkg.scripts.prepack).toBe('npm run build');
    expect(pkg.scripts.build).toMatch(/^tsc -p tsconfig\.json && tsc -p tsconfig\.cjs\.json/);
  });

  it('holds the ESM and CommonJS builds with their types, README and CHANGELOG, and nothing else', () => {
    expect(packed).toEqual(
      expect.arrayContaining([
        'package.json',
        'README.md',
        'CHANGELOG.md',
        'dist/esm/index.js',
        'dist/esm/index.d.ts',
        'dist/esm/wire/index.js',
        'dist/esm/node.js',
        'dist/cjs/index.js',
        'dist/cjs/index.d.ts',
        'dist/cjs/package.json',
        'dist/cjs/wire/index.d.ts',
      ]),
    );
    expect(packed.filter((f) => !/^(package\.json|README\.md|CHANGELOG\.md|dist\/(esm|cjs)\/.+\.(js|d\.ts)|dist\/cjs\/package\.json)$/.test(f))).toEqual([]);
    expect(packed.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
  });

  it('installs alone into an empty app: itself only, no install scripts, no native code', () => {
    expect(install.packages).toEqual(['@seqgate/client']);
  });

  it('imports as ESM: a client runs, and the wire module encodes canonically', () => {
    writeFileSync(
      join(app, 'esm.mjs'),
      `
      import { SeqgateClient, MemoryOutbox, SeqgateClientError, ClientClosedError } from '@seqgate/client';
      import { canonicalEncode, SUBPROTOCOL_MSGPACK } from '@seqgate/client/wire';
      class NeverOpens { constructor() { this.binaryType = ''; this.protocol = ''; } send() {} close() {} }
      const client = new SeqgateClient({ url: 'ws://127.0.0.1:9', stream: 's', WebSocket: NeverOpens, outbox: new MemoryOutbox() });
      const put = client.put('k', { b: 1, a: 2 }).catch((e) => e);
      const report = await client.close({ timeoutMs: 20 });
      const error = await put;
      const bytes = canonicalEncode({ b: 1, a: 2 }, { maxBytes: 100, maxDepth: 4, bytesLimitName: 'x', depthLimitName: 'y' }, 'state');
      console.log(JSON.stringify({
        left: report.left.length, closed: error instanceof ClientClosedError && error instanceof SeqgateClientError, code: error.code,
        hex: Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''), sub: SUBPROTOCOL_MSGPACK,
      }));
    `,
    );
    expect(JSON.parse(run(process.execPath, ['esm.mjs'], app))).toEqual({ left: 1, closed: true, code: 'CLOSED', hex: '82a16102a16201', sub: 'seqgate.v1' });
  });

  it('requires as CommonJS', () => {
    writeFileSync(
      join(app, 'cjs.cjs'),
      `
      const { SeqgateClient, MemoryOutbox, FencedError } = require('@seqgate/client');
      const { canonicalEncode, CLOSE_CODES } = require('@seqgate/client/wire');
      const bytes = canonicalEncode([1, 'a'], { maxBytes: 100, maxDepth: 4, bytesLimitName: 'x', depthLimitName: 'y' }, 'state');
      console.log(JSON.stringify({ client: typeof SeqgateClient, outbox: new MemoryOutbox().durable, fenced: new FencedError(3).code, bytes: Array.from(bytes), revoked: CLOSE_CODES.TOKEN_REVOKED }));
    `,
    );
    expect(JSON.parse(run(process.execPath, ['cjs.cjs'], app))).toEqual({
      client: 'function',
      outbox: false,
      fenced: 'FENCED',
      bytes: [0x92, 1, 0xa1, 0x61],
      revoked: 4403,
    });
  });

  it('runs the SQLite outbox from @seqgate/client/node once better-sqlite3 is installed beside it', () => {
    symlinkSync(join(ROOT, 'node_modules/better-sqlite3'), join(app, 'node_modules/better-sqlite3'), 'dir');
    const outboxFile = join(dir, 'outbox.sqlite');
    writeFileSync(
      join(app, 'node.mjs'),
      `
      import { SqliteOutbox, SeqgateClient } from '@seqgate/client/node';
      const o = new SqliteOutbox(${JSON.stringify(outboxFile)});
      const record = { epoch: 1, nextSeq: 2, lastAcked: null, incarnation: null, checkpoint: { at: 7 } };
      await o.append('s', record, [{ pos: 1, epoch: 1, seq: 1, key: 'k', state: Uint8Array.of(0xc0), ifVersion: null, createdAt: 5 }]);
      const loaded = await o.load('s');
      o.close();
      console.log(JSON.stringify({ client: typeof SeqgateClient, checkpoint: loaded.record.checkpoint, entries: loaded.entries.length }));
    `,
    );
    expect(JSON.parse(run(process.execPath, ['node.mjs'], app))).toEqual({ client: 'function', checkpoint: { at: 7 }, entries: 1 });
  });

  it.each([
    ['NodeNext', { module: 'nodenext', moduleResolution: 'nodenext' }],
    ['Bundler', { module: 'preserve', moduleResolution: 'bundler' }],
  ])('type-checks an app under tsc --strict with moduleResolution %s', (name, options) => {
    writeFileSync(
      join(app, 'app.mts'),
      `
      import { SeqgateClient, MemoryOutbox, FencedError, type PutResult, type WebSocketConstructor, type Outbox } from '@seqgate/client';
      import { canonicalEncode, type WireLimits } from '@seqgate/client/wire';
      declare const WS: WebSocketConstructor;
      const outbox: Outbox = new MemoryOutbox();
      const client = new SeqgateClient({ url: 'ws://x', stream: 's', WebSocket: WS, outbox });
      export const result: Promise<PutResult> = client.put('k', { a: 1 }, { ifVersion: 0 });
      client.on('result', (s) => { if (s.error instanceof FencedError) console.log(s.error.epoch, s.put.seq); });
      export const bytes: Uint8Array = canonicalEncode(1, { maxBytes: 1, maxDepth: 1, bytesLimitName: '', depthLimitName: '' }, 'x');
      export const limits: Partial<WireLimits> = { maxFrameBytes: 1 };
      // @ts-expect-error the types are real: a number is not a URL
      new SeqgateClient({ url: 1, stream: 's' });
    `,
    );
    writeFileSync(
      join(app, 'app-cjs.cts'),
      `
      import sdk = require('@seqgate/client');
      export const code: string = new sdk.FencedError(1).code;
    `,
    );
    const files = name === 'NodeNext' ? ['app.mts', 'app-cjs.cts'] : ['app.mts'];
    writeFileSync(
      join(app, `tsconfig.${name}.json`),
      JSON.stringify({
        compilerOptions: { ...options, strict: true, noEmit: true, skipLibCheck: false, types: [], lib: ['es2022', 'dom'], target: 'es2022' },
        files,
      }),
    );
    expect(() => run(TSC, ['-p', `tsconfig.${name}.json`], app)).not.toThrow();
  });
});

describe('the seqgate server tarball', () => {
  it('declares its files: the built server and the protocol, no tests, benchmarks or sources', () => {
    const info = JSON.parse(run(NPM, ['pack', '--dry-run', '--json', '--ignore-scripts'], ROOT)) as Array<{ files: Array<{ path: string }> }>;
    const files = info[0]!.files.map((f) => f.path);
    expect(files).toEqual(expect.arrayContaining(['dist/src/cli.js', 'dist/src/index.js', 'dist/src/client/index.js', 'protocol/PROTOCOL.md', 'README.md']));
    expect(files.filter((f) => /^(test|bench|src|examples|packages|node_modules)\//.test(f) || /\.map$/.test(f))).toEqual([]);
  });
});

describe('the browser bundle', () => {
  it('bundles for the browser without Node built-ins, within 20 kB minified and gzipped', () => {
    const rows = JSON.parse(run(process.execPath, [join(CLIENT_DIR, 'scripts/bundle-size.mjs'), '--json'], ROOT)) as Array<{
      bundle: string;
      minifiedBytes: number;
      gzipBytes: number;
    }>;
    for (const r of rows) console.log(`${r.bundle}: ${(r.minifiedBytes / 1000).toFixed(1)} kB minified, ${(r.gzipBytes / 1000).toFixed(1)} kB min+gz`);
    const whole = rows.find((r) => r.bundle.startsWith('whole client'))!;
    expect(whole.gzipBytes).toBeLessThanOrEqual(20_000);
  });
});
