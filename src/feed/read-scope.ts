import type { Principal } from '../server/auth.js';

/**
 * Which keys a reader of the changefeed sees: the requested key prefix narrowed to the token's
 * document read grants. A token granted `a-` and `b-` asking for everything ("") sees `a-…` and
 * `b-…`; asking for `a-x` it sees `a-x…`; asking for `c-` it sees nothing and is refused.
 * The same rule serves HTTP and WebSocket readers.
 */
export function readablePrefixes(principal: Principal, requested: string): string[] {
  const out = new Set<string>();
  for (const grant of principal.read.documents) {
    if (requested.startsWith(grant)) return [requested];
    if (grant.startsWith(requested)) out.add(grant);
  }
  return [...out];
}
