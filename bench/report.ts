import { Histogram, type HistogramJson } from './lib/histogram.js';
import type { MachineInfo } from './lib/proc.js';
import {
  ARM_LABEL,
  cellTag,
  DEVICE_OPEN,
  DEVICE_OPEN_TARGET_RATE,
  DEVICE_SHAPES,
  deviceClosedId,
  deviceOpenId,
  headlineId,
  NOCAP,
  openBacklogId,
  openBaselineId,
  type Arm,
  type Cell,
} from './lib/cells.js';
import type { MicroRow } from './micro/common.js';

/** RESULTS.md and throughput.svg from one run's measurements. */

export interface PruneEvent {
  /** When a pruning pass ended (pino `time`), ms since the Unix epoch. */
  readonly time: number;
  readonly pruned: number;
}

export interface CellResult {
  readonly cell: Cell;
  readonly skipped?: string;
  readonly failure?: string;
  readonly note?: string;
  readonly rate?: number | undefined;
  readonly connected?: number;
  readonly connectFailures?: number;
  readonly connectMs?: number;
  readonly ackedPerSec?: number;
  readonly freshPerSec?: number;
  readonly sentPerSec?: number;
  readonly dupsPerSec?: number;
  readonly latency?: HistogramJson;
  readonly sendLag?: HistogramJson;
  readonly serverCpuCores?: number;
  readonly serverCpuUsPerPut?: number;
  /** Bytes the server process wrote to storage (/proc/<pid>/io write_bytes) in the window, per acked put. */
  readonly serverWriteBytesPerPut?: number;
  readonly genCpuCores?: number;
  readonly serverRss?: number;
  readonly serverPeakRss?: number;
  readonly errors?: number;
  readonly errorKinds?: Readonly<Record<string, number>>;
  readonly unanswered?: number;
  readonly capped?: number;
  readonly windowStart?: number;
  readonly windowEnd?: number;
  readonly pruneIntervalMs?: number | undefined;
  readonly serverReadyAt?: number;
  readonly pruneEvents?: readonly PruneEvent[];
  readonly backlogLeft?: number;
  /** 1-minute load average of the machine when the measurement window began. */
  readonly loadAvg?: number;
}

export interface RunReport {
  readonly quick: boolean;
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly command: string;
  readonly npmCommand?: string;
  readonly machine: MachineInfo;
  readonly settings: Readonly<Record<string, unknown>> & {
    readonly backlog: number;
    readonly idleConnections: number;
    readonly peakB?: number | undefined;
    readonly peakCell?: string | undefined;
  };
  readonly cells: readonly CellResult[];
  readonly micro: readonly MicroRow[];
  /** os.loadavg() when the run started and ended. */
  readonly loadAvg?: { readonly start: readonly number[]; readonly end: readonly number[] };
}

const int = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? '–' : Math.round(n).toLocaleString('en-US'));
const fixed = (n: number | undefined, digits = 2): string => (n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(digits));
const ms = (us: number): string => (Number.isFinite(us) ? (us / 1000).toFixed(2) : '–');
const mib = (bytes: number | undefined): string => (bytes === undefined || !Number.isFinite(bytes) ? '–' : (bytes / 2 ** 20).toFixed(0));

function pct(r: CellResult, p: number): number {
  return r.latency ? Histogram.from(r.latency).percentile(p) : NaN;
}

function stateLabel(bytes: number): string {
  return bytes % 1024 === 0 ? `${bytes / 1024} KiB` : `${bytes} B`;
}

function measuredOk(r: CellResult | undefined): r is CellResult & { ackedPerSec: number } {
  return r !== undefined && !r.skipped && !r.failure && r.ackedPerSec !== undefined;
}

/** An open-loop run whose acked rate stays below this share of its target fell behind. */
const KEPT_UP = 0.97;

type Verdict = 'PASS' | 'MISS' | 'NOT MEASURED' | 'NOT JUDGED' | 'INVALID';

interface Check {
  readonly target: string;
  readonly measured: string;
  readonly verdict: Verdict;
  readonly note?: string;
}

function errorNote(...cells: CellResult[]): string | undefined {
  const bad = cells.filter((c) => (c.errors ?? 0) > 0);
  if (bad.length === 0) return undefined;
  return bad
    .map(
      (c) =>
        `${c.cell.id}: ${c.errors} errors (${Object.entries(c.errorKinds ?? {})
          .map(([k, v]) => `${k} ×${v}`)
          .join(', ')})`,
    )
    .join('; ');
}

function verdictOf(pass: boolean, ...cells: CellResult[]): Verdict {
  if (cells.some((c) => (c.errors ?? 0) > 0)) return 'INVALID';
  return pass ? 'PASS' : 'MISS';
}

interface PruneWindow {
  readonly text: string;
  readonly overlapMs: number;
}

/** When the first pruning pass ran, relative to the measurement window. */
function pruneWindow(r: CellResult): PruneWindow | undefined {
  if (r.windowStart === undefined || r.windowEnd === undefined || r.serverReadyAt === undefined || r.pruneIntervalMs === undefined) return undefined;
  const start = r.serverReadyAt + r.pruneIntervalMs;
  const first = r.pruneEvents?.[0];
  const end = first?.time ?? r.windowEnd;
  const overlapMs = Math.max(0, Math.min(end, r.windowEnd) - Math.max(start, r.windowStart));
  const rel = (t: number): string => `${((t - r.windowStart!) / 1000).toFixed(1)} s`;
  if (!r.cell.backlog) return { text: `first pass from window ${rel(start)}, with no expired acks to prune`, overlapMs };
  const text =
    first === undefined
      ? `first pass from window ${rel(start)}, no pass finished before shutdown`
      : first.time >= r.windowEnd
        ? `first pass from window ${rel(start)}, still running when the window ended (stopped at shutdown, ${rel(first.time)}, after ${int(first.pruned)} acks)`
        : `first pass from window ${rel(start)} to ${rel(first.time)}, ${int(first.pruned)} acks pruned`;
  return { text, overlapMs };
}

