/**
 * Every server option, with its default and unit. Each option can be set by a flag
 * (`--ack-cap-per-stream 500`) or an environment variable (`SEQGATE_ACK_CAP_PER_STREAM=500`);
 * a flag wins over the environment. README.md's option table is checked against this list.
 */

type Kind = 'string' | 'integer' | 'boolean' | 'enum';

interface OptionSpec<T> {
  readonly kind: Kind;
  readonly default: T;
  readonly unit?: string;
  readonly values?: readonly string[];
  readonly min?: number;
  readonly doc: string;
}

const KiB = 1024;
const MiB = 1024 * KiB;

export const OPTIONS = {
  host: { kind: 'string', default: '127.0.0.1', doc: 'Interface to bind. Use 0.0.0.0 to listen on all interfaces.' },
  port: { kind: 'integer', default: 8787, min: 0, doc: 'TCP port for WebSocket and HTTP (0 picks a free port).' },
  store: {
    kind: 'enum',
    default: 'sqlite',
    values: ['sqlite', 'postgres'],
    doc: 'sqlite: one server, one file, no database server. postgres: any number of servers on one PostgreSQL database (docs/SCALE-OUT.md).',
  },
  dbPath: { kind: 'string', default: './data/seqgate.db', doc: 'SQLite database file; its folder is created if missing.' },
  databaseUrl: {
    kind: 'string',
    default: '',
    doc: 'PostgreSQL connection URL for --store postgres, e.g. postgres://user@host:5432/db. DATABASE_URL is read when this is unset.',
  },
  pgPoolSize: {
    kind: 'integer',
    default: 4,
    min: 1,
    unit: 'connections',
    doc: 'PostgreSQL connections for reads, readiness and pruning; batches use one more of their own.',
  },
  synchronous: {
    kind: 'enum',
    default: 'full',
    values: ['full', 'normal'],
    doc: 'full: every acked put survives power loss. normal: survives a process crash, not power loss.',
  },
  walSync: {
    kind: 'enum',
    default: 'background',
    values: ['background', 'commit'],
    doc: "synchronous full: background: commits write the WAL and a thread-pool fdatasync makes them durable; no answer reflecting a commit (ack, replay, head, document, change) goes out before that sync ends; commit: SQLite's own fsync inside every COMMIT, on the event loop.",
  },
  walCheckpoint: {
    kind: 'enum',
    default: 'background',
    values: ['background', 'commit'],
    doc: "background: a worker thread copies the WAL into the database file beside the commits; commit: SQLite's own checkpoint, inside the commit that fills 1000 pages.",
  },
  walCheckpointIntervalMs: {
    kind: 'integer',
    default: 500,
    min: 10,
    unit: 'ms',
    doc: 'walCheckpoint background: least time between two checkpoints of the worker thread; longer copies a page rewritten by several batches once, and lets the WAL hold more.',
  },
  maxWalBytes: {
    kind: 'integer',
    default: 64 * MiB,
    min: 1 * MiB,
    unit: 'bytes',
    doc: 'walCheckpoint background: WAL size past which new batches wait while the checkpoint worker copies the last frames, so the next batch rewinds the WAL to its start; the WAL stays under twice this.',
  },
  ackSettleRows: {
    kind: 'integer',
    default: 16_384,
    min: 0,
    unit: 'acks',
    doc: 'SQLite: new acks are written in commit order and moved to the per-stream table, sorted, once this many have gathered (in steps, one transaction each, between batches); 0 writes each ack straight to the per-stream table.',
  },
  startupCheck: {
    kind: 'enum',
    default: 'quick',
    values: ['quick', 'full', 'off'],
    doc: 'Integrity check of the database file at start; a damaged file is refused (exit 3). full is slow on large files.',
  },
  maxDbPages: {
    kind: 'integer',
    default: 0,
    min: 0,
    unit: 'pages',
    doc: 'Cap on the database size in SQLite pages (4096 bytes); 0 means none. At the cap puts fail retryably.',
  },
  contiguous: { kind: 'boolean', default: false, doc: 'Refuse gaps: each seq must be head + 1 (1 in a new epoch).' },
  ackRetentionSeconds: { kind: 'integer', default: 86_400, min: 0, unit: 's', doc: 'Acks are kept at least this long after commit.' },
  ackCapPerStream: {
    kind: 'integer',
    default: 1000,
    min: 1,
    unit: 'acks',
    doc: 'Newest acks always kept per stream; older ones are evicted, the oldest first.',
  },
  ackCapSlack: {
    kind: 'integer',
    default: 64,
    min: 0,
    unit: 'acks',
    doc: 'Acks a stream may hold above ackCapPerStream before its slack + 1 oldest are evicted in one delete (back to the cap); 0 evicts one per put.',
  },
  ackSettleStepRows: {
    kind: 'integer',
    default: 2048,
    min: 1,
    unit: 'acks',
    doc: 'SQLite: acks one step of that move takes, about (whole streams, so more if one stream alone has more); the event loop runs batches between steps.',
  },
  pruneIntervalMs: { kind: 'integer', default: 10_000, min: 10, unit: 'ms', doc: 'Pause between pruning passes.' },
  pruneBatchRows: { kind: 'integer', default: 200, min: 1, unit: 'rows', doc: 'Acks pruned per step; the event loop runs between steps.' },
  maxBatchPuts: { kind: 'integer', default: 2000, min: 1, unit: 'puts', doc: 'Most puts committed in one transaction.' },
  batchWaitMs: {
    kind: 'integer',
    default: 0,
    min: 0,
    unit: 'ms',
    doc: 'When no batch is committing, how long the first put waits for others to join its batch (fewer commits at low rates, for that much latency); 0: commit at the end of the event-loop turn.',
  },
  pipelineMinPuts: {
    kind: 'integer',
    default: 0,
    min: 0,
    unit: 'puts',
    doc: 'While a committed batch waits for its WAL sync, the next batch is committed only once this many puts have gathered; smaller ones wait for the sync to end (fewer, larger commits). 0: commit at once.',
  },
  maxFrameBytes: { kind: 'integer', default: 1 * MiB, min: 1024, unit: 'bytes', doc: 'Largest WebSocket message (ws maxPayload).' },
  maxPutsPerFrame: { kind: 'integer', default: 1000, min: 1, unit: 'puts', doc: 'Most puts in one put message.' },
  maxStateBytes: { kind: 'integer', default: 64 * KiB, min: 16, unit: 'bytes', doc: 'Largest state, measured in canonical msgpack.' },
  maxStateDepth: { kind: 'integer', default: 32, min: 1, unit: 'levels', doc: 'Deepest nesting of arrays and maps in a state.' },
  maxKeyBytes: { kind: 'integer', default: 256, min: 1, unit: 'bytes', doc: 'Longest document key (UTF-8).' },
  maxStreamBytes: { kind: 'integer', default: 256, min: 1, unit: 'bytes', doc: 'Longest stream name (UTF-8).' },
  maxIdBytes: { kind: 'integer', default: 128, min: 1, unit: 'bytes', doc: 'Longest string correlation id (UTF-8).' },
  maxHelloStreams: { kind: 'integer', default: 1000, min: 0, unit: 'streams', doc: 'Most streams one hello may ask heads for.' },
  maxNonceBytes: { kind: 'integer', default: 1024, min: 8, unit: 'bytes', doc: 'Largest ping nonce, measured in canonical msgpack; a pong echoes it.' },
  maxConnections: { kind: 'integer', default: 20_000, min: 1, unit: 'connections', doc: 'Connections beyond this are closed with 1013.' },
  maxUnauthenticatedConnections: {
    kind: 'integer',
    default: 1000,
    min: 1,
    unit: 'connections',
    doc: 'With tokens: connections not yet authenticated. Beyond this (or at maxConnections) the oldest of them is closed with 1013.',
  },
  authTimeoutMs: {
    kind: 'integer',
    default: 10_000,
    min: 10,
    unit: 'ms',
    doc: 'With tokens: a connection that has not authenticated this long after it opened is closed with 4401.',
  },
  maxInFlightBytes: {
    kind: 'integer',
    default: 256 * MiB,
    min: 64 * KiB,
    unit: 'bytes',
    doc: 'Server-wide memory budget: unanswered put frames plus HTTP request bodies (which may take half). Past it every WebSocket stops reading and bodies get 503.',
  },
  maxHttpConnections: {
    kind: 'integer',
    default: 1000,
    min: 1,
    unit: 'connections',
    doc: 'Open HTTP connections, upgrade requests not yet accepted included; beyond this a new one is answered 503 and closed. Accepted WebSockets count against maxConnections instead.',
  },
  httpHeadersTimeoutMs: {
    kind: 'integer',
    default: 10_000,
    min: 10,
    unit: 'ms',
    doc: "Time a client has to send a request's headers; then 408 and the connection is closed. At most httpRequestTimeoutMs.",
  },
  httpRequestTimeoutMs: {
    kind: 'integer',
    default: 60_000,
    min: 10,
    unit: 'ms',
    doc: 'Time a client has to send a whole request, body included; then 408 and the connection is closed.',
  },
  httpBodyIdleTimeoutMs: {
    kind: 'integer',
    default: 10_000,
    min: 10,
    unit: 'ms',
    doc: 'A request body that sends no byte for this long is answered 408 REQUEST_TIMEOUT and its connection closed.',
  },
  connectionInFlightBytes: {
    kind: 'integer',
    default: 4 * MiB,
    min: 1024,
    unit: 'bytes',
    doc: 'Frame bytes of unanswered puts per connection before the server stops reading from it.',
  },
  outboundHighWaterBytes: {
    kind: 'integer',
    default: 1 * MiB,
    min: 1024,
    unit: 'bytes',
    doc: 'Unsent result bytes per connection before the server stops reading from it.',
  },
  slowConsumerTimeoutMs: {
    kind: 'integer',
    default: 10_000,
    min: 10,
    unit: 'ms',
    doc: 'A connection held paused by unread results this long is closed with 1008.',
  },
  heartbeatIntervalMs: {
    kind: 'integer',
    default: 30_000,
    min: 10,
    unit: 'ms',
    doc: 'Ping sweep period; a connection silent for two sweeps is dropped.',
  },
  tokensFile: {
    kind: 'string',
    default: '',
    doc: 'JSON file of tokens, tenants and grants (see protocol/HTTP.md). Reloaded on SIGHUP and on change.',
  },
  tokensFilePollMs: {
    kind: 'integer',
    default: 1000,
    min: 50,
    unit: 'ms',
    doc: 'How often the tokens file is re-read and compared, besides watching its folder (which can miss changes).',
  },
  tokens: { kind: 'string', default: '', doc: 'The same JSON inline, typically from the environment. Adds to tokensFile.' },
  allowInsecureOpen: {
    kind: 'boolean',
    default: false,
    doc: 'Allow running without tokens on a non-loopback interface. Without it such a start is refused.',
  },
  idempotencyRetentionSeconds: {
    kind: 'integer',
    default: 86_400,
    min: 0,
    unit: 's',
    doc: 'Idempotency-Key records are kept at least this long.',
  },
  changefeed: {
    kind: 'boolean',
    default: true,
    doc: 'Keep the change log (every document change, in the commit that made it) for /v1/changes and subscribe. Writes made while it is off never reach the log.',
  },
  changesRetentionSeconds: {
    kind: 'integer',
    default: 604_800,
    min: 0,
    unit: 's',
    doc: 'Changes are kept at least this long after commit; 0 keeps them until changesMaxPerTenant removes them.',
  },
  changesMaxPerTenant: {
    kind: 'integer',
    default: 0,
    min: 0,
    unit: 'changes',
    doc: "Most changes kept per tenant's log, the oldest go first; 0 means no cap.",
  },
  changesCompact: {
    kind: 'boolean',
    default: false,
    doc: 'Retention removes only changes a later change of the same key superseded: the log always replays to the current documents and no offset expires.',
  },
  changesLongPollMs: {
    kind: 'integer',
    default: 20_000,
    min: 100,
    unit: 'ms',
    doc: 'How long a live=long-poll read waits for a change before answering 204.',
  },
  changesSseMaxMs: {
    kind: 'integer',
    default: 60_000,
    min: 1000,
    unit: 'ms',
    doc: 'A live=sse response ends after this long; the client reconnects from its last offset.',
  },
  changesPollIntervalMs: {
    kind: 'integer',
    default: 1000,
    min: 10,
    unit: 'ms',
    doc: 'How often waiting changefeed readers look for changes committed by other servers on the same database.',
  },
  logLevel: {
    kind: 'enum',
    default: 'info',
    values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    doc: 'pino log level.',
  },
  logFormat: {
    kind: 'enum',
    default: 'auto',
    values: ['auto', 'pretty', 'json'],
    doc: 'auto: pretty on a terminal, JSON lines otherwise.',
  },
} as const satisfies Record<string, OptionSpec<unknown>>;

