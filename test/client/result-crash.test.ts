import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { withDb } from '../support/db-checker.js';
import { startTestServer, type TestServer } from '../support/test-client.js';

/**
 * Issue 9, finding 10: puts applied and settled in the SQLite outbox, and the client process
 * killed before its `result` event fired. The outbox keeps each answer until the application has
 * seen it, so the next start reports every such put (recovered: true) with its original answer.
 */

const FIXTURE = fileURLToPath(new URL('./fixtures/result-crash.mjs', import.meta.url));
const PUTS = 20;
const STREAM = 'result-crash';

interface Line {
  event: string;
  seq?: number;
  recovered?: boolean;
  ok?: boolean;
  replay?: boolean | null;
  drained?: boolean;
}

function runClient(
  url: string,
  outbox: string,
  puts: number,
  killAtSettle: number,
): Promise<{ lines: Line[]; signal: string | null; code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FIXTURE, url, STREAM, outbox, String(puts), String(killAtSettle)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('utf8');
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString('utf8');
    });
    child.on('exit', (code, signal) =>
      resolve({
        lines: out
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as Line),
        code,
        signal,
        stderr,
      }),
    );
  });
}

let t: TestServer;
let dir: string;
beforeAll(async () => {
  t = await startTestServer();
  dir = mkdtempSync(join(tmpdir(), 'seqgate-result-crash-'));
});
afterAll(async () => {
  await t?.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('reports after a restart every put whose answer was stored but never delivered when the client was killed', async () => {
  const outbox = join(dir, 'outbox.sqlite');
  const first = await runClient(t.url, outbox, PUTS, 1);
  expect(first.signal, first.stderr).toBe('SIGKILL');
  // Killed after the answers were committed to the outbox and before any result event.
  expect(first.lines.filter((l) => l.event === 'result')).toEqual([]);
  const db = new Database(outbox, { readonly: true });
  const answered = db.prepare('SELECT seq, answer FROM entries WHERE answer IS NOT NULL ORDER BY seq').all() as Array<{ seq: number; answer: string }>;
  db.close();
  expect(answered.length).toBeGreaterThan(0);
  for (const a of answered) expect(JSON.parse(a.answer)).toMatchObject({ ok: true, replay: false, ack: { seq: a.seq } });

  const second = await runClient(t.url, outbox, 0, 0);
  expect(second.code, second.stderr).toBe(0);
  const results = second.lines.filter((l) => l.event === 'result');
  // Every put is reported, each exactly once, all recovered.
  expect(results.map((r) => r.seq).sort((a, b) => a! - b!)).toEqual(Array.from({ length: PUTS }, (_, i) => i + 1));
  expect(results.every((r) => r.recovered === true && r.ok === true)).toBe(true);
  // The stored ones come back with their original answer (not a replay from a resend).
  for (const a of answered) expect(results.find((r) => r.seq === a.seq)).toMatchObject({ replay: false });
  expect(second.lines.at(-1)).toEqual({ event: 'done', drained: true });

  // Nothing is left to report: a third start says nothing.
  const third = await runClient(t.url, outbox, 0, 0);
  expect(third.lines.filter((l) => l.event === 'result')).toEqual([]);
  withDb(t.dbPath, (check) => {
    expect(check.head(STREAM)).toMatchObject({ epoch: 1, seq: PUTS });
    expect(check.countAcks(STREAM)).toBe(PUTS);
  });
}, 30_000);
