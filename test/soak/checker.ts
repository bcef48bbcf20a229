import { isDeepStrictEqual } from 'node:util';
import Database from 'better-sqlite3';
import { DbChecker, DEFAULT_TENANT, type AckRow as DbAckRow } from '../support/db-checker.js';
import { canonical, fingerprint } from './canonical.js';
import { EPOCH, stateOf, type PutRecord, type StreamBook } from './workload.js';

/**
 * The soak's verdict, read from the database file itself after the run, against what the clients
 * recorded. Each check names the guarantee it proves:
 * - integrity: PRAGMA integrity_check is ok;
 * - nothing invented: every stored ack is the ack of a write a client sent at that position with
 *   the same payload (fingerprint recomputed from the payload), and that client saw it acked;
 * - nothing lost: every put a client saw acked has its ack stored, equal to the ack received;
 * - nothing applied twice: per key, the versions in the acks and the document's version count
 *   exactly the applied puts (a state write +1, a delete of an existing document +1);
 * - state: each document holds the canonical payload of its last applied put, so the head seq's
 *   document holds the head put's payload; heads and ack counts match the acked writes.
 * - change log: each tenant's offsets run 1..last without a gap, and replaying the log from the
 *   start gives exactly the stored documents (version, deleted, state).
 */

export interface CheckResult {
  readonly violations: string[];
  readonly violationCount: number;
  readonly integrity: string[];
  readonly ackRows: number;
  readonly documents: number;
  readonly streams: number;
  readonly unresolved: number;
}

interface AckRow extends DbAckRow {
  epoch: number;
  seq: number;
}

const MAX_LISTED = 200;

