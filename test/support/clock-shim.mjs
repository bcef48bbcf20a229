// A wall clock the test controls, loaded into the server process with
// `NODE_OPTIONS=--import <this file>`. The machine's clock is never touched.
//
// On SIGUSR2 the shim reads a number of milliseconds from the file named by
// SEQGATE_TEST_CLOCK_FILE and from then on adds it to Date.now() (and to `new Date()`), as a
// clock step would; performance.now(), the monotonic clock, is left alone, as a step leaves it.
// It confirms each step with a JSON line on stdout, {"msg": "test clock set", "offsetMs": N}.
import { readFileSync } from 'node:fs';

const file = process.env.SEQGATE_TEST_CLOCK_FILE;
if (!file) throw new Error('clock-shim: SEQGATE_TEST_CLOCK_FILE is not set');

const RealDate = Date;
const realNow = RealDate.now.bind(RealDate);
let offsetMs = 0;

class ShiftedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(realNow() + offsetMs);
    else super(...args);
  }

  static now() {
    return realNow() + offsetMs;
  }
}
globalThis.Date = ShiftedDate;

process.on('SIGUSR2', () => {
  offsetMs = Number(readFileSync(file, 'utf8').trim());
  process.stdout.write(`${JSON.stringify({ level: 30, msg: 'test clock set', offsetMs })}\n`);
});
