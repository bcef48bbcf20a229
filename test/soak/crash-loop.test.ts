import { describe, expect, it } from 'vitest';
import { runSoak, SHORT_RUN } from './soak.js';

/**
 * The short crash-loop soak of the default test command: 16 clients × 8 owned streams and two
 * writers sharing one stream, with gaps, late puts into skipped seqs, reused seqs, duplicates of
 * acked puts and client disconnects, while the server process is SIGKILLed every 0.2–3 s and
 * restarted on the same file. `npm run soak -- --minutes N` runs the same thing for longer.
 * SEQGATE_SOAK_SEED fixes the payloads and random streams of a run; how they interleave with the
 * kills depends on timing, so a failure is reproduced by rerunning, not replayed exactly.
 */

describe('crash-loop soak (short run)', () => {
  it('loses no acked put, invents none and applies none twice across at least 10 SIGKILLs and 10,000 acked puts', async () => {
    const seed = Number(process.env.SEQGATE_SOAK_SEED ?? Math.floor(Math.random() * 2 ** 31));
    const result = await runSoak({ ...SHORT_RUN, seed });
    const summary = {
      seed,
      kills: result.kills.length,
      acked: result.acked,
      failed: result.failed,
      killsWithPutsInFlight: result.kills.filter((k) => k.inFlight > 0).length,
      durationMs: result.durationMs,
      stats: result.stats,
    };
    console.log(`crash-loop soak: ${JSON.stringify(summary)}`);

    expect(result.violations, `violations (seed ${seed}, ${result.violationCount} in all)`).toEqual([]);
    expect(result.check?.integrity, 'PRAGMA integrity_check').toEqual(['ok']);
    expect(result.check?.unresolved, 'puts never answered').toBe(0);
    expect(result.cleanExit, 'SIGTERM after the run exits 0').toBe(true);
    // Without these the run would not have tested what it claims.
    expect(result.kills.length, `SIGKILLs (seed ${seed})`).toBeGreaterThanOrEqual(SHORT_RUN.minKills);
    expect(result.acked, `acked puts (seed ${seed})`).toBeGreaterThanOrEqual(SHORT_RUN.minAcked);
    expect(summary.killsWithPutsInFlight, 'kills that hit puts in flight').toBeGreaterThanOrEqual(SHORT_RUN.minKills / 2);
    expect(result.stats.resendsReplayed, 'resent unknown puts that had committed before their ack was lost').toBeGreaterThan(0);
    expect(result.stats.duplicatesReplayed, 'deliberate duplicates of acked puts answered with their ack').toBeGreaterThan(0);
    expect(result.stats.lateSent, 'late puts into skipped seqs').toBeGreaterThan(0);
    expect(result.stats.reusesSent, 'puts reusing an acked seq with another payload').toBeGreaterThan(0);
    expect(result.stats.sharedStale, 'writes of the shared stream passed by the other writer').toBeGreaterThan(0);
    expect(result.stats.clientDisconnects, 'disconnects by clients').toBeGreaterThan(0);
  }, 150_000);
});