export function checkDatabase(path: string, seed: number, books: readonly StreamBook[]): CheckResult {
  const violations: string[] = [];
  let violationCount = 0;
  const fail = (message: string): void => {
    violationCount++;
    if (violations.length < MAX_LISTED) violations.push(message);
  };

  const checker = new DbChecker(path);
  const raw = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const integrity = checker.integrityCheck();
    if (!isDeepStrictEqual(integrity, ['ok'])) fail(`PRAGMA integrity_check: ${integrity.slice(0, 10).join('; ')}`);

    let unresolved = 0;
    for (const book of books) {
      for (const rec of book.records) {
        if (rec.status === 'ok' || rec.status === 'failed') continue;
        unresolved++;
        fail(`${rec.label} was never resolved: status ${rec.status} after ${rec.sends} sends`);
      }
    }

    // One stream at a time: a long run's rows and indexes need not all be in memory at once.
    const rowsOf = raw.prepare(
      `SELECT a.epoch, a.seq, a.fingerprint, a.outcome, a.key, a.version, a.deleted, a.if_version, a.committed_at
         FROM acks_all AS a JOIN streams AS s ON s.id = a.stream_id WHERE s.tenant = ? AND s.name = ?`,
    );
    let ackRows = 0;
    let documents = 0;
    for (const book of books) {
      const bySeq = new Map<number, PutRecord[]>();
      for (const rec of book.records) {
        const list = bySeq.get(rec.seq);
        if (list === undefined) bySeq.set(rec.seq, [rec]);
        else list.push(rec);
      }

      // Nothing invented: each stored ack belongs to a write sent at that position with that payload.
      const rows = rowsOf.all(DEFAULT_TENANT, book.name) as AckRow[];
      ackRows += rows.length;
      const stored = new Set<number>();
      for (const row of rows) {
        const where = `stored ack ${book.name}#${row.seq} (epoch ${row.epoch})`;
        if (row.epoch !== EPOCH) {
          fail(`${where}: no client ever used epoch ${row.epoch}`);
          continue;
        }
        stored.add(row.seq);
        const candidates = bySeq.get(row.seq) ?? [];
        if (candidates.length === 0) {
          fail(`${where}: no put was ever sent at this position (a write that was never sent)`);
          continue;
        }
        const match = candidates.find((r) => fingerprintOf(seed, r).equals(row.fingerprint));
        if (match === undefined) {
          fail(`${where}: fingerprint ${row.fingerprint.toString('hex')} matches none of the ${candidates.length} puts sent at this position`);
          continue;
        }
        if (match.kind !== 'new') {
          fail(`${where}: it is the ${match.label}, which the server refused to the client`);
          continue;
        }
        if (match.status !== 'ok') {
          fail(`${where}: the client recorded ${match.label} as ${match.status} (${match.failure ?? 'no answer'})`);
          continue;
        }
        const got = storedAck(row);
        const want = receivedAck(match);
        if (!isDeepStrictEqual(got, want)) fail(`${where} is ${JSON.stringify(got)}, the client received ${JSON.stringify(want)}`);
      }

      const acked = book.records.filter((r) => r.status === 'ok').sort((a, b) => a.seq - b.seq);
      // Nothing lost: every ack a client received is stored.
      for (const rec of acked) {
        if (!stored.has(rec.seq)) fail(`${rec.label} was acked ${JSON.stringify(rec.ack)} but its ack is not stored: an acked put was lost`);
      }
      const head = checker.head(book.name);
      const last = acked[acked.length - 1];
      if (last === undefined) {
        if (head !== undefined) fail(`${book.name}: head ${JSON.stringify(head)} although no put of it was acked`);
        continue;
      }
      if (head === undefined || head.epoch !== EPOCH || head.seq !== last.seq || head.prunedThrough !== 0) {
        fail(`${book.name}: head ${JSON.stringify(head)}, expected epoch ${EPOCH} seq ${last.seq} (the highest acked write), prunedThrough 0`);
      }
      if (head !== undefined && (head.ackCount !== acked.length || rows.length !== acked.length)) {
        fail(`${book.name}: ${acked.length} writes acked, ${rows.length} ack rows stored, ack_count ${head.ackCount}`);
      }

      // Nothing applied twice: fold each key's applied writes in seq order, as the server must have.
      const byKey = new Map<string, PutRecord[]>();
      for (const rec of acked) {
        const list = byKey.get(rec.key);
        if (list === undefined) byKey.set(rec.key, [rec]);
        else list.push(rec);
      }
      for (const [key, recs] of byKey) {
        let version = 0;
        let live: PutRecord | undefined;
        for (const rec of recs) {
          if (!rec.deleted) {
            version++;
            live = rec;
          } else if (live !== undefined) {
            version++;
            live = undefined;
          }
          if (rec.ackVersion !== version) {
            fail(
              `${rec.label}: its ack says version ${rec.ackVersion}; the ${recs.indexOf(rec) + 1} applied puts of ${key} through it give version ${version}`,
            );
          }
        }
        const doc = checker.document(key);
        if (version === 0) {
          if (doc !== undefined) fail(`document ${key} exists (version ${doc.version}) although only deletes of a missing document applied to it`);
          continue;
        }
        documents++;
        const wantState = live === undefined ? null : canonical(stateOf(seed, live));
        if (doc === undefined) {
          fail(`document ${key} is missing; ${version} applied puts wrote it`);
          continue;
        }
        if (doc.version !== version || doc.deleted !== (live === undefined)) {
          fail(
            `document ${key}: version ${doc.version} deleted ${doc.deleted}; its ${recs.length} applied puts give version ${version} deleted ${live === undefined}`,
          );
        }
        const same = wantState === null ? doc.stateBytes === null : doc.stateBytes !== null && doc.stateBytes.equals(wantState);
        if (!same) {
          fail(
            `document ${key}: state ${doc.stateBytes?.toString('hex') ?? 'null'} is not the payload of its last applied put ` +
              `${recs[recs.length - 1]!.label} (${wantState?.toString('hex') ?? 'null'})`,
          );
        }
      }
      // Stated separately because it is the guarantee as the issue names it.
      const headDoc = checker.document(last.key);
      const headState = last.deleted ? null : canonical(stateOf(seed, last));
      const headOk = headState === null ? headDoc === undefined || headDoc.deleted : headDoc?.stateBytes?.equals(headState) === true;
      if (!headOk) fail(`${book.name}: document ${last.key} does not hold the payload of the head put ${last.label}`);
    }

    // Rows of streams no client wrote, or orphaned from their stream, escape the per-stream reads above.
    const totalRows = (raw.prepare('SELECT count(*) AS n FROM acks_all').get() as { n: number }).n;
    if (totalRows !== ackRows) fail(`${totalRows} ack rows in the database, ${ackRows} of them belong to the clients' streams`);
    const expectedStreams = books
      .filter((b) => b.maxOk > 0)
      .map((b) => b.name)
      .sort();
    const streams = checker.streams();
    if (!isDeepStrictEqual(streams, expectedStreams)) {
      fail(`streams in the database (${streams.length}) differ from the streams with acked writes (${expectedStreams.length})`);
    }
    const keys = checker.documentKeys();
    if (keys.length !== documents) fail(`${keys.length} documents in the database, ${documents} expected from the acked writes`);
    checkChangeLog(raw, fail);

    return { violations, violationCount, integrity, ackRows, documents, streams: streams.length, unresolved };
  } finally {
    raw.close();
    checker.close();
  }
}

