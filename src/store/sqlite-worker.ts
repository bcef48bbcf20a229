import { parentPort, workerData } from 'node:worker_threads';
import { SqliteStore, type SqliteStoreOptions } from './sqlite-store.js';
import { errorInfo, packMessage, STORE_METHODS, unpackMessage, type StoreMethod } from './store-channel.js';

/**
 * The store's thread (see store-thread.ts): one SqliteStore, driven by messages from the server's
 * thread. Requests are [id, method, args, now]; answers [id, true, value] or [id, false, error];
 * an apply's [id, 'committed'] when its transaction committed, before it is durable; notices
 * [0, name, detail]. `now` is the server thread's clock, sent with every batch, so commit
 * times and pruning cutoffs come from one RetentionClock.
 */
type SerializableOptions = Omit<SqliteStoreOptions, 'now' | 'onCheckpointError' | 'onFileLost' | 'onSettleError' | 'syncFile'>;

const port = parentPort!;
const allowed = new Set<string>(STORE_METHODS);
let now = Date.now();

function post(message: unknown): void {
  const bytes = packMessage(message);
  port.postMessage(bytes, [bytes.buffer as ArrayBuffer]);
}

let store: SqliteStore;
try {
  store = new SqliteStore({
    ...(workerData as { options: SerializableOptions }).options,
    now: () => now,
    onCheckpointError: (err) => post([0, 'checkpoint-error', errorInfo(err)]),
    onSettleError: (err) => post([0, 'settle-error', errorInfo(err)]),
    onFileLost: (lost) => post([0, 'file-lost', lost === undefined ? null : { path: lost.path, reason: lost.reason }]),
  });
  post([0, 'open', { incarnation: store.incarnation, openedSchemaVersion: store.openedSchemaVersion }]);
} catch (err) {
  post([0, 'open-failed', errorInfo(err)]);
  port.close();
}

port.on('message', (bytes: Uint8Array) => {
  const [id, method, args, stamp] = unpackMessage(bytes) as [number, StoreMethod, unknown[], number | undefined];
  if (stamp !== undefined) now = stamp;
  if (!allowed.has(method)) {
    post([id, false, errorInfo(new Error(`no store method ${String(method)}`))]);
    return;
  }
  // The synchronous part of the call (a whole batch, up to its COMMIT) runs here, in arrival order.
  let answer: Promise<unknown>;
  try {
    // apply's progress notice [id, 'committed'] lets the server's thread send the next batch.
    const call = method === 'apply' ? [...args, () => post([id, 'committed'])] : args;
    answer = (store[method] as (...a: unknown[]) => Promise<unknown>).apply(store, call);
  } catch (err) {
    answer = Promise.reject(err);
  }
  answer.then(
    (value) => {
      post([id, true, value]);
      if (method === 'close') port.close();
    },
    (err: unknown) => post([id, false, errorInfo(err)]),
  );
});
