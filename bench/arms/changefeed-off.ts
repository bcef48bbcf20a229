import type { Variant } from '../lib/cells.js';

/**
 * Arm (b) with the change log switched off (`--changefeed false`: no change row per write, the
 * /v1/changes routes answer 404 NOT_FOUND and `subscribe` UNKNOWN_TYPE). Measured in every round of
 * the device-shape group beside (b), on the same seed, so the log's ingest cost is the ratio
 * (b)/(b.logoff) within a round; issue 12's goal is a cost of at most 15 %, i.e. b.logoff/b ≤ 1.18.
 */
export const CHANGEFEED_OFF: Variant = { name: 'logoff', args: ['--changefeed', 'false'] };
