/** The benchmark matrix: which cells run, in which order, with which knobs. */

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
}

export interface PlanOptions {
  readonly quick: boolean;
  /** Include the PostgreSQL arms. */
  readonly postgres?: boolean;
  readonly backlog: number;
  readonly idleConnections: number;
}

function sizeLabel(bytes: number): string {
  return bytes % 1024 === 0 ? `${bytes / 1024}KiB` : `${bytes}B`;
}

export function closedCell(arm: Arm, connections: number, window: number, stateBytes: number, dupShare: number, putsPerFrame: number, sweep = false): Cell {
  return {
    id: `${arm}-closed-c${connections}-w${window}-${sizeLabel(stateBytes)}-dup${Math.round(dupShare * 100)}-ppf${putsPerFrame}`,
    arm, mode: 'closed', connections, window, stateBytes, dupShare, putsPerFrame, sweep,
  };
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
    arm, mode: 'open', connections: 100, window: OPEN_CAP, stateBytes: 200, dupShare: 0, putsPerFrame: 1,
    rateOfPeak: 0.5, alignPruning: arm === 'b', ...(backlog ? { backlog } : {}),
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
    id: `b-idle-c${connections}`, arm: 'b', mode: 'idle', connections, window: 0, stateBytes: 200, dupShare: 0, putsPerFrame: 1,
  };
}

/** Closed-loop cells first: the open-loop rate is derived from (b)'s measured peak. */
export function plan(o: PlanOptions): Cell[] {
  const arms: Arm[] = ['a', 'b', 'c'];
  const cells: Cell[] = [];
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
  for (const connections of [1, 100]) {
    for (const arm of arms) cells.push(closedCell(arm, connections, 1, 200, 0, 1));
  }
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
