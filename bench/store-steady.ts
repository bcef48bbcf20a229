import { fork } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { putFingerprint } from '../src/protocol/canonical.js';
import { SqliteStore } from '../src/store/sqlite-store.js';
import { DEFAULT_TENANT, type Put } from '../src/store/store.js';
import { repoRoot } from './lib/paths.js';
import { seedDatabase } from './lib/seed.js';
import { KEYS_PER_STREAM, loadStreamName, makeState } from './lib/workload.js';

/**
 * The store alone at the device shape: every batch holds one put for each of `--streams` streams
 * (1,000 connections × window 1 as the committer sees it), every stream seeded past the ack cap
 * (1000 + i mod 64 acks, as in run.ts). No sockets, no codec, no load generator: what is left is
 * the store's own cost per batch, which is what the eviction and checkpoint levers change, and
 * it is far less disturbed by other work on the machine than the end-to-end cells.
 *
 *   npm run build && npx tsc -p bench/tsconfig.json
 *   node dist/bench/store-steady.js --rounds 3 --variants 'slack0=--slack 0;slack64=--slack 64'
 *
 * Options a variant may set: --slack, --cap, --wal (background|commit checkpoints), --wal-sync
 * (commit, the default here, or background: the server's default, fdatasync on the thread pool),
 * --settle-rows, --page-size (the seed is rebuilt with that page size by VACUUM first; 0 keeps 4096).
 *
 * Each variant runs in a process of its own, variants alternate within each round. Reported per
 * run: batch commit time (p50, p90), puts/s, process CPU per put (all threads, so a checkpoint
 * worker counts) and bytes written to storage per put (/proc/self/io).
 */

const { values: args } = parseArgs({
  options: {
    child: { type: 'boolean', default: false },
    streams: { type: 'string', default: '1000' },
    batches: { type: 'string', default: '120' },
    warmup: { type: 'string', default: '20' },
    cap: { type: 'string', default: '1000' },
    slack: { type: 'string', default: '64' },
    wal: { type: 'string', default: 'background' },
    'settle-rows': { type: 'string', default: '16384' },
    'page-size': { type: 'string', default: '0' },
    'wal-sync': { type: 'string', default: 'commit' },
    rounds: { type: 'string', default: '2' },
    variants: { type: 'string', default: 'slack0=--slack 0;slack64=--slack 64' },
    'work-dir': { type: 'string' },
  },
  allowPositionals: false,
});

const workDir = args['work-dir'] ?? join(repoRoot(), 'bench', '.work');
const streams = Number(args.streams);

interface RunResult {
  readonly batchP50Ms: number;
  readonly batchP90Ms: number;
  readonly putsPerSec: number;
  readonly cpuUsPerPut: number;
  readonly kibWrittenPerPut: number;
}

function writeBytes(): number {
  const m = /^write_bytes:\s+(\d+)/m.exec(readFileSync('/proc/self/io', 'utf8'));
  return m ? Number(m[1]) : NaN;
}

