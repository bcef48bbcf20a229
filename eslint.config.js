// @ts-check
import { builtinModules } from 'node:module';
import comments from '@eslint-community/eslint-plugin-eslint-comments/configs';
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/**
 * Lint for seqgate. Syntax-only rules (no type information), so `npm test` stays fast; `tsc`
 * already type-checks everything. Formatting belongs to Prettier (.prettierrc.json), so every
 * stylistic rule is off (eslint-config-prettier). A rule is only ever turned off below with its
 * reason beside it, and an inline `eslint-disable` must give its reason after `--`.
 */

const NODE_BUILTINS = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];
const SERVER_LIBRARIES = ['ws', 'better-sqlite3', 'pino', 'pino-pretty', 'prom-client', 'pg', 'msgpackr'];

/**
 * Imports the platform-neutral code of @seqgate/client may not make: Node built-ins, server
 * libraries, the server package, and (with `outside`) any relative path that leaves its folder.
 */
function browserSafeImports(outside, where) {
  return [
    'error',
    {
      paths: NODE_BUILTINS.map((name) => ({ name, message: `No Node built-ins in ${where}: it runs in browsers and React Native.` })),
      patterns: [
        { group: [outside, '**/src/server/**', '**/src/store/**', 'seqgate', 'seqgate/*'], message: `Only its own files: ${where} never imports the server.` },
        { group: SERVER_LIBRARIES, message: `Server and Node-only libraries stay out of ${where}.` },
      ],
    },
  ];
}

export default tseslint.config(
  {
    ignores: ['**/dist/', '**/node_modules/', 'coverage/', 'data/', 'bench/.work/', '**/*.d.ts'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  comments.recommended,
  prettier,
  {
    linterOptions: {
      reportUnusedDisableDirectives: 'error',
    },
    languageOptions: {
      ecmaVersion: 2023,
      sourceType: 'module',
      globals: { ...globals.node },
    },
    rules: {
      // Arguments and bindings named _x are deliberate placeholders (tsc's noUnusedLocals covers the rest).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Every inline disable says why, after `--`.
      '@eslint-community/eslint-comments/require-description': 'error',
      eqeqeq: ['error', 'always'],
      'no-var': 'error',
      // A variable declared early so that a closure can name it, then assigned once, stays `let`.
      'prefer-const': ['error', { destructuring: 'all', ignoreReadBeforeAssign: true }],
    },
  },
  {
    // @seqgate/client (packages/client) runs in browsers and React Native. Only its node.ts
    // (@seqgate/client/node, the SQLite outbox) may use Node.
    files: ['packages/client/src/**/*.ts'],
    ignores: ['packages/client/src/node.ts'],
    languageOptions: { globals: { ...globals.browser } },
    rules: {
      'no-restricted-globals': [
        'error',
        { name: 'Buffer', message: 'Use Uint8Array: Buffer does not exist in browsers.' },
        { name: 'process', message: 'process does not exist in browsers.' },
        { name: 'require', message: 'ES modules only.' },
        { name: '__dirname', message: 'ES modules only.' },
      ],
    },
  },
  {
    // The client's modules sit directly in src/: a `../` import leaves the package.
    files: ['packages/client/src/*.ts'],
    ignores: ['packages/client/src/node.ts'],
    rules: { 'no-restricted-imports': browserSafeImports('../*', 'the client') },
  },
  {
    // The wire module is shared by the client and the server (src/protocol/), so it stands alone:
    // it imports only its own files, not even the client core.
    files: ['packages/client/src/wire/**/*.ts'],
    rules: { 'no-restricted-imports': browserSafeImports('../*', 'the wire module') },
  },
  {
    // The server's wire code: what a frame is and means. It may hash (node:crypto) but never
    // reaches into the transports, the server or a store; store types describe results and are allowed.
    files: ['src/protocol/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['../server/*', '../client/*', '../cli.js', '../index.js'],
              message: 'Wire code does not depend on transports, the server or the client shim.',
            },
            { group: ['../store/*'], allowTypeImports: true, message: 'Wire code may use store types, never a store.' },
            {
              group: ['ws', 'better-sqlite3', 'pino', 'pino-pretty', 'prom-client', 'pg'],
              message: 'Wire code does not depend on transports or storage libraries.',
            },
          ],
        },
      ],
    },
  },
);
