/** Public API of the seqgate server package. */
export { SeqgateServer, type StartOptions } from './server/websocket-server.js';
export { type Config, OPTIONS, defaultConfig, loadConfig, ConfigError } from './config.js';
export { ERRORS, SeqgateError, type ErrorCode, type ErrorSpec } from './errors.js';
export { PROTOCOL_VERSION, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK } from './protocol/codec.js';
export type { Limits, WireResult, WireAck, WireError, CorrelationId } from './protocol/messages.js';
export type { Store, Put, PutResult, Ack, Head, StreamHead } from './store/store.js';
export { SqliteStore, type SqliteStoreOptions } from './store/sqlite-store.js';
export type { BatchInfo } from './server/committer.js';
export { SEQGATE_VERSION } from './version.js';
