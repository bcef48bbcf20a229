import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import os, { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Packr } from 'msgpackr';
import { ControlClient } from '../test/support/control-client.js';
import { frame, RawWebSocket } from '../test/support/raw-websocket.js';
import { processMemory } from './lib/proc.js';

/**
 * Hostile WebSocket clients against a real server process, measured (issue 9, findings 2, 4, 5):
 * server resident memory and a control client's put round trips (p50/p99, in its own process)
 * before and during each attack. Run it against any build of the server (`--cli`), so the same
 * attacks measure the server before and after a fix in the same run conditions.
 *
 *   npm run attack                       # every attack against dist/src/cli.js, 20 s each
 *   npm run attack -- --cli /tmp/old/dist/src/cli.js --seconds 10 --only pings-unauthenticated
 *
 * The short, pass/fail versions of these attacks are test/hostile-websocket.test.ts (npm test).
 */

const { values } = parseArgs({
  options: {
    cli: { type: 'string', default: 'dist/src/cli.js' },
    seconds: { type: 'string', default: '20' },
    only: { type: 'string' },
    label: { type: 'string', default: '' },
    json: { type: 'boolean', default: false },
  },
});
const CLI = resolve(values.cli!);
const SECONDS = Number(values.seconds);
const MiB = 1024 * 1024;
const KiB = 1024;
const TOKEN = 'Tattack-token-0123456789abcdef';
const TOKENS = JSON.stringify({ tokens: [{ token: TOKEN, tenant: 'default' }] });
const packr = new Packr({ useRecords: false, variableMapSize: true });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---- the server ----

interface Server {
  url: string;
  pid: number;
  proc: ChildProcess;
  dir: string;
  lines: string[];
}

async function startServer(args: string[]): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-attack-'));
  const proc = spawn(process.execPath, [CLI, '--port', '0', '--db-path', join(dir, 'db.sqlite'), '--log-format', 'json', '--synchronous', 'normal', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SEQGATE_'))),
  });
  const lines: string[] = [];
  let buf = '';
  const url = await new Promise<string>((resolveUrl, reject) => {
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(line);
        if (line.includes('"seqgate listening"')) resolveUrl(String((JSON.parse(line) as { url: string }).url));
      }
    });
    proc.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return { url, pid: proc.pid!, proc, dir, lines };
}

async function stopServer(s: Server): Promise<void> {
  s.proc.kill('SIGKILL');
  if (s.proc.exitCode === null) await once(s.proc, 'exit');
  rmSync(s.dir, { recursive: true, force: true });
}

// ---- the control client (test/support/control-client.ts), in its own process ----

/** Puts for `ms` milliseconds, 2 ms apart, an answer awaited at most 30 s; their round trips. */
async function controlWindow(control: ControlClient, ms: number): Promise<number[]> {
  return (await control.measure({ forMs: ms, pauseMs: 2, putTimeoutMs: 30_000 }, ms + 120_000)).latencies;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil(s.length * p) - 1)] ?? NaN;
}

// ---- rule-breaking clients: raw sockets (test/support/raw-websocket.ts) ----

function manyKeysPut(): Buffer {
  const state: Record<string, number> = {};
  const n = 170_000;
  for (let i = 0; i < n; i++) state[((i * 7919) % n).toString(36)] = 1;
  return packr.pack({ type: 'put', puts: [{ id: 1, stream: 'keys', epoch: 1, seq: 1, key: 'keys-doc', state }] });
}

// ---- the attacks: each runs until `stop` and may report a note ----

interface Attack {
  readonly name: string;
  readonly finding: number;
  readonly what: string;
  readonly args: string[];
  run(url: string, stop: () => boolean): Promise<string>;
}

const sockets: RawWebSocket[] = [];
const track = (s: RawWebSocket): RawWebSocket => {
  sockets.push(s);
  return s;
};

/** Writes `data` as fast as the socket takes it, keeping `cap` bytes queued, until `stop`. */
async function flood(socket: Socket, data: Buffer, stop: () => boolean, cap = 4 * MiB): Promise<number> {
  let sent = 0;
  while (!stop() && !socket.destroyed) {
    while (socket.writableLength < cap && !socket.destroyed) {
      socket.write(data);
      sent++;
    }
    await sleep(5);
  }
  return sent;
}

