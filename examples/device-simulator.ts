#!/usr/bin/env node
/**
 * A fleet of simulated devices writing sensor readings to a running seqgate server through the
 * client SDK. Each device is one stream (`device-1`, `device-2`, …) and keeps a few documents
 * (`device-1/sensor-0`, …) up to date with its latest reading.
 *
 *   npm run build && node dist/src/cli.js &          # a server on ws://127.0.0.1:8787
 *   node dist/examples/device-simulator.js --url ws://127.0.0.1:8787 --devices 3 --rate 5
 *
 * With --outbox PATH the devices keep their outbox in a SQLite file: kill the simulator (even with
 * kill -9) and start it again, and every device resumes where it stopped, resending what the
 * server had not answered, without losing or duplicating a reading.
 */
import WebSocket from 'ws';
import { SeqgateClient, SqliteOutbox, type Outbox, type PutSettlement } from '@seqgate/client/node';

interface Options {
  url: string;
  devices: number;
  stream: string | undefined;
  count: number;
  rate: number;
  keys: number;
  outbox: string | undefined;
  format: 'msgpack' | 'json';
  token: string | undefined;
  output: 'text' | 'json';
}

const HELP = `Usage: device-simulator [options]
  --url URL          server (default ws://127.0.0.1:8787)
  --devices N        simulated devices, streams device-1 … device-N (default 3)
  --stream NAME      simulate one device writing stream NAME instead
  --count N          readings per device, then stop (default 0: until Ctrl-C)
  --rate R           readings per second per device (default 5)
  --keys K           documents per device (default 4)
  --outbox PATH      SQLite outbox file, to survive restarts (default: in memory)
  --format F         msgpack (default) or json
  --token TOKEN      token for servers that require one (or SEQGATE_TOKEN)
  --output O         text (default) or json (one JSON object per line)`;

function parseArgs(argv: string[]): Options {
  const o: Options = {
    url: 'ws://127.0.0.1:8787',
    devices: 3,
    stream: undefined,
    count: 0,
    rate: 5,
    keys: 4,
    outbox: undefined,
    format: 'msgpack',
    token: process.env.SEQGATE_TOKEN,
    output: 'text',
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === '--help' || flag === '-h') {
      process.stdout.write(HELP + '\n');
      process.exit(0);
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    const int = (): number => {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) throw new Error(`${flag} needs a whole number, got ${value}`);
      return n;
    };
    switch (flag) {
      case '--url':
        o.url = value;
        break;
      case '--devices':
        o.devices = int();
        break;
      case '--stream':
        o.stream = value;
        break;
      case '--count':
        o.count = int();
        break;
      case '--rate':
        o.rate = Number(value);
        break;
      case '--keys':
        o.keys = Math.max(1, int());
        break;
      case '--outbox':
        o.outbox = value;
        break;
      case '--format':
        o.format = value === 'json' ? 'json' : 'msgpack';
        break;
      case '--token':
        o.token = value;
        break;
      case '--output':
        o.output = value === 'json' ? 'json' : 'text';
        break;
      default:
        throw new Error(`unknown option ${flag} (see --help)`);
    }
  }
  if (!(o.rate > 0)) throw new Error('--rate must be above 0');
  return o;
}

const options = parseArgs(process.argv.slice(2));

function say(event: string, fields: Record<string, unknown>, text: string): void {
  if (options.output === 'json') process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
  else process.stdout.write(`${new Date().toISOString().slice(11, 23)} ${text}\n`);
}

/** The reading a device sends as its i-th put: the same i always gives the same state. */
function reading(stream: string, i: number): Record<string, unknown> {
  return { device: stream, reading: i, celsius: Math.round((21 + 4 * Math.sin(i / 10)) * 10) / 10 };
}

interface Tally {
  applied: number;
  replayed: number;
  rejected: number;
  recovered: number;
  errors: Record<string, number>;
}

let stopping = false;

