/**
 * Measures what stalled HTTP request bodies cost the server (issue 9, finding 5): N clients each
 * send a PUT whose Content-Length promises B bytes, send all but the last byte and then wait.
 * Reports server RSS (baseline, peak, at the end), how the stalled requests ended and when, and a
 * control client's latency (WebSocket put round trip, GET /healthz) before and during the attack.
 *
 * With --before-cli the same run also measures another build (for instance the commit before the
 * fix, built into another folder) as the baseline arm, so both arms share machine and load.
 *
 *   npm run soak:http-stall -- [--bodies 300] [--body-bytes 1048576] [--hold-seconds 20]
 *     [--before-cli /path/to/old/dist/src/cli.js --before-label 'before (c165e78)']
 *     [--report docs/RELIABILITY.md | --no-report]
 *
 * An old build for --before-cli: `git archive <commit> | tar -x -C /tmp/old`, link node_modules
 * there, `npx tsc -p tsconfig.build.json`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { Packr, Unpackr } from 'msgpackr';
import { withSection } from './report-sections.js';

const { values } = parseArgs({
  options: {
    bodies: { type: 'string', default: '300' },
    'body-bytes': { type: 'string', default: String(1024 * 1024) },
    'hold-seconds': { type: 'string', default: '20' },
    'before-cli': { type: 'string' },
    'before-label': { type: 'string', default: 'before (previous build)' },
    report: { type: 'string' },
    'no-report': { type: 'boolean' },
  },
});

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
}

const ROOT = repoRoot();
const AFTER_CLI = join(ROOT, 'dist', 'src', 'cli.js');
const BODIES = Number(values.bodies);
const BODY_BYTES = Number(values['body-bytes']);
const HOLD_MS = Number(values['hold-seconds']) * 1000;
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false });

interface Server {
  readonly child: ChildProcess;
  readonly port: number;
  readonly dir: string;
}

async function startServer(cli: string): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-http-stall-'));
  const child = spawn(process.execPath, [cli, '--port', '0', '--db-path', join(dir, 'db'), '--log-format', 'json', '--log-level', 'info'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SEQGATE_'))),
  });
  let out = '';
  child.stderr!.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const port = await new Promise<number>((resolvePort, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /"url":"ws:\/\/[^"]*:(\d+)"/.exec(out);
      if (m) resolvePort(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`server exited (${code}) before listening:\n${out}`)));
  });
  child.stdout!.resume();
  return { child, port, dir };
}

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

interface Latencies {
  put: number[];
  healthz: number[];
  failures: number;
}

/** Sequential WebSocket puts and GET /healthz, each timed, until `stop()` is called. */
function controlClient(port: number): { stop: () => Promise<Latencies> } {
  const lat: Latencies = { put: [], healthz: [], failures: 0 };
  let running = true;
  const ws = new WebSocket(`ws://127.0.0.1:${port}`, 'seqgate.v1');
  const answers = new Map<number, () => void>();
  ws.on('message', (data: Buffer) => {
    const m = unpackr.unpack(data) as { type: string; results?: Array<{ id: number }> };
    if (m.type === 'results') for (const r of m.results!) answers.get(r.id)?.();
  });
  ws.on('error', () => undefined);
  const putLoop = (async () => {
    await new Promise((r) => ws.once('open', r));
    for (let seq = 1; running; seq++) {
      const started = performance.now();
      const answered = new Promise<boolean>((r) => {
        answers.set(seq, () => r(true));
        setTimeout(() => r(false), 30_000);
      });
      ws.send(packr.pack({ type: 'put', puts: [{ id: seq, stream: 'control', epoch: 1, seq, key: 'control', state: { seq } }] }));
      if (await answered) lat.put.push(performance.now() - started);
      else lat.failures++;
      answers.delete(seq);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const httpLoop = (async () => {
    while (running) {
      const started = performance.now();
      const get = async (): Promise<number> => {
        const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(30_000) });
        await res.arrayBuffer();
        return res.status;
      };
      // A pooled keep-alive connection the server closed meanwhile fails at once: one retry.
      const status = await get()
        .catch(() => get())
        .catch(() => 0);
      if (status === 200) lat.healthz.push(performance.now() - started);
      else lat.failures++;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await Promise.all([putLoop, httpLoop]);
      ws.terminate();
      return lat;
    },
  };
}

interface Attacker {
  socket: Socket;
  answer: string;
  closedAtMs: number | undefined;
}

function attack(port: number, started: number): Promise<Attacker> {
  return new Promise((resolveAttacker) => {
    const socket = connect(port, '127.0.0.1');
    const a: Attacker = { socket, answer: '', closedAtMs: undefined };
    socket.on('data', (d: Buffer) => {
      if (a.answer.length < 200) a.answer += d.toString('latin1');
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      a.closedAtMs = performance.now() - started;
    });
    socket.once('connect', () => {
      socket.write(`PUT /v1/docs/stall HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${BODY_BYTES}\r\n\r\n`);
      socket.write(Buffer.alloc(BODY_BYTES - 1, 0x20), () => resolveAttacker(a));
    });
    socket.once('error', () => resolveAttacker(a));
  });
}

interface ArmResult {
  readonly label: string;
  readonly rssBaseline: number;
  readonly rssPeak: number;
  readonly rssEnd: number;
  readonly quiet: Latencies;
  readonly loaded: Latencies;
  readonly outcomes: Record<string, number>;
  /** Attack sockets still open at each sample time (seconds after the attack started). */
  readonly openAt: Array<[number, number]>;
  readonly medianClosedS: number;
}

async function arm(label: string, cli: string): Promise<ArmResult> {
  const server = await startServer(cli);
  try {
    await new Promise((r) => setTimeout(r, 1000));
    const rssBaseline = rss(server.child.pid!);
    const quietClient = controlClient(server.port);
    await new Promise((r) => setTimeout(r, 4000));
    const quiet = await quietClient.stop();

    const started = performance.now();
    const loadedClient = controlClient(server.port);
    let rssPeak = rssBaseline;
    const sampler = setInterval(() => {
      rssPeak = Math.max(rssPeak, rss(server.child.pid!));
    }, 100);
    const attackers = await Promise.all(Array.from({ length: BODIES }, () => attack(server.port, started)));
    const openAt: Array<[number, number]> = [];
    for (let s = 5; s * 1000 <= HOLD_MS; s += 5) {
      await new Promise((r) => setTimeout(r, Math.max(0, started + s * 1000 - performance.now())));
      openAt.push([s, attackers.filter((a) => a.closedAtMs === undefined).length]);
    }
    const loaded = await loadedClient.stop();
    clearInterval(sampler);
    const rssEnd = rss(server.child.pid!);
    const outcomes: Record<string, number> = {};
    for (const a of attackers) {
      const status = /^HTTP\/1\.1 (\d{3})/.exec(a.answer)?.[1];
      const code = /"code":"([A-Z_]+)"/.exec(a.answer)?.[1];
      const key = status === undefined ? (a.closedAtMs === undefined ? 'still open' : 'closed without answer') : `${status}${code ? ` ${code}` : ''}`;
      outcomes[key] = (outcomes[key] ?? 0) + 1;
    }
    const closed = attackers.map((a) => a.closedAtMs).filter((t): t is number => t !== undefined);
    for (const a of attackers) a.socket.destroy();
    return { label, rssBaseline, rssPeak, rssEnd, quiet, loaded, outcomes, openAt, medianClosedS: quantile(closed, 0.5) / 1000 };
  } finally {
    server.child.kill('SIGKILL');
    rmSync(server.dir, { recursive: true, force: true });
  }
}

const MiB = (n: number): string => `${(n / 2 ** 20).toFixed(0)} MiB`;
const ms = (n: number): string => (Number.isNaN(n) ? '—' : `${n.toFixed(1)} ms`);

function render(arms: readonly ArmResult[], command: string): string {
  const head = `| | ${arms.map((a) => a.label).join(' | ')} |\n|---|${arms.map(() => '---|').join('')}`;
  const row = (name: string, f: (a: ArmResult) => string): string => `| ${name} | ${arms.map(f).join(' | ')} |`;
  const lines = [
    '## Issue 9: stalled HTTP request bodies (finding 5, HTTP part)',
    '',
    `${BODIES} clients each send \`PUT /v1/docs/stall\` with \`Content-Length: ${BODY_BYTES}\`, send all but the last byte, and wait. ` +
      'A control client meanwhile runs sequential WebSocket puts on one connection and `GET /healthz` requests (keep-alive), each 20 ms after the previous answer. ' +
      `Measured for ${HOLD_MS / 1000} s after the attack starts, against the real server process with default options.`,
    '',
    head,
    row('server RSS idle → peak → end', (a) => `${MiB(a.rssBaseline)} → ${MiB(a.rssPeak)} → ${MiB(a.rssEnd)}`),
    row('stalled requests ended as', (a) =>
      Object.entries(a.outcomes)
        .map(([k, n]) => `${n} × ${k}`)
        .join(', '),
    ),
    row('stalled connections still open', (a) => a.openAt.map(([s, n]) => `${n} at ${s} s`).join(', ')),
    row('median time to close a stalled request', (a) =>
      Number.isNaN(a.medianClosedS) ? `not within ${HOLD_MS / 1000} s` : `${a.medianClosedS.toFixed(1)} s`,
    ),
    row('control WebSocket put p50 / p99, quiet', (a) => `${ms(quantile(a.quiet.put, 0.5))} / ${ms(quantile(a.quiet.put, 0.99))}`),
    row('control WebSocket put p50 / p99, under attack', (a) => `${ms(quantile(a.loaded.put, 0.5))} / ${ms(quantile(a.loaded.put, 0.99))}`),
    row('control GET /healthz p50 / p99, quiet', (a) => `${ms(quantile(a.quiet.healthz, 0.5))} / ${ms(quantile(a.quiet.healthz, 0.99))}`),
    row('control GET /healthz p50 / p99, under attack', (a) => `${ms(quantile(a.loaded.healthz, 0.5))} / ${ms(quantile(a.loaded.healthz, 0.99))}`),
    row('control requests unanswered or failed', (a) => String(a.quiet.failures + a.loaded.failures)),
    '',
    `Machine: ${cpus().length} × ${cpus()[0]?.model.trim() ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(1)} GiB, node ${process.version}, ` +
      `load ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')} at the end: the machine was shared with other builds and tests, so the ` +
      'control latencies are dominated by that load (see the quiet rows) and differ from run to run; RSS and the stalled-request outcomes do not. ' +
      `Measured ${new Date().toISOString()}. Command: \`${command}\`.`,
    '',
    'Why it changed: request bodies now count against the server-wide memory budget as their bytes arrive and may hold at most half of it ' +
      '(`--max-in-flight-bytes`, 256 MiB: 128 MiB for bodies; past it `503 SERVER_BUSY`), a body idle for `--http-body-idle-timeout-ms` (10 s) ' +
      'is answered `408 REQUEST_TIMEOUT` and its connection closed, and headers and whole requests have their own timeouts (10 s, 60 s, checked every second ' +
      "instead of Node's 300 s checked every 30 s). Regression tests: `test/http-limits.test.ts`.",
  ];
  return lines.join('\n');
}

async function main(): Promise<void> {
  if (!existsSync(AFTER_CLI)) throw new Error(`${AFTER_CLI} is missing: run npm run build`);
  const arms: ArmResult[] = [];
  if (values['before-cli'] !== undefined) arms.push(await arm(values['before-label']!, resolve(values['before-cli'])));
  arms.push(await arm('after (this build)', AFTER_CLI));
  const args = process.argv.slice(2).map((a) => (/^[\w./:=-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`));
  const command = `npm run soak:http-stall -- ${args.join(' ')}`.trim();
  const text = render(arms, command);
  process.stdout.write(`${text}\n`);
  process.stdout.write(`${JSON.stringify(arms.map((a) => ({ ...a, quiet: undefined, loaded: undefined })))}\n`);
  if (values['no-report'] !== true) {
    const path = resolve(ROOT, values.report ?? join('docs', 'RELIABILITY.md'));
    const previous = existsSync(path) ? readFileSync(path, 'utf8') : '';
    writeFileSync(path, withSection(previous, 'issue-9-http', text));
    process.stdout.write(`section issue-9-http written to ${path}\n`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