// ---------------------------------------------------------------------------------------------
// The device-shape group (issue 13): interleaved rounds, ratios taken within a round.

function median(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((p, q) => p - q);
  if (v.length === 0) return NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

function range(xs: readonly number[], fmt: (n: number) => string): string {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length < 2) return '';
  return ` (rounds: ${v.map(fmt).join(', ')})`;
}

interface DeviceView {
  readonly rounds: number[];
  /** `b` variants other than the default, in plan order; `nocap` last. */
  readonly tags: string[];
  readonly byId: Map<string, CellResult>;
}

function deviceView(report: RunReport): DeviceView | undefined {
  const device = report.cells.filter((r) => r.cell.round !== undefined);
  if (device.length === 0) return undefined;
  const rounds = [...new Set(device.map((r) => r.cell.round!))].sort((p, q) => p - q);
  const tags: string[] = [];
  for (const r of device) {
    if (r.cell.arm === 'b' && r.cell.variant !== undefined && !tags.includes(r.cell.variant)) tags.push(r.cell.variant);
  }
  tags.sort((p, q) => (p === NOCAP.name ? 1 : 0) - (q === NOCAP.name ? 1 : 0));
  return { rounds, tags, byId: new Map(device.map((r) => [r.cell.id, r])) };
}

/** Per round, a/b ratio of acked puts/s of two cells; NaN where either is missing. */
function roundRatios(v: DeviceView, num: (round: number) => string, den: (round: number) => string): number[] {
  return v.rounds.map((round) => {
    const n = v.byId.get(num(round));
    const d = v.byId.get(den(round));
    return measuredOk(n) && measuredOk(d) && d.ackedPerSec > 0 ? n.ackedPerSec / d.ackedPerSec : NaN;
  });
}

function deviceChecks(report: RunReport): Check[] {
  const v = deviceView(report);
  if (v === undefined) return [];
  const out: Check[] = [];
  const bad = (ids: string[]): CellResult[] => ids.map((id) => v.byId.get(id)).filter((r): r is CellResult => r !== undefined);
  const ratioCheck = (target: string, threshold: number, connections: number, window: number, den: 'a' | 'nocap'): void => {
    const numId = (round: number): string => deviceClosedId('b', connections, window, round);
    const denId = (round: number): string =>
      den === 'a' ? deviceClosedId('a', connections, window, round) : deviceClosedId('b', connections, window, round, NOCAP);
    const ratios = roundRatios(v, numId, denId);
    const m = median(ratios);
    const involved = bad(v.rounds.flatMap((round) => [numId(round), denId(round)]));
    const bs = v.rounds.map((round) => v.byId.get(numId(round))?.ackedPerSec ?? NaN);
    const ds = v.rounds.map((round) => v.byId.get(denId(round))?.ackedPerSec ?? NaN);
    if (!Number.isFinite(m)) {
      out.push({ target, measured: '–', verdict: 'NOT MEASURED' });
      return;
    }
    out.push({
      target,
      measured:
        `${fixed(m)} median of ${ratios.filter(Number.isFinite).length} round(s)${range(ratios, (x) => fixed(x))}; ` +
        `${int(median(bs))} / ${int(median(ds))} acked puts/s (medians)`,
      verdict: verdictOf(m >= threshold, ...involved),
      ...(errorNote(...involved) ? { note: errorNote(...involved) } : {}),
    });
  };
  ratioCheck('device shape: (b)/(a) ≥ 0.5 at 1,000 connections × window 1, steady state', 0.5, 1000, 1, 'a');
  ratioCheck('device shape: (b)/(a) ≥ 0.75 at 100 connections × window 64, steady state', 0.75, 100, 64, 'a');
  ratioCheck('ack cap costs ≤ 10 %: (b)/(b without cap) ≥ 0.9 at 1,000 × 1', 0.9, 1000, 1, 'nocap');

  const openTarget =
    DEVICE_OPEN.rate === DEVICE_OPEN_TARGET_RATE
      ? `device shape: open-loop p99 ≤ 10 ms at ${int(DEVICE_OPEN.rate)} puts/s with ${int(DEVICE_OPEN.connections)} connections`
      : `device shape: open-loop p99 at ${int(DEVICE_OPEN.rate)} puts/s with ${int(DEVICE_OPEN.connections)} connections (the target, ≤ 10 ms, is at ${int(DEVICE_OPEN_TARGET_RATE)})`;
  const opens = v.rounds.map((round) => v.byId.get(deviceOpenId('b', round))).filter(measuredOk);
  if (opens.length > 0) {
    const p99s = opens.map((r) => pct(r, 99));
    const m = median(p99s);
    const served = median(opens.map((r) => r.ackedPerSec / (r.rate ?? NaN)));
    const echo = v.rounds
      .map((round) => v.byId.get(deviceOpenId('a', round)))
      .filter(measuredOk)
      .map((r) => pct(r, 99));
    out.push({
      target: openTarget,
      measured: `p99 ${ms(m)} ms median of ${opens.length} round(s)${range(p99s, (x) => ms(x))}`,
      // The target is set at its own rate; another rate (--device-open-rate) is for reading, not judging.
      verdict: DEVICE_OPEN.rate === DEVICE_OPEN_TARGET_RATE ? verdictOf(m <= 10_000 && served >= KEPT_UP, ...opens) : 'NOT JUDGED',
      note: [
        `acked ${fixed(served * 100, 1)} % of the target rate`,
        echo.length ? `(a) at the same schedule: p99 ${ms(median(echo))} ms` : undefined,
        errorNote(...opens),
      ]
        .filter(Boolean)
        .join('; '),
    });
  } else out.push({ target: openTarget, measured: '–', verdict: 'NOT MEASURED' });
  return out;
}

