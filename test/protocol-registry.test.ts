import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPTIONS } from '../src/config.js';
import { ERRORS, type ErrorCode } from '../src/errors.js';
import { decide, type Decision, type GateInputs, type StoredAck } from '../src/gate.js';
import { putFingerprint } from '../src/protocol/canonical.js';
import type { Limits } from '../src/protocol/messages.js';
import { DEFAULT_TENANT, type Ack, type Head, type Put, type Rejection } from '../src/store/store.js';
import { startTestServer, type TestServer } from './support/test-client.js';

/**
 * PROTOCOL.md's tables against the code: the error-code table against src/errors.ts, the gate's
 * decision table (its outcome names and its order) against src/gate.ts, the outcome tables against
 * the result types of src/store/store.ts, and the limit tables against src/config.ts. Either side
 * changing alone fails here.
 */

const spec = readFileSync(new URL('../protocol/PROTOCOL.md', import.meta.url), 'utf8');

/** The text under the heading that starts with `title`, up to the next heading of the same or a higher level. */
function section(title: string): string {
  const lines = spec.split('\n');
  const start = lines.findIndex((l) => /^#{2,4} /.test(l) && l.replace(/^#+ /, '').startsWith(title));
  if (start === -1) throw new Error(`PROTOCOL.md has no heading starting with "${title}"`);
  const level = lines[start]!.match(/^#+/)![0].length;
  const rest = lines.slice(start + 1);
  const end = rest.findIndex((l) => {
    const m = /^(#+) /.exec(l);
    return m !== null && m[1]!.length <= level;
  });
  return (end === -1 ? rest : rest.slice(0, end)).join('\n');
}

type Row = Record<string, string>;

/** The first markdown table of `text`, as rows keyed by lower-cased header. */
function table(text: string): Row[] {
  const lines = text.split('\n');
  const first = lines.findIndex((l) => l.trimStart().startsWith('|'));
  if (first === -1) throw new Error('no table found');
  // Cells split on unescaped pipes, so `a \| b` stays one cell.
  const cells = (line: string): string[] =>
    line
      .trim()
      .replace(/^\|/, '')
      .replace(/\|$/, '')
      .split(/(?<!\\)\|/)
      .map((c) => c.trim());
  const header = cells(lines[first]!).map((h) => h.replace(/`/g, '').toLowerCase());
  const rows: Row[] = [];
  for (const l of lines.slice(first + 2)) {
    if (!l.trimStart().startsWith('|')) break;
    rows.push(Object.fromEntries(cells(l).map((c, i) => [header[i] ?? `col${i}`, c])));
  }
  return rows;
}

function col(row: Row, name: string): string {
  const v = row[name];
  if (v === undefined) throw new Error(`table has no column "${name}": ${JSON.stringify(row)}`);
  return v;
}

/** Backticked identifiers in a cell. */
function ticks(cell: string, pattern: RegExp): string[] {
  return [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!).filter((t) => pattern.test(t));
}

const OUTCOME = /^[a-z_]+$/;
const CODE = /^[A-Z_]+$/;
const dash = (v: string): boolean => v === '—' || v === '-' || v === '';

// ---- what the code says, pinned by the type checker ----

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** Outcomes that consume the seq and carry a stored ack: Ack['outcome'] exactly. */
const STORED_OUTCOMES = ['applied', 'version_conflict'] as const;
const storedOutcomesMatch: Equal<(typeof STORED_OUTCOMES)[number], Ack['outcome']> = true;

/** Every store rejection with its code: the mapped type makes a missing, extra or mismatched entry a type error. */
const REJECTION_CODES = {
  sequence_reused: 'SEQUENCE_REUSED',
  fenced: 'FENCED',
  stale: 'STALE',
  expired: 'EXPIRED',
  gap: 'GAP',
  error: 'STORAGE_UNAVAILABLE',
} as const satisfies { [K in Rejection['outcome']]: Extract<Rejection, { outcome: K }>['code'] };

/**
 * Outcomes decided before a put reaches the store: src/protocol/messages.ts (validation) and
 * src/server/connection.ts (grants) build them as plain objects, so they are listed by hand here.
 */
const CONNECTION_OUTCOMES: Record<string, readonly ErrorCode[]> = {
  invalid: ['INVALID_FIELD', 'LIMIT_EXCEEDED'],
  forbidden: ['FORBIDDEN'],
};

const ALL_OUTCOMES = [...STORED_OUTCOMES, ...Object.keys(REJECTION_CODES), ...Object.keys(CONNECTION_OUTCOMES)].sort();

/** The codes each outcome carries (none for stored outcomes). */
const CODES_OF: Record<string, readonly string[]> = {
  applied: [],
  version_conflict: [],
  ...Object.fromEntries(Object.entries(REJECTION_CODES).map(([o, c]) => [o, [c]])),
  ...CONNECTION_OUTCOMES,
};

const LIMIT_NAMES = [
  'maxFrameBytes',
  'maxPutsPerFrame',
  'maxStateBytes',
  'maxStateDepth',
  'maxKeyBytes',
  'maxStreamBytes',
  'maxIdBytes',
  'maxHelloStreams',
  'maxNonceBytes',
] as const;
const limitNamesMatch: Equal<(typeof LIMIT_NAMES)[number], keyof Limits> = true;

describe('error code table', () => {
  const rows = table(section('10. Error codes'));
  const documented = rows.map((r) => ticks(col(r, 'code'), CODE)[0] ?? `(unparsed: ${col(r, 'code')})`);

  it('lists every code of the registry', () => {
    expect(Object.keys(ERRORS).filter((c) => !documented.includes(c))).toEqual([]);
  });

  it('lists no code the registry lacks, and none twice', () => {
    expect(documented.filter((c) => !(c in ERRORS))).toEqual([]);
    expect(documented.filter((c, i) => documented.indexOf(c) !== i)).toEqual([]);
  });

  it.each(rows.map((r) => [ticks(col(r, 'code'), CODE)[0] ?? col(r, 'code'), r] as const))(
    '%s has the scope, retryable flag, close code and HTTP status of the registry',
    (code, row) => {
      const entry = (ERRORS as Record<string, { scope: string; retryable: boolean; closeCode?: number; status?: number }>)[code];
      if (entry === undefined) throw new Error(`${code} is not in src/errors.ts`);
      expect(col(row, 'scope')).toBe(entry.scope);
      expect(col(row, 'retryable')).toBe(entry.retryable ? 'yes' : 'no');
      const close = col(row, 'close code');
      expect(dash(close) ? undefined : Number(close)).toBe(entry.closeCode);
      const status = col(row, 'http status');
      expect(dash(status) ? undefined : Number(status)).toBe(entry.status);
    },
  );

  it('gives every close-scope code a row in the close code table with the same close code', () => {
    const closeRows = table(section('9.6 Close codes'));
    for (const [code, entry] of Object.entries(ERRORS)) {
      if (entry.scope !== 'close') continue;
      const row = closeRows.find((r) => ticks(col(r, 'error code'), CODE).includes(code));
      expect(row, `${code} missing from §9.6`).toBeDefined();
      expect(Number(col(row!, 'close code'))).toBe((entry as { closeCode: number }).closeCode);
    }
    for (const row of closeRows) {
      const [code] = ticks(col(row, 'error code'), CODE);
      if (code !== undefined) expect((ERRORS as Record<string, { closeCode?: number }>)[code]?.closeCode).toBe(Number(col(row, 'close code')));
    }
  });
});

describe('outcomes', () => {
  it('the code knows exactly the outcomes the decision table lists', () => {
    expect(storedOutcomesMatch && limitNamesMatch).toBe(true);
    const listed = new Set(table(section('5. The gate')).flatMap((r) => ticks(col(r, 'outcome'), OUTCOME)));
    expect([...listed].sort()).toEqual(ALL_OUTCOMES);
  });

  it.each([
    ['5.3 Outcomes', 'error code'],
    ['3.4 Result shapes', 'error.code'],
  ] as const)('the table in §%s pairs each outcome with the codes the code gives it', (title, codeColumn) => {
    const rows = table(section(title).slice(section(title).indexOf('| outcome')));
    const documented = Object.fromEntries(rows.map((r) => [ticks(col(r, 'outcome'), OUTCOME)[0], ticks(col(r, codeColumn), CODE).sort()]));
    const expected = Object.fromEntries(
      Object.entries(CODES_OF)
        .filter(([o]) => title.startsWith('5.3') || CODES_OF[o]!.length > 0)
        .map(([o, c]) => [o, [...c].sort()]),
    );
    expect(documented).toEqual(expected);
  });

  it('marks as consuming the seq, stored and replayed exactly the stored outcomes', () => {
    for (const row of table(section('5.3 Outcomes'))) {
      const [outcome] = ticks(col(row, 'outcome'), OUTCOME);
      const stored = (STORED_OUTCOMES as readonly string[]).includes(outcome!);
      expect(col(row, 'consumes the seq'), outcome).toBe(stored ? 'yes' : 'no');
      expect(col(row, 'stored and replayed'), outcome).toBe(stored ? 'yes' : 'no');
      const codes = CODES_OF[outcome!]!;
      if (codes.length > 0) expect(col(row, 'retryable'), outcome).toBe(ERRORS[codes[0] as ErrorCode].retryable ? 'yes' : 'no');
    }
  });

  it('every put-scope code is the code of some outcome', () => {
    const carried = new Set(Object.values(CODES_OF).flat());
    const putCodes = Object.entries(ERRORS)
      .filter(([, e]) => e.scope === 'put')
      .map(([c]) => c);
    expect(putCodes.filter((c) => !carried.has(c))).toEqual([]);
  });
});

describe('the decision table order is the order src/gate.ts decides in', () => {
  const rows = table(section('5. The gate'));
  const step = (n: string): Row => {
    const row = rows.find((r) => col(r, 'step') === n);
    if (row === undefined) throw new Error(`decision table has no step ${n}`);
    return row;
  };

  const now = 1_700_000_000_000;
  function put(fields: Partial<Omit<Put, 'fingerprint'>> = {}): Put {
    const base = { tenant: DEFAULT_TENANT, stream: 's', epoch: 1, seq: 5, key: 'k', state: Buffer.of(0x01), ifVersion: null, ...fields };
    return { ...base, fingerprint: putFingerprint(base.key, base.state, base.ifVersion) };
  }
  const ackFor = (p: Put, other = false): StoredAck => ({
    fingerprint: other ? Buffer.alloc(16, 0xee) : p.fingerprint,
    ack: { outcome: 'applied', stream: p.stream, epoch: p.epoch, seq: p.seq, key: p.key, version: 1, deleted: false, committedAt: now - 1 },
  });
  function run(p: Put, head: Head, extra: Partial<GateInputs> = {}): Decision {
    return decide(p, { head, storedAck: () => undefined, document: () => undefined, contiguous: false, now, ...extra });
  }
  function outcomeOf(d: Decision): string {
    if (d.kind === 'reject') return d.rejection.outcome;
    return d.ack.outcome;
  }

  // Each case meets the conditions of two steps at once; the earlier step must win.
  const mismatch = { ifVersion: 9 };
  const cases: Array<{ wins: string; over: string; decision: () => Decision; replay?: boolean }> = [
    {
      wins: '1',
      over: '3',
      replay: true,
      decision: () => {
        const p = put({ epoch: 1 });
        return run(p, { epoch: 2, seq: 1, prunedThrough: 0 }, { storedAck: () => ackFor(p) });
      },
    },
    {
      wins: '1',
      over: '8',
      replay: true,
      decision: () => {
        const p = put(mismatch);
        return run(p, { epoch: 1, seq: 5, prunedThrough: 0 }, { storedAck: () => ackFor(p) });
      },
    },
    {
      wins: '2',
      over: '3',
      decision: () => {
        const p = put({ epoch: 1 });
        return run(p, { epoch: 2, seq: 1, prunedThrough: 0 }, { storedAck: () => ackFor(p, true) });
      },
    },
    {
      wins: '2',
      over: '4',
      decision: () => {
        const p = put();
        return run(p, { epoch: 1, seq: 9, prunedThrough: 7 }, { storedAck: () => ackFor(p, true) });
      },
    },
    { wins: '3', over: '6', decision: () => run(put({ epoch: 1, seq: 99 }), { epoch: 2, seq: 1, prunedThrough: 0 }, { contiguous: true }) },
    { wins: '4', over: '5', decision: () => run(put({ seq: 5 }), { epoch: 1, seq: 9, prunedThrough: 7 }) },
    { wins: '5', over: '6', decision: () => run(put({ seq: 5 }), { epoch: 1, seq: 9, prunedThrough: 0 }, { contiguous: true }) },
    { wins: '6', over: '8', decision: () => run(put({ seq: 12, ...mismatch }), { epoch: 1, seq: 9, prunedThrough: 0 }, { contiguous: true }) },
    { wins: '6', over: '9', decision: () => run(put({ epoch: 2, seq: 2 }), { epoch: 1, seq: 9, prunedThrough: 0 }, { contiguous: true }) },
    { wins: '8', over: '9', decision: () => run(put(mismatch), { epoch: 1, seq: 4, prunedThrough: 0 }) },
    // Epoch entry has no outcome of its own: a put entering a new epoch goes on to steps 8 and 9.
    { wins: '8', over: '7', decision: () => run(put({ epoch: 3, seq: 40, ...mismatch }), { epoch: 1, seq: 9, prunedThrough: 4 }) },
    { wins: '9', over: '7', decision: () => run(put({ epoch: 3, seq: 40 }), { epoch: 1, seq: 9, prunedThrough: 4 }) },
  ];

  it.each(cases.map((c) => [c.wins, c.over, c] as const))('step %s is decided before step %s', (wins, over, c) => {
    const d = c.decision();
    expect(step(over)).toBeDefined();
    const row = step(wins);
    expect(ticks(col(row, 'outcome'), OUTCOME)).toContain(outcomeOf(d));
    const consumes = col(row, 'consumes the seq');
    if (c.replay) expect(d.kind).toBe('replay');
    else expect(d.kind).toBe(consumes === 'yes' ? 'consume' : 'reject');
  });

  it('lists the steps in order, each gate outcome once, with no outcome for epoch entry', () => {
    expect(rows.map((r) => col(r, 'step'))).toEqual(['0', '0a', '1', '2', '3', '4', '5', '6', '7', '8', '9', '—']);
    expect(ticks(col(step('7'), 'outcome'), OUTCOME)).toEqual([]);
  });
});

describe('limits', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer();
  });
  afterAll(async () => {
    await t.stop();
  });

  it('the announced-limits table lists exactly the welcome limits, with the defaults of src/config.ts', () => {
    const rows = table(section('11.1 Limits announced in the welcome'));
    const documented = Object.fromEntries(rows.map((r) => [ticks(col(r, 'limit'), /^[a-zA-Z]+$/)[0], Number(/^\d+/.exec(col(r, 'default'))?.[0])]));
    const options = OPTIONS as Record<string, { default: unknown; unit?: string }>;
    const fromCode = Object.fromEntries(Object.keys(t.server.limits).map((k) => [k, options[k]!.default]));
    expect(documented).toEqual(fromCode);
    for (const row of rows) {
      const [name] = ticks(col(row, 'limit'), /^[a-zA-Z]+$/);
      expect(col(row, 'unit'), name).toBe(options[name!]?.unit ?? '');
    }
    expect(Object.keys(t.server.limits).sort()).toEqual([...LIMIT_NAMES].sort());
  });

  it('the other-settings table names real options with their defaults', () => {
    const rows = table(section('11.2 Other server settings'));
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows) {
      const [name] = ticks(col(row, 'setting'), /^[a-zA-Z]+$/);
      const option = (OPTIONS as Record<string, { default: unknown; unit?: string }>)[name!];
      expect(option, `${name} is not an option`).toBeDefined();
      expect(col(row, 'default'), name).toBe(String(option!.default));
      expect(col(row, 'unit'), name).toBe(option!.unit ?? '');
    }
  });
});
