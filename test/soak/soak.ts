import { statSync } from 'node:fs';
import { ChildServer, tempDb } from '../support/child-server.js';
import { checkAfterKill, checkDatabase, type CheckResult } from './checker.js';
import { createSoakDatabase, snapshotPostgres } from './postgres-snapshot.js';
import { DEFAULT_PROBABILITIES, Lane, StreamBook, SoakClient, Workload, type Probabilities, type WorkloadStats } from './workload.js';

/**
 * The crash-loop soak: clients write through a real server process that a supervisor kills with
 * SIGKILL at random moments and restarts on the same database file; afterwards the file is
 * checked against everything the clients recorded (checker.ts). Used by the short run in the
 * default test command (crash-loop.test.ts) and by the long runner (run.ts).
 */

export interface SoakOptions {
  readonly seed: number;
  readonly clients: number;
  readonly streamsPerClient: number;
  /** Kills stop once both targets are met (and minDurationMs has passed), or at maxKillPhaseMs. */
  readonly minKills: number;
  readonly minAcked: number;
  readonly minDurationMs: number;
  readonly maxKillPhaseMs: number;
  /**
   * Time between the server being ready and its SIGKILL, drawn uniformly from this range (plus,
   * under a rate limit, the wait for the next burst of puts: at most 50 ms).
   */
  readonly killIntervalMs: readonly [number, number];
  /** Most unanswered puts per owned-stream client connection. */
  readonly window: number;
  /** Most unanswered puts per shared-stream writer: small, so the two writers interleave. */
  readonly sharedWindow: number;
  readonly drainTimeoutMs: number;
  readonly probabilities?: Probabilities;
  readonly disconnectMeanMs?: number;
  /** New puts (and injected duplicates) per second over all clients; 0 or absent: as fast as the server takes them. */
  readonly rate?: number;
  /** Lines of progress; the test passes nothing, the runner prints them. */
  readonly log?: (line: string) => void;
  /** Keep the database folder (its path is in the result) instead of deleting it. */
  readonly keepDb?: boolean;
  /**
   * Run the server with --store postgres on a database created for the run (on the PostgreSQL at
   * this admin URL) and dropped after; the checks read a SQLite snapshot of it (postgres-snapshot.ts).
   */
  readonly postgresAdminUrl?: string;
}

export const SHORT_RUN: Omit<SoakOptions, 'seed'> = {
  clients: 16,
  streamsPerClient: 8,
  minKills: 10,
  minAcked: 10_000,
  minDurationMs: 0,
  maxKillPhaseMs: 60_000,
  killIntervalMs: [200, 3000],
  window: 48,
  sharedWindow: 8,
  drainTimeoutMs: 20_000,
  // Four times the 10,000 required puts in a typical run, without taking both cores of a shared
  // CI machine away from the tests running beside it (unthrottled, the run makes ~30k puts/s).
  rate: 4000,
};

export const SHARED_STREAM = 'shared-0';

/** An ack cap no run reaches: every ack stays stored, so every one can be checked. */
export const ACK_CAP = 100_000_000;

export interface KillRecord {
  /** ms the server had been ready when it was killed. */
  readonly afterMs: number;
  /** Puts sent and unanswered at the moment of the kill. */
  readonly inFlight: number;
  /** ms from the kill to the restarted server logging that it listens. */
  readonly restartMs: number;
}

