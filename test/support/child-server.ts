import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The real seqgate server as a child process (`node dist/src/cli.js`), for tests that kill it.
 * It talks to the child only through its command line, its JSON log lines and its exit status,
 * so what these tests see is what an operator sees. `npm run build` must have produced dist/.
 */

/** The built CLI; SEQGATE_TEST_CLI points the suites at another build (e.g. a deliberately broken one). */
export const CLI_PATH = process.env.SEQGATE_TEST_CLI ?? fileURLToPath(new URL('../../dist/src/cli.js', import.meta.url));

export interface ExitInfo {
  /** Exit code, or null when a signal ended the process. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface ReadyInfo {
  readonly url: string;
  readonly port: number;
  readonly incarnation: string;
  readonly pid: number;
}

/** One process lifetime: the flags it got, everything it wrote, how it ended. */
export interface RunRecord {
  readonly args: readonly string[];
  readonly pid: number;
  stdout: string;
  stderr: string;
  exit: ExitInfo | undefined;
}

export interface ChildServerOptions {
  /** SQLite file; every start and restart uses this same file. */
  readonly dbPath: string;
  /** Flags appended after --port, --db-path and --log-format json. */
  readonly args?: readonly string[];
  /** Port of the first start; 0 (the default) lets the server pick and report it. */
  readonly port?: number;
  /** Extra environment variables for the child. */
  readonly env?: Readonly<Record<string, string>>;
  /** How long start() waits for the "seqgate listening" line. */
  readonly readyTimeoutMs?: number;
}

/** The child exited (or never got ready) where the caller expected a listening server. */
export class ChildExitError extends Error {
  constructor(
    message: string,
    readonly run: RunRecord,
  ) {
    super(`${message}\n--- stdout ---\n${tail(run.stdout)}\n--- stderr ---\n${tail(run.stderr)}`);
  }
}

/** The test runner's environment minus SEQGATE_* settings: a developer's SEQGATE_TOKENS must not change what a test runs. */
function inheritedEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) if (!name.startsWith('SEQGATE_')) env[name] = value;
  return env;
}

function tail(text: string, max = 4000): string {
  return text.length <= max ? text : '…' + text.slice(-max);
}

