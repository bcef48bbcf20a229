import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { ChangeFeed } from '../feed/change-feed.js';
import { ChangesFrames } from '../feed/changes-frames.js';
import type { ChangeLog, ChangeRetention } from '../store/change-log.js';
import type { Authenticator } from './auth.js';
import type { RequestTarget } from './request-target.js';
import { createChangesHandler } from './changes-http.js';
import type { SubscriptionContext } from './subscription.js';

/**
 * The changefeed's parts inside one server: the wake-up signal for waiting readers, the HTTP
 * reader, the WebSocket subscriptions' context and the retention pass over the log.
 */
export class Changefeed {
  readonly feed: ChangeFeed;
  readonly http: (req: IncomingMessage, res: ServerResponse, target: RequestTarget) => void;
  readonly subscriptions: SubscriptionContext;
  private timer: NodeJS.Timeout | undefined;
  private trimming: Promise<void> | undefined;

  constructor(
    private readonly store: ChangeLog & { readonly incarnation: string },
    private readonly config: Config,
    auth: Authenticator,
    private readonly log: Logger,
    /** Counts a changefeed response closed as a slow consumer. */
    onSlowReader?: () => void,
  ) {
    this.feed = new ChangeFeed(store, { pollIntervalMs: config.changesPollIntervalMs }, log);
    this.http = createChangesHandler({
      store,
      feed: this.feed,
      auth,
      log,
      enabled: config.changefeed,
      maxKeyBytes: config.maxKeyBytes,
      maxResponseBytes: config.maxFrameBytes,
      longPollMs: config.changesLongPollMs,
      sseMaxMs: config.changesSseMaxMs,
      outboundHighWaterBytes: config.outboundHighWaterBytes,
      slowConsumerTimeoutMs: config.slowConsumerTimeoutMs,
      onSlowReader,
    });
    this.subscriptions = {
      store,
      feed: this.feed,
      enabled: config.changefeed,
      outboundHighWaterBytes: config.outboundHighWaterBytes,
      frames: new ChangesFrames(store.incarnation, Math.max(1024, Math.floor(config.maxFrameBytes / 2))),
      log,
    };
  }

  /** After every committed batch: readers waiting at the tail read again. */
  committed(): void {
    this.feed.poke();
  }

  start(): void {
    const { changesRetentionSeconds, changesMaxPerTenant } = this.config;
    if (changesRetentionSeconds === 0 && changesMaxPerTenant === 0) return;
    this.timer = setInterval(() => {
      this.trimming ??= this.trimPass()
        .then(
          () => undefined,
          (err: Error) => this.log.warn({ err }, 'change log retention failed; will retry'),
        )
        .finally(() => {
          this.trimming = undefined;
        });
    }, this.config.pruneIntervalMs);
    this.timer.unref();
  }

  /** One retention pass, in steps of pruneBatchRows with the event loop running between them. */
  async trimPass(now = Date.now()): Promise<number> {
    const c = this.config;
    const policy: ChangeRetention = {
      olderThan: c.changesRetentionSeconds === 0 ? -Infinity : now - c.changesRetentionSeconds * 1000,
      maxChanges: c.changesMaxPerTenant,
      compact: c.changesCompact,
    };
    let total = 0;
    for (;;) {
      const { removed, done } = await this.store.trimChanges(policy, c.pruneBatchRows);
      total += removed;
      if (done) return total;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.feed.stop();
    await this.trimming;
  }
}