async function runDevice(stream: string, outbox: Outbox | undefined): Promise<Tally> {
  const client = new SeqgateClient({
    url: options.url,
    stream,
    WebSocket,
    format: options.format,
    ...(outbox !== undefined ? { outbox } : {}),
    ...(options.token !== undefined ? { token: options.token } : {}),
  });
  const tally: Tally = { applied: 0, replayed: 0, rejected: 0, recovered: 0, errors: {} };
  client.on('state', (s) =>
    say('state', { stream, state: s.state, error: s.error?.message }, `${stream}: ${s.state}${s.error ? ` (${s.error.message})` : ''}`),
  );
  client.on('epoch', (e) => say('epoch', { stream, epoch: e.epoch, reason: e.reason }, `${stream}: writing epoch ${e.epoch} (${e.reason})`));
  client.on('rollback', (r) =>
    say(
      'rollback',
      { ...r },
      `${stream}: the server went back in time (${r.reason}); ${r.pending} unanswered puts ${r.policy === 'reject' ? 'rejected' : 'resent'}`,
    ),
  );
  client.on('stopped', (e) => say('stopped', { stream, error: e.message }, `${stream}: stopped writing: ${e.message}`));
  client.on('transientError', (e) => say('transient', { stream, code: e.code }, `${stream}: server could not commit (${e.code}); resending`));
  client.on('result', (s: PutSettlement) => {
    if (s.recovered) tally.recovered++;
    if (s.result !== undefined) {
      tally.applied++;
      if (s.result.replay) tally.replayed++;
    } else {
      tally.rejected++;
      const name = s.error?.name ?? 'Error';
      tally.errors[name] = (tally.errors[name] ?? 0) + 1;
      if (name !== 'ClientClosedError')
        say('rejected', { stream, seq: s.put.seq, key: s.put.key, error: name }, `${stream}: put ${s.put.seq} (${s.put.key}) rejected: ${s.error?.message}`);
    }
  });

  await client.ready;
  // The checkpoint is the number of the last reading the outbox recorded: resume after it.
  let i = typeof client.checkpoint === 'number' ? client.checkpoint : 0;
  say('ready', { stream, checkpoint: i, unanswered: client.pending }, `${stream}: starting at reading ${i + 1}, ${client.pending} unanswered puts from before`);

  const interval = 1000 / options.rate;
  let next = performance.now();
  while (!stopping && client.stoppedBecause === undefined && (options.count === 0 || i < options.count)) {
    i++;
    // Not awaited: the outbox holds the put; its outcome arrives as a `result` event.
    client.put(`${stream}/sensor-${i % options.keys}`, reading(stream, i), { checkpoint: i }).catch(() => undefined);
    if (i % 50 === 0) say('progress', { stream, reading: i, pending: client.pending }, `${stream}: reading ${i}, ${client.pending} unanswered`);
    next += interval;
    const wait = next - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  const report = await client.close({ timeoutMs: 30_000 });
  const stats = client.stats;
  say(
    'done',
    { stream, lastReading: i, ...tally, drained: report.drained, left: report.left.length, sent: stats.sent, connections: stats.connections },
    `${stream}: done at reading ${i}: ${tally.applied} applied (${tally.replayed} replays), ${tally.rejected} rejected, ` +
      `${report.left.length} left in the outbox, ${stats.connections} connections`,
  );
  return tally;
}

async function main(): Promise<void> {
  const outbox = options.outbox !== undefined ? new SqliteOutbox(options.outbox) : undefined;
  const streams = options.stream !== undefined ? [options.stream] : Array.from({ length: options.devices }, (_, n) => `device-${n + 1}`);
  const onSignal = (): void => {
    if (stopping) process.exit(130);
    stopping = true;
    say('stopping', {}, 'stopping: waiting for unanswered puts (Ctrl-C again to quit now)');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const tallies = await Promise.all(streams.map((s) => runDevice(s, outbox)));
  outbox?.close();
  const rejected = tallies.reduce((n, t) => n + (t.rejected - (t.errors.ClientClosedError ?? 0)), 0);
  process.exit(rejected > 0 ? 1 : 0);
}

main().catch((err: unknown) => {
  process.stderr.write(`device-simulator: ${(err as Error).message}\n`);
  process.exit(2);
});