function deviceSection(report: RunReport): string[] {
  const v = deviceView(report);
  if (v === undefined) return [];
  const lines: string[] = [];
  const variants = report.settings.variants as ReadonlyArray<{ name: string; args: readonly string[]; env?: Record<string, string> }> | undefined;
  lines.push('## Device shape: one update in flight per device, streams at steady state', '');
  lines.push(
    `Each load stream holds more acks than the cap (1000 + 0..63) before the server starts, so eviction is active from the first put. ` +
      `Arms alternate within a round, ${v.rounds.length} round(s); ratios are taken within a round and the median is reported. ` +
      `\`b.nocap\` is (b) with \`${NOCAP.args.join(' ')}\` (same seed, nothing evicted).` +
      (variants && variants.length
        ? ` Other (b) variants: ${variants.map((x) => `\`b.${x.name}\` = \`${[...Object.entries(x.env ?? {}).map(([k, val]) => `${k}=${val}`), ...x.args].join(' ')}\``).join(', ')}.`
        : ''),
    '',
  );
  const tags = v.tags;
  const cols = ['a', 'b', ...tags.map((t) => `b.${t}`)];
  for (const { connections, window } of DEVICE_SHAPES) {
    const any = v.rounds.some(
      (round) => v.byId.has(deviceClosedId('a', connections, window, round)) || v.byId.has(deviceClosedId('b', connections, window, round)),
    );
    if (!any) continue;
    lines.push(
      `### ${int(connections)} connections × window ${window}, closed loop (acked puts/s; p99 ms; server CPU µs per put; KiB written to storage per put)`,
      '',
    );
    const ratioCols = ['b/a', ...tags.map((t) => `b.${t}/b`)];
    lines.push(`| round | ${cols.join(' | ')} | c | ${ratioCols.join(' | ')} | load avg (1 min) |`);
    lines.push('|' + '---|'.repeat(cols.length + ratioCols.length + 3));
    const ratioSeries: number[][] = ratioCols.map(() => []);
    const rateSeries: number[][] = cols.map(() => []);
    for (const round of v.rounds) {
      const cell = (tag: string): CellResult | undefined => {
        const [arm, variant] = tag.split('.') as [Arm, string | undefined];
        return v.byId.get(deviceClosedId(arm, connections, window, round, variant));
      };
      const b = cell('b');
      const a = cell('a');
      const c = v.byId.get(deviceClosedId('c', connections, window, round));
      const show = (r: CellResult | undefined): string =>
        measuredOk(r)
          ? `${int(r.ackedPerSec)}; ${ms(pct(r, 99))}; ${fixed(r.serverCpuUsPerPut, 0)}; ${fixed((r.serverWriteBytesPerPut ?? NaN) / 1024, 1)}` +
            `${(r.errors ?? 0) > 0 ? ` **${int(r.errors)} errors**` : ''}`
          : r?.failure
            ? 'FAILED'
            : '–';
      cols.forEach((tag, i) => rateSeries[i]!.push(cell(tag)?.ackedPerSec ?? NaN));
      const ratios = [
        measuredOk(a) && measuredOk(b) ? b.ackedPerSec / a.ackedPerSec : NaN,
        ...tags.map((t) => {
          const x = cell(`b.${t}`);
          return measuredOk(x) && measuredOk(b) ? x.ackedPerSec / b.ackedPerSec : NaN;
        }),
      ];
      ratios.forEach((x, i) => ratioSeries[i]!.push(x));
      const loads = [a, b, c, ...tags.map((t) => cell(`b.${t}`))].map((r) => r?.loadAvg ?? NaN).filter(Number.isFinite);
      lines.push(
        `| ${round} | ${cols.map((t) => show(cell(t))).join(' | ')} | ${show(c)} | ${ratios.map((x) => fixed(x)).join(' | ')} ` +
          `| ${loads.length ? `${fixed(Math.min(...loads), 1)}–${fixed(Math.max(...loads), 1)}` : '–'} |`,
      );
    }
    lines.push(
      `| **median** | ${rateSeries.map((xs) => int(median(xs))).join(' | ')} | | ${ratioSeries.map((xs) => `**${fixed(median(xs))}**`).join(' | ')} | |`,
    );
    lines.push('');
  }
  const anyOpen = v.rounds.some((round) => v.byId.has(deviceOpenId('b', round)));
  if (anyOpen) {
    lines.push(
      `### Open loop, ${int(DEVICE_OPEN.rate)} puts/s from ${int(DEVICE_OPEN.connections)} connections (latency from the scheduled send: p50 / p99 / p99.9 ms; server CPU cores; KiB written per put)`,
      '',
    );
    lines.push(`| round | ${cols.join(' | ')} | load avg (1 min) |`);
    lines.push('|' + '---|'.repeat(cols.length + 2));
    const p99s: number[][] = cols.map(() => []);
    for (const round of v.rounds) {
      const cells = cols.map((tag) => {
        const [arm, variant] = tag.split('.') as [Arm, string | undefined];
        return v.byId.get(deviceOpenId(arm, round, variant));
      });
      cells.forEach((r, i) => p99s[i]!.push(measuredOk(r) ? pct(r, 99) : NaN));
      const show = (r: CellResult | undefined): string =>
        measuredOk(r)
          ? `${ms(pct(r, 50))} / ${ms(pct(r, 99))} / ${ms(pct(r, 99.9))}; ${fixed(r.serverCpuCores)}; ${fixed((r.serverWriteBytesPerPut ?? NaN) / 1024, 1)}${r.rate && r.ackedPerSec < KEPT_UP * r.rate ? ` (behind: ${int(r.ackedPerSec)}/s)` : ''}` +
            `${(r.errors ?? 0) > 0 ? ` **${int(r.errors)} errors**` : ''}`
          : r?.failure
            ? 'FAILED'
            : '–';
      const loads = cells.map((r) => r?.loadAvg ?? NaN).filter(Number.isFinite);
      lines.push(`| ${round} | ${cells.map(show).join(' | ')} | ${loads.length ? `${fixed(Math.min(...loads), 1)}–${fixed(Math.max(...loads), 1)}` : '–'} |`);
    }
    lines.push(`| **median p99** | ${p99s.map((xs) => `**${ms(median(xs))}**`).join(' | ')} | |`);
    lines.push('');
  }
  return lines;
}