async function child(): Promise<RunResult> {
  const seed = join(workDir, `store-steady-seed-${streams}.db`);
  const path = join(workDir, `store-steady-${process.pid}.db`);
  copyFileSync(seed, path);
  if (Number(args['page-size']) > 0) {
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(path);
    db.pragma('journal_mode = DELETE');
    db.pragma(`page_size = ${Number(args['page-size'])}`);
    db.exec('VACUUM');
    db.pragma('journal_mode = WAL');
    db.close();
  }
  const store = new SqliteStore({
    path,
    synchronous: 'full',
    contiguous: false,
    ackCapPerStream: Number(args.cap),
    ackCapSlack: Number(args.slack),
    walCheckpoint: args.wal === 'commit' ? 'commit' : 'background',
    ackSettleRows: Number(args['settle-rows']),
    startupCheck: 'off',
    walSync: args['wal-sync'] === 'background' ? 'background' : 'commit',
  });
  try {
    const names = Array.from({ length: streams }, (_, i) => loadStreamName(i));
    const heads = (await store.heads(DEFAULT_TENANT, names)).map((h) => h.seq);
    const state = makeState(200);
    const batches = Number(args.batches);
    const warmup = Number(args.warmup);
    const walls: number[] = [];
    let cpu0 = process.cpuUsage();
    let io0 = 0;
    let t0 = 0;
    for (let b = 0; b < warmup + batches; b++) {
      if (b === warmup) {
        cpu0 = process.cpuUsage();
        io0 = writeBytes();
        t0 = performance.now();
      }
      const puts: Put[] = names.map((stream, s) => {
        const seq = ++heads[s]!;
        const key = `${stream}/k${seq % KEYS_PER_STREAM}`;
        return { tenant: DEFAULT_TENANT, stream, epoch: 1, seq, key, state, ifVersion: null, fingerprint: putFingerprint(key, state, null) };
      });
      const started = performance.now();
      const results = await store.apply(puts);
      if (b >= warmup) walls.push(performance.now() - started);
      if (results[0]?.kind !== 'ack' || results[0].replay) throw new Error('store-steady: a fresh put was not applied');
      // The server's event loop turns between batches; so does this one (timers, the checkpointer).
      await new Promise((resolve) => setImmediate(resolve));
    }
    const elapsed = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    const n = batches * streams;
    walls.sort((p, q) => p - q);
    return {
      batchP50Ms: walls[walls.length >> 1]!,
      batchP90Ms: walls[Math.floor(walls.length * 0.9)]!,
      putsPerSec: (n / elapsed) * 1000,
      cpuUsPerPut: (cpu.user + cpu.system) / n,
      kibWrittenPerPut: (writeBytes() - io0) / n / 1024,
    };
  } finally {
    await store.close();
    for (const f of [path, `${path}-wal`, `${path}-shm`]) rmSync(f, { force: true });
  }
}

async function runVariant(extra: readonly string[]): Promise<RunResult> {
  const script = new URL(import.meta.url).pathname;
  const common = [
    '--child',
    '--streams',
    String(streams),
    '--batches',
    args.batches!,
    '--warmup',
    args.warmup!,
    '--cap',
    args.cap!,
    '--slack',
    args.slack!,
    '--wal',
    args.wal!,
    '--settle-rows',
    args['settle-rows']!,
    '--work-dir',
    workDir,
  ];
  const proc = fork(script, [...common, ...extra], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    proc.once('message', (m: RunResult) => resolve(m));
    proc.once('exit', (code) => reject(new Error(`variant exited with ${code}`)));
  });
}

if (args.child) {
  const result = await child();
  process.send!(result);
  process.disconnect();
} else {
  mkdirSync(workDir, { recursive: true });
  const seed = join(workDir, `store-steady-seed-${streams}.db`);
  if (!existsSync(seed)) {
    await seedDatabase(seed, [{ streamName: loadStreamName, streams, acksPerStream: (i) => 1000 + (i % 64), committedAt: Date.now() }]);
  }
  const variants = args.variants!.split(';').map((part) => {
    const eq = part.indexOf('=');
    return {
      name: part.slice(0, eq).trim(),
      args: part
        .slice(eq + 1)
        .trim()
        .split(/\s+/)
        .filter(Boolean),
    };
  });
  const f = (n: number, d = 1): string => n.toFixed(d);
  process.stdout.write(
    `store at the device shape: ${streams} streams × 1 put per batch, seeded past the cap; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`,
  );
  process.stdout.write('| round | variant | batch p50 ms | batch p90 ms | puts/s | CPU µs/put | KiB written/put |\n|---|---|---|---|---|---|---|\n');
  for (let round = 1; round <= Number(args.rounds); round++) {
    for (const v of variants) {
      const r = await runVariant(v.args);
      process.stdout.write(
        `| ${round} | ${v.name} | ${f(r.batchP50Ms)} | ${f(r.batchP90Ms)} | ${f(r.putsPerSec, 0)} | ${f(r.cpuUsPerPut)} | ${f(r.kibWrittenPerPut)} |\n`,
      );
    }
  }
  rmSync(seed, { force: true });
}
