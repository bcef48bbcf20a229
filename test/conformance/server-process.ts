import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The real server as a child process, known only through its command line and its JSON log: the
 * conformance suite sees what an operator and a client see, nothing of the server's internals.
 */

const CLI = fileURLToPath(new URL('../../dist/src/cli.js', import.meta.url));

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export class ServerProcess {
  stdout = '';
  stderr = '';
  readonly exited: Promise<Exit>;

  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
    readonly incarnation: string,
  ) {
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
      else child.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  /** Starts `node dist/src/cli.js --port 0 --db-path <dbPath> --log-format json ...args` and waits for "seqgate listening". */
  static async start(dbPath: string, args: readonly string[] = [], timeoutMs = 30_000): Promise<ServerProcess> {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` before the conformance suite`);
    // A developer's SEQGATE_* settings must not change what the suite runs against.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SEQGATE_')) env[k] = v;
    const child = spawn(process.execPath, [CLI, '--port', '0', '--db-path', dbPath, '--log-format', 'json', '--log-level', 'info', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      stderr += d;
    });
    const ready = await new Promise<{ url: string; incarnation: string }>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`server not listening within ${timeoutMs} ms\n${stdout}\n${stderr}`));
      }, timeoutMs);
      child.stdout!.on('data', (d: string) => {
        stdout += d;
        for (const line of stdout.split('\n')) {
          if (!line.startsWith('{')) continue;
          try {
            const entry = JSON.parse(line) as { msg?: string; url?: string; incarnation?: string };
            if (entry.msg === 'seqgate listening' && entry.url !== undefined) {
              clearTimeout(timer);
              resolve({ url: entry.url, incarnation: String(entry.incarnation) });
              return;
            }
          } catch {
            // a line still being written
          }
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? signal}) before listening\n${stdout}\n${stderr}`));
      });
    });
    const server = new ServerProcess(child, ready.url, ready.incarnation);
    server.stdout = stdout;
    server.stderr = stderr;
    child.stdout!.on('data', (d: string) => {
      server.stdout += d;
    });
    child.stderr!.on('data', (d: string) => {
      server.stderr += d;
    });
    return server;
  }

  get httpUrl(): string {
    return this.url.replace(/^ws/, 'http');
  }

  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** Asks for an orderly stop and waits; SIGKILL if it takes longer than `timeoutMs`. */
  async stop(timeoutMs = 15_000): Promise<Exit> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

export interface TempDir {
  readonly dir: string;
  readonly dbPath: string;
  remove(): void;
}

export function tempDir(): TempDir {
  const dir = mkdtempSync(join(tmpdir(), 'seqgate-conformance-'));
  return { dir, dbPath: join(dir, 'seqgate.db'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
