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
 * reason beside it, and an inline `eslint-disable` must say why on the same or the previous line.
 */

const NODE_BUILTINS = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];

export default tseslint.config(
  {
    ignores: ['dist/', 'node_modules/', 'coverage/', 'data/', 'bench/.work/', '**/*.d.ts'],
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
      // tsc's noUnusedLocals reports unused locals; arguments named _x are deliberate placeholders.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Every inline disable says why, after `--` (see the header).
      '@eslint-community/eslint-comments/require-description': ['error', { ignore: [] }],
      eqeqeq: ['error', 'always'],
      'no-var': 'error',
      // A variable declared early so that a closure can name it, then assigned once, stays `let`.
      'prefer-const': ['error', { destructuring: 'all', ignoreReadBeforeAssign: true }],
    },
  },
  {
    // The client SDK's core runs in browsers and React Native: no Node built-ins, no Node globals,
    // and nothing of the server. Only src/client/node.ts (seqgate/client/node) may use Node.
    files: ['src/client/**/*.ts'],
    ignores: ['src/client/node.ts'],
    languageOptions: { globals: { ...globals.browser } },
    rules: {
      'no-restricted-imports': ['error', {
        paths: NODE_BUILTINS.map((name) => ({ name, message: 'The client core runs in browsers: no Node built-ins (Node-only code goes in src/client/node.ts).' })),
        patterns: [
          { group: ['../*', '!./*'], message: 'The client imports nothing outside src/client/: no server, store or server protocol modules.' },
          { group: ['ws', 'better-sqlite3', 'pino', 'prom-client'], message: 'Server and Node-only libraries stay out of the client core.' },
        ],
      }],
      'no-restricted-globals': ['error',
        { name: 'Buffer', message: 'Use Uint8Array: Buffer does not exist in browsers.' },
        { name: 'process', message: 'process does not exist in browsers.' },
        { name: 'require', message: 'ES modules only.' },
        { name: '__dirname', message: 'ES modules only.' },
      ],
    },
  },
  {
    // The wire: what a frame is and means. It may hash (node:crypto) but never reaches into the
    // transports, the server or a store implementation; store types describe results and are allowed.
    files: ['src/protocol/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', {
        patterns: [
          { group: ['../server/*', '../client/*', '../cli.js', '../index.js'], message: 'Wire code does not depend on transports, the server or the client.' },
          { group: ['../store/*'], allowTypeImports: true, message: 'Wire code may use store types, never a store.' },
          { group: ['ws', 'better-sqlite3', 'pino', 'prom-client', 'pg'], message: 'Wire code does not depend on transports or storage libraries.' },
        ],
      }],
    },
  },
);