/** Pings with 1000-byte nonces, as fast as the socket takes them, on a connection that never reads. */
async function pingFlood(url: string, headers: Record<string, string>, stop: () => boolean): Promise<string> {
  const s = track(await RawWebSocket.open(url, headers)).socket;
  s.pause();
  const ping = frame(packr.pack({ type: 'ping', nonce: 'n'.repeat(1000) }));
  const sent = await flood(s, ping, stop);
  return `${sent} pings written; connection ${s.destroyed ? 'dropped' : 'still open'}`;
}

const ATTACKS: Attack[] = [
  {
    name: 'pings-unauthenticated',
    finding: 2,
    what: 'one client without a token sends pings with 1000-byte nonces and never reads',
    args: ['--tokens', TOKENS],
    run: (url, stop) => pingFlood(url, {}, stop),
  },
  {
    name: 'pings-authenticated',
    finding: 2,
    what: 'one client with a token sends pings with 1000-byte nonces and never reads',
    args: ['--tokens', TOKENS],
    run: (url, stop) => pingFlood(url, { authorization: `Bearer ${TOKEN}` }, stop),
  },
  {
    name: 'keys-unauthenticated',
    finding: 4,
    what: 'one client without a token floods puts of a 170k-key state (just under 1 MiB) without reading, reconnecting whenever it is dropped',
    args: ['--tokens', TOKENS],
    async run(url, stop) {
      const put = frame(manyKeysPut());
      let frames = 0;
      let connections = 0;
      while (!stop()) {
        const s = track(await RawWebSocket.open(url));
        connections++;
        frames += await flood(s.socket, put, stop, 8 * MiB);
      }
      return `${frames} frames written on ${connections} connections`;
    },
  },
  {
    name: 'keys-authenticated',
    finding: 4,
    what: 'one client with a token floods puts of a 170k-key state (just under 1 MiB), without waiting for answers',
    args: ['--tokens', TOKENS],
    async run(url, stop) {
      const s = track(await RawWebSocket.open(url, { authorization: `Bearer ${TOKEN}` }));
      const sent = await flood(s.socket, frame(manyKeysPut()), stop, 8 * MiB);
      return `${sent} frames written`;
    },
  },
  {
    name: 'unauthenticated-slots',
    finding: 5,
    what: 'with --max-connections 51: 50 clients without a token hold their connections; then clients with a token connect, one at a time',
    args: ['--tokens', TOKENS, '--max-connections', '51'],
    async run(url, stop) {
      // The control client holds the 51st slot: a newcomer finds the server full.
      const held = await Promise.all(Array.from({ length: 50 }, () => RawWebSocket.open(url)));
      held.forEach(track);
      await sleep(500);
      let admitted = 0;
      let refused = 0;
      while (!stop()) {
        const s = await RawWebSocket.open(url, { authorization: `Bearer ${TOKEN}` }).catch(() => undefined);
        if (s === undefined) {
          refused++;
          await sleep(200);
          continue;
        }
        track(s);
        await sleep(300);
        if (s.closeCodes().includes(1013) || s.socket.destroyed) refused++;
        else admitted++;
        s.destroy();
        await sleep(200);
      }
      return `token clients admitted ${admitted}, refused ${refused}`;
    },
  },
  {
    name: 'fragments',
    finding: 5,
    what: '300 clients without a token each send 900 KiB of a fragmented message and never the rest',
    // Without the auth deadline, so what is measured is the memory share alone (an older server
    // does not know the option: SEQGATE_ATTACK_OLD=1 leaves it out).
    args: ['--tokens', TOKENS, ...(process.env.SEQGATE_ATTACK_OLD === '1' ? [] : ['--auth-timeout-ms', '600000'])],
    async run(url, stop) {
      const first = frame(Buffer.alloc(300 * KiB, 0x61), 2, false);
      const more = frame(Buffer.alloc(300 * KiB, 0x62), 0, false);
      let opened = 0;
      for (let i = 0; i < 300 && !stop(); i += 50) {
        const batch = await Promise.all(Array.from({ length: 50 }, () => RawWebSocket.open(url).catch(() => undefined)));
        for (const s of batch) {
          if (s === undefined) continue;
          track(s);
          opened++;
          s.socket.write(first);
          s.socket.write(more);
          s.socket.write(more);
        }
        await sleep(100);
      }
      while (!stop()) await sleep(100);
      return `${opened} connections opened, ${sockets.filter((s) => !s.socket.destroyed).length} still open at the end`;
    },
  },
];

