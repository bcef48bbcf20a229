import {
  isDocWrite,
  type Ack,
  type DocResult,
  type DocWrite,
  type Put,
  type PutResult,
  type Store,
  type StoredDocument,
  type StreamHead,
  type Write,
} from '../../src/store/store.js';
import type { Change, ChangeLog, ChangeOrigin, ChangePage, ChangeQuery, ChangeRetention, Snapshot } from '../../src/store/change-log.js';

/**
 * An in-memory model of PROTOCOL.md's gate, written from the spec's table and deliberately not
 * sharing code with src/gate.ts, so that the contract suite compares two readings of the spec.
 * It favours obviousness over speed: every rule is a line here.
 */

interface ModelStream {
  epoch: number;
  seq: number;
  prunedThrough: number;
  acks: Array<{ epoch: number; seq: number; fingerprint: string; ack: Ack }>;
}

interface ModelDoc {
  version: number;
  deleted: boolean;
  state: Buffer | null;
  updatedAt: number;
}

export interface ReferenceOptions {
  readonly contiguous: boolean;
  readonly ackCapPerStream: number;
  /** Acks a stream may hold above the cap before it is cut back to the cap (default 0). */
  readonly ackCapSlack?: number;
  readonly now: () => number;
  /** Makes the next apply fail as a whole, as a storage fault would. */
  failNext?: boolean;
}

interface ModelLog {
  last: number;
  trimmedThrough: number;
  changes: Change[];
}

export class ReferenceModel implements Store, ChangeLog {
  readonly incarnation = 'reference-model';
  /** The change log per tenant: every change in offset order, as the spec describes it. */
  readonly logs = new Map<string, ModelLog>();
  readonly streams = new Map<string, ModelStream>();
  readonly docs = new Map<string, ModelDoc>();

  constructor(readonly options: ReferenceOptions) {}

  readonly idempotency = new Map<string, { fingerprint: string; key: string; createdAt: number }>();

  apply(batch: readonly Put[]): Promise<PutResult[]>;
  apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>>;
  async apply(batch: readonly Write[]): Promise<Array<PutResult | DocResult>> {
    if (this.options.failNext) {
      this.options.failNext = false;
      throw new Error('injected storage fault');
    }
    const now = this.options.now();
    return batch.map((w) => (isDocWrite(w) ? this.writeDoc(w, now) : this.applyOne(w, now)));
  }

  private writeDoc(w: DocWrite, now: number): DocResult {
    if (w.op === 'create') {
      const id = `${w.tenant}|${w.scope}|${w.idempotencyKey}`;
      const prior = this.idempotency.get(id);
      if (prior) {
        if (prior.fingerprint !== w.fingerprint.toString('hex')) return { kind: 'idempotency_key_reused' };
        return { kind: 'created', key: prior.key, version: 1, deleted: false, createdAt: prior.createdAt, replay: true };
      }
      this.docs.set(`${w.tenant}/${w.key}`, { version: 1, deleted: false, state: w.state, updatedAt: now });
      this.appendChange(w.tenant, w.key, 1, false, w.state, { route: 'POST /v1/docs' }, now);
      this.idempotency.set(id, { fingerprint: w.fingerprint.toString('hex'), key: w.key, createdAt: now });
      return { kind: 'created', key: w.key, version: 1, deleted: false, createdAt: now, replay: false };
    }
    const did = `${w.tenant}/${w.key}`;
    const doc = this.docs.get(did);
    const exists = doc !== undefined && !doc.deleted;
    const version = doc?.version ?? 0;
    if (w.ifVersion !== null && !(w.ifVersion === 0 ? !exists : exists && version === w.ifVersion)) {
      return { kind: 'precondition_failed', key: w.key, version, deleted: !exists };
    }
    const same = w.state === null ? !exists : exists && doc.state !== null && doc.state.equals(w.state);
    if (same) return { kind: 'written', key: w.key, version, deleted: !exists, changed: false, updatedAt: doc?.updatedAt ?? now };
    this.docs.set(did, { version: version + 1, deleted: w.state === null, state: w.state, updatedAt: now });
    this.appendChange(
      w.tenant,
      w.key,
      version + 1,
      w.state === null,
      w.state,
      { route: w.state === null ? 'DELETE /v1/docs/{key}' : 'PUT /v1/docs/{key}' },
      now,
    );
    return { kind: 'written', key: w.key, version: version + 1, deleted: w.state === null, changed: true, updatedAt: now };
  }

