/**
 * `@seqgate/client/wire`: the protocol's shared pieces (canonical encoder, name rules, limits,
 * subprotocols, close codes, error codes, a MessagePack decoder), used by the client and by the
 * seqgate server alike. No Node built-ins; everything works on Uint8Array and DataView.
 */
export { CanonicalError, canonicalEncode, MessageWriter, type CanonicalLimits } from './canonical.js';
export {
  CLOSE_CODES,
  DEFAULT_WIRE_LIMITS,
  ENVELOPE_DEPTH,
  MAX_POSITION,
  PROTOCOL_VERSION,
  SUBPROTOCOL_JSON,
  SUBPROTOCOL_MSGPACK,
  SUBPROTOCOLS,
  WIRE_ERRORS,
  type CloseCodeName,
  type WireErrorCode,
  type WireErrorScope,
  type WireFormat,
  type WireLimits,
} from './constants.js';
export { DecodeError, decodeMsgpack } from './decode.js';
export { nameProblem, type NameProblem } from './names.js';
export { utf8Length } from './utf8.js';