interface Row {
  attack: string;
  finding: number;
  rssBaseMiB: number;
  rssPeakMiB: number;
  p50Base: number;
  p99Base: number;
  p50During: number;
  p99During: number;
  samples: number;
  note: string;
}

async function runAttack(a: Attack): Promise<Row> {
  const server = await startServer(a.args);
  const control = await ControlClient.start(`${server.url}/?token=${TOKEN}`);
  try {
    await controlWindow(control, 2000); // warm-up
    const base = await controlWindow(control, 5000);
    const rssBase = processMemory(server.pid).rss;
    let peak = rssBase;
    const sampler = setInterval(() => {
      try {
        peak = Math.max(peak, processMemory(server.pid).rss);
      } catch {
        /* gone */
      }
    }, 50);
    let stopped = false;
    const attack = a.run(server.url, () => stopped);
    await sleep(500);
    const during = await controlWindow(control, SECONDS * 1000);
    stopped = true;
    const note = await attack;
    clearInterval(sampler);
    return {
      attack: a.name,
      finding: a.finding,
      rssBaseMiB: rssBase / MiB,
      rssPeakMiB: peak / MiB,
      p50Base: percentile(base, 0.5),
      p99Base: percentile(base, 0.99),
      p50During: percentile(during, 0.5),
      p99During: percentile(during, 0.99),
      samples: during.length,
      note,
    };
  } finally {
    control.stop();
    for (const s of sockets.splice(0)) s.destroy();
    await stopServer(server);
  }
}

const rows: Row[] = [];
for (const a of ATTACKS) {
  if (values.only !== undefined && !values.only.split(',').includes(a.name)) continue;
  process.stderr.write(`[attack] ${a.name}: ${a.what} (${SECONDS} s)\n`);
  const row = await runAttack(a);
  rows.push(row);
  process.stderr.write(
    `[attack] ${a.name}: RSS ${row.rssBaseMiB.toFixed(0)} -> ${row.rssPeakMiB.toFixed(0)} MiB; control p50/p99 ${row.p50Base.toFixed(1)}/${row.p99Base.toFixed(1)} ms before, ${row.p50During.toFixed(1)}/${row.p99During.toFixed(1)} ms during (${row.samples} puts); ${row.note}\n`,
  );
}
const machine = `${os.cpus().length} × ${os.cpus()[0]?.model.trim() ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, load ${os
  .loadavg()
  .map((l) => l.toFixed(2))
  .join(' ')}, node ${process.version}`;
if (values.json) {
  process.stdout.write(JSON.stringify({ label: values.label, cli: CLI, seconds: SECONDS, machine, rows }, null, 2) + '\n');
} else {
  process.stdout.write(`\n${values.label} ${CLI}, ${SECONDS} s per attack, ${machine}\n\n`);
  process.stdout.write(
    '| attack | finding | server RSS before → peak (MiB) | control p50 / p99 before (ms) | control p50 / p99 during (ms) | notes |\n|---|---|---|---|---|---|\n',
  );
  for (const r of rows) {
    process.stdout.write(
      `| ${r.attack} | ${r.finding} | ${r.rssBaseMiB.toFixed(0)} → ${r.rssPeakMiB.toFixed(0)} | ${r.p50Base.toFixed(1)} / ${r.p99Base.toFixed(1)} | ${r.p50During.toFixed(1)} / ${r.p99During.toFixed(1)} | ${r.note} |\n`,
    );
  }
}
