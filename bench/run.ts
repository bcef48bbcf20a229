import { fork, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { Histogram } from './lib/histogram.js';
import type { FromGenerator, GeneratorConfig, GeneratorResult, ToGenerator } from './lib/ipc.js';
import { machineInfo, openFileLimit, processCpuMs, processMemory, processWriteBytes } from './lib/proc.js';
import { productionNodeFlags, repoRoot } from './lib/paths.js';
import { countAcksBefore, createPostgresSeed, seedDatabase } from './lib/seed.js';
import { backlogStreamName, loadStreamName } from './lib/workload.js';
import { ARM_LABEL, cellTag, DEVICE_OPEN, parseVariants, plan, POSTGRES_ARMS, type Arm, type Cell } from './lib/cells.js';
import { renderResults, renderSvg, type CellResult, type PruneEvent, type RunReport } from './report.js';
import type { MicroRow } from './micro/common.js';

/**
 * `npm run bench`: runs the micro-benchmarks, then every load cell of the matrix (one server
 * process per cell, fresh database, load generators in processes of their own), and writes
 * bench/RESULTS.md and bench/throughput.svg. Expects `npm run build` and
 * `tsc -p bench/tsconfig.json` to have run; compiles nothing itself.
 */

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    'skip-micro': { type: 'boolean', default: false },
    generators: { type: 'string', default: '1' },
    'warmup-ms': { type: 'string' },
    'measure-ms': { type: 'string' },
    'open-measure-ms': { type: 'string' },
    'drain-ms': { type: 'string' },
    'open-rate': { type: 'string' },
    'device-open-rate': { type: 'string' },
    backlog: { type: 'string' },
    'idle-connections': { type: 'string' },
    'out-dir': { type: 'string' },
    'work-dir': { type: 'string' },
    'server-node-args': { type: 'string' },
    'pg-url': { type: 'string' },
    'skip-postgres': { type: 'boolean', default: false },
    rounds: { type: 'string' },
    variants: { type: 'string' },
    'device-only': { type: 'boolean', default: false },
    list: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

if (args.help) {
  process.stdout.write(`Usage: node dist/bench/run.js [options]
  --quick                 one-minute smoke run (small matrix, short windows); results are labelled as such
  --only REGEX            run only cells whose id matches (ids are listed in RESULTS.md)
  --skip-micro            skip the tinybench micro-benchmarks
  --generators N          load-generator processes per cell (default 1; the machine has 2 cores)
  --warmup-ms N / --measure-ms N / --open-measure-ms N / --drain-ms N
  --open-rate N           puts/s for open-loop cells instead of half of (b)'s measured peak
  --device-open-rate N    puts/s of the device-shape open-loop cell instead of the target's 10000 (no target is judged then)
  --backlog N             expired acks for the pruning scenario (default 1000000, quick 100000)
  --idle-connections N    idle connections scenario (default 10000, quick 1000)
  --out-dir DIR           where RESULTS.md and throughput.svg go (default bench/)
  --work-dir DIR          databases and seeds (default bench/.work; must be a real disk, not tmpfs)
  --server-node-args=ARGS node flags for every server process (note the =), after those of npm start, e.g. --server-node-args="--cpu-prof --cpu-prof-dir=bench/.work/prof"
  --pg-url URL            PostgreSQL for the (p) and (p2) arms, as an admin user that may create databases
                          (default SEQGATE_BENCH_PG_URL or postgres://postgres@127.0.0.1:5432/postgres)
  --skip-postgres         leave out the PostgreSQL arms
  --rounds N              interleaved rounds of the device-shape group (default 3, quick 1)
  --variants SPEC         more (b) configurations for the device-shape group, measured in every round:
                          'name=--flag value --flag2 value;name2=ENV_VAR=value --flag value' (e.g. a lever switched off)
  --device-only           run only the device-shape group (with --variants: measure levers interleaved)
  --list                  print the cell ids of the plan and exit
`);
  process.exit(0);
}

const quick = args.quick;
const root = repoRoot();
const num = (v: string | undefined, fallback: number): number => {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`not a non-negative number: ${v}`);
  return n;
};
const opts = {
  generators: Math.max(1, Math.floor(num(args.generators, 1))),
  warmupMs: num(args['warmup-ms'], quick ? 1000 : 3000),
  measureMs: num(args['measure-ms'], quick ? 2000 : 8000),
  openMeasureMs: num(args['open-measure-ms'], quick ? 3500 : 15000),
  drainMs: num(args['drain-ms'], quick ? 1000 : 2000),
  backlog: Math.floor(num(args.backlog, quick ? 100_000 : 1_000_000)),
  idleConnections: Math.floor(num(args['idle-connections'], quick ? 1000 : 10_000)),
  openRate: args['open-rate'] === undefined ? undefined : num(args['open-rate'], 0),
  outDir: args['out-dir'] ?? join(root, 'bench'),
  workDir: args['work-dir'] ?? join(root, 'bench', '.work'),
  only: args.only === undefined ? undefined : new RegExp(args.only),
  serverNodeArgs: (args['server-node-args'] ?? '').split(/\s+/).filter(Boolean),
  rounds: Math.max(1, Math.floor(num(args.rounds, quick ? 1 : 3))),
  variants: parseVariants(args.variants),
  deviceOnly: args['device-only'],
  pgUrl: args['pg-url'] ?? process.env.SEQGATE_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  postgres: !args['skip-postgres'],
};
if (args['device-open-rate'] !== undefined) DEVICE_OPEN.rate = num(args['device-open-rate'], DEVICE_OPEN.rate);

