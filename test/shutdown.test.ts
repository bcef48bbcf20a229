import { existsSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { ChildExitError, ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { DbChecker } from './support/db-checker.js';
import { TestClient, type Msg } from './support/test-client.js';

/**
 * An orderly stop of the real server process (SIGTERM, SIGINT): it stops accepting, answers every
 * put it had read (and only commits what it answers), closes each connection with 1001 after its
 * results, exits 0 and leaves a file that a restart serves as the same database. And a server that
 * is given a bad option refuses to start.
 */

const STREAMS = 10;
/** Frames sent before the signal while the server is known to be busy... */
const WARMUP_FRAMES = 50;
/** ...and the burst sent right before it, far more than the server reads before the signal lands. */
const BURST_FRAMES = 2000;
/** Every ack of the run stays stored, so each answered put can be looked up (the default cap is 1000). */
const ACK_CAP = String(10 * (WARMUP_FRAMES + BURST_FRAMES));
const DOCS_PER_STREAM = 3;

interface SentPut {
  readonly id: string;
  readonly stream: string;
  readonly epoch: number;
  readonly seq: number;
  readonly key: string;
  readonly state: { readonly stream: string; readonly seq: number; readonly text: string };
}

function makePut(stream: string, seq: number): SentPut {
  return {
    id: `${stream}#${seq}`,
    stream,
    epoch: 1,
    seq,
    key: `${stream}/d${seq % DOCS_PER_STREAM}`,
    // About 300 bytes a put: the burst (some 6 MB) is more than one read of the socket takes in.
    state: { stream, seq, text: `payload ${stream} ${seq} `.repeat(12) },
  };
}

function versionAfter(seq: number): number {
  return Math.floor((seq - 1) / DOCS_PER_STREAM) + 1;
}

const streamName = (i: number): string => `shutdown-s${i}`;

/** Each frame carries the next seq of every stream, so per stream the seqs go out in order. */
function frameOf(seq: number): SentPut[] {
  return Array.from({ length: STREAMS }, (_, i) => makePut(streamName(i), seq));
}

let db: TempDb | undefined;
const children: ChildServer[] = [];
const clients: TestClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.ws.terminate();
  await Promise.all(children.splice(0).map((c) => c.dispose()));
  db?.remove();
  db = undefined;
});

function track(child: ChildServer): ChildServer {
  children.push(child);
  return child;
}

async function connect(url: string): Promise<TestClient> {
  const c = await TestClient.connect(url);
  clients.push(c);
  return c;
}

/** Whether a WebSocket to `url` opens; a refusal of any kind (connection refused, 503) counts as not. */
async function opens(url: string): Promise<boolean> {
  try {
    const c = await TestClient.connect(url);
    clients.push(c);
    return true;
  } catch {
    return false;
  }
}

