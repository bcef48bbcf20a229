import { createServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { ConfigError, defaultConfig, type Config } from '../config.js';
import { ERRORS, errorBody } from '../errors.js';
import { createLogger, type Logger } from '../log.js';
import { PROTOCOL_VERSION, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK } from '../protocol/codec.js';
import { limitsOf, type Limits } from '../protocol/messages.js';
import { Pruner } from '../store/pruner.js';
import { PostgresStore } from '../store/postgres-store.js';
import { SqliteStore } from '../store/sqlite-store.js';
import type { Store } from '../store/store.js';
import { SEQGATE_VERSION } from '../version.js';
import { Authenticator, bearerToken, isLoopbackHost } from './auth.js';
import { Changefeed } from './changefeed.js';
import { Committer, type BatchInfo } from './committer.js';
import { CLOSE_GRACE_MS, Connection, type InFlightBudget } from './connection.js';
import { createHttpHandler } from './http-api.js';
import { guarded } from './listener-guard.js';
import { Metrics } from './metrics.js';
import { RequestBodies, type SharedBudget } from './request-bodies.js';
import { parseRequestTarget } from './request-target.js';
import { TokensFileWatch } from './tokens-file-watch.js';

/**
 * Where a put enters: the HTTP server that accepts WebSocket upgrades, the set of connections,
 * the heartbeat sweep and an orderly shutdown. Puts go from each Connection to the shared
 * Committer, which hands batches to the Store.
 */

const INTERNAL_ERROR = errorBody('STORAGE_UNAVAILABLE', 'internal error');

/** A refused socket whose peer never reads its answer is destroyed after this long anyway. */
const REFUSED_SOCKET_GRACE_MS = 2000;
/** Shutdown waits this long for the answers to every put already read to be sent. */
const SHUTDOWN_ANSWER_WAIT_MS = 5000;
/** How often shutdown looks whether every connection has sent its answers. */
const SHUTDOWN_POLL_MS = 5;
/** Then it waits this long for clients to answer the 1001 close before cutting their sockets. */
const SHUTDOWN_CLOSE_GRACE_MS = 2000;

/**
 * Answers an upgrade request with an HTTP error and closes the socket once the answer is flushed,
 * so a client that ignores the answer cannot keep the socket (no HTTP timeout covers it any more).
 */
function refuseSocket(socket: Duplex, status: number, reason: string, error?: object, extraHeaders = ''): void {
  const body = error === undefined ? '' : JSON.stringify({ error });
  const head =
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\n${extraHeaders}` +
    (body === '' ? '' : 'Content-Type: application/json\r\n') +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n`;
  socket.end(head + body, () => socket.destroy());
  // A peer that never reads would keep 'finish' from firing.
  setTimeout(() => socket.destroy(), REFUSED_SOCKET_GRACE_MS).unref();
}

export interface StartOptions {
  /** A store to use instead of opening SQLite at config.dbPath (tests wrap stores this way). */
  readonly store?: Store;
  readonly logger?: Logger;
  /** Called after every committed (or failed) batch. */
  readonly onBatch?: (info: BatchInfo) => void;
  /** Overrides config.maxInFlightBytes (the server-wide budget of unanswered frame and body bytes). */
  readonly maxInFlightBytes?: number;
}

export class SeqgateServer {
  private readonly connections = new Set<Connection>();
  /** Connections that have not authenticated yet, oldest first (a Set keeps insertion order). */
  private readonly unauthenticated = new Set<Connection>();
  private readonly httpSockets = new Set<Socket>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private tokenWatch: TokensFileWatch | undefined;
  /** The last failed automatic reload, logged once rather than at every poll. */
  private tokenCheckFailure: string | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly config: Config,
    readonly store: Store,
    readonly log: Logger,
    readonly metrics: Metrics,
    private readonly auth: Authenticator,
    private readonly http: HttpServer,
    private readonly wss: WebSocketServer,
    private readonly committer: Committer,
    private readonly pruner: Pruner,
    readonly changefeed: Changefeed,
  ) {}

  static async start(overrides: Partial<Config> = {}, options: StartOptions = {}): Promise<SeqgateServer> {
    const config: Config = { ...defaultConfig(), ...overrides };
    const log = options.logger ?? createLogger(config.logLevel, config.logFormat);
    const auth = new Authenticator(config.tokensFile, config.tokens);
    if (!auth.enabled && !isLoopbackHost(config.host) && !config.allowInsecureOpen) {
      throw new ConfigError(
        `refusing to listen on ${config.host} without tokens: configure --tokens-file (or SEQGATE_TOKENS), ` +
          'bind a loopback address, or set --allow-insecure-open',
      );
    }
    if (config.store === 'postgres' && config.databaseUrl === '') {
      throw new ConfigError('--store postgres needs --database-url (or SEQGATE_DATABASE_URL, or DATABASE_URL)');
    }
    const store =
      options.store ??
      (config.store === 'postgres'
        ? await PostgresStore.open({
            connectionString: config.databaseUrl,
            contiguous: config.contiguous,
            ackCapPerStream: config.ackCapPerStream,
            ackCapSlack: config.ackCapSlack,
            poolSize: config.pgPoolSize,
            changeLog: config.changefeed,
            onEvent: (e) => {
              if (e.kind === 'retry') log.debug({ err: e.cause, attempt: e.attempt }, 'batch decided again after a lock or connection failure');
              else if (e.kind === 'outcome-unknown') log.warn({ err: e.cause, txid: e.txid }, 'connection lost after COMMIT was sent; resolving the outcome');
              else log.info({ txid: e.txid, status: e.status }, 'outcome of a batch resolved');
            },
          })
        : new SqliteStore({
            path: config.dbPath,
            synchronous: config.synchronous,
            contiguous: config.contiguous,
            ackCapPerStream: config.ackCapPerStream,
            ackCapSlack: config.ackCapSlack,
            walSync: config.walSync,
            walCheckpoint: config.walCheckpoint,
            checkpointIntervalMs: config.walCheckpointIntervalMs,
            maxWalBytes: config.maxWalBytes,
            onCheckpointError: (err) => log.warn({ err }, 'WAL checkpoint failed; the next one retries'),
            ackSettleRows: config.ackSettleRows,
            settleStepRows: config.ackSettleStepRows,
            onSettleError: (err) => log.warn({ err }, 'moving recent acks to the per-stream table failed; the next batch retries'),
            startupCheck: config.startupCheck,
            maxPages: config.maxDbPages,
            changeLog: config.changefeed,
            onFileLost: (lost) => {
              if (lost !== undefined)
                log.error({ err: lost, path: lost.path }, 'database file removed or replaced while open; refusing every write until restart');
              else log.warn({ db: config.dbPath }, 'database files are back at their paths; accepting writes again');
            },
          }));
    let committer: Committer | undefined;
    const metrics = new Metrics({ connections: () => server.connectionCount, putsInFlight: () => committer?.inFlight ?? 0 });
    const changefeed = new Changefeed(store, config, auth, log, () => metrics.slowConsumers.inc({ transport: 'http' }));
    committer = new Committer(
      store,
      config.maxBatchPuts,
      guarded(log, 'batch observer', (info: BatchInfo) => {
        changefeed.committed();
        metrics.observeBatch(info);
        options.onBatch?.(info);
      }),
      log,
      config.batchWaitMs,
      config.pipelineMinPuts,
    );
    const pruner = new Pruner(
      store,
      {
        retentionMs: config.ackRetentionSeconds * 1000,
        idempotencyRetentionMs: config.idempotencyRetentionSeconds * 1000,
        intervalMs: config.pruneIntervalMs,
        batchRows: config.pruneBatchRows,
        onPruned: (n) => metrics.prunedAcks.inc(n),
      },
      log,
    );

    if (config.httpHeadersTimeoutMs > config.httpRequestTimeoutMs) {
      throw new ConfigError(`httpHeadersTimeoutMs (${config.httpHeadersTimeoutMs}) must not exceed httpRequestTimeoutMs (${config.httpRequestTimeoutMs})`);
    }
    const http = createServer({
      headersTimeout: config.httpHeadersTimeoutMs,
      requestTimeout: config.httpRequestTimeoutMs,
      // Node checks both timeouts on this period (30 s by default), so it bounds how late they hit.
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(config.httpHeadersTimeoutMs / 4))),
    });
    const wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.maxFrameBytes,
      perMessageDeflate: false,
      // ws's own wait for a close handshake the server started (30 s by default); ws 8.23 has
      // the option, @types/ws does not list it yet.
      ...({ closeTimeout: CLOSE_GRACE_MS } as object),
      // The first subprotocol the client offers that this server speaks wins (RFC 6455 4.2.2).
      handleProtocols: (protocols) => {
        for (const p of protocols) if (p === SUBPROTOCOL_JSON || p === SUBPROTOCOL_MSGPACK) return p;
        return false;
      },
    });
    const server: SeqgateServer = new SeqgateServer(config, store, log, metrics, auth, http, wss, committer, pruner, changefeed);
    server.attach(options.maxInFlightBytes ?? config.maxInFlightBytes);

    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(config.port, config.host, () => {
        http.off('error', reject);
        // A listening server emits 'error' for accept failures (libuv absorbs EMFILE, not all of
        // them); without a listener that would be thrown into the event loop.
        http.on('error', (err) => log.error({ err }, 'HTTP server error; still listening'));
        resolve();
      });
    });
    pruner.start();
    changefeed.start();
    server.watchTokens();
    log.info(
      {
        url: server.url,
        store: config.store,
        db: config.store === 'postgres' ? withoutPassword(config.databaseUrl) : config.dbPath,
        synchronous: config.synchronous,
        contiguous: config.contiguous,
        incarnation: store.incarnation,
        auth: auth.enabled ? 'tokens' : 'open',
      },
      'seqgate listening',
    );
    return server;
  }

  get port(): number {
    return (this.http.address() as AddressInfo).port;
  }

  get url(): string {
    const host = this.config.host.includes(':') ? `[${this.config.host}]` : this.config.host;
    return `ws://${host}:${this.port}`;
  }

  get limits(): Limits {
    return limitsOf(this.config);
  }

  /** Runs one pruning pass now; returns how many acks went. */
  pruneNow(): Promise<number> {
    return this.pruner.runPass();
  }

  private attach(maxInFlightBytes: number): void {
    const limits = this.limits;
    const budget: InFlightBudget = {
      bytes: 0,
      maxBytes: maxInFlightBytes,
      waiting: new Set(),
      unauthenticatedPartialBytes: 0,
      // Messages half-sent by clients that have not shown a token get a small share of the budget.
      maxUnauthenticatedPartialBytes: Math.floor(maxInFlightBytes / 16),
      unauthenticatedWaiting: new Set(),
    };
    this.acceptHttp(budget);
    const welcome = {
      type: 'welcome',
      protocol: PROTOCOL_VERSION,
      server: `seqgate/${SEQGATE_VERSION}`,
      incarnation: this.store.incarnation,
      contiguous: this.config.contiguous,
      limits,
    };
    const context = {
      store: this.store,
      committer: this.committer,
      limits,
      flow: this.config,
      budget,
      auth: this.auth,
      metrics: this.metrics,
      log: this.log,
      welcome: () => welcome,
      onClose: (conn: Connection) => {
        this.connections.delete(conn);
        this.unauthenticated.delete(conn);
      },
      onAuthenticated: (conn: Connection) => this.unauthenticated.delete(conn),
      changes: this.changefeed.subscriptions,
    };

    const upgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
      // From here on the socket is a WebSocket candidate: it counts against maxConnections.
      this.httpSockets.delete(socket as Socket);
      // Node hands over the socket without its own error handler: a reset after a refusal below
      // would otherwise be an unhandled 'error' event. ws adds its own once the handshake runs.
      socket.on('error', (err) => this.log.debug({ err }, 'upgrade socket error'));
      if (this.closing) {
        refuseSocket(socket, 503, 'Service Unavailable');
        return;
      }
      const target = parseRequestTarget(req.url);
      if (target === undefined) {
        refuseSocket(socket, 400, 'Bad Request', errorBody('INVALID_TARGET', 'the request target must be a path such as /'));
        return;
      }
      // Browsers cannot set headers on a WebSocket: they may pass ?token= or send it in the hello.
      const token = bearerToken(req.headers.authorization) ?? target.query.get('token') ?? undefined;
      let principal = this.auth.authenticate(token);
      if (token !== undefined && principal === undefined) {
        this.log.info({ remote: req.socket.remoteAddress }, 'refused upgrade with an invalid token');
        refuseSocket(socket, 401, 'Unauthorized', undefined, 'WWW-Authenticate: Bearer realm="seqgate"\r\n');
        return;
      }
      if (token === undefined && this.auth.enabled) principal = undefined;
      this.wss.handleUpgrade(
        req,
        socket,
        head,
        guarded(
          this.log,
          'WebSocket accept',
          (ws: WebSocket) => {
            // Connections that have not authenticated never keep out one that has a token: the
            // oldest of them makes room, and they have a smaller cap of their own.
            if (this.connections.size >= this.config.maxConnections) this.evictOldestUnauthenticated();
            if (principal === undefined && this.unauthenticated.size >= this.config.maxUnauthenticatedConnections) this.evictOldestUnauthenticated();
            if (this.connections.size >= this.config.maxConnections) {
              ws.close(ERRORS.TOO_MANY_CONNECTIONS.closeCode, 'TOO_MANY_CONNECTIONS');
              return;
            }
            const format = ws.protocol === SUBPROTOCOL_JSON ? 'json' : 'msgpack';
            const conn = new Connection(ws, socket as Socket, format, context, principal);
            this.connections.add(conn);
            if (principal === undefined) this.unauthenticated.add(conn);
          },
          (_err, ws) => ws.terminate(),
        ),
      );
    };
    this.http.on(
      'upgrade',
      guarded(this.log, 'WebSocket upgrade', upgrade, (_err, _req, socket) => {
        // Nothing written yet: the client gets a status. After a 101 only cutting the connection is honest.
        if (!socket.destroyed && (socket as Partial<Socket>).bytesWritten === 0) refuseSocket(socket, 500, 'Internal Server Error', INTERNAL_ERROR);
        else socket.destroy();
      }),
    );

    // One timer for every connection: each sweep pings, and drops whoever missed the last ping.
    this.sweepTimer = setInterval(
      guarded(this.log, 'heartbeat sweep', () => {
        for (const conn of this.connections) {
          if (conn.isPaused) continue;
          if (!conn.alive) {
            this.log.debug('dropping connection that missed a heartbeat');
            conn.ws.terminate();
            continue;
          }
          conn.alive = false;
          conn.ws.ping();
        }
      }),
      this.config.heartbeatIntervalMs,
    );
  }

  /**
   * HTTP requests: the API handler, with request bodies counted against `budget`, and the cap on
   * HTTP connections. A socket counts as HTTP from its accept until it is upgraded or closed.
   */
  private acceptHttp(budget: SharedBudget): void {
    // A flood must not turn into a flood of log lines: one warning per second at most, with a count.
    let refused = 0;
    let lastWarning = -Infinity;
    this.http.on(
      'connection',
      guarded(this.log, 'HTTP connection', (socket: Socket) => {
        if (this.httpSockets.size >= this.config.maxHttpConnections) {
          refused++;
          if (performance.now() - lastWarning >= 1000) {
            lastWarning = performance.now();
            this.log.warn({ refused, max: this.config.maxHttpConnections }, 'refused HTTP connections: maxHttpConnections reached');
            refused = 0;
          }
          refuseSocket(
            socket,
            503,
            'Service Unavailable',
            errorBody('TOO_MANY_CONNECTIONS', 'the server holds maxHttpConnections HTTP connections already'),
            'Retry-After: 1\r\n',
          );
          return;
        }
        this.httpSockets.add(socket);
        socket.once('close', () => this.httpSockets.delete(socket));
      }),
    );
    this.http.on(
      'request',
      createHttpHandler({
        store: this.store,
        committer: this.committer,
        limits: this.limits,
        auth: this.auth,
        metrics: this.metrics,
        log: this.log,
        bodies: new RequestBodies(budget),
        bodyIdleTimeoutMs: this.config.httpBodyIdleTimeoutMs,
        changes: this.changefeed.http,
      }),
    );
  }

  /** Open HTTP connections (not counting WebSockets). */
  get httpConnectionCount(): number {
    return this.httpSockets.size;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Closes the unauthenticated connection that has waited longest; it stops counting at once. */
  private evictOldestUnauthenticated(): void {
    const oldest = this.unauthenticated.values().next();
    if (oldest.done === true) return;
    const conn = oldest.value;
    this.unauthenticated.delete(conn);
    this.connections.delete(conn);
    this.log.info('closing the oldest unauthenticated connection to make room');
    conn.close(ERRORS.TOO_MANY_CONNECTIONS.closeCode, 'TOO_MANY_CONNECTIONS');
  }

  /**
   * Re-reads the tokens (SIGHUP) and closes every connection whose token is gone or whose grant
   * changed. On a bad file the old tokens stay in force.
   */
  reloadTokens(): void {
    try {
      this.auth.reload();
    } catch (err) {
      this.log.error({ err }, 'token reload failed; keeping the previous tokens');
      return;
    }
    this.tokenCheckFailure = undefined;
    this.revokeStale();
  }

  /** Reloads the tokens if the tokens file's content changed (file watch and poll). */
  private checkTokens(): void {
    let changed: boolean;
    try {
      changed = this.auth.reloadIfChanged();
    } catch (err) {
      const message = (err as Error).message;
      if (message !== this.tokenCheckFailure) this.log.error({ err }, 'token reload failed; keeping the previous tokens');
      this.tokenCheckFailure = message;
      return;
    }
    this.tokenCheckFailure = undefined;
    if (changed) this.revokeStale();
  }

  private revokeStale(): void {
    let closed = 0;
    for (const conn of this.connections) {
      const p = conn.principal;
      if (p !== undefined && !this.auth.isCurrent(p)) {
        conn.close(ERRORS.TOKEN_REVOKED.closeCode, 'TOKEN_REVOKED');
        closed++;
      }
    }
    this.log.info({ closed }, 'tokens reloaded');
  }

  private watchTokens(): void {
    if (this.config.tokensFile === '') return;
    this.tokenWatch = new TokensFileWatch(this.config.tokensFile, {
      pollMs: this.config.tokensFilePollMs,
      onCheck: () => this.checkTokens(),
      log: this.log,
    });
    this.tokenWatch.start();
  }

  /** Puts received and waiting for a batch (not counting the batch being committed). */
  get queuedPuts(): number {
    return this.committer.queuedPuts;
  }

  /**
   * Orderly shutdown: stop accepting, stop reading, commit and answer every put already read,
   * close each socket with 1001, close the store.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.sweepTimer);
      this.tokenWatch?.close();
      const stopped = new Promise<void>((resolve) => this.http.close(() => resolve()));
      for (const conn of this.connections) conn.stop();
      await this.pruner.stop();
      await this.committer.idle();
      await this.changefeed.stop();
      const deadline = Date.now() + SHUTDOWN_ANSWER_WAIT_MS;
      while ([...this.connections].some((c) => !c.settled) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, SHUTDOWN_POLL_MS));
      }
      const closed = [...this.connections].map(
        (conn) =>
          new Promise<void>((resolve) => {
            conn.ws.once('close', () => resolve());
            conn.close(ERRORS.GOING_AWAY.closeCode, 'GOING_AWAY');
          }),
      );
      await Promise.race([Promise.all(closed), new Promise((resolve) => setTimeout(resolve, SHUTDOWN_CLOSE_GRACE_MS))]);
      for (const conn of this.connections) conn.ws.terminate();
      this.wss.close();
      await this.store.close();
      this.http.closeAllConnections();
      await stopped;
      this.log.info('seqgate stopped');
    })();
    return this.closing;
  }
}

/** A connection URL fit for a log line: the password, if any, is replaced. */
function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable URL)';
  }
}