const planOptions = {
  quick,
  backlog: opts.backlog,
  idleConnections: opts.idleConnections,
  rounds: opts.rounds,
  variants: opts.variants,
  deviceOnly: opts.deviceOnly,
  postgres: opts.postgres,
};

if (args.list) {
  for (const cell of plan(planOptions)) {
    if (opts.only === undefined || opts.only.test(cell.id)) process.stdout.write(`${cell.id}\n`);
  }
  process.exit(0);
}

const DIST = join(root, 'dist');
const SCRIPTS: Record<Arm | 'generator', string> = {
  a: join(DIST, 'bench', 'arms', 'echo-server.js'),
  b: join(DIST, 'src', 'cli.js'),
  c: join(DIST, 'bench', 'arms', 'naive-server.js'),
  p: join(DIST, 'src', 'cli.js'),
  p2: join(DIST, 'src', 'cli.js'),
  generator: join(DIST, 'bench', 'load-generator.js'),
};
for (const script of Object.values(SCRIPTS)) {
  if (!existsSync(script)) {
    process.stderr.write(`missing ${relative(root, script)}: run \`npm run build && npx tsc -p bench/tsconfig.json\` first\n`);
    process.exit(2);
  }
}

/** Every server arm runs with the node flags of `npm start` (README.md, "Node flags"). */
const PRODUCTION_NODE_FLAGS = productionNodeFlags();

const RETENTION_MS = 86_400_000;
const startedAt = new Date();
const log = (line: string): void => {
  process.stdout.write(`[bench ${((Date.now() - startedAt.getTime()) / 1000).toFixed(0).padStart(4)}s] ${line}\n`);
};
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
/** A timeout for Promise.race that does not keep the process alive once everything else is done. */
const deadline = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms).unref();
    }),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Servers

interface ServerProc {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly url: string;
  /** Wall-clock time (ms) the server reported itself listening. */
  readonly readyAt: number;
  readonly pruneEvents: PruneEvent[];
  readonly tail: string[];
  stop(): Promise<number | null>;
}