export function checks(report: RunReport): Check[] {
  const byId = new Map(report.cells.map((c) => [c.cell.id, c]));
  const out: Check[] = [...deviceChecks(report)];
  if (report.settings.deviceOnly === true) return out;
  const a = byId.get(headlineId('a'));
  const b = byId.get(headlineId('b'));
  const c = byId.get(headlineId('c'));
  const point = '100 connections, window 64, 200 B states, closed loop';

  if (measuredOk(a) && measuredOk(b)) {
    const ratio = b.ackedPerSec / a.ackedPerSec;
    out.push({
      target: `(b)/(a) ≥ 0.5 (${point})`,
      measured: `${fixed(ratio)} (${int(b.ackedPerSec)} / ${int(a.ackedPerSec)} acked puts/s)`,
      verdict: verdictOf(ratio >= 0.5, a, b),
      ...(errorNote(a, b) ? { note: errorNote(a, b) } : {}),
    });
  } else out.push({ target: `(b)/(a) ≥ 0.5 (${point})`, measured: '–', verdict: 'NOT MEASURED' });

  if (measuredOk(b) && measuredOk(c)) {
    const ratio = b.ackedPerSec / c.ackedPerSec;
    out.push({
      target: `(b)/(c) ≥ 10 (${point})`,
      measured: `${fixed(ratio, 1)} (${int(b.ackedPerSec)} / ${int(c.ackedPerSec)} acked puts/s)`,
      verdict: verdictOf(ratio >= 10, b, c),
      ...(errorNote(b, c) ? { note: errorNote(b, c) } : {}),
    });
  } else out.push({ target: `(b)/(c) ≥ 10 (${point})`, measured: '–', verdict: 'NOT MEASURED' });

  const open = byId.get(openBaselineId());
  if (measuredOk(open)) {
    const p99 = pct(open, 99);
    const lagHist = open.sendLag ? Histogram.from(open.sendLag) : undefined;
    const lag = lagHist ? `p50 ${ms(lagHist.percentile(50))} ms, p99 ${ms(lagHist.percentile(99))} ms` : '–';
    const kept = open.rate ? open.sentPerSec! / open.rate : NaN;
    const served = open.rate ? open.ackedPerSec / open.rate : NaN;
    out.push({
      target: "p99 ack latency ≤ 5 ms at half of (b)'s peak, open loop",
      measured: `p99 ${ms(p99)} ms at ${int(open.rate)} puts/s target (${int(open.ackedPerSec)} acked/s; peak ${int(report.settings.peakB)})`,
      verdict: verdictOf(p99 <= 5000, open),
      note: [
        `generator send lag ${lag} (part of the latency)`,
        `sent on schedule: ${fixed(kept * 100, 1)} %`,
        `acked ${fixed(served * 100, 1)} % of the target rate${served < KEPT_UP ? ': the server fell behind the schedule' : ''}`,
        errorNote(open),
      ]
        .filter(Boolean)
        .join('; '),
    });
  } else
    out.push({
      target: "p99 ack latency ≤ 5 ms at half of (b)'s peak, open loop",
      measured: '–',
      verdict: 'NOT MEASURED',
      ...(open?.skipped ? { note: open.skipped } : {}),
    });

  const backlogCell = byId.get(openBacklogId(report.settings.backlog));
  const backlogLabel = report.settings.backlog >= 1e6 ? `${report.settings.backlog / 1e6} M` : int(report.settings.backlog);
  const pruneTarget = `pruning ${backlogLabel} expired acks during that load: p99 ≤ 2× the same load without backlog`;
  if (measuredOk(open) && measuredOk(backlogCell)) {
    const base = pct(open, 99);
    const withBacklog = pct(backlogCell, 99);
    const pw = pruneWindow(backlogCell);
    const overlapping = pw !== undefined && pw.overlapMs > 0;
    const baseKeptUp = open.rate !== undefined && open.ackedPerSec >= KEPT_UP * open.rate;
    const streams = Math.ceil(report.settings.backlog / 500);
    const prunable = report.settings.backlog - streams;
    const prunedTotal = backlogCell.backlogLeft === undefined ? undefined : report.settings.backlog - backlogCell.backlogLeft;
    out.push({
      target: pruneTarget,
      measured: `p99 ${ms(withBacklog)} ms vs ${ms(base)} ms (${fixed(withBacklog / base)}×)`,
      verdict: overlapping && baseKeptUp ? verdictOf(withBacklog <= 2 * base, open, backlogCell) : 'INVALID',
      note: [
        pw ? `${pw.text}; overlap with the window ${fixed(pw.overlapMs / 1000, 1)} s` : 'pruning timing unknown',
        prunedTotal === undefined ? undefined : `${int(prunedTotal)} of ${int(prunable)} prunable acks gone by shutdown`,
        report.settings.backlog < 1e6 ? 'smaller backlog than the target (quick run)' : undefined,
        overlapping ? undefined : 'pruning did not overlap the measurement window',
        baseKeptUp ? undefined : 'the run without backlog did not keep up with its schedule, so there is no sound baseline',
        baseKeptUp && base > 5000 ? 'the baseline itself misses the 5 ms target' : undefined,
        errorNote(open, backlogCell),
      ]
        .filter(Boolean)
        .join('; '),
    });
  } else out.push({ target: pruneTarget, measured: '–', verdict: 'NOT MEASURED', ...(backlogCell?.skipped ? { note: backlogCell.skipped } : {}) });

  const idle = report.cells.find((r) => r.cell.mode === 'idle');
  const idleTarget = '10,000 idle connections held under 500 MB server RSS';
  if (idle && !idle.skipped && !idle.failure && idle.serverPeakRss !== undefined) {
    const peakMB = idle.serverPeakRss / 1e6;
    const full = idle.connected === 10_000;
    out.push({
      target: idleTarget,
      measured: `${int(idle.connected)} connections: peak RSS ${fixed(peakMB, 0)} MB (now ${fixed(idle.serverRss! / 1e6, 0)} MB)`,
      verdict: peakMB < 500 && full ? 'PASS' : full ? 'MISS' : 'NOT MEASURED',
      ...(full
        ? {}
        : {
            note:
              idle.cell.connections < 10_000
                ? `run with ${int(idle.cell.connections)} connections, not 10,000 (quick run or --idle-connections)`
                : `only ${int(idle.connected)} of ${int(idle.cell.connections)} connections opened${idle.note ? `: ${idle.note}` : ''}`,
          }),
    });
  } else
    out.push({ target: idleTarget, measured: '–', verdict: 'NOT MEASURED', ...(idle?.skipped || idle?.failure ? { note: idle.skipped ?? idle.failure } : {}) });

  const dup = byId.get(headlineId('b', 0.1));
  if (measuredOk(b) && measuredOk(dup)) {
    const ratio = dup.ackedPerSec / b.ackedPerSec;
    out.push({
      target: '10 % duplicate retries cost ≤ 10 % throughput ((b), acked puts/s incl. replays)',
      measured: `${fixed(ratio * 100, 1)} % of the 0 % rate (${int(dup.ackedPerSec)} vs ${int(b.ackedPerSec)}; fresh ${int(dup.freshPerSec)}/s)`,
      verdict: verdictOf(ratio >= 0.9, b, dup),
      ...(errorNote(b, dup) ? { note: errorNote(b, dup) } : {}),
    });
  } else out.push({ target: '10 % duplicate retries cost ≤ 10 % throughput', measured: '–', verdict: 'NOT MEASURED' });

  const p = byId.get(headlineId('p'));
  const pgTarget = `(p) one server on PostgreSQL ≥ 10,000 acked puts/s (${point})`;
  if (measuredOk(p)) {
    out.push({
      target: pgTarget,
      measured: `${int(p.ackedPerSec)} acked puts/s${measuredOk(b) ? ` (${fixed(p.ackedPerSec / b.ackedPerSec)} × (b) on SQLite)` : ''}`,
      verdict: verdictOf(p.ackedPerSec >= 10_000, p),
      ...(errorNote(p) ? { note: errorNote(p) } : {}),
    });
  } else if (p !== undefined)
    out.push({ target: pgTarget, measured: '–', verdict: 'NOT MEASURED', ...(p.skipped || p.failure ? { note: p.skipped ?? p.failure } : {}) });
  return out;
}