type Specs = typeof OPTIONS;
type ValueOf<S> = S extends { kind: 'integer' }
  ? number
  : S extends { kind: 'boolean' }
    ? boolean
    : S extends { kind: 'enum'; values: readonly (infer V)[] }
      ? V
      : string;

export type Config = { -readonly [K in keyof Specs]: ValueOf<Specs[K]> };

export function defaultConfig(): Config {
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(OPTIONS)) out[name] = spec.default;
  return out as Config;
}

export function flagName(option: string): string {
  return '--' + option.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

export function envName(option: string): string {
  return 'SEQGATE_' + option.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

function parseValue(name: string, spec: OptionSpec<unknown>, raw: string, source: string): unknown {
  switch (spec.kind) {
    case 'integer': {
      if (!/^-?\d+$/.test(raw)) throw new ConfigError(`${source}: expected an integer, got "${raw}"`);
      const n = Number(raw);
      if (!Number.isSafeInteger(n) || (spec.min !== undefined && n < spec.min)) {
        throw new ConfigError(`${source}: must be an integer >= ${spec.min ?? 0}, got ${raw}`);
      }
      return n;
    }
    case 'boolean':
      if (['1', 'true', 'yes', 'on', ''].includes(raw)) return true;
      if (['0', 'false', 'no', 'off'].includes(raw)) return false;
      throw new ConfigError(`${source}: expected true or false, got "${raw}"`);
    case 'enum':
      if (!spec.values!.includes(raw)) throw new ConfigError(`${source}: expected one of ${spec.values!.join(', ')}, got "${raw}"`);
      return raw;
    default:
      if (raw === '') throw new ConfigError(`${source}: must not be empty`);
      return raw;
  }
}

/** Reads options from argv flags and the environment over the defaults; throws ConfigError. */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv): Config {
  const config: Record<string, unknown> = defaultConfig();
  const byFlag = new Map<string, string>();
  for (const name of Object.keys(OPTIONS)) byFlag.set(flagName(name), name);

  for (const [name, spec] of Object.entries(OPTIONS) as Array<[string, OptionSpec<unknown>]>) {
    const raw = env[envName(name)];
    if (raw !== undefined) config[name] = parseValue(name, spec, raw, envName(name));
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const flag = eq === -1 ? arg : arg.slice(0, eq);
    const negated = flag.startsWith('--no-') ? byFlag.get('--' + flag.slice(5)) : undefined;
    const name = byFlag.get(flag) ?? negated;
    if (name === undefined) throw new ConfigError(`unknown option ${flag} (see --help)`);
    const spec = (OPTIONS as Record<string, OptionSpec<unknown>>)[name]!;
    let raw: string;
    if (negated !== undefined) {
      if (spec.kind !== 'boolean') throw new ConfigError(`${flag}: not a boolean option`);
      raw = 'false';
    } else if (eq !== -1) raw = arg.slice(eq + 1);
    else if (spec.kind === 'boolean' && (argv[i + 1] === undefined || argv[i + 1]!.startsWith('--'))) raw = 'true';
    else {
      const next = argv[++i];
      if (next === undefined) throw new ConfigError(`${flag}: missing value`);
      raw = next;
    }
    config[name] = parseValue(name, spec, raw, flag);
  }
  // The conventional variable of hosting platforms, used when no seqgate-specific URL is given.
  if (config['databaseUrl'] === '' && env['DATABASE_URL']) config['databaseUrl'] = env['DATABASE_URL'];
  if (config['store'] === 'postgres' && config['databaseUrl'] === '') {
    throw new ConfigError('--store postgres needs --database-url (or SEQGATE_DATABASE_URL, or DATABASE_URL)');
  }
  return config as Config;
}

export function helpText(): string {
  const lines = ['Usage: seqgate [options]', '', 'Options (flag, environment variable, default):'];
  for (const [name, spec] of Object.entries(OPTIONS) as Array<[string, OptionSpec<unknown>]>) {
    const values = spec.values ? ` (${spec.values.join('|')})` : '';
    const unit = spec.unit ? ` ${spec.unit}` : '';
    lines.push(`  ${flagName(name)}${values}  [${envName(name)}]  default: ${String(spec.default)}${unit}`);
    lines.push(`      ${spec.doc}`);
  }
  return lines.join('\n');
}
