import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { repoRoot } from './lib/paths.js';

/**
 * `npm run bench:changefeed`: end-to-end latency from a put's ack (as the writer receives it) to
 * each WebSocket subscriber receiving the change, with 1 and then 1,000 subscribers of one prefix
 * on one server (a child process on loopback, SQLite, synchronous=FULL). The writer sends one put
 * every 20 ms; every subscriber must receive every change. Prints p50/p99/max per arm and how
 * many changes arrived before their ack (the two messages travel on different connections).
 */

interface Arm {
  subscribers: number;
  puts: number;
}
const ARMS: Arm[] = [
  { subscribers: 1, puts: 200 },
  { subscribers: 1000, puts: 200 },
];

async function startServer(dbPath: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const child = spawn(
    process.execPath,
    [join(repoRoot(), 'dist', 'src', 'cli.js'), '--port', '0', '--db-path', dbPath, '--log-format', 'json', '--max-connections', '5000'],
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
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function runArm(url: string, arm: Arm, prefix: string): Promise<string> {
  const arrivals: Array<Map<string, number>> = [];
  const subs: WebSocket[] = [];
  for (let i = 0; i < arm.subscribers; i++) {
    const ws = new WebSocket(url, 'seqgate.v1.json');
    const got = new Map<string, number>();
    arrivals.push(got);
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const subscribed = new Promise((resolve) => {
      ws.on('message', (data: Buffer) => {
        const m = JSON.parse(data.toString()) as { type: string; changes?: Array<{ key: string; version: number }> };
        if (m.type === 'subscribed') resolve(undefined);
        if (m.type === 'changes') for (const c of m.changes!) got.set(`${c.key}@${c.version}`, performance.now());
      });
    });
    ws.send(JSON.stringify({ type: 'subscribe', id: 1, prefix, from: 'now' }));
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
  for (let seq = 1; seq <= arm.puts; seq++) {
    writer.send(JSON.stringify({ type: 'put', puts: [{ id: seq, stream: `${prefix}writer`, epoch: 1, seq, key: `${prefix}k${seq}`, state: { seq } }] }));
    await new Promise((r) => setTimeout(r, 20));
  }
  const deadline = performance.now() + 60_000;
  while (performance.now() < deadline && (acks.size < arm.puts || arrivals.some((a) => a.size < arm.puts))) await new Promise((r) => setTimeout(r, 50));
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
  return `${arm.subscribers} subscriber(s), ${arm.puts} puts: ${latencies.length} deliveries, ${missing} missing, ${early} before their ack; ack→subscriber p50 ${percentile(latencies, 50).toFixed(2)} ms, p99 ${percentile(latencies, 99).toFixed(2)} ms, max ${latencies[latencies.length - 1]!.toFixed(2)} ms`;
}

const dir = mkdtempSync(join(tmpdir(), 'seqgate-bench-changefeed-'));
const server = await startServer(join(dir, 'seqgate.db'));
try {
  for (const [i, arm] of ARMS.entries()) console.log(await runArm(server.url, arm, `fan${i}/`));
} finally {
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
