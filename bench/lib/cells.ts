/** The benchmark matrix: which cells run, in which order, with which knobs. */

import { CHANGEFEED_OFF } from '../arms/changefeed-off.js';

export type Arm = 'a' | 'b' | 'c' | 'p' | 'p2';

export const ARM_LABEL: Record<Arm, string> = {
  a: '(a) echo: ws + codec, no storage',
  b: '(b) seqgate: synchronous=FULL, pruning on',
  c: '(c) naive: one transaction per put',
  p: '(p) seqgate --store postgres: one server on the local PostgreSQL',
  p2: '(p2) seqgate --store postgres: two servers on one PostgreSQL, connections split between them',
};

/** Arms that run on PostgreSQL (left out with --skip-postgres). */
export const POSTGRES_ARMS: readonly Arm[] = ['p', 'p2'];

export type Mode = 'closed' | 'open' | 'idle';

export interface Cell {
  readonly id: string;
  readonly arm: Arm;
  readonly mode: Mode;
  readonly connections: number;
  /** closed: frames in flight per connection; open: in-flight cap per connection. */
  readonly window: number;
  readonly stateBytes: number;
  readonly dupShare: number;
  readonly putsPerFrame: number;
  /** open mode: target puts/s, as a multiple of (b)'s peak closed-loop rate. */
  readonly rateOfPeak?: number;
  /** Expired acks written into the database before the server starts. */
  readonly backlog?: number;
  /** Align the first pruning pass with the start of the measurement window. */
  readonly alignPruning?: boolean;
  /** Part of the throughput-vs-connections sweep drawn in the chart. */
  readonly sweep?: boolean;
  /** open mode: a fixed target in puts/s instead of a share of (b)'s peak. */
  readonly fixedRate?: number;
  /**
   * A named server configuration of arm (b) (e.g. `nocap`, or a lever switched off), measured
   * beside the default one. Part of the id: `b.nocap-closed-...`.
   */
  readonly variant?: string;
  /** Extra server flags of this cell (the variant's). */
  readonly serverArgs?: readonly string[];
  /** Extra environment of this cell's server (the variant's). */
  readonly serverEnv?: Readonly<Record<string, string>>;
  /** The device-shape group (issue 13): cells repeated in interleaved rounds; 1-based. */
  readonly round?: number;
}

/** A named set of extra server flags for arm (b), measured interleaved with the default. */
export interface Variant {
  readonly name: string;
  readonly args: readonly string[];
  /** Environment variables for the server process (`NAME=value` words in the spec). */
  readonly env?: Readonly<Record<string, string>>;
}

/**
 * The ack cap switched off: the same seeded streams, a cap no stream reaches in a run. What the
 * cap costs is (b) against this, in the same round.
 */
export const NOCAP: Variant = { name: 'nocap', args: ['--ack-cap-per-stream', '1000000000'] };

/** Parses `name=--flag value --flag2 value;name2=...` (the runner's --variants). */
export function parseVariants(spec: string | undefined): Variant[] {
  if (spec === undefined || spec.trim() === '') return [];
  return spec.split(';').map((part) => {
    const eq = part.indexOf('=');
    const name = (eq === -1 ? part : part.slice(0, eq)).trim();
    if (!/^[a-z0-9][a-z0-9_]*$/i.test(name)) throw new Error(`variant name must be alphanumeric: "${name}"`);
    const words =
      eq === -1
        ? []
        : part
            .slice(eq + 1)
            .trim()
            .split(/\s+/)
            .filter(Boolean);
    const env: Record<string, string> = {};
    const args: string[] = [];
    for (const w of words) {
      const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(w);
      if (m) env[m[1]!] = m[2]!;
      else args.push(w);
    }
    return { name, args, ...(Object.keys(env).length ? { env } : {}) };
  });
}

export interface PlanOptions {
  readonly quick: boolean;
  /** Include the PostgreSQL arms. */
  readonly postgres?: boolean;
  readonly backlog: number;
  readonly idleConnections: number;
  /** Interleaved rounds of the device-shape group. */
  readonly rounds: number;
  /** Variants of (b) measured in every round beside (b) and (b) without the cap. */
  readonly variants: readonly Variant[];
  /** Run only the device-shape group. */
  readonly deviceOnly?: boolean;
}

