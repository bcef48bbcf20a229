import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { pack, Unpackr } from 'msgpackr';
import WebSocket from 'ws';
import { repoRoot } from './lib/paths.js';
import { processCpuMs } from './lib/proc.js';

/**
 * `npm run bench:changefeed`: end-to-end latency from a put's ack (as the writer receives it) to
 * each WebSocket subscriber receiving the change, with 1 and then 1,000 subscribers of one prefix
 * on one server (a child process on loopback, SQLite, synchronous=FULL). The writer sends one put
 * every 20 ms; every subscriber must receive every change. Prints p50/p99/max per arm and how
 * many changes arrived before their ack (the two messages travel on different connections), and
 * the server's CPU time per delivery.
 *
 *   --only=N               run only the arm with N subscribers
 *   --server-node-args=S   node flags for the server, e.g. "--cpu-prof --cpu-prof-dir=bench/.work/prof"
 *   --server-cli=PATH      another build's dist/src/cli.js (before/after comparisons)
 *   --format=json|msgpack  the subscribers' subprotocol (default json)
 *   --state-bytes=N        padding in each put's state (default 0: about 30 bytes)
 */

interface Arm {
  subscribers: number;
  puts: number;
}
const ARMS: Arm[] = [
  { subscribers: 1, puts: 200 },
  { subscribers: 1000, puts: 200 },
];

const { values: args } = parseArgs({
  options: {
    // e.g. --server-node-args="--cpu-prof --cpu-prof-dir=bench/.work/prof" to profile the server.
    'server-node-args': { type: 'string' },
    // Run only the arm with this many subscribers.
    only: { type: 'string' },
    // Another build's server, for a before/after comparison driven by the same harness.
    'server-cli': { type: 'string' },
    // The subscribers' subprotocol, and the size of each put's state.
    format: { type: 'string', default: 'json' },
    'state-bytes': { type: 'string', default: '0' },
  },
});
const format = args.format === 'msgpack' ? 'msgpack' : 'json';
const pad = 'x'.repeat(Number(args['state-bytes']));
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });
const serverNodeArgs = (args['server-node-args'] ?? '').split(/\s+/).filter(Boolean);

async function startServer(dbPath: string): Promise<{ url: string; pid: number; stop: () => Promise<void> }> {
  const child = spawn(
    process.execPath,
    [
      ...serverNodeArgs,
      args['server-cli'] ?? join(repoRoot(), 'dist', 'src', 'cli.js'),
      '--port',
      '0',
      '--db-path',
      dbPath,
      '--log-format',
      'json',
      '--max-connections',
      '5000',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const m = /"url":"(ws:[^"]+)"/.exec(buf);
      if (m) resolve(m[1]!);
    });
    child.once('exit', () => reject(new Error('server exited')));
  });
  return {
    url,
    pid: child.pid!,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function runArm(url: string, serverPid: number, arm: Arm, prefix: string): Promise<string> {
  const arrivals: Array<Map<string, number>> = [];
  const subs: WebSocket[] = [];
  for (let i = 0; i < arm.subscribers; i++) {
    const ws = new WebSocket(url, format === 'json' ? 'seqgate.v1.json' : 'seqgate.v1');
    const got = new Map<string, number>();
    arrivals.push(got);
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const subscribed = new Promise((resolve) => {
      ws.on('message', (data: Buffer) => {
        const m = (format === 'json' ? JSON.parse(data.toString()) : unpackr.unpack(data)) as {
          type: string;
          changes?: Array<{ key: string; version: number }>;
        };
        if (m.type === 'subscribed') resolve(undefined);
        if (m.type === 'changes') for (const c of m.changes!) got.set(`${c.key}@${c.version}`, performance.now());
      });
    });
    const subscribe = { type: 'subscribe', id: 1, prefix, from: 'now' };
    ws.send(format === 'json' ? JSON.stringify(subscribe) : pack(subscribe));
    await subscribed;
    subs.push(ws);
  }
  const writer = new WebSocket(url, 'seqgate.v1.json');
  await new Promise((resolve) => writer.once('open', resolve));
  const acks = new Map<string, number>();
  writer.on('message', (data: Buffer) => {
    const m = JSON.parse(data.toString()) as { type: string; results?: Array<{ ack?: { key: string; version: number } }> };
    if (m.type === 'results') for (const r of m.results!) if (r.ack) acks.set(`${r.ack.key}@${r.ack.version}`, performance.now());
  });
  const cpuBefore = processCpuMs(serverPid);
  for (let seq = 1; seq <= arm.puts; seq++) {
    writer.send(JSON.stringify({ type: 'put', puts: [{ id: seq, stream: `${prefix}writer`, epoch: 1, seq, key: `${prefix}k${seq}`, state: { seq, pad } }] }));
    await new Promise((r) => setTimeout(r, 20));
  }
  const deadline = performance.now() + 60_000;
  while (performance.now() < deadline && (acks.size < arm.puts || arrivals.some((a) => a.size < arm.puts))) await new Promise((r) => setTimeout(r, 50));
  // The server's CPU while it delivered (puts, commits, fan-out): the cost per delivery, which
  // unlike latency does not depend on how much of the shared machine the server got.
  const serverCpuMs = processCpuMs(serverPid) - cpuBefore;
  const latencies: number[] = [];
  let early = 0;
  let missing = 0;
  for (const got of arrivals) {
    for (const [id, ackedAt] of acks) {
      const at = got.get(id);
      if (at === undefined) {
        missing++;
        continue;
      }
      if (at < ackedAt) early++;
      latencies.push(Math.max(0, at - ackedAt));
    }
  }
  latencies.sort((a, b) => a - b);
  for (const ws of subs) ws.terminate();
  writer.terminate();
  return `${arm.subscribers} ${format} subscriber(s), ${arm.puts} puts of ${pad.length}+ B: ${latencies.length} deliveries, ${missing} missing, ${early} before their ack; ack→subscriber p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms, max ${latencies[latencies.length - 1]!.toFixed(2)} ms; server CPU ${serverCpuMs.toFixed(0)} ms (${((serverCpuMs * 1000) / Math.max(1, latencies.length)).toFixed(1)} µs per delivery)`;
}

const dir = mkdtempSync(join(tmpdir(), 'seqgate-bench-changefeed-'));
const server = await startServer(join(dir, 'seqgate.db'));
try {
  for (const [i, arm] of ARMS.entries())
    if (args.only === undefined || Number(args.only) === arm.subscribers) console.log(await runArm(server.url, server.pid, arm, `fan${i}/`));
} finally {
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
