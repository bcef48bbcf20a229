/**
 * The one seeded generator of the test and benchmark harnesses (mulberry32): small, fast, and the
 * same sequence for the same seed on every run and machine, so a failure's payloads, a fuzz case's
 * encoding forms or a benchmark's duplicate choices can be reproduced from the seed alone.
 * Not for anything that needs unpredictability.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
