import { randomBytes } from 'node:crypto';
import pg from 'pg';

/**
 * Throwaway PostgreSQL databases for tests: each run creates its own, with a random name, and
 * drops it afterwards. The server is the machine's (127.0.0.1:5432, user postgres; .ci/run starts
 * it). Without one, local runs skip the PostgreSQL suites with a notice; under CI they fail.
 */
export const PG_ADMIN_URL = process.env['SEQGATE_TEST_PG_URL'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';

let available: Promise<boolean> | undefined;

export function postgresAvailable(): Promise<boolean> {
  available ??= (async () => {
    const client = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 });
    try {
      await client.connect();
      await client.query('SELECT 1');
      return true;
    } catch (err) {
      if (process.env['CI'])
        throw new Error(`PostgreSQL is required under CI and did not answer at ${PG_ADMIN_URL}: ${(err as Error).message}`, { cause: err });
      process.stderr.write(`[postgres] not reachable at ${PG_ADMIN_URL}; PostgreSQL suites are skipped\n`);
      return false;
    } finally {
      await client.end().catch(() => undefined);
    }
  })();
  return available;
}

export interface TestDatabase {
  readonly name: string;
  readonly url: string;
  /** Runs SQL as the admin user inside the test database. */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  drop(): Promise<void>;
}

/**
 * `fastCommits` turns off synchronous_commit for the database: commits survive a seqgate crash but
 * not a PostgreSQL crash. For suites that never crash PostgreSQL, so that they run in seconds.
 */
export async function createTestDatabase(prefix = 'seqgate_test', options: { fastCommits?: boolean } = {}): Promise<TestDatabase> {
  const { name, url, drop } = await scratchDatabase(PG_ADMIN_URL, prefix, options);
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pool.on('error', () => undefined);
  return {
    name,
    url,
    query: (text, values) => pool.query(text, values),
    drop: async () => {
      await pool.end().catch(() => undefined);
      await drop();
    },
  };
}

/**
 * An empty database with a random name (`prefix` and 12 hex digits) on the server at `adminUrl`,
 * and how to drop it again (closing whatever is still connected): for tests, the soak and the
 * benchmark's PostgreSQL arms.
 */
export async function scratchDatabase(
  adminUrl: string,
  prefix: string,
  options: { fastCommits?: boolean } = {},
): Promise<{ name: string; url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
    if (options.fastCommits) await admin.query(`ALTER DATABASE ${name} SET synchronous_commit = off`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    name,
    url: url.toString(),
    drop: async () => {
      const a = new pg.Client({ connectionString: adminUrl });
      await a.connect();
      try {
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}

/**
 * The PostgreSQL twin of DbChecker (test/support/db-checker.ts): the same questions, answered with
 * raw SQL against the seqgate schema. Lock placeholders (a stream at seq 0, a document at
 * version 0) read as "never written", exactly as the store itself treats them.
 */
export class PgChecker {
  constructor(
    private readonly db: Pick<TestDatabase, 'query'>,
    private readonly tenant = 'default',
  ) {}

  async head(stream: string): Promise<{ epoch: number; seq: number; prunedThrough: number; ackCount: number } | undefined> {
    const r = (
      await this.db.query<{ epoch: string; seq: string; pruned_through: string; ack_count: string }>(
        'SELECT epoch, seq, pruned_through, ack_count FROM seqgate.streams WHERE tenant = $1 AND name = $2 AND seq > 0',
        [this.tenant, stream],
      )
    ).rows[0];
    return r && { epoch: Number(r.epoch), seq: Number(r.seq), prunedThrough: Number(r.pruned_through), ackCount: Number(r.ack_count) };
  }

  async countAcks(stream: string): Promise<number> {
    return (
      await this.db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM seqgate.acks a JOIN seqgate.streams s ON s.id = a.stream_id WHERE s.tenant = $1 AND s.name = $2',
        [this.tenant, stream],
      )
    ).rows[0]!.n;
  }

  async ack(
    stream: string,
    epoch: number,
    seq: number,
  ): Promise<
    | {
        outcome: 'applied' | 'version_conflict';
        key: string;
        version: number;
        deleted: boolean;
        ifVersion: number | null;
        committedAt: number;
        fingerprint: Buffer;
      }
    | undefined
  > {
    const r = (
      await this.db.query<{
        outcome: number;
        key: string;
        version: string;
        deleted: boolean;
        if_version: string | null;
        committed_at: string;
        fingerprint: Buffer;
      }>(
        `SELECT a.outcome, a.key, a.version, a.deleted, a.if_version, a.committed_at, a.fingerprint
         FROM seqgate.acks a JOIN seqgate.streams s ON s.id = a.stream_id
        WHERE s.tenant = $1 AND s.name = $2 AND a.epoch = $3 AND a.seq = $4`,
        [this.tenant, stream, epoch, seq],
      )
    ).rows[0];
    return (
      r && {
        outcome: r.outcome === 0 ? 'applied' : 'version_conflict',
        key: r.key,
        version: Number(r.version),
        deleted: r.deleted,
        ifVersion: r.if_version === null ? null : Number(r.if_version),
        committedAt: Number(r.committed_at),
        fingerprint: r.fingerprint,
      }
    );
  }

  async document(key: string): Promise<{ version: number; deleted: boolean; stateBytes: Buffer | null } | undefined> {
    const r = (
      await this.db.query<{ version: string; deleted: boolean; state: Buffer | null }>(
        'SELECT version, deleted, state FROM seqgate.documents WHERE tenant = $1 AND key = $2 AND version > 0',
        [this.tenant, key],
      )
    ).rows[0];
    return r && { version: Number(r.version), deleted: r.deleted, stateBytes: r.state };
  }
}
