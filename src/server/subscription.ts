import type { Logger } from 'pino';
import type WebSocket from 'ws';
import { errorBody, SeqgateError, type ErrorCode } from '../errors.js';
import type { ChangeFeed } from '../feed/change-feed.js';
import type { ChangesFrames } from '../feed/changes-frames.js';
import { formatOffset, incarnationTag, parseOffset } from '../feed/offset.js';
import { readablePrefixes } from '../feed/read-scope.js';
import { encodeMessage, type WireFormat } from '../protocol/codec.js';
import type { CorrelationId } from '../protocol/messages.js';
import type { SubscribeMessage } from '../protocol/subscribe-messages.js';
import type { ChangeLog } from '../store/change-log.js';
import type { Principal } from './auth.js';

/**
 * A connection's changefeed subscriptions. Each one reads the log from its offset and sends
 * `changes` messages; once the connection's unsent bytes pass the outbound high-water mark it
 * reads no more until they are back under half of it. A subscriber that stops reading so holds
 * about one high-water mark of server memory and falls under the same slow-consumer rule as a
 * client that leaves its results unread: the connection pauses above the mark and is closed with
 * 1008 after the timeout.
 */

export interface SubscriptionContext {
  readonly store: ChangeLog & { readonly incarnation: string };
  readonly feed: ChangeFeed;
  readonly enabled: boolean;
  readonly outboundHighWaterBytes: number;
  /** Encodes each page's `changes` messages once for every subscriber reading that page. */
  readonly frames: ChangesFrames;
  readonly log: Logger;
}

/** What a subscription needs of its connection. */
interface SubscriptionHost {
  readonly ws: WebSocket;
  readonly format: WireFormat;
  /** Re-evaluates backpressure after a send: pauses reading and arms the slow-consumer timer. */
  updateFlow(): void;
}

const MAX_SUBSCRIPTIONS_PER_CONNECTION = 64;

const PAGE_CHANGES = 1000;
const MAX_SCAN = 10_000;
/** A subscription at the tail re-checks at least this often, whatever the feed says. */
const IDLE_RECHECK_MS = 30_000;
const DRAIN_POLL_MS = 10;

interface Active {
  readonly id: CorrelationId;
  readonly abort: AbortController;
}

export class Subscriptions {
  private readonly active = new Map<string, Active>();

  constructor(
    private readonly ctx: SubscriptionContext,
    private readonly host: SubscriptionHost,
  ) {}

  get count(): number {
    return this.active.size;
  }

  subscribe(message: SubscribeMessage, principal: Principal): void {
    const slot = JSON.stringify(message.id);
    try {
      if (!this.ctx.enabled) throw new SeqgateError('UNKNOWN_TYPE', 'the changefeed is off on this server (--changefeed false)', { field: 'type' });
      if (this.active.has(slot)) throw new SeqgateError('INVALID_MESSAGE', 'a subscription with this id is active; unsubscribe first', { field: 'id' });
      if (this.active.size >= MAX_SUBSCRIPTIONS_PER_CONNECTION) {
        throw new SeqgateError('INVALID_MESSAGE', `at most ${MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection`, { field: 'id' });
      }
      const requested = parseOffset(message.from);
      if (requested === undefined) throw new SeqgateError('INVALID_OFFSET', 'from must be -1, now or an offset the server sent', { field: 'from' });
      const prefixes = readablePrefixes(principal, message.prefix);
      if (prefixes.length === 0) throw new SeqgateError('FORBIDDEN', `token may not read documents under "${message.prefix}"`);
      const sub: Active = { id: message.id, abort: new AbortController() };
      this.active.set(slot, sub);
      void this.run(sub, principal.tenant, prefixes, requested).catch((err: unknown) => {
        if (this.active.get(slot) !== sub) return;
        this.active.delete(slot);
        if (err instanceof SeqgateError) this.fail(message.id, err);
        else {
          this.ctx.log.warn({ err }, 'changefeed subscription failed');
          this.fail(message.id, new SeqgateError('STORAGE_UNAVAILABLE', 'the change log could not be read; subscribe again from your last offset'));
        }
      });
    } catch (err) {
      if (!(err instanceof SeqgateError)) throw err;
      this.fail(message.id, err);
    }
  }