  private applyOne(p: Put, now: number): PutResult {
    const sid = `${p.tenant}/${p.stream}`;
    const s = this.streams.get(sid) ?? { epoch: 0, seq: 0, prunedThrough: 0, acks: [] };
    const fp = p.fingerprint.toString('hex');

    // Row 2: a stored ack for (stream, epoch, seq) decides before anything else.
    const stored = s.acks.find((a) => a.epoch === p.epoch && a.seq === p.seq);
    if (stored) {
      return stored.fingerprint === fp
        ? { kind: 'ack', ack: stored.ack, replay: true }
        : { kind: 'rejected', outcome: 'sequence_reused', code: 'SEQUENCE_REUSED' };
    }
    const head = { epoch: s.epoch, seq: s.seq, prunedThrough: s.prunedThrough };
    // Row 3
    if (p.epoch < s.epoch) return { kind: 'rejected', outcome: 'fenced', code: 'FENCED', epoch: s.epoch };
    // Row 4
    if (p.epoch === s.epoch && p.seq <= s.seq) {
      return p.seq <= s.prunedThrough
        ? { kind: 'rejected', outcome: 'expired', code: 'EXPIRED', head }
        : { kind: 'rejected', outcome: 'stale', code: 'STALE', head };
    }
    // Row 5
    if (this.options.contiguous) {
      const expected = p.epoch === s.epoch ? s.seq + 1 : 1;
      if (p.seq !== expected) return { kind: 'rejected', outcome: 'gap', code: 'GAP', expected: { epoch: p.epoch, seq: expected } };
    }
    // Row 6
    if (p.epoch > s.epoch) {
      s.epoch = p.epoch;
      s.prunedThrough = 0;
    }
    // Rows 7 and 8: both consume the seq.
    const did = `${p.tenant}/${p.key}`;
    const doc = this.docs.get(did);
    const exists = doc !== undefined && !doc.deleted;
    const version = doc?.version ?? 0;
    let ack: Ack;
    if (p.ifVersion !== null && !(p.ifVersion === 0 ? !exists : exists && version === p.ifVersion)) {
      ack = {
        outcome: 'version_conflict',
        stream: p.stream,
        epoch: p.epoch,
        seq: p.seq,
        key: p.key,
        version,
        deleted: !exists,
        ifVersion: p.ifVersion,
        committedAt: now,
      };
    } else if (p.state === null) {
      if (exists) {
        this.docs.set(did, { version: version + 1, deleted: true, state: null, updatedAt: now });
        this.appendChange(p.tenant, p.key, version + 1, true, null, { stream: p.stream, epoch: p.epoch, seq: p.seq }, now);
      }
      const v = exists ? version + 1 : version;
      ack = { outcome: 'applied', stream: p.stream, epoch: p.epoch, seq: p.seq, key: p.key, version: v, deleted: true, committedAt: now };
    } else {
      this.docs.set(did, { version: version + 1, deleted: false, state: p.state, updatedAt: now });
      this.appendChange(p.tenant, p.key, version + 1, false, p.state, { stream: p.stream, epoch: p.epoch, seq: p.seq }, now);
      ack = { outcome: 'applied', stream: p.stream, epoch: p.epoch, seq: p.seq, key: p.key, version: version + 1, deleted: false, committedAt: now };
    }
    s.seq = p.seq;
    s.acks.push({ epoch: p.epoch, seq: p.seq, fingerprint: fp, ack });
    // Cap: past cap + slack, the slack + 1 oldest acks go; the newest (the head's) always stays.
    const slack = this.options.ackCapSlack ?? 0;
    if (s.acks.length > this.options.ackCapPerStream + slack) for (let i = 0; i <= slack; i++) this.dropAck(s, 0);
    this.streams.set(sid, s);
    return { kind: 'ack', ack, replay: false };
  }

  private dropAck(s: ModelStream, index: number): void {
    const [gone] = s.acks.splice(index, 1);
    if (gone && gone.epoch === s.epoch && gone.seq > s.prunedThrough) s.prunedThrough = gone.seq;
  }

  async heads(tenant: string, streams: readonly string[]): Promise<StreamHead[]> {
    return streams.map((stream) => {
      const s = this.streams.get(`${tenant}/${stream}`);
      return { stream, epoch: s?.epoch ?? 0, seq: s?.seq ?? 0, prunedThrough: s?.prunedThrough ?? 0 };
    });
  }

