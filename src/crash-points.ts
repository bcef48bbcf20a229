/**
 * Test-only crash points. With SEQGATE_TEST_CRASH_AT=<point>:<n> the server kills itself with
 * SIGKILL the n-th time it reaches <point>, so that tests can prove what a retry gets after a crash
 * at exactly that moment. Points: before-commit (inside the transaction, writes done, not yet
 * committed), before-sync (committed, the WAL's sync not yet started: --wal-sync background),
 * after-commit (committed, results not yet handed to connections), after-ack (a results frame was
 * written to the socket), settle-before-commit (inside the move of recent acks). Unset in
 * production: `reach` then costs one comparison.
 */
type CrashPoint = 'before-commit' | 'before-sync' | 'after-commit' | 'after-ack' | 'settle-before-commit';

const spec = process.env.SEQGATE_TEST_CRASH_AT;
const [armedPoint, countText] = spec === undefined ? [undefined, undefined] : spec.split(':');
let remaining = countText === undefined ? 1 : Number(countText);

export function reach(point: CrashPoint): void {
  if (armedPoint !== point) return;
  if (--remaining > 0) return;
  process.kill(process.pid, 'SIGKILL');
}
