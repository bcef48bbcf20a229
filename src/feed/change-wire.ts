import { stateJsonText } from '../protocol/state-json.js';
import type { Change } from '../store/change-log.js';
import { formatOffset } from './offset.js';

/**
 * A change as it travels to a reader. JSON (HTTP, and WebSocket under the JSON subprotocol):
 * `state` is the document's JSON value; a state JSON cannot carry faithfully (binary, NaN,
 * integer map keys) comes as `state: null` plus `stateMsgpack`, the canonical msgpack in base64.
 * msgpack (WebSocket default subprotocol): `state` is a bin holding the canonical msgpack bytes,
 * exactly as stored, so that a reader can fingerprint or store it without re-encoding.
 */

interface WireChange {
  readonly offset: string;
  readonly key: string;
  readonly version: number;
  readonly deleted: boolean;
  readonly state: Buffer | null;
  readonly origin: Change['origin'];
  readonly committedAt: number;
}

/** The JSON text of one change; field order is fixed. */
export function changeJson(change: Change, incarnation: string): string {
  let state = 'null';
  let extra = '';
  if (change.state !== null) {
    const text = stateJsonText(change.state);
    if (text !== undefined) state = text;
    else extra = `,"stateMsgpack":${JSON.stringify(change.state.toString('base64'))}`;
  }
  return (
    `{"offset":"${formatOffset(change.offset, incarnation)}","key":${JSON.stringify(change.key)},` +
    `"version":${change.version},"deleted":${change.deleted},"state":${state}${extra},` +
    `"origin":${JSON.stringify(change.origin)},"committedAt":${change.committedAt}}`
  );
}

/** The msgpack form's value (encoded by the connection's codec). */
export function changeForMsgpack(change: Change, incarnation: string): WireChange {
  return {
    offset: formatOffset(change.offset, incarnation),
    key: change.key,
    version: change.version,
    deleted: change.deleted,
    state: change.state,
    origin: change.origin,
    committedAt: change.committedAt,
  };
}