function cellRow(r: CellResult): string {
  const c = r.cell;
  const knobs = [
    `\`${c.id}\``,
    cellTag(c),
    c.mode,
    int(c.connections),
    c.mode === 'idle' ? '–' : c.mode === 'open' ? `cap ${c.window}` : String(c.window),
    stateLabel(c.stateBytes),
    `${Math.round(c.dupShare * 100)} %`,
    String(c.putsPerFrame),
    r.rate === undefined ? '–' : int(r.rate),
  ];
  if (r.skipped || r.failure)
    return `| ${knobs.join(' | ')} | ${r.skipped ? 'skipped' : 'FAILED'}: ${(r.skipped ?? r.failure ?? '').replace(/\n/g, ' ').replace(/\|/g, '/').slice(0, 300)} ||||||||||||||`;
  if (c.mode === 'idle') {
    return `| ${knobs.join(' | ')} | – | – | – | – | – | – | – | – | – | ${mib(r.serverRss)} | ${mib(r.serverPeakRss)} | ${int(r.connectFailures)} failed connects | – | – |`;
  }
  const h = Histogram.from(r.latency!);
  const errs =
    (r.errors ?? 0) === 0
      ? '0'
      : `**${int(r.errors)}**: ${Object.entries(r.errorKinds ?? {})
          .map(([k, v]) => `${k} ×${v}`)
          .join(', ')}`;
  return (
    `| ${knobs.join(' | ')} | ${int(r.ackedPerSec)} | ${int(r.freshPerSec)} | ${ms(h.percentile(50))} | ${ms(h.percentile(99))} | ${ms(h.percentile(99.9))} | ${ms(h.max)} ` +
    `| ${fixed(r.serverCpuCores)} | ${fixed(r.serverCpuUsPerPut, 1)} | ${fixed(r.genCpuCores)} | ${mib(r.serverRss)} | ${mib(r.serverPeakRss)} | ${errs} | ${int(r.unanswered)} | ${fixed(r.loadAvg, 1)} |`
  );
}

