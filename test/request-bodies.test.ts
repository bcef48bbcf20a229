import { describe, expect, it } from 'vitest';
import { RequestBodies, type SharedBudget } from '../src/server/request-bodies.js';

/** HTTP request bodies inside the server-wide memory budget (issue 9, finding 5). */
describe('request bodies against the shared budget', () => {
  function budget(maxBytes: number, bytes = 0): SharedBudget {
    return { bytes, maxBytes, waiting: new Set<{ updateFlow(): void }>() };
  }

  it('take at most their share, and nothing once the whole budget is spent by WebSocket puts', () => {
    const b = budget(1000);
    const bodies = new RequestBodies(b);
    expect(bodies.maxBytes).toBe(500);
    expect(bodies.reserve(300)).toBe(true);
    expect(bodies.reserve(201)).toBe(false);
    expect(bodies.reserve(200)).toBe(true);
    expect(bodies.heldBytes).toBe(500);
    expect(b.bytes).toBe(500);
    bodies.release(500);
    expect(b.bytes).toBe(0);
    b.bytes = 950; // unanswered WebSocket puts
    expect(bodies.reserve(100)).toBe(false);
    expect(bodies.reserve(50)).toBe(true);
    expect(b.bytes).toBe(1000);
  });

  it('wake the connections that stopped reading for the budget once the total is back to half, as connections do', () => {
    const b = budget(1000, 400);
    const bodies = new RequestBodies(b);
    expect(bodies.reserve(400)).toBe(true);
    const woken: string[] = [];
    const conn = (name: string) => ({ updateFlow: () => woken.push(name) });
    b.waiting.add(conn('a'));
    b.waiting.add(conn('b'));
    bodies.release(100); // 700 left: still above half
    expect(woken).toEqual([]);
    expect(b.waiting.size).toBe(2);
    bodies.release(300); // 400 left
    expect(woken).toEqual(['a', 'b']);
    expect(b.waiting.size).toBe(0);
  });
});
