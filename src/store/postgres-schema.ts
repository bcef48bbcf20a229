import type pg from 'pg';
import { DatabaseUnusableError } from './sqlite-schema.js';

/**
 * The PostgreSQL schema, versioned forward-only. Everything lives in the `seqgate` schema, so it
 * sits beside a database's other tables without touching them. Each migration is SQL run in one
 * transaction that holds the row lock on `seqgate.schema_version`: N servers starting together
 * queue on that row (a plain row lock, since advisory locks are missing on some Postgres-compatible
 * engines) and all succeed; the first migrates, the others find the work done.
 * Changing a released migration is forbidden: add a new one.
 *
 * The batch runs as two statements (src/store/postgres-store.ts): `begin_batch` takes the locks and
 * then reads, in fresh statements, what the gate needs; `write_batch` writes what the gate decided.
 */
/** begin_batch as released in migration 1 (kept verbatim: released migrations never change). */
const BEGIN_BATCH_V1 = `  CREATE FUNCTION seqgate.begin_batch(b json, cap bigint)
  RETURNS TABLE (kind smallint, id bigint, tenant text, name text, epoch bigint, seq bigint, n1 bigint, n2 bigint,
                 flag boolean, state bytea, fingerprint bytea, outcome smallint, akey text, if_version bigint, scope text)
  LANGUAGE plpgsql VOLATILE AS $fn$
  #variable_conflict use_column
  BEGIN
    INSERT INTO seqgate.streams AS s (tenant, name)
      SELECT x.t, x.n FROM json_to_recordset(b->'s') AS x(t text, n text) ORDER BY x.t COLLATE "C", x.n COLLATE "C"
      ON CONFLICT (tenant, name) DO NOTHING;
    PERFORM 1 FROM seqgate.streams s JOIN json_to_recordset(b->'s') AS x(t text, n text) ON s.tenant = x.t AND s.name = x.n
      ORDER BY s.tenant COLLATE "C", s.name COLLATE "C" FOR UPDATE OF s;
    INSERT INTO seqgate.documents AS d (tenant, key)
      SELECT x.t, x.k FROM json_to_recordset(b->'d') AS x(t text, k text) ORDER BY x.t COLLATE "C", x.k COLLATE "C"
      ON CONFLICT (tenant, key) DO NOTHING;
    PERFORM 1 FROM seqgate.documents d JOIN json_to_recordset(b->'d') AS x(t text, k text) ON d.tenant = x.t AND d.key = x.k
      ORDER BY d.tenant COLLATE "C", d.key COLLATE "C" FOR UPDATE OF d;
    INSERT INTO seqgate.idempotency AS i (tenant, scope, key)
      SELECT x.t, x.sc, x.k FROM json_to_recordset(b->'i') AS x(t text, sc text, k text)
      ORDER BY x.t COLLATE "C", x.sc COLLATE "C", x.k COLLATE "C"
      ON CONFLICT (tenant, scope, key) DO NOTHING;
    PERFORM 1 FROM seqgate.idempotency i JOIN json_to_recordset(b->'i') AS x(t text, sc text, k text)
      ON i.tenant = x.t AND i.scope = x.sc AND i.key = x.k
      ORDER BY i.tenant COLLATE "C", i.scope COLLATE "C", i.key COLLATE "C" FOR UPDATE OF i;

    RETURN QUERY SELECT 0::smallint, s.id, s.tenant, s.name, s.epoch, s.seq, s.pruned_through, s.ack_count,
        NULL::boolean, NULL::bytea, NULL::bytea, NULL::smallint, NULL::text, NULL::bigint, NULL::text
      FROM seqgate.streams s JOIN json_to_recordset(b->'s') AS x(t text, n text) ON s.tenant = x.t AND s.name = x.n;
    RETURN QUERY SELECT 1::smallint, NULL::bigint, d.tenant, d.key, NULL::bigint, NULL::bigint, d.version, d.updated_at,
        d.deleted, CASE WHEN x.full THEN d.state END, NULL::bytea, NULL::smallint, NULL::text, NULL::bigint, NULL::text
      FROM seqgate.documents d JOIN json_to_recordset(b->'d') AS x(t text, k text, "full" boolean) ON d.tenant = x.t AND d.key = x.k
      WHERE d.version > 0;
    RETURN QUERY SELECT 2::smallint, a.stream_id, NULL::text, NULL::text, a.epoch, a.seq, a.version, a.committed_at,
        a.deleted, NULL::bytea, a.fingerprint, a.outcome, a.key, a.if_version, NULL::text
      FROM json_to_recordset(b->'p') AS p(t text, n text, e bigint, q bigint)
      JOIN seqgate.streams s ON s.tenant = p.t AND s.name = p.n
      JOIN seqgate.acks a ON a.stream_id = s.id AND a.epoch = p.e AND a.seq = p.q
      WHERE (p.e, p.q) <= (s.epoch, s.seq);
    RETURN QUERY SELECT 3::smallint, s.id, NULL::text, NULL::text, o.epoch, o.seq, NULL::bigint, NULL::bigint,
        NULL::boolean, NULL::bytea, NULL::bytea, NULL::smallint, NULL::text, NULL::bigint, NULL::text
      FROM seqgate.streams s JOIN json_to_recordset(b->'s') AS x(t text, n text, c bigint) ON s.tenant = x.t AND s.name = x.n
      CROSS JOIN LATERAL (
        SELECT a.epoch, a.seq FROM seqgate.acks a WHERE a.stream_id = s.id ORDER BY a.epoch, a.seq
        LIMIT CASE WHEN s.ack_count + x.c > cap THEN x.c ELSE 0 END) o;
    RETURN QUERY SELECT 4::smallint, NULL::bigint, i.tenant, i.key, NULL::bigint, NULL::bigint, i.version, i.created_at,
        NULL::boolean, NULL::bytea, i.fingerprint, NULL::smallint, i.doc_key, NULL::bigint, i.scope
      FROM seqgate.idempotency i JOIN json_to_recordset(b->'i') AS x(t text, sc text, k text)
        ON i.tenant = x.t AND i.scope = x.sc AND i.key = x.k
      WHERE i.fingerprint IS NOT NULL;
    RETURN QUERY SELECT 9::smallint, txid_current(), NULL::text, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
        NULL::boolean, NULL::bytea, NULL::bytea, NULL::smallint, NULL::text, NULL::bigint, NULL::text;
  END
  $fn$;`;

