import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * The well-behaved client that an attack is measured against (test/exhaustion.test.ts and
 * `npm run attack`): one put at a time to its own stream `control` (document `control-doc`), each
 * round trip reported. It runs in a process of its own so that the attackers' work in the
 * measuring process cannot delay it: what it sees is the server's delay alone. Commands go to its
 * stdin and answers come back as JSON lines on its stdout.
 */

const SCRIPT = `
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
  const [samples, pauseMs, forMs, putTimeoutMs] = line.split(' ').map(Number);
  const latencies = [];
  let bad = 0;
  const until = performance.now() + forMs;
  for (let i = 0; i < samples && performance.now() < until; i++) {
    seq++;
    const started = performance.now();
    let timer;
    const answered = new Promise((resolve) => {
      waiting = resolve;
      ws.send(packr.pack({ type: 'put', puts: [{ id: seq, stream: 'control', epoch: 1, seq, key: 'control-doc', state: { seq } }] }));
    });
    const timedOut = putTimeoutMs > 0 ? new Promise((resolve) => { timer = setTimeout(() => resolve(undefined), putTimeoutMs); }) : new Promise(() => undefined);
    const r = await Promise.race([answered, timedOut]);
    clearTimeout(timer);
    latencies.push(r === undefined ? putTimeoutMs : performance.now() - started);
    if (r === undefined || r.outcome !== 'applied' || r.replay !== false || r.ack.seq !== seq) bad++;
    await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
  out({ latencies, bad, seq });
}
`;

/** One measurement window: it ends after `samples` puts or `forMs`, whichever comes first. */
export interface ControlWindow {
  /** How many puts at most. Default: no limit (then give `forMs`). */
  readonly samples?: number;
  /** How long at most, in ms. Default: no limit (then give `samples`). */
  readonly forMs?: number;
  /** Pause between an answer and the next put, in ms. Default 2. */
  readonly pauseMs?: number;
  /** A put unanswered this long (ms) counts as that long and as bad; 0 (the default) waits forever. */
  readonly putTimeoutMs?: number;
}

export interface ControlReport {
  /** Each put's round trip, in ms, in the order sent. */
  readonly latencies: number[];
  /** Puts not answered `applied`, not a replay, at their own seq (or not answered in time). */
  readonly bad: number;
  /** The control stream's last seq written. */
  readonly seq: number;
}

export class ControlClient {
  private buffer = '';
  private readonly lines: Array<Record<string, unknown>> = [];
  private waiters: Array<() => void> = [];

  private constructor(private readonly proc: ChildProcess) {
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(this.buffer.slice(0, nl)) as Record<string, unknown>);
        this.buffer = this.buffer.slice(nl + 1);
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Spawns the client against `url` and resolves once its connection is open. */
  static async start(url: string, readyTimeoutMs = 15_000): Promise<ControlClient> {
    const proc = spawn(process.execPath, ['--input-type=module', '-e', SCRIPT], {
      // The script's imports (ws, msgpackr) resolve from here: the repository, or dist/ inside it.
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, CONTROL_URL: url },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const control = new ControlClient(proc);
    try {
      const first = await control.next(readyTimeoutMs);
      if (first.ready !== true) throw new Error(`the control client said ${JSON.stringify(first)} instead of ready`);
    } catch (err) {
      control.stop();
      throw err;
    }
    return control;
  }

  /** Measures one window; rejects if the report takes longer than `reportTimeoutMs`. */
  async measure(window: ControlWindow, reportTimeoutMs: number): Promise<ControlReport> {
    const { samples = Infinity, forMs = Infinity, pauseMs = 2, putTimeoutMs = 0 } = window;
    this.proc.stdin!.write(`${samples} ${pauseMs} ${forMs} ${putTimeoutMs}\n`);
    return (await this.next(reportTimeoutMs)) as unknown as ControlReport;
  }

  stop(): void {
    this.proc.kill('SIGKILL');
  }

  private async next(timeoutMs: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (Date.now() > deadline) throw new Error('the control client did not report in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const line = this.lines.shift()!;
    if ('closed' in line || 'error' in line) throw new Error(`the control client's connection ended: ${JSON.stringify(line)}`);
    return line;
  }
}
