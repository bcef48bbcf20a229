import { isDeepStrictEqual } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PG_SCHEMA_VERSION } from '../src/store/postgres-schema.js';
import { ChildServer, tempDb, type TempDb } from './support/child-server.js';
import { createTestDatabase, postgresAvailable, type TestDatabase } from './support/postgres.js';
import { ackBytes, PutDriver, type DriverPut, type WireResult } from './support/put-driver.js';
import { TestClient } from './support/test-client.js';

/**
 * N servers, one database: three real seqgate processes on one PostgreSQL database behave as one
 * server. Sizes are modest so the default run stays fast; SEQGATE_SCALE_PUTS raises the first
 * test's puts (10,000 in the soak-sized run).
 */

const PG = await postgresAvailable();
const TOTAL_PUTS = Number(process.env['SEQGATE_SCALE_PUTS'] ?? 2000);
const SERVERS = 3;

let db: TestDatabase;
let dir: TempDb;
const servers: ChildServer[] = [];

function httpUrl(s: ChildServer): string {
  return s.url.replace(/^ws/, 'http');
}

async function sql<R extends Record<string, unknown>>(text: string, values?: unknown[]): Promise<R[]> {
  return (await db.query<R>(text, values)).rows;
}

/** Stored heads and documents, straight from the database. */
async function heads(): Promise<Map<string, { epoch: number; seq: number }>> {
  const rows = await sql<{ name: string; epoch: string; seq: string }>('SELECT name, epoch, seq FROM seqgate.streams WHERE seq > 0');
  return new Map(rows.map((r) => [r.name, { epoch: Number(r.epoch), seq: Number(r.seq) }]));
}
async function versions(prefix: string): Promise<Map<string, number>> {
  const rows = await sql<{ key: string; version: string }>('SELECT key, version FROM seqgate.documents WHERE key LIKE $1 AND version > 0', [prefix + '%']);
  return new Map(rows.map((r) => [r.key, Number(r.version)]));
}

/** Every ack a client received must be stored exactly so: nothing acked is lost or altered. */
async function expectStored(results: WireResult[]): Promise<void> {
  const rows = await sql<{ name: string; epoch: string; seq: string; key: string; version: string; deleted: boolean; committed_at: string }>(
    'SELECT s.name, a.epoch, a.seq, a.key, a.version, a.deleted, a.committed_at FROM seqgate.acks a JOIN seqgate.streams s ON s.id = a.stream_id',
  );
  const stored = new Map(rows.map((r) => [`${r.name}/${r.epoch}/${r.seq}`, r]));
  const problems: string[] = [];
  for (const r of results) {
    const a = r.ack!;
    const row = stored.get(`${String(a['stream'])}/${String(a['epoch'])}/${String(a['seq'])}`);
    if (row === undefined) {
      problems.push(`acked but not stored: ${JSON.stringify(a)}`);
      continue;
    }
    const got = { key: row.key, version: Number(row.version), deleted: row.deleted, committedAt: Number(row.committed_at) };
    const want = { key: a['key'], version: a['version'], deleted: a['deleted'], committedAt: a['committedAt'] };
    if (!isDeepStrictEqual(got, want)) problems.push(`stored ${JSON.stringify(got)}, acked ${JSON.stringify(want)}`);
  }
  expect(problems.slice(0, 10)).toEqual([]);
}

function sequence(
  client: string,
  streams: readonly string[],
  seqs: number,
  keyOf: (stream: string, seq: number) => string,
  state?: (stream: string, seq: number) => unknown,
): DriverPut[] {
  const puts: DriverPut[] = [];
  for (let seq = 1; seq <= seqs; seq++) {
    for (const stream of streams) {
      puts.push({ id: `${client}:${stream}:${seq}`, stream, epoch: 1, seq, key: keyOf(stream, seq), state: state?.(stream, seq) ?? { stream, seq } });
    }
  }
  return puts;
}

const drive = (url: () => string, puts: DriverPut[]) => new PutDriver(url, puts, { window: 256, perFrame: 32, timeoutMs: 120_000 });

