import { Writable } from 'node:stream';
import { pino } from 'pino';

/**
 * A logger for an in-process server that keeps every record at level error or above, for tests
 * that prove nothing a client does makes the server log an error (or that a failure is logged).
 */
export function errorLogCapture(): { logger: pino.Logger; errors: Array<Record<string, unknown>> } {
  const errors: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        const record = JSON.parse(line) as Record<string, unknown>;
        if (typeof record.level === 'number' && record.level >= 50) errors.push(record);
      }
      callback();
    },
  });
  return { logger: pino({ level: 'warn' }, sink), errors };
}