  unsubscribe(id: CorrelationId): void {
    const slot = JSON.stringify(id);
    const sub = this.active.get(slot);
    if (sub !== undefined) {
      this.active.delete(slot);
      sub.abort.abort();
    }
    // Answered either way, so a client can wait for it: nothing of that id arrives after it.
    this.send({ type: 'unsubscribed', id });
  }

  /** The connection closed: every subscription stops reading. */
  closeAll(): void {
    for (const sub of this.active.values()) sub.abort.abort();
    this.active.clear();
  }

  private async run(sub: Active, tenant: string, prefixes: readonly string[], requested: NonNullable<ReturnType<typeof parseOffset>>): Promise<void> {
    const { store, feed } = this.ctx;
    const signal = sub.abort.signal;
    const offset = (n: number): string => formatOffset(n, store.incarnation);
    let at: number;
    if (requested.kind === 'start') at = 0;
    else {
      const tail = await store.changeTail(tenant);
      if (requested.kind === 'now') at = tail;
      else if (requested.incarnation !== incarnationTag(store.incarnation) || requested.position > tail) {
        throw new SeqgateError('OFFSET_UNKNOWN', 'this offset was not minted by this database (replaced or restored?); restart from a snapshot');
      } else at = requested.position;
    }
    if (signal.aborted) return;
    this.send({ type: 'subscribed', id: sub.id, offset: offset(at) });
    let announcedUpToDate = false;
    while (!signal.aborted) {
      await this.drained(signal);
      if (signal.aborted) return;
      const page = await feed.read(tenant, { after: at, prefixes, limit: PAGE_CHANGES, maxScan: MAX_SCAN });
      if (signal.aborted) return;
      if (page.expired) {
        throw new SeqgateError('OFFSET_EXPIRED', 'changes after this offset were removed by retention; restart from a snapshot', {
          earliest: offset(page.trimmedThrough),
        });
      }
      const upToDate = page.next >= page.tail;
      if (page.changes.length > 0) {
        // Subscribers woken by the same commit read the same page and are sent the same bytes.
        for (const message of this.ctx.frames.messages(page, this.host.format)) this.sendFrame(message.frame(sub.id));
        at = page.next;
        announcedUpToDate = upToDate;
        continue;
      }
      at = page.next;
      if (!upToDate) continue;
      if (!announcedUpToDate) {
        // Caught up: say so once, with the position, so the client can save it and show "live".
        this.send({ type: 'changes', id: sub.id, changes: [], next: offset(at), upToDate: true });
        announcedUpToDate = true;
      }
      await feed.waitForChange(tenant, at, IDLE_RECHECK_MS, signal);
      // Shutting down: the connection closes next, and its client resubscribes elsewhere.
      if (feed.stopped) return;
    }
  }

  /**
   * Above the high-water mark of unsent bytes, waits until the client has read down to half of
   * it. Going over the mark is what pauses the connection and arms its slow-consumer timer.
   */
  private async drained(signal: AbortSignal): Promise<void> {
    const high = this.ctx.outboundHighWaterBytes;
    if (this.host.ws.bufferedAmount <= high) return;
    this.host.updateFlow();
    while (!signal.aborted && this.host.ws.bufferedAmount > high / 2) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
    this.host.updateFlow();
  }

  private fail(id: CorrelationId, err: SeqgateError): void {
    const code: ErrorCode = err.code;
    this.send({ type: 'error', ...errorBody(code, err.message, err.details), id });
  }

  private send(message: object): void {
    this.sendFrame(encodeMessage(message, this.host.format));
  }

  private sendFrame(frame: string | Buffer): void {
    if (this.host.ws.readyState !== this.host.ws.OPEN) return;
    // JSON travels in text frames even when it comes as shared bytes.
    this.host.ws.send(frame, { binary: this.host.format === 'msgpack' }, () => this.host.updateFlow());
    this.host.updateFlow();
  }
}
