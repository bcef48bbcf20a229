import { Writable } from 'node:stream';
import { pino } from 'pino';

/**
 * A logger for an in-process server that keeps what it logs at warn and above: `messages` has
 * every record's msg, `errors` the whole records at level error and above. For tests that prove
 * nothing a client does makes the server log an error, or that wait for a warning.
 */
export function captureLogs(): { logger: pino.Logger; errors: Array<Record<string, unknown>>; messages: string[] } {
  const errors: Array<Record<string, unknown>> = [];
  const messages: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        const record = JSON.parse(line) as Record<string, unknown>;
        messages.push(record.msg as string);
        if (typeof record.level === 'number' && record.level >= 50) errors.push(record);
      }
      callback();
    },
  });
  return { logger: pino({ level: 'warn' }, sink), errors, messages };
}