describe.each(['SIGTERM', 'SIGINT'] as const)('seqgate stopped with %s', (signal) => {
  it('answers every put it read, closes with 1001 after the results, exits 0 and keeps exactly the answered puts', async () => {
    db = tempDb('seqgate-shutdown-');
    const child = track(new ChildServer({ dbPath: db.dbPath, args: ['--ack-cap-per-stream', ACK_CAP] }));
    const first = await child.start();

    const idle = await connect(first.url);
    idle.send({ type: 'hello', protocol: 1 });
    await idle.waitMessage('welcome');

    const c = await connect(first.url);
    const sent: SentPut[] = [];
    let seq = 0;
    for (let i = 0; i < WARMUP_FRAMES; i++) {
      const puts = frameOf(++seq);
      sent.push(...puts);
      c.send({ type: 'put', puts });
    }
    // The server is now reading and committing: the burst and the signal land on a busy server.
    await c.waitMessage('results', 30_000);
    for (let i = 0; i < BURST_FRAMES; i++) {
      const puts = frameOf(++seq);
      sent.push(...puts);
      c.send({ type: 'put', puts });
    }
    child.signal(signal);

    await child.waitForLog((l) => l.msg === 'shutting down: committing and answering what was received' && l.signal === signal).catch(() => undefined);
    expect(await opens(first.url), 'a connection attempted after shutdown began').toBe(false);

    const [closeBurst, closeIdle] = await Promise.all([c.closed, idle.closed]);
    const exit = await child.waitExit();
    expect(exit, `exit status after ${signal}\n${child.stderr}`).toEqual({ code: 0, signal: null });
    expect(closeBurst, 'close of the connection with puts in flight').toEqual({ code: 1001, reason: 'GOING_AWAY' });
    expect(closeIdle, 'close of an idle connection').toEqual({ code: 1001, reason: 'GOING_AWAY' });

    const others = c.messages.filter((m: Msg) => m.type !== 'results');
    expect(others, 'messages other than results on the burst connection').toEqual([]);
    const results: Msg[] = c.results();
    expect(results.length, 'puts answered (at least the warm-up that was answered before the signal)').toBeGreaterThan(0);
    expect(results.length, 'puts answered').toBeLessThanOrEqual(sent.length);
    for (let i = 0; i < results.length; i++) {
      const r = results[i];
      const p = sent[i]!;
      const expected = {
        id: p.id,
        outcome: 'applied',
        replay: false,
        ack: { stream: p.stream, epoch: 1, seq: p.seq, key: p.key, version: versionAfter(p.seq), deleted: false, committedAt: r.ack?.committedAt },
      };
      if (!isDeepStrictEqual(r, expected)) {
        expect(r, `result ${i}: results must answer the puts in order, each applied once`).toEqual(expected);
      }
    }
    const answered = sent.slice(0, results.length);
    console.log(`shutdown ${signal}: ${answered.length} of ${sent.length} puts answered before the 1001 close`);
    const answeredThrough = new Map<string, number>();
    for (const p of answered) answeredThrough.set(p.stream, p.seq);

    const checker = new DbChecker(db.dbPath);
    try {
      expect(checker.integrityCheck(), 'PRAGMA integrity_check').toEqual(['ok']);
      expect(checker.incarnation()).toBe(first.incarnation);
      for (let i = 0; i < STREAMS; i++) {
        const name = streamName(i);
        const through = answeredThrough.get(name) ?? 0;
        const head = checker.head(name);
        // Equal, not at least: a put committed but never answered would put the head past the answers.
        expect(head === undefined ? 0 : head.seq, `head of ${name}: committed exactly the answered puts`).toBe(through);
        for (let d = 0; d < DOCS_PER_STREAM; d++) {
          const targeting = answered.filter((p) => p.stream === name && p.seq % DOCS_PER_STREAM === d);
          const doc = checker.document(`${name}/d${d}`);
          if (targeting.length === 0) {
            expect(doc, `document ${name}/d${d}`).toBeUndefined();
            continue;
          }
          expect(doc?.version, `version of ${name}/d${d}`).toBe(targeting.length);
          expect(doc?.state, `state of ${name}/d${d}`).toEqual(targeting[targeting.length - 1]!.state);
        }
      }
      for (let i = 0; i < answered.length; i++) {
        const p = answered[i]!;
        const ack = results[i].ack;
        const row = checker.ack(p.stream, p.epoch, p.seq);
        if (row === undefined || row.version !== ack.version || row.key !== ack.key || row.committedAt !== ack.committedAt || row.outcome !== 'applied') {
          expect(row, `stored ack of answered put ${p.id}`).toMatchObject({
            outcome: 'applied',
            key: ack.key,
            version: ack.version,
            committedAt: ack.committedAt,
          });
        }
      }
    } finally {
      checker.close();
    }

    const again = await child.restart();
    expect(again.incarnation, 'incarnation after restart').toBe(first.incarnation);
    const after = await connect(again.url);
    const names = Array.from({ length: STREAMS }, (_, i) => streamName(i));
    after.send({ type: 'hello', protocol: 1, streams: names });
    const welcome = await after.waitMessage('welcome');
    expect(welcome.incarnation).toBe(first.incarnation);
    expect(welcome.heads.map((h: Msg) => [h.stream, h.seq])).toEqual(names.map((n) => [n, answeredThrough.get(n) ?? 0]));

    // The last answered put is replayed from its stored ack; the first unanswered one was never consumed.
    const lastAnswered = answered[answered.length - 1]!;
    const firstUnanswered = sent[answered.length];
    after.send({ type: 'put', puts: [lastAnswered, ...(firstUnanswered ? [firstUnanswered] : [])] });
    const replayed = await after.waitResults(firstUnanswered ? 2 : 1);
    expect(replayed[0], 'retry of the last answered put').toEqual({ ...results[answered.length - 1], replay: true });
    if (firstUnanswered) {
      expect(replayed[1], 'the first put that was never answered').toMatchObject({ id: firstUnanswered.id, outcome: 'applied', replay: false });
    }
    await after.close();
    expect(await child.kill(signal), `exit status of the restarted server after ${signal}`).toEqual({ code: 0, signal: null });
  }, 90_000);
});

describe('seqgate refusing to start', () => {
  it.each<[string, string[], string[]]>([
    ['names the option on stderr when an option value is invalid', ['--synchronous', 'sometimes'], ['--synchronous', 'sometimes', 'full, normal']],
    ['names the flag on stderr when an option is unknown', ['--synchronus', 'full'], ['unknown option --synchronus']],
  ])('exits with code 2 and %s', async (_what, args, stderr) => {
    db = tempDb('seqgate-badopt-');
    const child = track(new ChildServer({ dbPath: db.dbPath, args }));
    await expect(child.start()).rejects.toBeInstanceOf(ChildExitError);
    expect(await child.waitExit()).toEqual({ code: 2, signal: null });
    for (const text of stderr) expect(child.stderr).toContain(text);
    expect(child.stdout).not.toContain('seqgate listening');
    expect(existsSync(db.dbPath), 'database file created by a refused start').toBe(false);
  });

  it('exits non-zero with a fatal log line naming the cause when its port is taken', async () => {
    db = tempDb('seqgate-port-');
    const holder = track(new ChildServer({ dbPath: db.dbPath }));
    const { port } = await holder.start();
    const second = track(new ChildServer({ dbPath: `${db.dbPath}.second`, port }));
    await expect(second.start()).rejects.toBeInstanceOf(ChildExitError);
    const exit = await second.waitExit();
    expect(exit.signal).toBeNull();
    expect(exit.code).not.toBe(0);
    const fatal = second.logLines().find((l) => l.level === 60);
    expect(fatal, `fatal log line in\n${second.stdout}\n${second.stderr}`).toBeDefined();
    expect(JSON.stringify(fatal)).toContain('EADDRINUSE');
    expect(await holder.kill('SIGTERM')).toEqual({ code: 0, signal: null });
  });
});