export interface SoakResult {
  readonly seed: number;
  readonly options: Omit<SoakOptions, 'log'>;
  readonly startedAt: string;
  readonly durationMs: number;
  readonly killPhaseMs: number;
  readonly drainMs: number;
  readonly checkMs: number;
  readonly kills: KillRecord[];
  readonly serverStarts: number;
  readonly streams: number;
  readonly connections: number;
  readonly records: number;
  readonly acked: number;
  readonly failed: number;
  readonly stats: WorkloadStats;
  /** Everything that went wrong, during the run and in the final check. */
  readonly violations: string[];
  readonly violationCount: number;
  readonly check: CheckResult | undefined;
  readonly cleanExit: boolean;
  /** What the clients recorded, for tests of the checker itself. */
  readonly books: readonly StreamBook[];
  readonly dbPath: string;
  readonly dbBytes: number;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const log = options.log ?? ((): void => undefined);
  const started = Date.now();
  const startedAt = new Date(started).toISOString();
  const w = new Workload(options.seed, options.probabilities ?? DEFAULT_PROBABILITIES, options.disconnectMeanMs);
  const killRng = w.rng;
  const db = tempDb('seqgate-soak-');
  const pgDb = options.postgresAdminUrl === undefined ? undefined : await createSoakDatabase(options.postgresAdminUrl);
  const snapshotPath = `${db.dbPath}.snapshot`;
  /** The file the checks read: the SQLite database, or a snapshot of the PostgreSQL one. */
  const checkedFile = async (): Promise<string> => {
    if (pgDb === undefined) return db.dbPath;
    await snapshotPostgres(pgDb.url, snapshotPath);
    return snapshotPath;
  };
  const child = new ChildServer({
    dbPath: db.dbPath,
    args: ['--ack-cap-per-stream', String(ACK_CAP), ...(pgDb ? ['--store', 'postgres', '--database-url', pgDb.url] : [])],
  });
  const books: StreamBook[] = [];
  const clients: SoakClient[] = [];
  const kills: KillRecord[] = [];
  let check: CheckResult | undefined;
  let cleanExit = false;
  let killPhaseMs: number;
  let drainMs: number;
  let checkMs: number;
  let dbBytes: number;
  let refill: NodeJS.Timeout | undefined;
  let serverUp = true;

  try {
    const first = await child.start();
    w.url = first.url;
    w.incarnation = first.incarnation;

    for (let c = 0; c < options.clients; c++) {
      const lanes: Lane[] = [];
      for (let i = 0; i < options.streamsPerClient; i++) {
        const book = new StreamBook(`c${c}-s${i}`, false);
        books.push(book);
        lanes.push(new Lane(book, null));
      }
      clients.push(new SoakClient(`c${c}`, lanes, w, options.window));
    }
    const shared = new StreamBook(SHARED_STREAM, true);
    books.push(shared);
    for (const parity of [0, 1] as const) {
      clients.push(new SoakClient(`shared-w${parity}`, [new Lane(shared, parity)], w, options.sharedWindow));
    }
    if (options.rate !== undefined && options.rate > 0) {
      // Released in bursts, so that the server has a backlog to be killed in (see the kill loop).
      const perTick = options.rate / 20 / clients.length;
      for (const c of clients) c.tokens = perTick;
      refill = setInterval(() => {
        for (const c of clients) {
          c.tokens = Math.min(c.tokens + perTick, 2 * perTick);
          c.pump();
        }
      }, 50);
    }
    for (const c of clients) c.start();
    const inFlight = (): number => clients.reduce((n, c) => n + c.inFlight, 0);

    const killStart = Date.now();
    let readyAt = Date.now();
    const [lo, hi] = options.killIntervalMs;
    for (;;) {
      const elapsed = Date.now() - killStart;
      const targetsMet = kills.length >= options.minKills && w.acked >= options.minAcked && elapsed >= options.minDurationMs;
      if (targetsMet || elapsed >= options.maxKillPhaseMs) break;
      const interval = lo + killRng() * (hi - lo);
      await sleep(Math.max(0, readyAt + interval - Date.now()));
      // A kill in idle time proves little: wait for puts in flight (at once when unthrottled),
      // then a few ms more so the kill lands while the server reads, commits or answers them.
      const busyBy = Date.now() + 2000;
      while (inFlight() === 0 && Date.now() < busyBy) await sleep(1);
      await sleep(killRng() * 4);
      const atKill = inFlight();
      const killedAt = Date.now();
      const upMs = killedAt - readyAt;
      const exit = await child.kill('SIGKILL');
      if (exit.signal !== 'SIGKILL') {
        w.violation(`kill ${kills.length + 1}: the server had already ended (${JSON.stringify(exit)}) before SIGKILL\n${child.stderr.slice(-2000)}`);
      }
      for (const problem of checkAfterKill(await checkedFile(), books)) w.violation(`after kill ${kills.length + 1}: ${problem}`);
      let ready;
      try {
        ready = await child.restart();
      } catch (err) {
        // A file the server refuses after a SIGKILL (exit 3: corrupt) is the worst finding; report it, then check the file as it is.
        w.violation(`restart after kill ${kills.length + 1} failed: ${(err as Error).message}`);
        serverUp = false;
        break;
      }
      readyAt = Date.now();
      if (ready.incarnation !== w.incarnation) w.violation(`restart ${kills.length + 1}: incarnation ${ready.incarnation}, expected ${w.incarnation}`);
      w.url = ready.url;
      kills.push({ afterMs: upMs, inFlight: atKill, restartMs: readyAt - killedAt });
      log(`kill ${kills.length}: ${atKill} puts in flight, ${w.acked} acked so far, restart took ${readyAt - killedAt} ms`);
    }
    killPhaseMs = Date.now() - killStart;

    // Drain: no new puts and no injected faults; every unknown put is resent until it is answered.
    const drainStart = Date.now();
    w.draining = true;
    for (const c of clients) c.nudge();
    while (serverUp && !clients.every((c) => c.settled) && Date.now() - drainStart < options.drainTimeoutMs) await sleep(20);
    drainMs = Date.now() - drainStart;
    if (serverUp && !clients.every((c) => c.settled)) {
      w.violation(
        `drain: ${clients
          .filter((c) => !c.settled)
          .map((c) => c.name)
          .join(', ')} still had unanswered puts after ${options.drainTimeoutMs} ms`,
      );
    }
    await Promise.all(clients.map((c) => c.stop()));
    if (serverUp) {
      const exit = await child.kill('SIGTERM');
      cleanExit = exit.code === 0 && exit.signal === null;
      if (!cleanExit) w.violation(`SIGTERM after the run ended with ${JSON.stringify(exit)}\n${child.stderr.slice(-2000)}`);
    }

    const checkStart = Date.now();
    check = checkDatabase(await checkedFile(), options.seed, books);
    checkMs = Date.now() - checkStart;
    dbBytes = fileSize(pgDb === undefined ? db.dbPath : snapshotPath);
    log(`check: ${check.ackRows} ack rows, ${check.documents} documents, ${check.violationCount} violations, ${checkMs} ms`);
  } finally {
    if (refill !== undefined) clearInterval(refill);
    await Promise.all(clients.map((c) => c.stop()));
    await child.dispose();
    if (options.keepDb !== true) db.remove();
    if (options.keepDb !== true) await pgDb?.drop().catch((err: Error) => log(`could not drop the soak database: ${err.message}`));
    else if (pgDb !== undefined) log(`PostgreSQL database kept: ${pgDb.url}`);
  }

