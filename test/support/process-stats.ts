import { readFileSync } from 'node:fs';

/**
 * What Linux's /proc says about a child process, for tests that bound a server's memory and CPU.
 * (The benchmark reads the same files in bench/lib/proc.ts, with peak RSS and the real clock tick.)
 */

/** Resident memory of a process (VmRSS), in bytes. */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** CPU time (user + system) a process has used, in ms; clock ticks are 100 Hz on Linux. */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** Samples a process's RSS every 25 ms; `peak` is the highest seen. */
export function rssSampler(pid: number): { peak: () => number; stop: () => void } {
  let peak = rssBytes(pid);
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, rssBytes(pid));
    } catch {
      // the process is gone; the test notices that elsewhere
    }
  }, 25);
  return { peak: () => peak, stop: () => clearInterval(timer) };
}