function sizeLabel(bytes: number): string {
  return bytes % 1024 === 0 ? `${bytes / 1024}KiB` : `${bytes}B`;
}

export function closedCell(arm: Arm, connections: number, window: number, stateBytes: number, dupShare: number, putsPerFrame: number, sweep = false): Cell {
  return {
    id: `${arm}-closed-c${connections}-w${window}-${sizeLabel(stateBytes)}-dup${Math.round(dupShare * 100)}-ppf${putsPerFrame}`,
    arm,
    mode: 'closed',
    connections,
    window,
    stateBytes,
    dupShare,
    putsPerFrame,
    sweep,
  };
}

/** The device shapes, all at steady state (every stream past the ack cap before the window). */
export const DEVICE_SHAPES = [
  { connections: 1000, window: 1 },
  { connections: 100, window: 1 },
  { connections: 100, window: 64 },
] as const;

/** The rate of issue 13's open-loop target, puts/s. */
export const DEVICE_OPEN_TARGET_RATE = 10_000;
/**
 * The device-shape open-loop cell. Its rate is the target's unless `--device-open-rate` sets
 * another before the plan is made (to see where the p99 stands below saturation); the report then
 * judges no target for it.
 */
export const DEVICE_OPEN: { readonly connections: number; rate: number } = { connections: 1000, rate: DEVICE_OPEN_TARGET_RATE };

export function deviceClosedId(arm: Arm, connections: number, window: number, round: number, variant?: Variant | string): string {
  const tag = variant === undefined ? arm : `${arm}.${typeof variant === 'string' ? variant : variant.name}`;
  return `${tag}-closed-c${connections}-w${window}-200B-steady-r${round}`;
}

export function deviceOpenId(arm: Arm, round: number, variant?: Variant | string): string {
  const tag = variant === undefined ? arm : `${arm}.${typeof variant === 'string' ? variant : variant.name}`;
  return `${tag}-open-c${DEVICE_OPEN.connections}-r${DEVICE_OPEN.rate / 1000}k-200B-steady-r${round}`;
}

function deviceClosed(arm: Arm, connections: number, window: number, round: number, variant?: Variant): Cell {
  return {
    id: deviceClosedId(arm, connections, window, round, variant),
    arm,
    mode: 'closed',
    connections,
    window,
    stateBytes: 200,
    dupShare: 0,
    putsPerFrame: 1,
    round,
    ...(variant ? { variant: variant.name, serverArgs: variant.args, ...(variant.env ? { serverEnv: variant.env } : {}) } : {}),
  };
}

function deviceOpen(arm: Arm, round: number, variant?: Variant): Cell {
  return {
    id: deviceOpenId(arm, round, variant),
    arm,
    mode: 'open',
    connections: DEVICE_OPEN.connections,
    window: OPEN_CAP,
    stateBytes: 200,
    dupShare: 0,
    putsPerFrame: 1,
    fixedRate: DEVICE_OPEN.rate,
    round,
    ...(variant ? { variant: variant.name, serverArgs: variant.args, ...(variant.env ? { serverEnv: variant.env } : {}) } : {}),
  };
}

/**
 * The device-shape group of issue 13: one update in flight per device, streams past the cap.
 * Arms alternate within each round ((a), (b), its variants, (b) without the cap), so a load
 * change on the shared machine hits all of them alike; ratios are taken within a round. The naive
 * arm (c) runs in the first round only (it is a floor, not a ratio anyone tracks).
 */
export function devicePlan(o: PlanOptions): Cell[] {
  const cells: Cell[] = [];
  const bArms: Array<Variant | undefined> = [undefined, ...o.variants, CHANGEFEED_OFF, NOCAP];
  const shapes = o.quick ? DEVICE_SHAPES.slice(0, 1) : DEVICE_SHAPES;
  for (let round = 1; round <= o.rounds; round++) {
    for (const { connections, window } of shapes) {
      cells.push(deviceClosed('a', connections, window, round));
      for (const v of bArms) cells.push(deviceClosed('b', connections, window, round, v));
      if (round === 1 && !o.quick) cells.push(deviceClosed('c', connections, window, round));
    }
    cells.push(deviceOpen('a', round));
    for (const v of bArms) cells.push(deviceOpen('b', round, v));
  }
  return cells;
}

