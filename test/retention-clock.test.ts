import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RetentionClock, type ClockSource } from '../src/store/retention-clock.js';
import { ChildServer, tempDb } from './support/child-server.js';
import { Cleanup } from './support/cleanup.js';
import { TestClient, type Msg } from './support/test-client.js';

/**
 * Retention is "at least" its duration, whatever the wall clock does (issue 9, finding 8;
 * PROTOCOL.md §7). Unit tests drive RetentionClock with a fake clock; the process tests step the
 * real server's wall clock with test/support/clock-shim.mjs (loaded with --import, never touching
 * the machine's clock) and retry puts and Idempotency-Key creates across the step.
 */

const DAY = 86_400_000;

class FakeClock implements ClockSource {
  monoMs = 1_000;
  offsetMs = 1_800_000_000_000;
  wall(): number {
    return Math.floor(this.monoMs + this.offsetMs);
  }
  mono(): number {
    return this.monoMs;
  }
}

describe('RetentionClock', () => {
  it('without steps, cuts off at wall time minus the retention', () => {
    const fake = new FakeClock();
    const clock = new RetentionClock(fake);
    fake.monoMs += 5_000.4;
    expect(Math.abs(clock.cutoff(60_000) - (fake.wall() - 60_000))).toBeLessThanOrEqual(1);
  });

  it('a forward step does not age stamps: they fall below the cutoff only after the retention has elapsed', () => {
    const fake = new FakeClock();
    const clock = new RetentionClock(fake);
    const steps: number[] = [];
    clock.onStep((s) => steps.push(s));
    const stamp = clock.now();
    fake.monoMs += 2_000;
    fake.offsetMs += 2 * DAY;
    expect(clock.cutoff(DAY)).toBeLessThan(stamp);
    expect(steps).toEqual([2 * DAY]);
    fake.monoMs += DAY - 2_001;
    expect(clock.cutoff(DAY)).toBeLessThanOrEqual(stamp);
    fake.monoMs += 10;
    expect(clock.cutoff(DAY)).toBeGreaterThan(stamp);
  });

  it('a backward step then a forward step: stamps taken in between keep their full retention', () => {
    const fake = new FakeClock();
    const clock = new RetentionClock(fake);
    fake.offsetMs -= DAY;
    const stamp = clock.now();
    fake.monoMs += 1_000;
    fake.offsetMs += DAY;
    expect(clock.cutoff(DAY)).toBeLessThan(stamp);
    // Once the backward segment's last reading is a retention old, the clock forgets it and
    // cutoffs follow the wall clock again (pruning is not suspended for ever).
    fake.monoMs += DAY + 1;
    expect(clock.cutoff(DAY)).toBeGreaterThan(fake.wall() - DAY - 2);
  });

  it('never cuts off a stamp younger than the retention by the monotonic clock, under any sequence of steps', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('elapse' as const), ms: fc.double({ min: 0, max: 5_000, noNaN: true }) }),
      fc.record({ kind: fc.constant('step' as const), ms: fc.integer({ min: -3 * DAY, max: 3 * DAY }) }),
      fc.record({ kind: fc.constant('stamp' as const) }),
      fc.record({ kind: fc.constant('check' as const), retention: fc.integer({ min: 0, max: 20_000 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const fake = new FakeClock();
        const clock = new RetentionClock(fake);
        const stamps: Array<{ stamp: number; mono: number }> = [];
        for (const o of ops) {
          if (o.kind === 'elapse') fake.monoMs += o.ms;
          else if (o.kind === 'step') fake.offsetMs += o.ms;
          else if (o.kind === 'stamp') stamps.push({ stamp: clock.now(), mono: fake.monoMs });
          else {
            const cutoff = clock.cutoff(o.retention);
            expect(cutoff).toBeLessThanOrEqual(fake.wall() - o.retention);
            for (const s of stamps) {
              if (fake.monoMs - s.mono < o.retention) expect(s.stamp, `stamp ${fake.monoMs - s.mono} ms old`).toBeGreaterThanOrEqual(cutoff);
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// The real server, its wall clock stepped by the shim

const SHIM = fileURLToPath(new URL('./support/clock-shim.mjs', import.meta.url));

const cleanup = new Cleanup();

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface Shifted {
  server: ChildServer;
  /** Steps the server's wall clock to `offsetMs` from the real time and waits until it took effect. */
  setClock(offsetMs: number): Promise<void>;
}

async function serveWithShim(args: string[]): Promise<Shifted> {
  const db = tempDb('seqgate-clock-');
  cleanup.push(() => db.remove());
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-clock-file-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const clockFile = join(dir, 'offset');
  writeFileSync(clockFile, '0');
  const server = new ChildServer({
    dbPath: db.dbPath,
    args: ['--synchronous', 'normal', '--prune-interval-ms', '100', ...args],
    env: { NODE_OPTIONS: `--import ${SHIM}`, SEQGATE_TEST_CLOCK_FILE: clockFile },
  });
  cleanup.push(() => server.dispose());
  await server.start();
  return {
    server,
    async setClock(offsetMs) {
      writeFileSync(clockFile, String(offsetMs));
      server.signal('SIGUSR2');
      await server.waitForLog((l) => l.msg === 'test clock set' && l.offsetMs === offsetMs, 5_000);
    },
  };
}

const connect = (server: ChildServer): Promise<TestClient> => cleanup.client(server.url);

async function roundTrip(c: TestClient, seq: number, stream = 's'): Promise<Msg> {
  const id = `${stream}#${seq}#${c.results().length}`;
  c.send({ type: 'put', puts: [{ id, stream, epoch: 1, seq, key: `${stream}-${seq}`, state: { seq } }] });
  await c.waitFor(() => c.results().some((r: Msg) => r.id === id), 10_000);
  return c.results().find((r: Msg) => r.id === id);
}

async function create(server: ChildServer, idempotencyKey: string): Promise<{ status: number; replayed: boolean; key: string }> {
  const res = await fetch(`http://127.0.0.1:${server.port}/v1/docs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': idempotencyKey },
    body: JSON.stringify({ name: 'thermostat' }),
  });
  const body = (await res.json()) as Msg;
  return { status: res.status, replayed: res.headers.get('idempotent-replayed') === 'true', key: body.key };
}

describe('retention across wall-clock steps of the real server', () => {
  it('a clock stepped forward 2 days prunes nothing early: ack retries replay and an Idempotency-Key retry creates nothing new', async () => {
    const { server, setClock } = await serveWithShim([]);
    const c = await connect(server);
    expect(await roundTrip(c, 1)).toMatchObject({ outcome: 'applied', replay: false });
    expect(await roundTrip(c, 2)).toMatchObject({ outcome: 'applied', replay: false });
    const first = await create(server, 'create-1');
    expect(first).toMatchObject({ status: 201, replayed: false });

    await setClock(2 * DAY);
    await server.waitForLog((l) => l.msg === 'wall clock stepped; retention keeps measuring elapsed time, so nothing is pruned early', 5_000);
    await sleep(2_000); // twenty pruning passes
    expect(await roundTrip(c, 1)).toMatchObject({ outcome: 'applied', replay: true, ack: { seq: 1 } });
    expect(await create(server, 'create-1')).toEqual({ status: 201, replayed: true, key: first.key });

    // Back a day, write, forward again: what was stamped in the past keeps its full retention too.
    await setClock(DAY);
    expect(await roundTrip(c, 10)).toMatchObject({ outcome: 'applied', replay: false });
    expect(await roundTrip(c, 11)).toMatchObject({ outcome: 'applied', replay: false });
    const second = await create(server, 'create-2');
    await setClock(3 * DAY);
    await sleep(1_000);
    expect(await roundTrip(c, 10)).toMatchObject({ outcome: 'applied', replay: true });
    expect(await roundTrip(c, 1)).toMatchObject({ outcome: 'applied', replay: true });
    expect(await create(server, 'create-2')).toEqual({ status: 201, replayed: true, key: second.key });
    expect(server.running).toBe(true);
  }, 30_000);

  it('retention still ends by elapsed time: with 2 s retention and the clock 2 days ahead, records go after 2 s, not at once', async () => {
    const { server, setClock } = await serveWithShim(['--ack-retention-seconds', '2', '--idempotency-retention-seconds', '2']);
    const c = await connect(server);
    const committed = Date.now();
    expect(await roundTrip(c, 1)).toMatchObject({ outcome: 'applied' });
    expect(await roundTrip(c, 2)).toMatchObject({ outcome: 'applied' });
    const first = await create(server, 'create-1');
    await setClock(2 * DAY);
    await sleep(500);
    expect(Date.now() - committed).toBeLessThan(2_000);
    expect(await roundTrip(c, 1)).toMatchObject({ outcome: 'applied', replay: true });
    expect(await create(server, 'create-1')).toEqual({ status: 201, replayed: true, key: first.key });

    await sleep(Math.max(0, committed + 2_600 - Date.now()));
    expect(await roundTrip(c, 1)).toMatchObject({ outcome: 'expired', error: { code: 'EXPIRED' } });
    // Past its retention the key is forgotten (HTTP.md §6): the same request creates a new document.
    const late = await create(server, 'create-1');
    expect(late).toMatchObject({ status: 201, replayed: false });
    expect(late.key).not.toBe(first.key);
  }, 30_000);
});
