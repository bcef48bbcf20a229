#!/usr/bin/env node
import { ConfigError, helpText, loadConfig } from './config.js';
import { createLogger } from './log.js';
import { AuthConfigError } from './server/auth.js';
import { DatabaseUnusableError } from './store/sqlite-schema.js';
import { SeqgateServer } from './server/websocket-server.js';

/** Command-line entry: options from flags and environment, signals for an orderly stop. */
async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(helpText() + '\n');
    return;
  }
  let config;
  try {
    config = loadConfig(argv, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`seqgate: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const log = createLogger(config.logLevel, config.logFormat);
  // Last resort only: every listener of the server is guarded (src/server/listener-guard.ts), so
  // reaching this is a bug whose damage to in-memory state cannot be judged. Carrying on could ack
  // what was never committed; exiting is safe, since every acked put is on disk and a restarted
  // server answers retries from the stored acks. The handler exists so the cause lands in the JSON
  // log that operators collect, not only as a stack trace on stderr.
  const fatal =
    (kind: string) =>
    (err: unknown): void => {
      log.fatal({ err }, `${kind}; exiting so that a supervisor restarts a clean process`);
      process.exit(1);
    };
  process.on('uncaughtException', fatal('uncaught exception'));
  process.on('unhandledRejection', fatal('unhandled promise rejection'));
  let server: SeqgateServer;
  try {
    server = await SeqgateServer.start(config, { logger: log });
  } catch (err) {
    if (err instanceof ConfigError || err instanceof AuthConfigError) {
      process.stderr.write(`seqgate: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof DatabaseUnusableError) {
      process.stderr.write(`seqgate: refusing to serve the database: ${err.message}\n`);
      process.exit(3);
    }
    process.stderr.write(`seqgate: failed to start: ${(err as Error).message}\n`);
    log.fatal({ err }, 'seqgate failed to start');
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down: committing and answering what was received');
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.fatal({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => server.reloadTokens());
}

void main();
