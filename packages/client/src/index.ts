/**
 * seqgate client SDK (`seqgate/client`): a typed writer for browsers, React Native and Node.
 * It imports no Node built-ins; the SQLite outbox lives in `seqgate/client/node`.
 * See docs/CLIENT.md.
 */
export { SeqgateClient, type ClientOptions, type ClientEvents, type WebSocketConstructor, type WebSocketLike } from './client.js';
export { MemoryOutbox, type AnswerEntry, type Outbox, type OutboxEntry, type StoredAnswer, type StreamRecord } from './outbox.js';
export {
  SeqgateClientError,
  FencedError,
  StaleError,
  ExpiredError,
  SequenceReusedError,
  GapError,
  InvalidPutError,
  VersionConflictError,
  TransientError,
  ForbiddenError,
  WriterConflictError,
  ServerRollbackError,
  ClientClosedError,
  OutboxError,
  ProtocolError,
  AuthenticationError,
  ConnectionError,
  CLIENT_ERROR_CODES,
  type ClientErrorCode,
} from './errors.js';
export {
  DEFAULT_LIMITS,
  type Ack,
  type ClientStats,
  type CloseReport,
  type ConnectionState,
  type EpochChange,
  type Head,
  type Limits,
  type Position,
  type PutOptions,
  type PutRef,
  type PutResult,
  type PutSettlement,
  type RollbackInfo,
  type RollbackPolicy,
  type StateChange,
  type WelcomeInfo,
} from './types.js';
export {
  Subscription,
  MemoryOffsetStore,
  IdempotentConsumer,
  MemoryVersionStore,
  SubscriptionOffsetError,
  SubscriptionRefusedError,
  type Change,
  type OffsetStore,
  type SubscribeOptions,
  type VersionStore,
} from './subscription.js';
