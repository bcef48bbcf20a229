import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import os, { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Packr } from 'msgpackr';
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

// ---- the control client, in its own process ----

const CONTROL_SCRIPT = `
import WebSocket from 'ws';
import { Packr, Unpackr } from 'msgpackr';
import { createInterface } from 'node:readline';
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, int64AsType: 'auto' });
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const ws = new WebSocket(process.env.CONTROL_URL, 'seqgate.v1');
let waiting;
ws.on('message', (d) => { const m = unpackr.unpack(d); if (m.type === 'results' && waiting) { const w = waiting; waiting = undefined; w(m.results[0]); } });
ws.on('close', (code) => { out({ closed: code }); process.exit(0); });
ws.on('error', (err) => { out({ error: err.message }); process.exit(1); });
await new Promise((resolve) => ws.once('open', resolve));
out({ ready: true });
let seq = 0;
for await (const line of createInterface({ input: process.stdin })) {
  const ms = Number(line);
  const latencies = [];
  const until = performance.now() + ms;
  while (performance.now() < until) {
    seq++;
    const started = performance.now();
    const timeout = new Promise((resolve) => setTimeout(() => resolve(undefined), 30000));
    const r = await Promise.race([timeout, new Promise((resolve) => { waiting = resolve; ws.send(packr.pack({ type: 'put', puts: [{ id: seq, stream: 'control', epoch: 1, seq, key: 'control-doc', state: { seq } }] })); })]);
    latencies.push(r === undefined ? 30000 : performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
  out({ latencies });
}
`;

class Control {
  private readonly proc: ChildProcess;
  private readonly lines: Array<Record<string, unknown>> = [];
  private waiters: Array<() => void> = [];

  constructor(url: string) {
    this.proc = spawn(process.execPath, ['--input-type=module', '-e', CONTROL_SCRIPT], {
      cwd: resolve('.'),
      env: { ...process.env, CONTROL_URL: url },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let buf = '';
    this.proc.stdout!.setEncoding('utf8');
    this.proc.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(buf.slice(0, nl)) as Record<string, unknown>);
        buf = buf.slice(nl + 1);
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  async next(): Promise<Record<string, unknown>> {
    while (this.lines.length === 0) await new Promise<void>((r) => this.waiters.push(r));
    const line = this.lines.shift()!;
    if ('closed' in line || 'error' in line) throw new Error(`control connection ended: ${JSON.stringify(line)}`);
    return line;
  }

  async measure(ms: number): Promise<number[]> {
    this.proc.stdin!.write(`${ms}\n`);
    return (await this.next()).latencies as number[];
  }

  stop(): void {
    this.proc.kill('SIGKILL');
  }
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil(s.length * p) - 1)] ?? NaN;
}

// ---- raw sockets for rule-breaking clients ----

async function rawOpen(url: string, headers: Record<string, string> = {}): Promise<Socket> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  socket.write(
    [
      'GET / HTTP/1.1',
      `Host: ${hostname}:${port}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
      'Sec-WebSocket-Version: 13',
      'Sec-WebSocket-Protocol: seqgate.v1',
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
      '',
      '',
    ].join('\r\n'),
  );
  let head = Buffer.alloc(0);
  await new Promise<void>((resolveHead, reject) => {
    const onData = (d: Buffer): void => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) return;
      socket.off('data', onData);
      socket.pause();
      // What followed the response (a close frame, sent at once) is the next reader's.
      if (head.length > end + 4) socket.unshift(head.subarray(end + 4));
      const status = head.subarray(0, end).toString('latin1');
      if (status.startsWith('HTTP/1.1 101')) resolveHead();
      else reject(new Error(status.split('\r\n')[0]));
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error('closed during the upgrade')));
  });
  return socket;
}

function frame(payload: Buffer, opcode = 2, fin = true): Buffer {
  const len = payload.length;
  const header = len < 126 ? Buffer.alloc(2) : len <= 0xffff ? Buffer.alloc(4) : Buffer.alloc(10);
  header[0] = (fin ? 0x80 : 0) | opcode;
  if (len < 126) header[1] = 0x80 | len;
  else if (len <= 0xffff) {
    header[1] = 0x80 | 126;
    header.writeUInt16BE(len, 2);
  } else {
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([header, Buffer.alloc(4), payload]);
}

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

const sockets: Socket[] = [];
const track = (s: Socket): Socket => {
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

const ATTACKS: Attack[] = [
  {
    name: 'pings-unauthenticated',
    finding: 2,
    what: 'one client without a token sends pings with 1000-byte nonces and never reads',
    args: ['--tokens', TOKENS],
    async run(url, stop) {
      const s = track(await rawOpen(url));
      s.pause();
      const ping = frame(packr.pack({ type: 'ping', nonce: 'n'.repeat(1000) }));
      const sent = await flood(s, ping, stop);
      return `${sent} pings written; connection ${s.destroyed ? 'dropped' : 'still open'}`;
    },
  },
  {
    name: 'pings-authenticated',
    finding: 2,
    what: 'one client with a token sends pings with 1000-byte nonces and never reads',
    args: ['--tokens', TOKENS],
    async run(url, stop) {
      const s = track(await rawOpen(url, { authorization: `Bearer ${TOKEN}` }));
      s.pause();
      const ping = frame(packr.pack({ type: 'ping', nonce: 'n'.repeat(1000) }));
      const sent = await flood(s, ping, stop);
      return `${sent} pings written; connection ${s.destroyed ? 'dropped' : 'still open'}`;
    },
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
        const s = track(await rawOpen(url));
        connections++;
        s.resume();
        frames += await flood(s, put, stop, 8 * MiB);
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
      const s = track(await rawOpen(url, { authorization: `Bearer ${TOKEN}` }));
      s.resume();
      const sent = await flood(s, frame(manyKeysPut()), stop, 8 * MiB);
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
      const held = await Promise.all(Array.from({ length: 50 }, () => rawOpen(url)));
      held.forEach(track);
      await sleep(500);
      let admitted = 0;
      let refused = 0;
      while (!stop()) {
        const s = await rawOpen(url, { authorization: `Bearer ${TOKEN}` }).catch(() => undefined);
        if (s === undefined) {
          refused++;
          await sleep(200);
          continue;
        }
        track(s);
        let closeCode: number | undefined;
        s.on('data', (d: Buffer) => {
          if (d[0] === 0x88 && d.length >= 4) closeCode = d.readUInt16BE(2);
        });
        s.resume();
        await sleep(300);
        if (closeCode === 1013 || s.destroyed) refused++;
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
        const batch = await Promise.all(Array.from({ length: 50 }, () => rawOpen(url).catch(() => undefined)));
        for (const s of batch) {
          if (s === undefined) continue;
          track(s);
          opened++;
          s.write(first);
          s.write(more);
          s.write(more);
        }
        await sleep(100);
      }
      while (!stop()) await sleep(100);
      return `${opened} connections opened, ${sockets.filter((s) => !s.destroyed).length} still open at the end`;
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
  const control = new Control(`${server.url}/?token=${TOKEN}`);
  try {
    await control.next();
    await control.measure(2000); // warm-up
    const base = await control.measure(5000);
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
    const during = await control.measure(SECONDS * 1000);
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