// A test that fails halfway must not leave servers behind holding ports and files.
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export class ChildServer {
  readonly runs: RunRecord[] = [];
  private child: ChildProcess | undefined;
  private exited: Promise<ExitInfo> | undefined;
  private ready: Promise<ReadyInfo> | undefined;
  private readyInfo: ReadyInfo | undefined;
  private lineWaiters: Array<() => void> = [];
  private nextPort: number;

  constructor(readonly options: ChildServerOptions) {
    this.nextPort = options.port ?? 0;
  }

  /** Spawns the server and resolves once it logs "seqgate listening"; rejects with ChildExitError if it exits first. */
  start(): Promise<ReadyInfo> {
    if (this.child !== undefined) throw new Error('child server is already running; kill it first');
    if (!existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: run \`npm run build\` before these tests`);
    const args = [CLI_PATH, '--port', String(this.nextPort), '--db-path', this.options.dbPath, '--log-format', 'json', ...(this.options.args ?? [])];
    const child = spawn(process.execPath, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...inheritedEnv(), ...this.options.env },
    });
    const run: RunRecord = { args: args.slice(1), pid: child.pid ?? -1, stdout: '', stderr: '', exit: undefined };
    this.runs.push(run);
    this.child = child;
    this.readyInfo = undefined;
    live.add(child);

    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      run.stdout += chunk;
      for (const w of this.lineWaiters.splice(0)) w();
    });
    child.stderr!.on('data', (chunk: string) => {
      run.stderr += chunk;
    });

    // 'close' rather than 'exit': it comes after the pipes are drained, so the output is complete.
    this.exited = new Promise<ExitInfo>((resolve) => {
      child.once('close', (code, signal) => {
        run.exit = { code, signal };
        live.delete(child);
        if (this.child === child) this.child = undefined;
        for (const w of this.lineWaiters.splice(0)) w();
        resolve(run.exit);
      });
    });
    child.once('error', (err) => {
      run.stderr += `spawn error: ${err.message}\n`;
    });

    const timeoutMs = this.options.readyTimeoutMs ?? 30_000;
    this.ready = (async () => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const line = parseLines(run.stdout).find((l) => l.msg === 'seqgate listening');
        if (line !== undefined) {
          const url = String(line.url);
          const info: ReadyInfo = { url, port: Number(new URL(url).port), incarnation: String(line.incarnation), pid: run.pid };
          this.readyInfo = info;
          this.nextPort = info.port;
          return info;
        }
        if (run.exit !== undefined) {
          throw new ChildExitError(`seqgate exited before it was ready (code ${run.exit.code}, signal ${run.exit.signal})`, run);
        }
        if (Date.now() > deadline) {
          child.kill('SIGKILL');
          throw new ChildExitError(`seqgate did not log "seqgate listening" within ${timeoutMs} ms`, run);
        }
        await this.nextOutput(deadline - Date.now());
      }
    })();
    return this.ready;
  }

  /** The pending or finished start(). */
  waitReady(): Promise<ReadyInfo> {
    if (this.ready === undefined) throw new Error('child server was never started');
    return this.ready;
  }

  /**
   * Starts again on the same database file after the previous process ended, on the same port
   * when the kernel still lets us have it (clients keep their url), else on a fresh one.
   */
  async restart(): Promise<ReadyInfo> {
    if (this.child !== undefined) throw new Error('child server is still running; kill it before restarting');
    try {
      return await this.start();
    } catch (err) {
      const last = this.runs[this.runs.length - 1]!;
      if (!(err instanceof ChildExitError) || !last.stdout.includes('EADDRINUSE') || this.nextPort === 0) throw err;
      this.nextPort = 0;
      return this.start();
    }
  }

  /** Sends a signal without waiting; see waitExit(). */
  signal(signal: NodeJS.Signals): void {
    if (this.child === undefined) throw new Error(`cannot send ${signal}: child server is not running`);
    this.child.kill(signal);
  }

  /** Resolves with how the current (or last) process ended. */
  waitExit(timeoutMs = 30_000): Promise<ExitInfo> {
    if (this.exited === undefined) throw new Error('child server was never started');
    const run = this.runs[this.runs.length - 1]!;
    return new Promise<ExitInfo>((resolve, reject) => {
      const timer = setTimeout(() => reject(new ChildExitError(`seqgate did not exit within ${timeoutMs} ms`, run)), timeoutMs);
      void this.exited!.then((exit) => {
        clearTimeout(timer);
        resolve(exit);
      });
    });
  }

  /** Signals the process and waits for it to end (SIGKILL by default). */
  async kill(signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 30_000): Promise<ExitInfo> {
    if (this.child === undefined) {
      const last = this.runs[this.runs.length - 1];
      if (last?.exit === undefined) throw new Error('child server was never started');
      return last.exit;
    }
    this.child.kill(signal);
    return this.waitExit(timeoutMs);
  }

  /** Kills whatever is still running; for afterEach/afterAll. */
  async dispose(): Promise<void> {
    if (this.child !== undefined) await this.kill('SIGKILL');
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  private requireReady(): ReadyInfo {
    if (this.readyInfo === undefined) throw new Error('child server is not ready');
    return this.readyInfo;
  }

  /** ws:// url of the last process that got ready (it stays valid across restarts unless the port changed). */
  get url(): string {
    return this.requireReady().url;
  }

  get port(): number {
    return this.requireReady().port;
  }

  get incarnation(): string {
    return this.requireReady().incarnation;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Output of the current (or last) process. */
  get stdout(): string {
    return this.runs[this.runs.length - 1]?.stdout ?? '';
  }

  get stderr(): string {
    return this.runs[this.runs.length - 1]?.stderr ?? '';
  }

  /** The JSON log lines of the current (or last) process. */
  logLines(): Array<Record<string, unknown>> {
    return parseLines(this.stdout);
  }

  /** Waits for a log line of the current process matching `predicate`; rejects if the process exits first. */
  async waitForLog(predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const run = this.runs[this.runs.length - 1];
    if (run === undefined) throw new Error('child server was never started');
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = parseLines(run.stdout).find(predicate);
      if (found !== undefined) return found;
      if (run.exit !== undefined) throw new ChildExitError('seqgate exited before logging the awaited line', run);
      if (Date.now() > deadline) throw new ChildExitError(`awaited log line did not appear within ${timeoutMs} ms`, run);
      await this.nextOutput(deadline - Date.now());
    }
  }

  private nextOutput(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, Math.max(timeoutMs, 0));
      this.lineWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Complete JSON lines of a log; a line cut short by SIGKILL, or any non-JSON text, is skipped. */
export function parseLines(text: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const value: unknown = JSON.parse(line);
      if (typeof value === 'object' && value !== null) out.push(value as Record<string, unknown>);
    } catch {
      // partial line
    }
  }
  return out;
}

export interface TempDb {
  readonly dir: string;
  readonly dbPath: string;
  remove(): void;
}

/** A fresh folder for one test's database (and its -wal and -shm files). */
export function tempDb(prefix = 'seqgate-child-'): TempDb {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, dbPath: join(dir, 'seqgate.db'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