describe.skipIf(!PG)('N seqgate servers on one PostgreSQL database', () => {
  beforeAll(async () => {
    db = await createTestDatabase('seqgate_scaleout');
    dir = tempDb('seqgate-scaleout-');
    for (let i = 0; i < SERVERS; i++) {
      servers.push(new ChildServer({ dbPath: dir.dbPath, args: ['--store', 'postgres', '--database-url', db.url] }));
    }
    // Started together: their migrations queue on one row lock and all of them succeed.
    const ready = await Promise.all(servers.map((s) => s.start()));
    expect(new Set(ready.map((r) => r.incarnation)).size).toBe(1);
    expect(await sql('SELECT version FROM seqgate.schema_version')).toEqual([{ version: PG_SCHEMA_VERSION }]);
  }, 90_000);

  afterAll(async () => {
    for (const s of servers) await s.dispose();
    dir?.remove();
    await db?.drop();
  }, 30_000);

  it(`applies each of ${TOTAL_PUTS} puts sent concurrently through all three servers exactly once; every other answer is a byte-identical replay`, async () => {
    const streams = Array.from({ length: 20 }, (_, i) => `same-${i}`);
    const seqs = Math.ceil(TOTAL_PUTS / streams.length);
    const keyOf = (stream: string, seq: number) => `${stream}/d${seq % 3}`;
    const drivers = servers.map((s, c) => drive(() => s.url, sequence(`c${c}`, streams, seqs, keyOf)));
    await Promise.all(drivers.map((d) => d.run()));

    const problems: string[] = [];
    const applied: WireResult[] = [];
    for (const stream of streams) {
      for (let seq = 1; seq <= seqs; seq++) {
        const answers = drivers.map((d, c) => d.final(`c${c}:${stream}:${seq}`)!);
        const fresh = answers.filter((a) => a.outcome === 'applied' && a.replay === false);
        const replays = answers.filter((a) => a.outcome === 'applied' && a.replay === true);
        if (fresh.length !== 1 || replays.length !== SERVERS - 1)
          problems.push(`${stream}/${seq}: ${JSON.stringify(answers.map((a) => [a.outcome, a.replay]))}`);
        else if (!replays.every((r) => ackBytes(r).equals(ackBytes(fresh[0]!)))) problems.push(`${stream}/${seq}: a replay differs from the ack`);
        else if (fresh[0]!.ack!['version'] !== Math.floor((seq - (seq % 3)) / 3) + (seq % 3 === 0 ? 0 : 1))
          problems.push(`${stream}/${seq}: version ${String(fresh[0]!.ack!['version'])}`);
        if (fresh[0]) applied.push(fresh[0]);
      }
    }
    expect(problems.slice(0, 10)).toEqual([]);
    const h = await heads();
    for (const stream of streams) expect(h.get(stream)).toEqual({ epoch: 1, seq: seqs });
    const v = await versions('same-');
    for (const stream of streams) {
      for (let k = 0; k < 3; k++) {
        const n = Array.from({ length: seqs }, (_, i) => i + 1).filter((s) => s % 3 === k).length;
        expect(v.get(`${stream}/d${k}`)).toBe(n);
      }
    }
    await expectStored(applied);
  }, 180_000);

  it('two writers of one stream through different servers: one wins each seq, the other is told sequence_reused; a new epoch fences the old writer', async () => {
    const seqs = 200;
    const a = drive(
      () => servers[0]!.url,
      sequence(
        'A',
        ['contested'],
        seqs,
        (_s, q) => `contested/d${q % 2}`,
        (_s, q) => ({ writer: 'A', q }),
      ),
    );
    const b = drive(
      () => servers[1]!.url,
      sequence(
        'B',
        ['contested'],
        seqs,
        (_s, q) => `contested/d${q % 2}`,
        (_s, q) => ({ writer: 'B', q }),
      ),
    );
    await Promise.all([a.run(), b.run()]);
    const winners: WireResult[] = [];
    const problems: string[] = [];
    for (let seq = 1; seq <= seqs; seq++) {
      const pair = [a.final(`A:contested:${seq}`)!, b.final(`B:contested:${seq}`)!];
      const won = pair.filter((r) => r.outcome === 'applied' && r.replay === false);
      const lost = pair.filter((r) => r.outcome === 'sequence_reused');
      if (won.length !== 1 || lost.length !== 1) problems.push(`${seq}: ${JSON.stringify(pair.map((r) => r.outcome))}`);
      else winners.push(won[0]!);
    }
    expect(problems.slice(0, 10)).toEqual([]);
    expect((await heads()).get('contested')).toEqual({ epoch: 1, seq: seqs });
    // Each document's versions are 1..N in seq order, whoever won.
    for (const k of [0, 1]) {
      const vs = winners.filter((w) => w.ack!['key'] === `contested/d${k}`).map((w) => w.ack!['version']);
      expect(vs).toEqual(Array.from({ length: vs.length }, (_, i) => i + 1));
    }
    await expectStored(winners);

    const takeover = await fetch(`${httpUrl(servers[1]!)}/v1/streams/contested/puts`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ epoch: 2, seq: 1, key: 'contested/d0', state: { writer: 'B', epoch: 2 } }),
    });
    expect(await takeover.json()).toMatchObject({ outcome: 'applied', replay: false });
    const old = await fetch(`${httpUrl(servers[0]!)}/v1/streams/contested/puts`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ epoch: 1, seq: seqs + 1, key: 'contested/d0', state: { writer: 'A' } }),
    });
    expect(await old.json()).toMatchObject({ outcome: 'fenced', error: { code: 'FENCED', epoch: 2 } });
  }, 120_000);

  it('shared documents written from streams on different servers get versions exactly 1..N', async () => {
    const seqs = 100;
    const keyOf = (stream: string, seq: number) => `shared/${(Number(stream.slice(-1)) + seq) % 4}`;
    const drivers = servers.map((s, c) => drive(() => s.url, sequence(`w${c}`, [`w${c}-0`, `w${c}-1`], seqs, keyOf)));
    await Promise.all(drivers.map((d) => d.run()));
    const acks = drivers.flatMap((d) => [...d.answers.values()].map((list) => list[list.length - 1]!));
    expect(acks.every((r) => r.outcome === 'applied' && r.replay === false)).toBe(true);
    const stored = await versions('shared/');
    for (let k = 0; k < 4; k++) {
      const vs = acks
        .filter((r) => r.ack!['key'] === `shared/${k}`)
        .map((r) => Number(r.ack!['version']))
        .sort((x, y) => x - y);
      expect(vs.length).toBeGreaterThan(0);
      expect(vs).toEqual(Array.from({ length: vs.length }, (_, i) => i + 1));
      expect(stored.get(`shared/${k}`)).toBe(vs.length);
    }
    // Within one stream, a later seq always saw a later version of its document.
    for (const d of drivers) {
      const byKey = new Map<string, number>();
      for (const list of d.answers.values()) {
        const ack = list[list.length - 1]!.ack!;
        const prev = byKey.get(`${String(ack['stream'])}|${String(ack['key'])}`) ?? 0;
        expect(Number(ack['version'])).toBeGreaterThan(prev);
        byKey.set(`${String(ack['stream'])}|${String(ack['key'])}`, Number(ack['version']));
      }
    }
    await expectStored(acks);
  }, 120_000);

  it('a hello on one server reflects puts committed through another', async () => {
    const r = await fetch(`${httpUrl(servers[0]!)}/v1/streams/seen-elsewhere/puts`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ epoch: 3, seq: 9, key: 'seen', state: { x: 1 } }),
    });
    expect(await r.json()).toMatchObject({ outcome: 'applied' });
    for (const s of servers.slice(1)) {
      const c = await TestClient.connect(s.url);
      c.send({ type: 'hello', streams: ['seen-elsewhere', 'never-written'] });
      const w = await c.waitMessage('welcome');
      expect(w.heads).toEqual([
        { stream: 'seen-elsewhere', epoch: 3, seq: 9, prunedThrough: 0 },
        { stream: 'never-written', epoch: 0, seq: 0, prunedThrough: 0 },
      ]);
      await c.close();
      const doc = await fetch(`${httpUrl(s)}/v1/docs/seen`);
      expect(await doc.json()).toEqual({ x: 1 });
    }
  });

  it('kill -9 of one server mid-load: the others carry on, its clients move over, nothing acked is lost', async () => {
    const seqs = 150;
    const victim = servers[2]!;
    let victimDown = false;
    const keyOf = (stream: string, seq: number) => `${stream}/d${seq % 2}`;
    const drivers = servers.map((s, c) =>
      drive(
        // A load balancer's view: the victim's clients go to server 0 once it is gone.
        () => (c === 2 && victimDown ? servers[0]!.url : s.url),
        sequence(
          `k${c}`,
          [0, 1, 2, 3].map((i) => `kill-${c}-${i}`),
          seqs,
          keyOf,
        ),
      ),
    );
    const running = Promise.all(drivers.map((d) => d.run()));
    const deadline = Date.now() + 60_000;
    while ([...drivers[2]!.answers.keys()].length < 4 * seqs * 0.3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    victimDown = true;
    await victim.kill('SIGKILL');
    const killedAt = drivers.map((d) => d.answers.size);
    await running;
    expect(drivers[2]!.lostConnections).toBeGreaterThan(0);
    // The other two never lost their connection, and were still being answered after the kill.
    expect(drivers[0]!.lostConnections + drivers[1]!.lostConnections).toBe(0);
    expect(drivers[0]!.answers.size + drivers[1]!.answers.size).toBeGreaterThanOrEqual(killedAt[0]! + killedAt[1]!);

    const finals: WireResult[] = [];
    const problems: string[] = [];
    for (const d of drivers) {
      for (const [id, list] of d.answers) {
        const last = list[list.length - 1]!;
        if (last.outcome !== 'applied') {
          problems.push(`${id}: ${last.outcome}`);
          continue;
        }
        // Every answer this put ever got is the same ack, byte for byte.
        if (!list.every((r) => r.outcome === 'applied' && ackBytes(r).equals(ackBytes(last)))) problems.push(`${id}: answers differ`);
        finals.push(last);
      }
    }
    expect(problems.slice(0, 10)).toEqual([]);
    expect(finals).toHaveLength(3 * 4 * seqs);
    const h = await heads();
    for (let c = 0; c < 3; c++) for (let i = 0; i < 4; i++) expect(h.get(`kill-${c}-${i}`)).toEqual({ epoch: 1, seq: seqs });
    const v = await versions('kill-');
    expect(v.size).toBe(3 * 4 * 2);
    for (const version of v.values()) expect(version).toBe(seqs / 2);
    await expectStored(finals);
    await victim.restart();
  }, 180_000);
});
