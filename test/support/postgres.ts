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
      if (process.env['CI']) throw new Error(`PostgreSQL is required under CI and did not answer at ${PG_ADMIN_URL}: ${(err as Error).message}`);
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
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
    if (options.fastCommits) await admin.query(`ALTER DATABASE ${name} SET synchronous_commit = off`);
  } finally {
    await admin.end();
  }
  const url = new URL(PG_ADMIN_URL);
  url.pathname = `/${name}`;
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  pool.on('error', () => undefined);
  return {
    name,
    url: url.toString(),
    query: (text, values) => pool.query(text, values),
    drop: async () => {
      await pool.end().catch(() => undefined);
      const a = new pg.Client({ connectionString: PG_ADMIN_URL });
      await a.connect();
      try {
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}