/** `a`, `b`, `b.nocap`, ...: the arm and variant of a cell, as used in ids and tables. */
export function cellTag(cell: Cell): string {
  return cell.variant === undefined ? cell.arm : `${cell.arm}.${cell.variant}`;
}

/** The point every ratio target is read at. */
export const HEADLINE = { connections: 100, window: 64, stateBytes: 200, dupShare: 0, putsPerFrame: 1 } as const;

export function headlineId(arm: Arm, dupShare = 0): string {
  return closedCell(arm, HEADLINE.connections, HEADLINE.window, HEADLINE.stateBytes, dupShare, HEADLINE.putsPerFrame).id;
}

export const OPEN_CAP = 1024;

function openCell(arm: Arm, backlog: number | undefined): Cell {
  const suffix = backlog ? `-backlog${backlog >= 1e6 ? `${backlog / 1e6}M` : `${backlog / 1e3}k`}` : '';
  return {
    id: `${arm}-open-c100-half-peak-200B${suffix}`,
    arm,
    mode: 'open',
    connections: 100,
    window: OPEN_CAP,
    stateBytes: 200,
    dupShare: 0,
    putsPerFrame: 1,
    rateOfPeak: 0.5,
    alignPruning: arm === 'b',
    ...(backlog ? { backlog } : {}),
  };
}

export function openBaselineId(): string {
  return openCell('b', undefined).id;
}

export function openBacklogId(backlog: number): string {
  return openCell('b', backlog).id;
}

export function idleCell(connections: number): Cell {
  return {
    id: `b-idle-c${connections}`,
    arm: 'b',
    mode: 'idle',
    connections,
    window: 0,
    stateBytes: 200,
    dupShare: 0,
    putsPerFrame: 1,
  };
}

/** Closed-loop cells first: the open-loop rate is derived from (b)'s measured peak. */
export function plan(o: PlanOptions): Cell[] {
  const arms: Arm[] = ['a', 'b', 'c'];
  const cells: Cell[] = devicePlan(o);
  if (o.deviceOnly) return cells;
  if (o.quick) {
    for (const arm of arms) cells.push(closedCell(arm, 100, 64, 200, 0, 1, true));
    cells.push(closedCell('b', 10, 64, 200, 0, 1, true));
    if (o.postgres) for (const arm of POSTGRES_ARMS) cells.push(closedCell(arm, 100, 64, 200, 0, 1));
    cells.push(closedCell('b', 100, 64, 200, 0.1, 1));
    cells.push(openCell('b', undefined));
    cells.push(openCell('b', o.backlog));
    cells.push(idleCell(o.idleConnections));
    return cells;
  }
  for (const connections of [1, 10, 100, 1000]) {
    for (const arm of arms) cells.push(closedCell(arm, connections, 64, 200, 0, 1, true));
  }
  // 100 x 1 is in the device-shape group above.
  for (const arm of arms) cells.push(closedCell(arm, 1, 1, 200, 0, 1));
  for (const arm of arms) cells.push(closedCell(arm, 100, 64, 4096, 0, 1));
  for (const arm of ['b', 'c'] as const) cells.push(closedCell(arm, 100, 64, 200, 0.1, 1));
  // Same puts in flight as the headline point (6400), packed 64 to a frame instead of 1.
  for (const arm of arms) cells.push(closedCell(arm, 100, 1, 200, 0, 64));
  // The PostgreSQL arms at the headline point and the one-put-in-flight device shapes.
  if (o.postgres) {
    for (const arm of POSTGRES_ARMS) {
      cells.push(closedCell(arm, 100, 64, 200, 0, 1));
      cells.push(closedCell(arm, 100, 1, 200, 0, 1));
      cells.push(closedCell(arm, 1000, 1, 200, 0, 1));
    }
  }
  cells.push(openCell('b', undefined));
  cells.push(openCell('a', undefined));
  cells.push(openCell('b', o.backlog));
  cells.push(idleCell(o.idleConnections));
  return cells;
}
