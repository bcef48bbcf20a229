import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

/** pino, pretty on a terminal (or when asked), JSON lines otherwise. Tokens and states are never logged. */
export function createLogger(level: string, format: 'auto' | 'pretty' | 'json'): Logger {
  const usePretty = format === 'pretty' || (format === 'auto' && process.stdout.isTTY === true);
  const options = { level, base: { service: 'seqgate' } };
  if (!usePretty) return pino(options);
  return pino(options, pretty({ sync: true, colorize: process.stdout.isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service' }));
}