export function renderResults(report: RunReport): string {
  const m = report.machine;
  const s = report.settings;
  const lines: string[] = [];
  lines.push('# seqgate benchmark results', '');
  if (report.quick) {
    lines.push(
      '> **QUICK SMOKE RUN (`--quick`)**: a reduced matrix with short windows, a smaller pruning backlog and fewer idle',
      '> connections, possibly on a machine busy with other work. It proves the harness runs; its figures do not judge the targets.',
      '> Run `npm run bench` on a quiet machine for the real table.',
      '',
    );
  }
  lines.push('Generated by `bench/run.ts`; regenerate with `npm run build && npx tsc -p bench/tsconfig.json && node dist/bench/run.js` (`npm run bench`).', '');
  lines.push('## Run', '');
  lines.push(`- Command: \`${report.command}\`${report.npmCommand ? ` (via \`${report.npmCommand}\`)` : ''}`);
  lines.push(`- Date: ${report.startedAt} to ${report.finishedAt}`);
  lines.push(`- Machine: nproc ${m.nproc}, CPU ${m.cpuModel}, memory ${m.memoryGiB.toFixed(1)} GiB, ${m.kernel}, open-file limit ${m.openFiles}`);
  lines.push(`- Node ${m.node}; database files on ${m.fsType}`);
  lines.push(
    `- Windows: warmup ${s.warmupMs} ms, measurement ${s.measureMs} ms (open loop ${s.openMeasureMs} ms), drain ≤ ${s.drainMs} ms; ` +
      `${s.generators} load-generator process(es) per cell, sharing the cores with the server`,
  );
  lines.push(
    `- (b)'s peak closed-loop rate in this run: ${int(s.peakB)} acked puts/s${s.peakCell ? ` (\`${String(s.peakCell)}\`)` : ''}; ` +
      `open-loop cells run at half of it, with 100 connections${s.openRate ? ` (overridden: ${int(s.openRate as number)} puts/s)` : ''}`,
  );
  if (s.only) lines.push(`- Only cells matching \`${String(s.only)}\``);
  if (report.loadAvg) {
    const la = (xs: readonly number[]): string => xs.map((x) => x.toFixed(2)).join(', ');
    lines.push(
      `- Load average (1, 5, 15 min) at start: ${la(report.loadAvg.start)}; at end: ${la(report.loadAvg.end)}. Above 2 on this machine means other work ` +
        'shared the cores with the run: absolute figures are then low and noisy, the ratios within a round are what to read.',
    );
  }
  lines.push('');
  lines.push(...deviceSection(report));

  lines.push('## Target checks', '', '| target | measured | result | notes |', '|---|---|---|---|');
  for (const c of checks(report)) lines.push(`| ${c.target} | ${c.measured} | **${c.verdict}** | ${c.note ?? ''} |`);
  lines.push('');

  lines.push('## Throughput against connections', '', '![acked puts/s against connections](throughput.svg)', '');

  const pgCells = report.cells.filter((r) => r.cell.arm === 'p' || r.cell.arm === 'p2');
  if (pgCells.length > 0) {
    lines.push(
      '## PostgreSQL (--store postgres)',
      '',
      'Same workload, generator and seed as (b): each stream starts at the ack cap, so every put also evicts. The database is the',
      "machine's PostgreSQL on loopback (default settings, synchronous_commit on), a fresh database per cell. Server CPU counts the",
      'seqgate processes only; PostgreSQL shares the same two cores.',
      '',
      '| cell | servers | acked puts/s | p50 ms | p99 ms | seqgate CPU (cores) | (b) on SQLite, same point |',
      '|---|---|---|---|---|---|---|',
    );
    const byId = new Map(report.cells.map((c) => [c.cell.id, c]));
    for (const r of pgCells) {
      const twin = byId.get(r.cell.id.replace(/^p2?-/, 'b-'));
      if (!measuredOk(r)) {
        lines.push(`| \`${r.cell.id}\` | ${r.cell.arm === 'p2' ? 2 : 1} | ${r.skipped ?? r.failure ?? '–'} | | | | |`);
        continue;
      }
      const h = Histogram.from(r.latency!);
      lines.push(
        `| \`${r.cell.id}\` | ${r.cell.arm === 'p2' ? 2 : 1} | ${int(r.ackedPerSec)} | ${ms(h.percentile(50))} | ${ms(h.percentile(99))} | ${fixed(r.serverCpuCores)} | ${measuredOk(twin) ? int(twin.ackedPerSec) : '–'} |`,
      );
    }
    lines.push('');
  }

  lines.push('## Every cell', '');
  lines.push('Arms: ' + (Object.keys(ARM_LABEL) as Arm[]).map((a) => `${a} = ${ARM_LABEL[a]}`).join('; ') + '.', '');
  lines.push(
    '| cell | arm | mode | conns | window | state | dup | puts/frame | target puts/s | acked puts/s | fresh puts/s | p50 ms | p99 ms | p99.9 ms | max ms ' +
      '| server CPU (cores) | server CPU µs/put | generator CPU (cores) | server RSS MiB | server peak RSS MiB | errors | unanswered at end | load avg |',
  );
  lines.push('|' + '---|'.repeat(23));
  for (const r of report.cells) lines.push(cellRow(r));
  lines.push('');

  const backlog = report.cells.filter((r) => r.cell.alignPruning && r.pruneEvents);
  if (backlog.length > 0) {
    lines.push('### Pruning during the open-loop cells', '');
    for (const r of backlog) {
      const pw = pruneWindow(r);
      lines.push(
        `- \`${r.cell.id}\`: ${pw?.text ?? 'no timing'}; passes logged: ${r.pruneEvents!.length}` +
          `${r.backlogLeft !== undefined ? `; expired acks left at shutdown: ${int(r.backlogLeft)}` : ''}`,
      );
    }
    lines.push('');
  }

  if (report.micro.length > 0) {
    lines.push(
      '## Micro-benchmarks (tinybench)',
      '',
      '| suite | task | mean µs | p50 µs | p99 µs | ops/s | rate | samples |',
      '|---|---|---|---|---|---|---|---|',
    );
    for (const r of report.micro) {
      lines.push(
        `| ${r.suite} | ${r.task} | ${fixed(r.meanUs)} | ${fixed(r.p50Us)} | ${fixed(r.p99Us)} | ${int(r.opsPerSec)} | ${int(r.opsPerSec * r.unitsPerOp)} ${r.unit}/s | ${int(r.samples)} |`,
      );
    }
    lines.push('');
  }

  lines.push(
    '## Method',
    '',
    '- Every cell starts its own server process on a fresh copy of a prepared database and its own load-generator process(es); all traffic is loopback. ' +
      "The generator and the server share the machine's cores, as the targets require.",
    '- Each connection owns one stream (`load-<n>`), learns its head with a hello, then sends puts with consecutive seqs over 16 keys per stream. ' +
      'States are realistic documents whose canonical msgpack is exactly the stated size. Put frames are assembled from pre-encoded pieces, identically for every arm.',
    '- **Steady state** for (b) and (c): before the server starts, every load stream is given more recent acks than the default ack cap of 1000 ' +
      '(stream i: 1000 + i mod 64), so eviction is active from the first put, and a server that evicts in chunks finds its streams spread over every phase ' +
      'of the chunk cycle, as after a long run. Seeding rows directly (instead of a small `--ack-cap-per-stream` and puts through the server) keeps ' +
      'the default cap, so the steady state measured is the one users run, at no cost in run time. The pruner runs with its defaults (10 s interval, 1 day retention).',
    '- **closed loop**: each connection keeps `window` frames in flight and sends the next as soon as one is fully answered; latency counts from the send. ' +
      '**open loop**: frames leave on a fixed schedule (rate split evenly over connections, phases staggered, 1 ms timer) whatever the answers do, ' +
      'with an in-flight cap of 1024 frames per connection; latency counts from the *scheduled* send time, so a stall of the server or of the generator ' +
      'shows up as latency (no coordinated omission). Scheduled frames that never left count as errors.',
    '- **acked puts/s**: results with a stored outcome (applied or version_conflict, fresh or replay) received inside the measurement window, per second. ' +
      '**fresh** excludes replays. With a duplicate share, that share of puts re-sends a put the same connection already saw acked (same bytes, same id); ' +
      '(b) and (c) must answer it `replay: true` or it counts as an error.',
    '- **Latency** percentiles come from a log-linear histogram (≤ 0.8 % bucket width above 256 µs; figures are bucket upper bounds), merged across generator processes.',
    '- **Server CPU**: utime + stime of the server process from /proc/<pid>/stat over the measurement window. **Peak RSS**: VmHWM from /proc/<pid>/status at the end of the cell. ' +
      '**Generator CPU**: process.cpuUsage() inside the generator over the window (near 1.0 means the single generator process was the bottleneck).',
    `- **Pruning scenario**: ${int(s.backlog)} acks committed two days ago are written into the database across ${int(Math.ceil(s.backlog / 500))} other streams (500 each) ` +
      'before the server starts; both open-loop (b) cells run with `--prune-interval-ms` chosen so the first pass begins as the measurement window begins, ' +
      'and with debug logging so the end of each pass is recorded.',
    "- **Idle connections**: the generator opens the connections (64 at a time), each sends a hello, then all stay silent; the server's VmRSS and VmHWM are read after a settling pause.",
    '- Micro-benchmarks run first, each in a process of its own; the store suite writes to a temporary file in the work directory with synchronous=FULL.',
    '',
  );
  return lines.join('\n');
}