/** The change log against the documents: no gap in offsets, and its replay is the documents. */
function checkChangeLog(raw: Database.Database, fail: (message: string) => void): void {
  // A snapshot of a PostgreSQL run, or a database from before the changefeed, has no log to check.
  if (raw.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes'").get() === undefined) return;
  const replayed = new Map<string, { version: number; deleted: number; state: Buffer | null }>();
  const counted = new Map<string, { n: number; last: number }>();
  for (const r of raw.prepare('SELECT tenant, offset, key, version, deleted, state FROM changes ORDER BY tenant, offset').iterate() as Iterable<{
    tenant: string;
    offset: number;
    key: string;
    version: number;
    deleted: number;
    state: Buffer | null;
  }>) {
    const c = counted.get(r.tenant) ?? { n: 0, last: 0 };
    if (r.offset !== c.last + 1) fail(`change log of ${r.tenant}: offset ${r.offset} follows ${c.last}`);
    counted.set(r.tenant, { n: c.n + 1, last: r.offset });
    replayed.set(`${r.tenant}\u0000${r.key}`, { version: r.version, deleted: r.deleted, state: r.state });
  }
  for (const l of raw.prepare('SELECT tenant, last_offset FROM change_logs').all() as Array<{ tenant: string; last_offset: number }>) {
    const c = counted.get(l.tenant);
    if (c?.last !== l.last_offset) fail(`change log of ${l.tenant}: ends at ${c?.last ?? 0}, its row says ${l.last_offset}`);
  }
  const docs = raw.prepare('SELECT tenant, key, version, deleted, state FROM documents').all() as Array<{
    tenant: string;
    key: string;
    version: number;
    deleted: number;
    state: Buffer | null;
  }>;
  for (const d of docs) {
    const r = replayed.get(`${d.tenant}\u0000${d.key}`);
    if (r === undefined || r.version !== d.version || r.deleted !== d.deleted || !isDeepStrictEqual(r.state, d.state)) {
      fail(
        `document ${d.key}: version ${d.version} deleted ${d.deleted === 1}; replaying the change log gives ${r === undefined ? 'nothing' : `version ${r.version} deleted ${r.deleted === 1}${isDeepStrictEqual(r.state, d.state) ? '' : ' with another state'}`}`,
      );
    }
  }
  if (replayed.size !== docs.length) fail(`the change log names ${replayed.size} documents, the database holds ${docs.length}`);
}

function fingerprintOf(seed: number, rec: PutRecord): Buffer {
  return fingerprint(rec.key, rec.deleted, rec.deleted ? undefined : stateOf(seed, rec), null);
}

function storedAck(row: AckRow): object {
  return {
    outcome: row.outcome === 0 ? 'applied' : row.outcome === 1 ? 'version_conflict' : `outcome code ${row.outcome}`,
    key: row.key,
    version: row.version,
    deleted: row.deleted === 1,
    ifVersion: row.if_version,
    committedAt: row.committed_at,
  };
}

function receivedAck(rec: PutRecord): object {
  const a = rec.ack!;
  return { outcome: 'applied', key: a.key, version: a.version, deleted: a.deleted, ifVersion: a.ifVersion ?? null, committedAt: a.committedAt };
}

/** After a SIGKILL, before the restart: every stream's head on disk is at or past every seq already acked. */
export function checkAfterKill(path: string, books: readonly StreamBook[]): string[] {
  const problems: string[] = [];
  let checker: DbChecker;
  try {
    checker = new DbChecker(path);
  } catch (err) {
    return [`the database file cannot be read after the kill: ${(err as Error).message}`];
  }
  try {
    for (const book of books) {
      if (book.maxOk === 0) continue;
      const head = checker.head(book.name);
      if (head === undefined || head.seq < book.maxOk) {
        problems.push(`${book.name}: head ${head?.seq ?? 'missing'} on disk after the kill, but seq ${book.maxOk} was acked`);
      }
    }
  } finally {
    checker.close();
  }
  return problems;
}