export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE seqgate.meta (
    name  text PRIMARY KEY,
    value text NOT NULL
  );
  INSERT INTO seqgate.meta (name, value) VALUES ('incarnation', gen_random_uuid()::text), ('created_at', now()::text);

  -- Heads are never deleted: a stream's mark only moves forward, so an old seq cannot apply twice.
  -- A row at (0, 0) with no acks is a placeholder that a batch inserted to have something to lock;
  -- it reads exactly like a stream never written.
  CREATE TABLE seqgate.streams (
    id             bigserial PRIMARY KEY,
    tenant         text   NOT NULL,
    name           text   NOT NULL,
    epoch          bigint NOT NULL DEFAULT 0,
    seq            bigint NOT NULL DEFAULT 0,
    pruned_through bigint NOT NULL DEFAULT 0,
    ack_count      bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, name)
  );

  -- A deleted document keeps its row (state NULL) so that its version never restarts.
  -- version 0 is a lock placeholder: the document was never written.
  CREATE TABLE seqgate.documents (
    tenant     text    NOT NULL,
    key        text    NOT NULL,
    version    bigint  NOT NULL DEFAULT 0,
    deleted    boolean NOT NULL DEFAULT true,
    state      bytea,
    updated_at bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, key)
  );

  -- outcome: 0 applied, 1 version_conflict. Behaves like a queue: inserted at the head, deleted
  -- from the tail by the cap and the pruner (see docs/SCALE-OUT.md for vacuum settings).
  CREATE TABLE seqgate.acks (
    stream_id    bigint   NOT NULL,
    epoch        bigint   NOT NULL,
    seq          bigint   NOT NULL,
    fingerprint  bytea    NOT NULL,
    outcome      smallint NOT NULL,
    key          text     NOT NULL,
    version      bigint   NOT NULL,
    deleted      boolean  NOT NULL,
    if_version   bigint,
    committed_at bigint   NOT NULL,
    PRIMARY KEY (stream_id, epoch, seq)
  );
  CREATE INDEX acks_by_commit_time ON seqgate.acks (committed_at);
  ALTER TABLE seqgate.acks SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);

  -- The stored answer of an Idempotency-Key create. fingerprint NULL: a lock placeholder that the
  -- same transaction fills; it is never committed empty.
  CREATE TABLE seqgate.idempotency (
    tenant      text   NOT NULL,
    scope       text   NOT NULL,
    key         text   NOT NULL,
    fingerprint bytea,
    doc_key     text,
    version     bigint NOT NULL DEFAULT 0,
    created_at  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, scope, key)
  );
  CREATE INDEX idempotency_by_time ON seqgate.idempotency (created_at);

  -- Step one of a batch. Inserts placeholder rows, then locks streams, documents and idempotency
  -- keys, each sorted (C collation), in that order: every server takes the locks in one global
  -- order, so batches never deadlock on each other. Then, in statements that start after the locks
  -- are held (a VOLATILE function takes a fresh snapshot per statement under READ COMMITTED), it
  -- returns what the gate needs: heads, documents, acks the puts may replay, the oldest acks the
  -- cap may evict, idempotency records, and the transaction id (to resolve a lost COMMIT).
  -- kind: 0 stream, 1 document, 2 ack, 3 oldest ack, 4 idempotency record, 9 transaction id.
