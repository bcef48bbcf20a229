import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../src/store/sqlite-store.js';
import { put, startTestServer, TestClient, type Msg, type TestServer } from './support/test-client.js';
import { HeldStore } from './support/held-store.js';

/**
 * /metrics (protocol/HTTP.md, "Metrics"): each put outcome moves its own counter by exactly one,
 * on either transport, and the gauges and histograms follow what the server is doing.
 */

type Sample = Map<string, number>;

/** Parses the Prometheus text format into series (labels sorted) and values. */
function parse(text: string): Sample {
  const out: Sample = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels = m[2]
      ? [...m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)]
          .map((l) => `${l[1]}="${l[2]}"`)
          .sort()
          .join(',')
      : '';
    out.set(labels === '' ? m[1]! : `${m[1]}{${labels}}`, Number(m[3]));
  }
  return out;
}

async function scrape(t: TestServer): Promise<Sample> {
  const res = await fetch(`${t.url.replace(/^ws:/, 'http:')}/metrics`);
  expect(res.status).toBe(200);
  return parse(await res.text());
}

/** Series of one metric that changed between two scrapes, with the change. */
function changes(before: Sample, after: Sample, metric: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [series, value] of after) {
    if (series !== metric && !series.startsWith(`${metric}{`)) continue;
    const delta = value - (before.get(series) ?? 0);
    if (delta !== 0) out[series] = delta;
  }
  return out;
}

function outcomeSeries(outcome: string, replay: boolean, transport: 'ws' | 'http'): string {
  return `seqgate_put_outcomes_total{outcome="${outcome}",replay="${replay}",transport="${transport}"}`;
}

const FULL = 'metrics-full-token-0123456789';
const LIMITED = 'metrics-limited-token-abcdef';
const tokens = JSON.stringify({
  tokens: [
    { token: FULL, tenant: 'm' },
    { token: LIMITED, tenant: 'm', write: { streams: ['ok-'], documents: [''] } },
  ],
});

/** One way to send a put and get its result, per transport and token. */
interface Sender {
  send(fields: Record<string, unknown>, token?: string): Promise<Msg>;
  close(): Promise<void>;
}

function wsSender(t: TestServer): Sender {
  const clients = new Map<string, TestClient>();
  return {
    async send(fields, token = FULL) {
      let c = clients.get(token);
      if (c === undefined) {
        c = await TestClient.connect(t.url, 'msgpack', { headers: { authorization: `Bearer ${token}` } });
        clients.set(token, c);
      }
      const n = c.results().length;
      c.send({ type: 'put', puts: [put(fields)] });
      return (await c.waitResults(n + 1))[n];
    },
    async close() {
      for (const c of clients.values()) await c.close();
    },
  };
}

