import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { type JsonChange, offsetPosition } from './support/json-change.js';

/**
 * The change log under kill -9, with real processes: writers put (and retry) through HTTP while a
 * reader tails GET /v1/changes by long-poll, and the server is killed several times mid-load.
 * Every committed change must reach the reader, in offset order, with no gap and no repeat; no
 * change may exist for a write that did not commit (each logged put has its stored ack); and
 * replaying the log from the start must give exactly the stored documents.
 */

const WRITERS = 4;
const PUTS_PER_WRITER = 120;
const KILLS = 3;

let dir: TempDb;
let server: ChildServer;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const base = (): string => server.url.replace(/^ws/, 'http');

beforeAll(async () => {
  dir = tempDb('seqgate-feed-crash-');
  server = new ChildServer({ dbPath: dir.dbPath, args: ['--changes-long-poll-ms', '500'] });
  await server.start();
}, 30_000);

afterAll(async () => {
  await server.dispose();
  dir.remove();
});

/** Puts seq 1..n of one stream, each retried until it gets a final answer (the server may be down). */
async function writer(stream: string, n: number, acked: Map<string, { key: string; version: number }>): Promise<void> {
  for (let seq = 1; seq <= n; seq++) {
    const body = JSON.stringify({ epoch: 1, seq, key: `k${(seq * 7 + stream.length) % 10}`, state: { stream, seq } });
    for (;;) {
      try {
        const res = await fetch(`${base()}/v1/streams/${stream}/puts`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
          signal: AbortSignal.timeout(5000),
        });
        if (res.status === 200) {
          const r = (await res.json()) as { ack: { key: string; version: number } };
          acked.set(`${stream}/${seq}`, { key: r.ack.key, version: r.ack.version });
          break;
        }
      } catch {
        // Down or restarting: retry the same put; a put that committed before the kill replays.
      }
      await sleep(20);
    }
  }
}

describe('the change log across kill -9', () => {
  it('delivers every committed change once, in order, without gaps; logs nothing uncommitted; replays to the stored documents', async () => {
    const acked = new Map<string, { key: string; version: number }>();
    const seen: JsonChange[] = [];
    const problems: string[] = [];
    let writing = true;

    const reader = (async () => {
      let offset = '-1';
      let last = 0;
      for (;;) {
        // Only an answer to a request sent after the last write was acked can say "caught up".
        const afterWrites = !writing;
        try {
          const res = await fetch(`${base()}/v1/changes?offset=${offset}&live=long-poll`, { signal: AbortSignal.timeout(5000) });
          if (res.status === 200) {
            for (const c of (await res.json()) as JsonChange[]) {
              if (offsetPosition(c.offset) !== last + 1) problems.push(`after ${last} came ${offsetPosition(c.offset)}`);
              last = offsetPosition(c.offset);
              seen.push(c);
            }
          }
          if (res.status === 200 || res.status === 204) {
            offset = res.headers.get('stream-next-offset') ?? offset;
            if (afterWrites && res.headers.has('stream-up-to-date')) return;
          }
        } catch {
          await sleep(20);
        }
      }
    })();

    const writers = Array.from({ length: WRITERS }, (_, i) => writer(`w${i}`, PUTS_PER_WRITER, acked));
    const allWritten = Promise.all(writers);
    for (let k = 0; k < KILLS; k++) {
      await sleep(300 + Math.random() * 400);
      await server.kill('SIGKILL');
      await server.restart();
    }
    await allWritten;
    writing = false;
    await reader;

    expect(problems.slice(0, 5)).toEqual([]);
    expect(acked.size).toBe(WRITERS * PUTS_PER_WRITER);

    const db = new Database(dir.dbPath, { readonly: true });
    try {
      // Every acked put is in the log exactly once, with the version its ack gave.
      const byOrigin = new Map<string, JsonChange>();
      for (const c of seen) {
        const id = `${c.origin.stream}/${c.origin.seq}`;
        if (byOrigin.has(id)) problems.push(`${id} logged twice`);
        byOrigin.set(id, c);
      }
      for (const [id, a] of acked) {
        const c = byOrigin.get(id);
        if (c === undefined || c.key !== a.key || c.version !== a.version) problems.push(`${id}: acked ${JSON.stringify(a)}, logged ${JSON.stringify(c)}`);
      }
      // Nothing logged for a put that did not commit: each logged put has its stored ack.
      const ack = db.prepare('SELECT a.key, a.version FROM acks_all a JOIN streams s ON s.id = a.stream_id WHERE s.name = ? AND a.seq = ?');
      for (const c of seen) {
        const row = ack.get(c.origin.stream, c.origin.seq) as { key: string; version: number } | undefined;
        if (row === undefined || row.key !== c.key || row.version !== c.version) problems.push(`logged without a matching stored ack: ${JSON.stringify(c)}`);
      }
      expect(problems.slice(0, 5)).toEqual([]);
      expect(seen.length).toBe(acked.size);

      // Replaying the log from the start gives exactly the stored documents.
      const replayed = new Map<string, JsonChange>();
      for (const c of seen) replayed.set(c.key, c);
      const docs = db.prepare('SELECT key, version, deleted FROM documents').all() as Array<{ key: string; version: number; deleted: number }>;
      expect(new Map(docs.map((d) => [d.key, d.version]))).toEqual(new Map([...replayed].map(([k, c]) => [k, c.version])));
      for (const d of docs) {
        const doc = (await (await fetch(`${base()}/v1/docs/${d.key}`)).json()) as unknown;
        expect(doc).toEqual(replayed.get(d.key)!.state);
      }
    } finally {
      db.close();
    }
  }, 120_000);
});
