/**
 * HTTP request bodies held in memory, counted against the server-wide budget that WebSocket
 * connections' unanswered puts use (InFlightBudget in connection.ts, 256 MiB by default).
 *
 * Bodies may take at most `share` of the budget, so that clients holding bodies half-sent, or
 * many large ones at once, cannot make every WebSocket connection stop reading; past it a body is
 * refused (503 SERVER_BUSY) instead of being buffered. A body's bytes stay counted until its
 * request is answered, as a WebSocket put's bytes stay counted until its batch commits. Releasing
 * bytes wakes the connections that stopped reading for the budget, by the same rule they use.
 */

export interface SharedBudget {
  bytes: number;
  readonly maxBytes: number;
  readonly waiting: Set<{ updateFlow(): void }>;
}

export class RequestBodies {
  /** Bytes of request bodies held now. */
  private held = 0;
  readonly maxBytes: number;

  constructor(
    private readonly budget: SharedBudget,
    share = 0.5,
  ) {
    this.maxBytes = Math.floor(budget.maxBytes * share);
  }

  get heldBytes(): number {
    return this.held;
  }

  /** Counts `n` more bytes of a body; false (nothing counted) when that would pass either bound. */
  reserve(n: number): boolean {
    if (this.held + n > this.maxBytes || this.budget.bytes + n > this.budget.maxBytes) return false;
    this.held += n;
    this.budget.bytes += n;
    return true;
  }

  release(n: number): void {
    if (n <= 0) return;
    this.held -= n;
    const budget = this.budget;
    budget.bytes -= n;
    if (budget.bytes <= budget.maxBytes / 2 && budget.waiting.size > 0) {
      for (const conn of [...budget.waiting]) {
        budget.waiting.delete(conn);
        conn.updateFlow();
      }
    }
  }
}