async function startServer(
  arm: Arm,
  dbPath: string | undefined,
  extra: readonly string[],
  logLevel: string,
  env: Readonly<Record<string, string>> = {},
): Promise<ServerProc> {
  const argv = ['--port', '0', '--log-format', 'json', '--log-level', logLevel, ...(dbPath ? ['--db-path', dbPath] : []), ...extra];
  const child = spawn(process.execPath, [...PRODUCTION_NODE_FLAGS, ...opts.serverNodeArgs, SCRIPTS[arm], ...argv], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const tail: string[] = [];
  const pruneEvents: PruneEvent[] = [];
  const keep = (line: string): void => {
    tail.push(line);
    if (tail.length > 40) tail.shift();
  };
  let exited = false;
  const exit = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      exited = true;
      resolve(code);
    }),
  );
  createInterface({ input: child.stderr! }).on('line', keep);
  const ready = new Promise<{ url: string; at: number }>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      keep(line);
      let entry: { msg?: string; url?: string; time?: number; pruned?: number };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        return;
      }
      if (typeof entry.url === 'string' && /listening/.test(entry.msg ?? '')) resolve({ url: entry.url, at: Date.now() });
      if (entry.msg === 'pruned acks' && typeof entry.pruned === 'number') pruneEvents.push({ time: entry.time ?? Date.now(), pruned: entry.pruned });
    });
    void exit.then((code) => reject(new Error(`server exited (${code}) before listening:\n${tail.join('\n')}`)));
  });
  const { url, at } = await withTimeout(ready, 30_000, `${arm} server start`);
  return {
    child,
    pid: child.pid!,
    url,
    readyAt: at,
    pruneEvents,
    tail,
    async stop() {
      if (exited) return child.exitCode;
      child.kill('SIGTERM');
      const code = await Promise.race([exit, deadline(20_000).then(() => 'timeout' as const)]);
      if (code !== 'timeout') return code;
      log(`server ${arm} ignored SIGTERM for 20 s; killing it`);
      child.kill('SIGKILL');
      return Promise.race([exit, deadline(5000).then(() => null)]);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Generators

interface GeneratorProc {
  readonly child: ChildProcess;
  readonly ready: Promise<Extract<FromGenerator, { type: 'ready' }>>;
  readonly result: Promise<GeneratorResult>;
  send(message: ToGenerator): void;
  close(): Promise<void>;
}

function startGenerator(config: GeneratorConfig): GeneratorProc {
  const child = fork(SCRIPTS.generator, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exit = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let failed: (err: Error) => void = () => undefined;
  const failure = new Promise<never>((_, reject) => {
    failed = reject;
  });
  failure.catch(() => undefined);
  void exit.then(() => failed(new Error('load generator exited early')));
  const ready = new Promise<Extract<FromGenerator, { type: 'ready' }>>((resolve) => {
    child.on('message', (m: FromGenerator) => {
      if (m.type === 'ready') resolve(m);
    });
  });
  const result = new Promise<GeneratorResult>((resolve) => {
    child.on('message', (m: FromGenerator) => {
      if (m.type === 'result') resolve(m.result);
    });
  });
  child.on('message', (m: FromGenerator) => {
    if (m.type === 'fatal') failed(new Error(`load generator failed: ${m.message}`));
  });
  const send = (message: ToGenerator): void => {
    if (child.connected) child.send(message);
  };
  send({ type: 'config', config });
  const readyOrFailure = Promise.race([ready, failure]);
  const resultOrFailure = Promise.race([result, failure]);
  // Idle cells never ask for a result, and every generator exits in the end: neither is unhandled.
  readyOrFailure.catch(() => undefined);
  resultOrFailure.catch(() => undefined);
  return {
    child,
    ready: readyOrFailure,
    result: resultOrFailure,
    send,
    async close() {
      send({ type: 'close' });
      const done = await Promise.race([exit.then(() => true), deadline(8000).then(() => false)]);
      if (!done) {
        child.kill('SIGKILL');
        await Promise.race([exit, deadline(3000)]);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Seeds: every load stream starts past the ack cap (steady state), so eviction is active from the
// first put. Stream i holds cap + (i mod 64) acks: a server that evicts in chunks (a stream may
// sit up to a margin above its cap) finds its streams at every phase of the chunk cycle, as in
// a long-lived deployment, instead of all crossing the margin in the same round.

const SEED_ACK_CAP = 1000;
const SEED_PHASES = 64;
const seedAcks = (i: number): number => SEED_ACK_CAP + (i % SEED_PHASES);
const BACKLOG_ACKS_PER_STREAM = 500;
const seedsDir = join(opts.workDir, 'seeds');
const seedCache = new Map<string, string>();

async function seedFile(loadStreams: number, backlog: number): Promise<string> {
  const key = `load${loadStreams}-backlog${backlog}`;
  const cached = seedCache.get(key);
  if (cached) return cached;
  mkdirSync(seedsDir, { recursive: true });
  const path = join(seedsDir, `${key}.db`);
  rmSync(path, { force: true });
  const started = performance.now();
  const now = Date.now();
  const rows = await seedDatabase(path, [
    { streamName: loadStreamName, streams: loadStreams, acksPerStream: seedAcks, committedAt: now },
    ...(backlog > 0
      ? [
          {
            streamName: backlogStreamName,
            streams: Math.ceil(backlog / BACKLOG_ACKS_PER_STREAM),
            acksPerStream: BACKLOG_ACKS_PER_STREAM,
            committedAt: now - 2 * RETENTION_MS,
          },
        ]
      : []),
  ]);
  log(`seeded ${rows} acks into ${relative(root, path)} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  seedCache.set(key, path);
  return path;
}

// ---------------------------------------------------------------------------------------------
// One cell

const peak = { b: undefined as number | undefined, cell: undefined as string | undefined };

/** Server CPU time of a cell: every server process of it (the database server is not included). */
function serversCpuMs(servers: readonly ServerProc[]): number {
  return servers.reduce((sum, s) => sum + processCpuMs(s.pid), 0);
}

function split(total: number, parts: number): number[] {
  const base = Math.floor(total / parts);
  return Array.from({ length: parts }, (_, i) => base + (i < total % parts ? 1 : 0));
}

async function runCell(cell: Cell): Promise<CellResult> {
  const needFds = cell.connections + 256;
  const fdLimit = openFileLimit();
  if (needFds > fdLimit) {
    return { cell, skipped: `ulimit -n is ${fdLimit}; ${cell.connections} connections need about ${needFds} (raise it with \`ulimit -n ${needFds * 2}\`)` };
  }
  let rate = 0;
  if (cell.mode === 'open') {
    const base = cell.fixedRate ?? opts.openRate ?? (peak.b === undefined ? undefined : peak.b * (cell.rateOfPeak ?? 0.5));
    if (base === undefined || base <= 0) return { cell, skipped: 'no peak for (b) measured in this run (run a (b) closed sweep cell or pass --open-rate)' };
    rate = base;
  }

  const dir = mkdtempSync(join(opts.workDir, `${cell.id}-`));
  const onPostgres = POSTGRES_ARMS.includes(cell.arm);
  const dbPath = cell.arm === 'a' || onPostgres ? undefined : join(dir, 'seqgate.db');
  if (dbPath) copyFileSync(await seedFile(cell.mode === 'idle' ? 0 : cell.connections, cell.backlog ?? 0), dbPath);
  const pgDb = onPostgres
    ? await createPostgresSeed(opts.pgUrl, [{ streamName: loadStreamName, streams: cell.connections, acksPerStream: seedAcks, committedAt: Date.now() }])
    : undefined;
  if (pgDb) log(`  seeded ${pgDb.rows} acks into a fresh PostgreSQL database`);

  // The first pruning pass is timed to begin with the measurement window (see the `at` below).
  const pruneIntervalMs = cell.alignPruning ? opts.warmupMs + (quick ? 2500 : 4000) : undefined;
  const extra = [
    ...(pruneIntervalMs === undefined ? [] : ['--prune-interval-ms', String(pruneIntervalMs)]),
    ...(cell.serverArgs ?? []),
    ...(pgDb ? ['--store', 'postgres', '--database-url', pgDb.url] : []),
  ];
  const servers: ServerProc[] = [];
  const generators: GeneratorProc[] = [];
  try {
    for (let i = 0; i < (cell.arm === 'p2' ? 2 : 1); i++)
      servers.push(await startServer(cell.arm, dbPath, extra, cell.alignPruning ? 'debug' : 'info', cell.serverEnv));
    const server = servers[0]!;
    // Each server gets its own generator(s), so connections split evenly between servers.
    const nGen = Math.max(servers.length, Math.min(opts.generators, cell.connections));
    const shares = split(cell.connections, nGen);
    let offset = 0;
    const measureMs = cell.mode === 'open' ? opts.openMeasureMs : opts.measureMs;
    for (const share of shares) {
      generators.push(
        startGenerator({
          url: servers[generators.length % servers.length]!.url,
          connections: share,
          connectionOffset: offset,
          mode: cell.mode,
          window: cell.window,
          putsPerFrame: cell.putsPerFrame,
          stateBytes: cell.stateBytes,
          dupShare: cell.dupShare,
          rate: (rate * share) / cell.connections,
          warmupMs: opts.warmupMs,
          measureMs,
          drainMs: opts.drainMs,
          connectConcurrency: 64,
          expectReplay: cell.arm !== 'a',
          seed: 0x5eed + offset,
        }),
      );
      offset += share;
    }
    const readies = await withTimeout(Promise.all(generators.map((g) => g.ready)), 60_000 + cell.connections * 20, 'connecting');
    const connected = readies.reduce((n, r) => n + r.connected, 0);
    const connectMs = Math.max(...readies.map((r) => r.connectMs));
    const firstError = readies.find((r) => r.firstError)?.firstError;
    if (connected === 0) throw new Error(`no connection succeeded: ${firstError ?? 'unknown'}`);

    if (cell.mode === 'idle') {
      // Let allocations settle and a GC or two run before reading the resident set.
      await sleep(quick ? 1500 : 3000);
      const mem = processMemory(server.pid);
      return {
        cell,
        connected,
        connectFailures: cell.connections - connected,
        connectMs,
        serverRss: mem.rss,
        serverPeakRss: mem.peakRss,
        ...(firstError ? { note: `first connect error: ${firstError}` } : {}),
      };
    }

    const earliest = Date.now() + 300;
    const at = pruneIntervalMs === undefined ? earliest : Math.max(earliest, server.readyAt + pruneIntervalMs - opts.warmupMs);
    for (const g of generators) g.send({ type: 'start', at });
    const windowStart = at + opts.warmupMs;
    const windowEnd = windowStart + measureMs;
    let cpu0 = NaN;
    let cpu1 = NaN;
    let load = NaN;
    let io0 = NaN;
    let io1 = NaN;
    let t0 = 0;
    let t1 = 0;
    const sampled = Promise.all([
      sleep(Math.max(0, windowStart - Date.now())).then(() => {
        cpu0 = serversCpuMs(servers);
        io0 = processWriteBytes(server.pid);
        t0 = performance.now();
        load = loadavg()[0]!;
      }),
      sleep(Math.max(0, windowEnd - Date.now())).then(() => {
        cpu1 = serversCpuMs(servers);
        io1 = processWriteBytes(server.pid);
        t1 = performance.now();
      }),
    ]);
    const results = await withTimeout(Promise.all(generators.map((g) => g.result)), windowEnd - Date.now() + opts.drainMs + 60_000, 'load run');
    await sampled;
    const mem = processMemory(server.pid);

    const latency = new Histogram();
    const lag = new Histogram();
    const errorKinds: Record<string, number> = {};
    let acked = 0;
    let replays = 0;
    let sent = 0;
    let dups = 0;
    let errors = 0;
    let unanswered = 0;
    let genCpuMs = 0;
    let capped = 0;
    let measured = 0;
    for (const r of results) {
      latency.merge(r.latency);
      lag.merge(r.sendLag);
      acked += r.acked;
      replays += r.replays;
      sent += r.sent;
      dups += r.dupsSent;
      errors += r.errors;
      unanswered += r.unanswered;
      genCpuMs += r.cpuMs;
      capped += r.capped;
      measured = Math.max(measured, r.measuredMs);
      for (const [k, v] of Object.entries(r.errorKinds)) errorKinds[k] = (errorKinds[k] ?? 0) + v;
    }
    const seconds = measured / 1000;
    const wallMs = t1 - t0;
    const serverCpuMs = cpu1 - cpu0;
    return {
      cell,
      rate: cell.mode === 'open' ? rate : undefined,
      connected,
      connectFailures: cell.connections - connected,
      connectMs,
      ackedPerSec: acked / seconds,
      freshPerSec: (acked - replays) / seconds,
      sentPerSec: sent / seconds,
      dupsPerSec: dups / seconds,
      latency: latency.toJSON(),
      sendLag: lag.toJSON(),
      serverCpuCores: serverCpuMs / wallMs,
      serverCpuUsPerPut: acked > 0 ? (serverCpuMs * 1000) / acked : NaN,
      serverWriteBytesPerPut: acked > 0 ? (io1 - io0) / acked : NaN,
      genCpuCores: genCpuMs / measured,
      serverRss: mem.rss,
      serverPeakRss: mem.peakRss,
      errors,
      errorKinds,
      unanswered,
      capped,
      windowStart,
      windowEnd,
      pruneIntervalMs,
      serverReadyAt: server.readyAt,
      loadAvg: load,
      ...(firstError ? { note: `first connect error: ${firstError}` } : {}),
    };
  } finally {
    const closing = performance.now();
    await Promise.all(generators.map((g) => g.close()));
    const stopping = performance.now();
    const codes = await Promise.all(servers.map((s) => s.stop()));
    const stopped = performance.now();
    if (stopped - closing > 5000) {
      log(
        `  slow teardown: generators closed in ${((stopping - closing) / 1000).toFixed(1)} s, server stopped in ${((stopped - stopping) / 1000).toFixed(1)} s`,
      );
    }
    for (const [i, code] of codes.entries()) {
      if (code !== 0 && code !== null) log(`server ${cell.arm} exited with ${code}; last lines:\n${servers[i]!.tail.slice(-10).join('\n')}`);
    }
    await pgDb?.drop().catch((err: Error) => log(`could not drop the PostgreSQL database: ${err.message}`));
    const events = servers.flatMap((s) => s.pruneEvents);
    let backlogLeft: number | undefined;
    if (dbPath && cell.backlog) {
      try {
        backlogLeft = countAcksBefore(dbPath, Date.now() - RETENTION_MS);
      } catch (err) {
        log(`could not count the backlog left: ${(err as Error).message}`);
      }
    }
    rmSync(dir, { recursive: true, force: true });
    pruneInfo.set(cell.id, { events, backlogLeft });
  }
}

const pruneInfo = new Map<string, { events: PruneEvent[]; backlogLeft: number | undefined }>();

// ---------------------------------------------------------------------------------------------
// Micro-benchmarks, each in a process of its own

async function runMicro(file: string): Promise<MicroRow[]> {
  const child = fork(join(DIST, 'bench', 'micro', file), [...(quick ? ['--quick'] : []), '--work-dir', opts.workDir], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const rows = new Promise<MicroRow[]>((resolve, reject) => {
    child.on('message', (m: { type: string; rows: MicroRow[] }) => {
      if (m.type === 'micro') resolve(m.rows);
    });
    child.once('exit', (code) => reject(new Error(`${file} exited (${code}) without results`)));
  });
  try {
    return await withTimeout(rows, 180_000, file);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  mkdirSync(opts.workDir, { recursive: true });
  const machine = machineInfo(opts.workDir);
  const loadAtStart = loadavg();
  log(`${quick ? 'QUICK smoke run' : 'full run'}: ${machine.nproc} cpus (${machine.cpuModel}), node ${machine.node}, db on ${machine.fsType}`);
  if (machine.fsType === 'tmpfs') log('warning: the work directory is on tmpfs, so fsync costs nothing; pass --work-dir on a real disk');

  const micro: MicroRow[] = [];
  if (!args['skip-micro']) {
    for (const file of ['codec.bench.js', 'gate.bench.js', 'store-batch.bench.js', 'file-identity.bench.js', 'changefeed.bench.js']) {
      log(`micro ${file}`);
      micro.push(...(await runMicro(file)));
    }
  }

  const cells = plan(planOptions).filter((c) => opts.only === undefined || opts.only.test(c.id));
  const results: CellResult[] = [];
  for (const [i, cell] of cells.entries()) {
    log(
      `cell ${i + 1}/${cells.length} ${cell.id} — ${ARM_LABEL[cell.arm]}${cell.variant ? ` [${cellTag(cell)}: ${[...Object.entries(cell.serverEnv ?? {}).map(([k, v]) => `${k}=${v}`), ...(cell.serverArgs ?? [])].join(' ')}]` : ''}`,
    );
    let result: CellResult;
    try {
      result = await runCell(cell);
    } catch (err) {
      result = { cell, failure: (err as Error).message };
    }
    const info = pruneInfo.get(cell.id);
    if (info) result = { ...result, pruneEvents: info.events, ...(info.backlogLeft !== undefined ? { backlogLeft: info.backlogLeft } : {}) };
    results.push(result);
    if (result.skipped) log(`  skipped: ${result.skipped}`);
    else if (result.failure) log(`  FAILED: ${result.failure}`);
    else if (cell.mode === 'idle')
      log(
        `  ${result.connected} idle connections: server RSS ${(result.serverRss! / 2 ** 20).toFixed(0)} MiB (peak ${(result.serverPeakRss! / 2 ** 20).toFixed(0)} MiB)`,
      );
    else {
      const h = Histogram.from(result.latency!);
      log(
        `  ${Math.round(result.ackedPerSec!)} acked/s, p50 ${(h.percentile(50) / 1000).toFixed(2)} ms, p99 ${(h.percentile(99) / 1000).toFixed(2)} ms, ` +
          `server ${result.serverCpuCores!.toFixed(2)} cores, ${result.serverCpuUsPerPut!.toFixed(0)} µs/put, ${(result.serverWriteBytesPerPut! / 1024).toFixed(1)} KiB written/put, gen ${result.genCpuCores!.toFixed(2)} cores, load ${result.loadAvg?.toFixed(1)}, errors ${result.errors}` +
          `${result.errors ? ` ${JSON.stringify(result.errorKinds)}` : ''}`,
      );
      if (cell.arm === 'b' && cell.variant === undefined && cell.mode === 'closed' && cell.sweep && result.ackedPerSec! > (peak.b ?? 0)) {
        peak.b = result.ackedPerSec!;
        peak.cell = cell.id;
      }
    }
  }
  rmSync(seedsDir, { recursive: true, force: true });

  const npmArgs = process.env.npm_lifecycle_event
    ? `npm run ${process.env.npm_lifecycle_event}${process.argv.length > 2 ? ' -- ' + process.argv.slice(2).join(' ') : ''}`
    : undefined;
  const report: RunReport = {
    quick,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `node ${relative(root, process.argv[1]!)}${process.argv.length > 2 ? ' ' + process.argv.slice(2).join(' ') : ''}`,
    ...(npmArgs ? { npmCommand: npmArgs } : {}),
    machine,
    settings: { ...opts, only: opts.only?.source, peakB: peak.b, peakCell: peak.cell },
    loadAvg: { start: loadAtStart, end: loadavg() },
    cells: results,
    micro,
  };
  mkdirSync(opts.outDir, { recursive: true });
  writeFileSync(join(opts.outDir, 'RESULTS.md'), renderResults(report));
  writeFileSync(join(opts.outDir, 'throughput.svg'), renderSvg(report));
  writeFileSync(join(opts.workDir, 'last-run.json'), JSON.stringify(report, null, 1));
  log(
    `wrote ${relative(root, join(opts.outDir, 'RESULTS.md'))}, ${relative(root, join(opts.outDir, 'throughput.svg'))} (raw: ${relative(root, join(opts.workDir, 'last-run.json'))})`,
  );
}

try {
  await main();
} finally {
  rmSync(seedsDir, { recursive: true, force: true });
}
