import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { defaultConfig, envName, flagName, loadConfig, OPTIONS } from '../src/config.js';
import { SEQGATE_VERSION } from '../src/version.js';

describe('configuration', () => {
  it('defaults to loopback port 8787, ./data/seqgate.db and synchronous=full', () => {
    expect(defaultConfig()).toMatchObject({ host: '127.0.0.1', port: 8787, dbPath: './data/seqgate.db', synchronous: 'full' });
  });

  it('reads flags over environment variables over defaults', () => {
    const c = loadConfig(['--port', '9000', '--contiguous', '--ack-cap-per-stream=5'], {
      SEQGATE_PORT: '1234',
      SEQGATE_HOST: '0.0.0.0',
      SEQGATE_SYNCHRONOUS: 'normal',
    });
    expect(c).toMatchObject({ port: 9000, host: '0.0.0.0', synchronous: 'normal', contiguous: true, ackCapPerStream: 5 });
    expect(loadConfig(['--no-contiguous'], { SEQGATE_CONTIGUOUS: 'true' }).contiguous).toBe(false);
  });

  it.each([
    [['--port', 'abc'], /expected an integer/],
    [['--synchronous', 'sometimes'], /expected one of full, normal/],
    [['--ack-cap-per-stream', '0'], />= 1/],
    [['--nope'], /unknown option --nope/],
    [['--port'], /missing value/],
  ])('rejects %j with a clear message', (argv, message) => {
    expect(() => loadConfig(argv, {})).toThrow(message);
  });

  it('names flags and environment variables from the option name', () => {
    expect(flagName('ackRetentionSeconds')).toBe('--ack-retention-seconds');
    expect(envName('ackRetentionSeconds')).toBe('SEQGATE_ACK_RETENTION_SECONDS');
  });

  it('documents every option in the README with its flag, variable and default', () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const rows = new Map<string, string>();
    for (const line of readme.split('\n')) {
      const m = /^\| `(--[a-z-]+)` \| `(SEQGATE_[A-Z_]+)` \| `([^`]*)` \|/.exec(line);
      if (m) rows.set(m[1]!, `${m[2]} ${m[3]}`);
    }
    const expected = new Map(Object.entries(OPTIONS).map(([name, spec]) => [flagName(name), `${envName(name)} ${String(spec.default)}`]));
    expect(rows).toEqual(expected);
  });

  it('keeps the version constant equal to package.json', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(SEQGATE_VERSION).toBe(pkg.version);
  });
});
