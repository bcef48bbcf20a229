import type { Store } from '../store/store.js';

/**
 * The answer behind /readyz: whether the store can commit a write now (Store.ready).
 *
 * /readyz needs no token, so anyone can ask as often as they like. Requests that arrive while a
 * probe is running share its result: a flood of them costs one probe at a time, never a pool
 * connection each (the PostgreSQL store would otherwise hand its whole pool to probes and starve
 * puts). A probe that has not answered within `timeoutMs` (a lock held, a database unreachable)
 * is answered "not ready" rather than left hanging past a load balancer's own timeout.
 */

/** How long /readyz waits for a probe (HTTP.md §9); Kubernetes probes time out after 1 s by default, many balancers after 2–5 s. */
export const READINESS_TIMEOUT_MS = 2000;

class ReadinessTimeoutError extends Error {
  override readonly name = 'ReadinessTimeoutError';
  readonly code = 'READINESS_TIMEOUT';
}

export class Readiness {
  private probe: Promise<void> | undefined;

  constructor(
    private readonly store: Store,
    readonly timeoutMs: number,
  ) {}

  /** Resolves when a write can commit now; rejects with the reason otherwise. */
  check(): Promise<void> {
    if (this.probe === undefined) {
      const probe = this.store.ready().finally(() => {
        if (this.probe === probe) this.probe = undefined;
      });
      this.probe = probe;
    }
    const shared = this.probe;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new ReadinessTimeoutError(`the store did not answer a probe within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    return Promise.race([shared, deadline]).finally(() => clearTimeout(timer));
  }
}
