import { SeqgateError } from '../errors.js';
import { nameProblem } from '@seqgate/client/wire';
import { field } from './codec.js';
import type { CorrelationId, Limits } from './messages.js';

/**
 * The changefeed's WebSocket messages (PROTOCOL.md "Changefeed"): `subscribe` asks for the changes
 * of a key prefix from an offset; `unsubscribe` ends one. The server answers `subscribed`, then
 * `changes` messages, or an `error` carrying the subscription's `id`.
 */

export interface SubscribeMessage {
  readonly type: 'subscribe';
  /** Chosen by the client; names the subscription in every answer. */
  readonly id: CorrelationId;
  readonly prefix: string;
  /** `-1` (start of the log), `now`, or an offset the server sent. */
  readonly from: string;
}

export interface UnsubscribeMessage {
  readonly type: 'unsubscribe';
  readonly id: CorrelationId;
}

function subscriptionId(value: unknown, limits: Limits): CorrelationId {
  if (typeof value === 'string' && value.length > 0 && Buffer.byteLength(value, 'utf8') <= limits.maxIdBytes) return value;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  throw new SeqgateError('INVALID_MESSAGE', `id must be a non-empty string of at most ${limits.maxIdBytes} UTF-8 bytes or a safe integer >= 0`, {
    field: 'id',
  });
}

export function parseSubscribe(value: unknown, limits: Limits): SubscribeMessage {
  const id = subscriptionId(field(value, 'id'), limits);
  const prefix = field(value, 'prefix') ?? '';
  // A prefix follows the rules of a key (PROTOCOL.md §4), except that it may be empty.
  if (typeof prefix !== 'string' || (prefix !== '' && nameProblem(prefix, 'prefix', limits.maxKeyBytes) !== null)) {
    throw new SeqgateError('INVALID_MESSAGE', `prefix must be a string of at most ${limits.maxKeyBytes} UTF-8 bytes without control characters`, {
      field: 'prefix',
      id,
    });
  }
  const from = field(value, 'from') ?? '-1';
  if (typeof from !== 'string') throw new SeqgateError('INVALID_OFFSET', 'from must be a string: -1, now or an offset the server sent', { field: 'from', id });
  return { type: 'subscribe', id, prefix, from };
}

export function parseUnsubscribe(value: unknown, limits: Limits): UnsubscribeMessage {
  return { type: 'unsubscribe', id: subscriptionId(field(value, 'id'), limits) };
}