function httpSender(t: TestServer): Sender {
  return {
    async send(fields, token = FULL) {
      const { stream, id: _id, ...body } = put(fields);
      const res = await fetch(`${t.url.replace(/^ws:/, 'http:')}/v1/streams/${encodeURIComponent(String(stream))}/puts`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
      return res.json();
    },
    async close() {},
  };
}

/**
 * Each case: `setup` brings the stream where the provoking put gets the outcome; only the
 * provoking put is measured.
 */
interface Case {
  readonly outcome: string;
  readonly replay?: boolean;
  readonly server?: 'main' | 'contiguous';
  setup?(send: Sender['send'], s: string): Promise<unknown>;
  provoke(send: Sender['send'], s: string, t: TestServer): Promise<Msg>;
}

const cases: Case[] = [
  { outcome: 'applied', provoke: (send, s) => send({ stream: s, seq: 1 }) },
  {
    outcome: 'applied',
    replay: true,
    setup: (send, s) => send({ id: 1, stream: s, seq: 1 }),
    provoke: (send, s) => send({ id: 1, stream: s, seq: 1 }),
  },
  {
    outcome: 'sequence_reused',
    setup: (send, s) => send({ stream: s, seq: 1, state: 'a' }),
    provoke: (send, s) => send({ stream: s, seq: 1, state: 'b' }),
  },
  {
    outcome: 'fenced',
    setup: (send, s) => send({ stream: s, epoch: 2, seq: 1 }),
    provoke: (send, s) => send({ stream: s, epoch: 1, seq: 5 }),
  },
  {
    outcome: 'stale',
    setup: (send, s) => send({ stream: s, seq: 5 }),
    provoke: (send, s) => send({ stream: s, seq: 3 }),
  },
  {
    // The main server keeps one ack per stream: seq 1's ack goes when seq 2 is stored.
    outcome: 'expired',
    setup: async (send, s) => {
      await send({ stream: s, seq: 1 });
      await send({ stream: s, seq: 2 });
    },
    provoke: (send, s) => send({ stream: s, seq: 1 }),
  },
  { outcome: 'gap', server: 'contiguous', provoke: (send, s) => send({ stream: s, seq: 2 }) },
  {
    outcome: 'version_conflict',
    setup: (send, s) => send({ stream: s, seq: 1, key: `${s}-doc` }),
    provoke: (send, s) => send({ stream: s, seq: 2, key: `${s}-doc`, ifVersion: 9 }),
  },
  { outcome: 'invalid', provoke: (send, s) => send({ stream: s, seq: 1, key: '' }) },
  { outcome: 'forbidden', provoke: (send, s) => send({ stream: s, seq: 1 }, LIMITED) },
  {
    outcome: 'error',
    provoke: async (send, s, t) => {
      const db = (t.server.store as SqliteStore).database;
      db.pragma('query_only = ON');
      try {
        return await send({ stream: s, seq: 1 });
      } finally {
        db.pragma('query_only = OFF');
      }
    },
  },
];

let main: TestServer;
let contiguous: TestServer;
beforeAll(async () => {
  main = await startTestServer({ tokens, ackCapPerStream: 1, ackCapSlack: 0 });
  contiguous = await startTestServer({ contiguous: true, tokens });
});
afterAll(async () => {
  await main.stop();
  await contiguous.stop();
});

describe('put outcome counters', () => {
  for (const transport of ['ws', 'http'] as const) {
    for (const c of cases) {
      const label = `${c.outcome}${c.replay ? ' (replay)' : ''}`;
      it(`counts one ${label} over ${transport} as exactly one seqgate_put_outcomes_total increment`, async () => {
        const t = c.server === 'contiguous' ? contiguous : main;
        const sender = transport === 'ws' ? wsSender(t) : httpSender(t);
        const stream = `${c.outcome}-${c.replay ? 'r' : 'n'}-${transport}`;
        try {
          await c.setup?.(sender.send, stream);
          const before = await scrape(t);
          const result = await c.provoke(sender.send, stream, t);
          expect(result.outcome).toBe(c.outcome);
          if (c.replay !== undefined) expect(result.replay).toBe(c.replay);
          const after = await scrape(t);
          expect(changes(before, after, 'seqgate_put_outcomes_total')).toEqual({ [outcomeSeries(c.outcome, c.replay ?? false, transport)]: 1 });
        } finally {
          await sender.close();
        }
      });
    }
  }

  it('counts every put of a frame, each under its own outcome', async () => {
    const c = await TestClient.connect(main.url, 'msgpack', { headers: { authorization: `Bearer ${FULL}` } });
    const before = await scrape(main);
    c.send({ type: 'put', puts: [put({ stream: 'frame', seq: 1 }), put({ stream: 'frame', seq: 2, key: '' }), put({ stream: 'frame', seq: 3 })] });
    await c.waitResults(3);
    const after = await scrape(main);
    expect(changes(before, after, 'seqgate_put_outcomes_total')).toEqual({
      [outcomeSeries('applied', false, 'ws')]: 2,
      [outcomeSeries('invalid', false, 'ws')]: 1,
    });
    await c.close();
  });
});

describe('batches, connections, pruning, event loop', () => {
  it('observes each committed batch once in the batch size and commit time histograms', async () => {
    const c = await TestClient.connect(main.url, 'msgpack', { headers: { authorization: `Bearer ${FULL}` } });
    c.send({ type: 'hello' });
    await c.waitMessage('welcome');
    const before = await scrape(main);
    c.send({ type: 'put', puts: [1, 2, 3, 4, 5].map((seq) => put({ stream: 'hist', seq, key: `h${seq}` })) });
    await c.waitResults(5);
    const after = await scrape(main);
    expect(changes(before, after, 'seqgate_batch_writes_count')).toEqual({ seqgate_batch_writes_count: 1 });
    expect(changes(before, after, 'seqgate_batch_writes_sum')).toEqual({ seqgate_batch_writes_sum: 5 });
    expect(changes(before, after, 'seqgate_batch_writes_bucket')).toMatchObject({
      'seqgate_batch_writes_bucket{le="5"}': 1,
      'seqgate_batch_writes_bucket{le="+Inf"}': 1,
    });
    expect(changes(before, after, 'seqgate_batch_writes_bucket')['seqgate_batch_writes_bucket{le="2"}']).toBeUndefined();
    expect(changes(before, after, 'seqgate_commit_seconds_count')).toEqual({ seqgate_commit_seconds_count: 1 });
    expect(after.get('seqgate_commit_seconds_sum')).toBeGreaterThan(before.get('seqgate_commit_seconds_sum') ?? 0);
    await c.close();
  });

  it('shows the open WebSocket connections in seqgate_connections', async () => {
    const t = await startTestServer();
    try {
      expect((await scrape(t)).get('seqgate_connections')).toBe(0);
      const clients = await Promise.all([1, 2, 3].map(() => TestClient.connect(t.url)));
      expect((await scrape(t)).get('seqgate_connections')).toBe(3);
      await clients[0]!.close();
      const deadline = Date.now() + 5000;
      while (t.server.connectionCount !== 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
      expect((await scrape(t)).get('seqgate_connections')).toBe(2);
      for (const c of clients.slice(1)) await c.close();
    } finally {
      await t.stop();
    }
  });

  it('shows writes received and not yet committed in seqgate_puts_in_flight', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'seqgate-metrics-held-'));
    const held = new HeldStore(new SqliteStore({ path: join(dir, 'db'), synchronous: 'full', contiguous: false, ackCapPerStream: 1000 }));
    const t = await startTestServer({}, { store: held });
    try {
      expect((await scrape(t)).get('seqgate_puts_in_flight')).toBe(0);
      held.hold();
      const c = await TestClient.connect(t.url);
      c.send({ type: 'put', puts: [put({ stream: 'f', seq: 1 }), put({ stream: 'f', seq: 2 })] });
      const deadline = Date.now() + 5000;
      while (held.batches.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
      c.send({ type: 'put', puts: [put({ stream: 'f', seq: 3 })] });
      while (t.server.queuedPuts === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
      expect((await scrape(t)).get('seqgate_puts_in_flight')).toBe(3);
      held.open();
      await c.waitResults(3);
      expect((await scrape(t)).get('seqgate_puts_in_flight')).toBe(0);
      await c.close();
    } finally {
      held.open();
      await t.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts acks removed by a pruning pass in seqgate_pruned_acks_total', async () => {
    const t = await startTestServer({ ackRetentionSeconds: 0 });
    try {
      const c = await TestClient.connect(t.url);
      c.send({ type: 'put', puts: [1, 2, 3, 4].map((seq) => put({ stream: 'p', seq })) });
      await c.waitResults(4);
      await new Promise((resolve) => setTimeout(resolve, 5));
      const before = await scrape(t);
      const pruned = await t.server.pruneNow();
      expect(pruned).toBe(3);
      const after = await scrape(t);
      expect(changes(before, after, 'seqgate_pruned_acks_total')).toEqual({ seqgate_pruned_acks_total: 3 });
      expect(await t.server.pruneNow()).toBe(0);
      expect((await scrape(t)).get('seqgate_pruned_acks_total')).toBe(after.get('seqgate_pruned_acks_total'));
      await c.close();
    } finally {
      await t.stop();
    }
  });

  it('counts frames rejected as a whole by code and HTTP requests by route and status', async () => {
    const t = await startTestServer();
    try {
      const c = await TestClient.connect(t.url);
      const before = await scrape(t);
      c.sendRaw(Buffer.from([0xc1]));
      await c.waitMessage('error');
      await fetch(`${t.url.replace(/^ws:/, 'http:')}/v1/docs/none`);
      const after = await scrape(t);
      expect(changes(before, after, 'seqgate_rejected_frames_total')).toEqual({ 'seqgate_rejected_frames_total{code="MALFORMED_FRAME"}': 1 });
      expect(changes(before, after, 'seqgate_http_requests_total')).toEqual({
        'seqgate_http_requests_total{route="doc",status="404"}': 1,
        'seqgate_http_requests_total{route="metrics",status="200"}': 1,
      });
      await c.close();
    } finally {
      await t.stop();
    }
  });

  it('reports the event-loop lag and the default Node.js process metrics', async () => {
    const sample = await scrape(main);
    expect(sample.has('nodejs_eventloop_lag_seconds')).toBe(true);
    expect(sample.get('nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    expect(sample.has('process_resident_memory_bytes')).toBe(true);
  });
});
