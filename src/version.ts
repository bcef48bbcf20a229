/** Kept equal to package.json's version by test/config.test.ts. */
export const SEQGATE_VERSION = '0.1.0';