const COLORS: Record<Arm, string> = { a: '#7f7f7f', b: '#1f77b4', c: '#d62728', p: '#2ca02c', p2: '#9467bd' };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function shortRate(n: number): string {
  if (n >= 1e6) return `${n / 1e6}M`;
  if (n >= 1e3) return `${n / 1e3}k`;
  return String(n);
}

function pointLabel(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toPrecision(3)}M`;
  if (n >= 1e3) return `${(n / 1e3).toPrecision(3)}k`;
  return n.toPrecision(3);
}

export function renderSvg(report: RunReport): string {
  const W = 760;
  const H = 440;
  const L = 80;
  const R = 250;
  const T = 60;
  const B = 60;
  const pw = W - L - R;
  const ph = H - T - B;
  const series = new Map<Arm, Array<{ x: number; y: number }>>();
  for (const r of report.cells) {
    if (!r.cell.sweep || !measuredOk(r) || r.ackedPerSec <= 0) continue;
    const list = series.get(r.cell.arm) ?? [];
    list.push({ x: r.cell.connections, y: r.ackedPerSec });
    series.set(r.cell.arm, list);
  }
  const xs = [...new Set([...series.values()].flat().map((p) => p.x))].sort((a, b) => a - b);
  const ys = [...series.values()].flat().map((p) => p.y);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${L}" y="24" font-size="15" font-weight="bold">Acked puts/s against connections</text>`);
  out.push(
    `<text x="${L}" y="42" fill="#444">closed loop, window 64, 200 B states, no duplicates, 1 put per frame${report.quick ? ' — QUICK SMOKE RUN' : ''}</text>`,
  );
  if (xs.length === 0 || ys.length === 0) {
    out.push(`<text x="${L}" y="${T + ph / 2}">no sweep cells measured</text></svg>`);
    return out.join('\n') + '\n';
  }
  const xMin = Math.log10(xs[0]!);
  const xMax = Math.log10(xs[xs.length - 1]!);
  const inset = 40;
  const xPos = (x: number): number => (xMax === xMin ? L + pw / 2 : L + inset + ((Math.log10(x) - xMin) / (xMax - xMin)) * (pw - 2 * inset));
  let yLo = Math.floor(Math.log10(Math.min(...ys)));
  let yHi = Math.ceil(Math.log10(Math.max(...ys)));
  if (yHi === yLo) {
    yHi += 1;
    yLo -= 0;
  }
  const yPos = (y: number): number => T + ph - ((Math.log10(y) - yLo) / (yHi - yLo)) * ph;

  out.push(`<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  for (let e = yLo; e <= yHi; e++) {
    const y = yPos(10 ** e);
    out.push(`<line x1="${L}" y1="${y.toFixed(1)}" x2="${L + pw}" y2="${y.toFixed(1)}" stroke="#ddd"/>`);
    out.push(`<text x="${L - 8}" y="${(y + 4).toFixed(1)}" text-anchor="end">${shortRate(10 ** e)}</text>`);
    if (e < yHi) {
      for (const k of [2, 5]) {
        const yk = yPos(k * 10 ** e);
        out.push(`<line x1="${L}" y1="${yk.toFixed(1)}" x2="${L + pw}" y2="${yk.toFixed(1)}" stroke="#f0f0f0"/>`);
      }
    }
  }
  for (const x of xs) {
    const px = xPos(x);
    out.push(`<line x1="${px.toFixed(1)}" y1="${T}" x2="${px.toFixed(1)}" y2="${T + ph}" stroke="#eee"/>`);
    out.push(`<text x="${px.toFixed(1)}" y="${T + ph + 18}" text-anchor="middle">${x}</text>`);
  }
  out.push(`<text x="${L + pw / 2}" y="${H - 14}" text-anchor="middle">connections (log scale)</text>`);
  out.push(`<text transform="translate(18 ${T + ph / 2}) rotate(-90)" text-anchor="middle">acked puts/s (log scale)</text>`);

  let legendY = T + 10;
  for (const arm of ['a', 'b', 'c'] as const) {
    const pts = (series.get(arm) ?? []).sort((p, q) => p.x - q.x);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${xPos(p.x).toFixed(1)},${yPos(p.y).toFixed(1)}`).join(' ');
    out.push(`<path d="${d}" fill="none" stroke="${COLORS[arm]}" stroke-width="2.5"${arm === 'a' ? ' stroke-dasharray="6 4"' : ''}/>`);
    for (const p of pts) {
      out.push(
        `<circle cx="${xPos(p.x).toFixed(1)}" cy="${yPos(p.y).toFixed(1)}" r="4" fill="${COLORS[arm]}"><title>${esc(`${ARM_LABEL[arm]}: ${p.x} connections, ${Math.round(p.y)} acked puts/s`)}</title></circle>`,
      );
      out.push(`<text x="${(xPos(p.x) + 6).toFixed(1)}" y="${(yPos(p.y) - 7).toFixed(1)}" fill="${COLORS[arm]}" font-size="10">${pointLabel(p.y)}</text>`);
    }
    out.push(
      `<line x1="${L + pw + 16}" y1="${legendY}" x2="${L + pw + 44}" y2="${legendY}" stroke="${COLORS[arm]}" stroke-width="2.5"${arm === 'a' ? ' stroke-dasharray="6 4"' : ''}/>`,
    );
    const [head, tail] = ARM_LABEL[arm].split(': ');
    out.push(`<text x="${L + pw + 50}" y="${legendY + 4}">${esc(head ?? '')}</text>`);
    if (tail) out.push(`<text x="${L + pw + 50}" y="${legendY + 18}" fill="#555" font-size="11">${esc(tail)}</text>`);
    legendY += 44;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