  const violations = [...w.violations, ...(check?.violations ?? [])];
  const { log: _log, ...recorded } = options;
  return {
    seed: options.seed,
    options: recorded,
    startedAt,
    durationMs: Date.now() - started,
    killPhaseMs,
    drainMs,
    checkMs,
    kills,
    serverStarts: child.runs.length,
    streams: books.length,
    connections: clients.length,
    records: books.reduce((n, b) => n + b.records.length, 0),
    acked: w.acked,
    failed: w.failed,
    stats: w.stats,
    violations: violations.slice(0, 200),
    violationCount: w.violationCount + (check?.violationCount ?? 0),
    check,
    cleanExit,
    books,
    dbPath: db.dbPath,
    dbBytes,
  };
}

/** The file and its WAL: a clean shutdown checkpoints the WAL, an unclean one may leave it large. */
function fileSize(path: string): number {
  return ['', '-wal'].reduce((n, suffix) => n + statSize(path + suffix), 0);
}

function statSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** Why a run does not prove what it should; empty for a pass. The short test asserts the same, one by one. */
export function verdict(r: SoakResult): string[] {
  const out: string[] = [];
  if (r.violationCount > 0) out.push(`${r.violationCount} violations; first: ${r.violations[0] ?? ''}`);
  if (r.check === undefined) out.push('the final check did not run');
  else if (r.check.unresolved > 0) out.push(`${r.check.unresolved} puts were never answered`);
  if (!r.cleanExit) out.push('the server did not exit 0 on SIGTERM after the run');
  if (r.kills.length < r.options.minKills) out.push(`only ${r.kills.length} kills, at least ${r.options.minKills} required`);
  if (r.acked < r.options.minAcked) out.push(`only ${r.acked} acked puts, at least ${r.options.minAcked} required`);
  if (r.stats.resendsReplayed === 0) out.push('no resent put was answered as a replay: no kill landed between a commit and its ack');
  return out;
}