${BEGIN_BATCH_V1}

  -- Step two: write what the gate decided. The head guard (a head only moves forward) and the ack
  -- primary key are a second line of defence behind the locks; either failing rolls the batch back
  -- and the store decides it again.
  CREATE FUNCTION seqgate.write_batch(b json) RETURNS integer LANGUAGE plpgsql VOLATILE AS $fn$
  DECLARE
    moved integer;
  BEGIN
    UPDATE seqgate.streams AS t SET epoch = x.e, seq = x.q, pruned_through = x.p, ack_count = x.c
      FROM json_to_recordset(b->'s') AS x(i bigint, e bigint, q bigint, p bigint, c bigint)
      WHERE t.id = x.i AND (t.epoch, t.seq) < (x.e, x.q);
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved <> json_array_length(b->'s') THEN
      RAISE EXCEPTION 'a stream head would not move forward' USING ERRCODE = 'SGH01';
    END IF;
    DELETE FROM seqgate.acks AS a USING json_to_recordset(b->'s') AS x(i bigint, ee bigint, eq bigint)
      WHERE x.ee IS NOT NULL AND a.stream_id = x.i AND (a.epoch, a.seq) <= (x.ee, x.eq);
    INSERT INTO seqgate.acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
      SELECT x.i, x.e, x.q, decode(x.f, 'base64'), x.o, x.k, x.v, x.d, x.iv, x.ca
      FROM json_to_recordset(b->'a') AS x(i bigint, e bigint, q bigint, f text, o smallint, k text, v bigint, d boolean, iv bigint, ca bigint);
    INSERT INTO seqgate.documents AS t (tenant, key, version, deleted, state, updated_at)
      SELECT x.t, x.k, x.v, x.d, decode(x.s, 'base64'), x.u
      FROM json_to_recordset(b->'d') AS x(t text, k text, v bigint, d boolean, s text, u bigint)
      ON CONFLICT (tenant, key) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
        state = excluded.state, updated_at = excluded.updated_at;
    INSERT INTO seqgate.idempotency AS t (tenant, scope, key, fingerprint, doc_key, version, created_at)
      SELECT x.t, x.sc, x.k, decode(x.f, 'base64'), x.dk, x.v, x.ca
      FROM json_to_recordset(b->'i') AS x(t text, sc text, k text, f text, dk text, v bigint, ca bigint)
      ON CONFLICT (tenant, scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, doc_key = excluded.doc_key,
        version = excluded.version, created_at = excluded.created_at;
    RETURN moved;
  END
  $fn$;
  `,
  `
  -- The change log (transactional outbox) of the changefeed; see src/store/change-log.ts.
  -- One row per tenant: the last offset handed out and the highest one removed by retention.
  CREATE TABLE seqgate.change_logs (
    tenant          text   PRIMARY KEY,
    last_offset     bigint NOT NULL DEFAULT 0,
    trimmed_through bigint NOT NULL DEFAULT 0
  );
  -- origin: stream, epoch, seq for a put by sequence; route for an HTTP document write.
  CREATE TABLE seqgate.changes (
    tenant       text    NOT NULL,
    "offset"     bigint  NOT NULL,
    key          text    NOT NULL,
    version      bigint  NOT NULL,
    deleted      boolean NOT NULL,
    state        bytea,
    stream       text,
    epoch        bigint,
    seq          bigint,
    route        text,
    committed_at bigint  NOT NULL,
    PRIMARY KEY (tenant, "offset")
  );

  -- write_batch again, now also appending the batch's changes (its json gains 'c').
  CREATE OR REPLACE FUNCTION seqgate.write_batch(b json) RETURNS integer LANGUAGE plpgsql VOLATILE AS $fn$
  DECLARE
    moved integer;
    tn text;
    n bigint;
    base bigint;
  BEGIN
    UPDATE seqgate.streams AS t SET epoch = x.e, seq = x.q, pruned_through = x.p, ack_count = x.c
      FROM json_to_recordset(b->'s') AS x(i bigint, e bigint, q bigint, p bigint, c bigint)
      WHERE t.id = x.i AND (t.epoch, t.seq) < (x.e, x.q);
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved <> json_array_length(b->'s') THEN
      RAISE EXCEPTION 'a stream head would not move forward' USING ERRCODE = 'SGH01';
    END IF;
    DELETE FROM seqgate.acks AS a USING json_to_recordset(b->'s') AS x(i bigint, ee bigint, eq bigint)
      WHERE x.ee IS NOT NULL AND a.stream_id = x.i AND (a.epoch, a.seq) <= (x.ee, x.eq);
    INSERT INTO seqgate.acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
      SELECT x.i, x.e, x.q, decode(x.f, 'base64'), x.o, x.k, x.v, x.d, x.iv, x.ca
      FROM json_to_recordset(b->'a') AS x(i bigint, e bigint, q bigint, f text, o smallint, k text, v bigint, d boolean, iv bigint, ca bigint);
    INSERT INTO seqgate.documents AS t (tenant, key, version, deleted, state, updated_at)
      SELECT x.t, x.k, x.v, x.d, decode(x.s, 'base64'), x.u
      FROM json_to_recordset(b->'d') AS x(t text, k text, v bigint, d boolean, s text, u bigint)
      ON CONFLICT (tenant, key) DO UPDATE SET version = excluded.version, deleted = excluded.deleted,
        state = excluded.state, updated_at = excluded.updated_at;
    INSERT INTO seqgate.idempotency AS t (tenant, scope, key, fingerprint, doc_key, version, created_at)
      SELECT x.t, x.sc, x.k, decode(x.f, 'base64'), x.dk, x.v, x.ca
      FROM json_to_recordset(b->'i') AS x(t text, sc text, k text, f text, dk text, v bigint, ca bigint)
      ON CONFLICT (tenant, scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, doc_key = excluded.doc_key,
        version = excluded.version, created_at = excluded.created_at;
    -- The change log: per tenant, in C order (after every other lock of the batch), the log row is
    -- locked by this upsert until COMMIT. Offsets are so handed out in commit order: a transaction
    -- gets offset N+1 only after the one holding N has committed (or rolled back, in which case N
    -- was never visible and is handed out again). A reader can never see N+1 before N.
    FOR tn, n IN SELECT x.t, count(*) FROM json_to_recordset(b->'c') AS x(t text) GROUP BY x.t ORDER BY x.t COLLATE "C" LOOP
      INSERT INTO seqgate.change_logs AS l (tenant, last_offset) VALUES (tn, n)
        ON CONFLICT (tenant) DO UPDATE SET last_offset = l.last_offset + excluded.last_offset
        RETURNING l.last_offset - n INTO base;
      INSERT INTO seqgate.changes (tenant, "offset", key, version, deleted, state, stream, epoch, seq, route, committed_at)
        SELECT tn, base + x.n, x.k, x.v, x.d, decode(x.s, 'base64'), x.sn, x.e, x.q, x.r, x.ca
        FROM json_to_recordset(b->'c') AS x(t text, n bigint, k text, v bigint, d boolean, s text, sn text, e bigint, q bigint, r text, ca bigint)
        WHERE x.t = tn;
    END LOOP;
    RETURN moved;
  END
  $fn$;
  `,
  // 3: chunked cap eviction (--ack-cap-slack). begin_batch reads as many of a stream's oldest acks
  // as the batch may evict: none until the stream would pass cap + slack, then at most what takes
  // it back to the cap, and never more than slack + 1 per put.
  `
  DROP FUNCTION seqgate.begin_batch(json, bigint);
  ${BEGIN_BATCH_V1.replace(
    'CREATE FUNCTION seqgate.begin_batch(b json, cap bigint)',
    'CREATE FUNCTION seqgate.begin_batch(b json, cap bigint, slack bigint)',
  ).replace(
    'LIMIT CASE WHEN s.ack_count + x.c > cap THEN x.c ELSE 0 END) o;',
    'LIMIT CASE WHEN s.ack_count + x.c > cap + slack THEN least(s.ack_count + x.c - cap, x.c * (slack + 1)) ELSE 0 END) o;',
  )}
  `,
];

export const PG_SCHEMA_VERSION = MIGRATIONS.length;

/** SQLSTATEs of a concurrent CREATE ... IF NOT EXISTS losing a race: harmless, try again. */
const CREATE_RACE = new Set(['23505', '42P06', '42P07', '42710']);

/**
 * Brings the database to PG_SCHEMA_VERSION; returns the version it found. Refuses (exit 3) a
 * database written by a newer seqgate.
 */
export async function migratePostgres(client: pg.ClientBase): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      await client.query(`
        CREATE SCHEMA IF NOT EXISTS seqgate;
        CREATE TABLE IF NOT EXISTS seqgate.schema_version (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL);
        INSERT INTO seqgate.schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;`);
      break;
    } catch (err) {
      if (attempt >= 5 || !CREATE_RACE.has((err as { code?: string }).code ?? '')) throw err;
    }
  }
  await client.query('BEGIN');
  try {
    // The row lock serialises every server's migration: the others wait here, then see the new version.
    const found = Number((await client.query<{ version: number }>('SELECT version FROM seqgate.schema_version WHERE id = 1 FOR UPDATE')).rows[0]!.version);
    if (found > PG_SCHEMA_VERSION) {
      throw new DatabaseUnusableError(`database schema version ${found} is newer than this seqgate understands (${PG_SCHEMA_VERSION}); refusing to open it`);
    }
    for (let v = found; v < PG_SCHEMA_VERSION; v++) await client.query(MIGRATIONS[v]!);
    if (found < PG_SCHEMA_VERSION) await client.query('UPDATE seqgate.schema_version SET version = $1 WHERE id = 1', [PG_SCHEMA_VERSION]);
    await client.query('COMMIT');
    return found;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}
