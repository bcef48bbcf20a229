import type { Logger } from 'pino';

/**
 * The one way the server hands a function to an event emitter, a timer or a watcher.
 *
 * An exception thrown by an event listener is rethrown by `emit` into Node's event loop, and a
 * rejected promise nobody awaits ends the process too (Node ≥ 15): either way one bad request, one
 * reset socket or one failing timer would take every client down with it. A guarded listener
 * logs the failure at error level and, when given, runs `recover` (answer 500, destroy a socket)
 * instead. A failing `recover` is logged as well and goes no further.
 */
export function guarded<A extends unknown[]>(
  log: Logger,
  what: string,
  listener: (...args: A) => unknown,
  recover?: (err: unknown, ...args: A) => void,
): (...args: A) => void {
  const fail = (err: unknown, args: A): void => {
    log.error({ err }, `${what} failed`);
    if (recover === undefined) return;
    try {
      recover(err, ...args);
    } catch (again) {
      log.error({ err: again }, `${what}: recovery failed`);
    }
  };
  return (...args: A): void => {
    try {
      const result = listener(...args);
      if (result instanceof Promise) result.catch((err: unknown) => fail(err, args));
    } catch (err) {
      fail(err, args);
    }
  };
}