  async prune(olderThan: number): Promise<{ pruned: number; done: boolean }> {
    let pruned = 0;
    for (const s of this.streams.values()) {
      for (let i = s.acks.length - 1; i >= 0; i--) {
        const a = s.acks[i]!;
        const isLatest = a.epoch === s.epoch && a.seq === s.seq;
        if (!isLatest && a.ack.committedAt < olderThan) {
          this.dropAck(s, i);
          pruned++;
        }
      }
    }
    return { pruned, done: true };
  }

  async document(tenant: string, key: string): Promise<StoredDocument | undefined> {
    const d = this.docs.get(`${tenant}/${key}`);
    return d && { key, version: d.version, deleted: d.deleted, state: d.state, updatedAt: d.updatedAt };
  }

  async ready(): Promise<void> {}

  async pruneIdempotency(olderThan: number): Promise<number> {
    let n = 0;
    for (const [id, rec] of this.idempotency) {
      if (rec.createdAt < olderThan) {
        this.idempotency.delete(id);
        n++;
      }
    }
    return n;
  }

  private appendChange(tenant: string, key: string, version: number, deleted: boolean, state: Buffer | null, origin: ChangeOrigin, now: number): void {
    let log = this.logs.get(tenant);
    if (log === undefined) this.logs.set(tenant, (log = { last: 0, trimmedThrough: 0, changes: [] }));
    log.last++;
    log.changes.push({ offset: log.last, key, version, deleted, state, origin, committedAt: now });
  }

  async readChanges(tenant: string, q: ChangeQuery): Promise<ChangePage> {
    const log = this.logs.get(tenant) ?? { last: 0, trimmedThrough: 0, changes: [] };
    if (q.after < log.trimmedThrough) return { expired: true, changes: [], next: q.after, tail: log.last, trimmedThrough: log.trimmedThrough };
    const end = Math.min(log.last, q.after + Math.max(1, q.maxScan));
    const changes: Change[] = [];
    let next = Math.max(q.after, end);
    for (const c of log.changes) {
      if (c.offset <= q.after || c.offset > end) continue;
      if (!q.prefixes.some((p) => c.key.startsWith(p))) continue;
      if (changes.length >= q.limit) break;
      changes.push(c);
      if (changes.length === q.limit) next = c.offset;
    }
    if (q.limit <= 0 || q.prefixes.length === 0) next = Math.max(q.after, end);
    return { expired: false, changes, next, tail: log.last, trimmedThrough: log.trimmedThrough };
  }

  async changeTail(tenant: string): Promise<number> {
    return this.logs.get(tenant)?.last ?? 0;
  }

  async snapshot(tenant: string, prefixes: readonly string[], afterKey: string | null, limit: number): Promise<Snapshot> {
    const keys = [...this.docs.keys()]
      .filter((id) => id.startsWith(`${tenant}/`))
      .map((id) => id.slice(tenant.length + 1))
      .filter((k) => prefixes.some((p) => k.startsWith(p)))
      .filter((k) => afterKey === null || Buffer.compare(Buffer.from(k), Buffer.from(afterKey)) > 0)
      .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    const documents = [];
    for (const key of keys) {
      const d = this.docs.get(`${tenant}/${key}`)!;
      if (d.deleted || d.state === null) continue;
      documents.push({ key, version: d.version, state: d.state });
    }
    const page = documents.slice(0, limit);
    return { offset: this.logs.get(tenant)?.last ?? 0, documents: page, nextKey: documents.length > limit ? page[page.length - 1]!.key : null };
  }

  async trimChanges(policy: ChangeRetention, maxRows: number): Promise<{ removed: number; done: boolean }> {
    let removed = 0;
    for (const [tenant, log] of this.logs) {
      const capThrough = policy.maxChanges > 0 ? log.last - policy.maxChanges : 0;
      const keep: Change[] = [];
      let stillOld = true;
      for (const c of log.changes) {
        // Retention walks from the oldest change and stops at the first one still due to stay.
        stillOld &&= c.committedAt < policy.olderThan || c.offset <= capThrough;
        const superseded = (this.docs.get(`${tenant}/${c.key}`)?.version ?? 0) > c.version;
        if (stillOld && removed < maxRows && (!policy.compact || superseded)) {
          removed++;
          if (!policy.compact) log.trimmedThrough = c.offset;
        } else keep.push(c);
      }
      log.changes = keep;
    }
    return { removed, done: removed < maxRows };
  }

  async close(): Promise<void> {}
}
