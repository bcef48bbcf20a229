import WebSocket from 'ws';
import { SeqgateClient, type ClientOptions } from '@seqgate/client';
import type { Cleanup } from '../support/cleanup.js';

/** A client on `url` writing `stream`, with `ws` as its WebSocket and short test timeouts. */
export function newClient(url: string, stream: string, options: Partial<ClientOptions> = {}): SeqgateClient {
  return new SeqgateClient({
    url,
    stream,
    WebSocket,
    putTimeoutMs: 5000,
    connectTimeoutMs: 5000,
    reconnect: { initialDelayMs: 20, maxDelayMs: 500 },
    ...options,
  });
}

/**
 * `newClient`, but each client is closed after the test, given `closeTimeoutMs` to drain its outbox
 * (a test that leaves puts unanswered would otherwise hold the teardown for the default).
 */
export function closedAfterTest(cleanup: Cleanup, closeTimeoutMs: number): typeof newClient {
  return (url, stream, options = {}) => {
    const c = newClient(url, stream, options);
    cleanup.push(async () => {
      await c.close({ timeoutMs: closeTimeoutMs });
    });
    return c;
  };
}

export async function waitUntil(predicate: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Settles a promise into a value to assert on, without an unhandled rejection in between. */
export async function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: Error }> {
  try {
    return { ok: true, value: await p };
  } catch (error) {
    return { ok: false, error: error as Error };
  }
}

class Resolved extends Error {}

/** The error `p` rejects with; throws if it resolves instead. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- callers assert on fields of whichever error class they expect
export async function failure(p: Promise<unknown>): Promise<any> {
  let value: unknown;
  try {
    value = await p;
  } catch (error) {
    return error;
  }
  throw new Resolved(`expected a rejection, got ${JSON.stringify(value)}`);
}
