import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fingerprint } from './canonical.js';
import { checkDatabase } from './checker.js';
import { runSoak, SHORT_RUN, type SoakResult } from './soak.js';
import { EPOCH, stateOf, type PutRecord } from './workload.js';

/**
 * The soak's checker must catch what it claims to catch: a tiny soak run leaves a database that
 * passes, then each test damages a copy of it the way a broken server would and expects the
 * checker to say so.
 */

let result: SoakResult;
let dir: string;
let copies = 0;

beforeAll(async () => {
  result = await runSoak({
    ...SHORT_RUN,
    seed: 4242,
    clients: 2,
    streamsPerClient: 2,
    minKills: 1,
    minAcked: 400,
    killIntervalMs: [300, 600],
    window: 16,
    keepDb: true,
  });
  dir = mkdtempSync(join(tmpdir(), 'seqgate-checker-'));
}, 120_000);

afterAll(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  if (result !== undefined) rmSync(join(result.dbPath, '..'), { recursive: true, force: true });
});

/** A fresh copy of the run's database, changed by `damage`, then checked. */
function checkDamaged(damage: (db: Database.Database) => void): string[] {
  const path = join(dir, `copy-${copies++}.db`);
  copyFileSync(result.dbPath, path);
  if (existsSync(result.dbPath + '-wal')) copyFileSync(result.dbPath + '-wal', path + '-wal');
  const db = new Database(path);
  try {
    damage(db);
  } finally {
    db.close();
  }
  return checkDatabase(path, result.seed, result.books).violations;
}

function streamId(db: Database.Database, name: string): number {
  return (db.prepare("SELECT id FROM streams WHERE tenant = 'default' AND name = ?").get(name) as { id: number }).id;
}

function acked(): PutRecord[] {
  return result.books.flatMap((b) => b.records.filter((r) => r.status === 'ok' && !b.shared));
}

describe('the soak checker', () => {
  it('passes the database of a clean run', () => {
    expect(result.violations).toEqual([]);
    expect(checkDamaged(() => undefined)).toEqual([]);
  });

  it('reports an acked put whose ack row is gone', () => {
    const rec = acked()[10]!;
    const v = checkDamaged((db) => {
      // The ack may not have been moved out of recent_acks yet.
      for (const table of ['acks', 'recent_acks'])
        db.prepare(`DELETE FROM ${table} WHERE stream_id = ? AND epoch = ? AND seq = ?`).run(streamId(db, rec.stream), EPOCH, rec.seq);
    });
    expect(v.join('\n')).toContain(`${rec.label} was acked`);
    expect(v.join('\n')).toContain('an acked put was lost');
  });

  it('reports an ack row at a position no put was sent to', () => {
    const book = result.books[0]!;
    const seq = book.records.reduce((m, r) => Math.max(m, r.seq), 0) + 5;
    const v = checkDamaged((db) => {
      db.prepare(
        `INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
         VALUES (?, ?, ?, zeroblob(16), 0, 'k', 1, 0, NULL, 1)`,
      ).run(streamId(db, book.name), EPOCH, seq);
    });
    expect(v.join('\n')).toContain(`stored ack ${book.name}#${seq} (epoch ${EPOCH}): no put was ever sent at this position`);
  });

  it('reports a stored ack whose fingerprint is not that of the put sent', () => {
    const rec = acked()[20]!;
    const v = checkDamaged((db) => {
      for (const table of ['acks', 'recent_acks']) {
        db.prepare(`UPDATE ${table} SET fingerprint = zeroblob(16) WHERE stream_id = ? AND epoch = ? AND seq = ?`).run(
          streamId(db, rec.stream),
          EPOCH,
          rec.seq,
        );
      }
    });
    expect(v.join('\n')).toContain(`stored ack ${rec.stream}#${rec.seq} (epoch ${EPOCH}): fingerprint 00000000000000000000000000000000 matches none`);
  });

  it('reports a late put into a skipped seq that was applied', () => {
    const late = result.books.flatMap((b) => b.records).find((r) => r.kind === 'late');
    expect(late, 'the run sent a late put').toBeDefined();
    const v = checkDamaged((db) => {
      const original = db.prepare('SELECT * FROM acks_all WHERE stream_id = ? ORDER BY seq LIMIT 1').get(streamId(db, late!.stream)) as Record<string, unknown>;
      const fp = checkFingerprintOf(late!);
      db.prepare(
        `INSERT INTO acks (stream_id, epoch, seq, fingerprint, outcome, key, version, deleted, if_version, committed_at)
         VALUES (?, ?, ?, ?, 0, ?, 1, 0, NULL, ?)`,
      ).run(original.stream_id, EPOCH, late!.seq, fp, late!.key, original.committed_at);
    });
    expect(v.join('\n')).toContain(`it is the ${late!.label}, which the server refused to the client`);
  });

  it('reports a stored ack that differs from the ack the client received', () => {
    const rec = acked()[30]!;
    const v = checkDamaged((db) => {
      for (const table of ['acks', 'recent_acks']) {
        db.prepare(`UPDATE ${table} SET committed_at = committed_at + 1 WHERE stream_id = ? AND epoch = ? AND seq = ?`).run(
          streamId(db, rec.stream),
          EPOCH,
          rec.seq,
        );
      }
    });
    expect(v.join('\n')).toContain(`stored ack ${rec.stream}#${rec.seq} (epoch ${EPOCH}) is {`);
  });

  it('reports a document applied once more than its puts', () => {
    const rec = acked().find((r) => !r.deleted)!;
    const v = checkDamaged((db) => {
      db.prepare("UPDATE documents SET version = version + 1 WHERE tenant = 'default' AND key = ?").run(rec.key);
    });
    expect(v.join('\n')).toMatch(new RegExp(`document ${rec.key}: version \\d+ deleted (true|false); its \\d+ applied puts give`));
  });

  it('reports a document whose state is not the payload of its last applied put', () => {
    const book = result.books.find((b) => !b.shared)!;
    const head = book.records.filter((r) => r.status === 'ok').sort((a, b) => b.seq - a.seq)[0]!;
    const v = checkDamaged((db) => {
      db.prepare("UPDATE documents SET state = x'80', deleted = 0 WHERE tenant = 'default' AND key = ?").run(head.key);
    });
    expect(v.join('\n')).toContain(`${book.name}: document ${head.key} does not hold the payload of the head put ${head.label}`);
  });

  it('reports a head behind the highest acked seq', () => {
    const book = result.books[1]!;
    const v = checkDamaged((db) => {
      db.prepare("UPDATE streams SET seq = seq - 1 WHERE tenant = 'default' AND name = ?").run(book.name);
    });
    expect(v.join('\n')).toContain(`${book.name}: head {`);
  });
});

function checkFingerprintOf(rec: PutRecord): Buffer {
  return fingerprint(rec.key, rec.deleted, rec.deleted ? undefined : stateOf(result.seed, rec), null);
}
