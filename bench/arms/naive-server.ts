import { pino } from 'pino';
import { loadConfig } from '../../src/config.js';
import { SeqgateError } from '../../src/errors.js';
import { errorMessage, headsForWire, wireResult, type WireResult } from '../../src/protocol/messages.js';
import { Pruner } from '../../src/store/pruner.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { startArmServer, TENANT, welcomeMessage } from './common.js';

/**
 * Arm (c), the naive design: every put is its own SQLite transaction (SqliteStore.apply with a
 * batch of one: head and stored-ack lookup, then the write, then COMMIT with its fsync), in
 * arrival order across all connections, with no group commit and no coalescing. Store, PRAGMAs,
 * prepared statements, codec and pruning are seqgate's own.
 */

const config = loadConfig(process.argv.slice(2), process.env);
const store = new SqliteStore({
  path: config.dbPath,
  synchronous: config.synchronous,
  contiguous: config.contiguous,
  ackCapPerStream: config.ackCapPerStream,
  ackCapSlack: config.ackCapSlack,
  walCheckpoint: config.walCheckpoint,
  maxWalBytes: config.maxWalBytes,
});
const pruner = new Pruner(
  store,
  {
    retentionMs: config.ackRetentionSeconds * 1000,
    intervalMs: config.pruneIntervalMs,
    batchRows: config.pruneBatchRows,
  },
  pino({ level: 'silent' }),
);

type Job = () => Promise<void> | void;
const queue: Job[] = [];
let head = 0;
let draining = false;
let stopping = false;

function enqueue(job: Job): void {
  queue.push(job);
  if (!draining) {
    draining = true;
    setImmediate(() => void drain());
  }
}

/** Runs jobs in arrival order; yields to the event loop every few ms so sockets and signals are served. */
async function drain(): Promise<void> {
  const sliceEnd = performance.now() + 10;
  while (head < queue.length && !stopping) {
    const job = queue[head]!;
    queue[head++] = undefined as unknown as Job;
    await job();
    if (performance.now() > sliceEnd) {
      setImmediate(() => void drain());
      return;
    }
  }
  if (head === queue.length) {
    queue.length = 0;
    head = 0;
  }
  draining = false;
}

await startArmServer('naive', config, {
  message(conn, message) {
    if (message instanceof SeqgateError) {
      const answer = errorMessage(message);
      enqueue(() => conn.send(answer));
      return;
    }
    switch (message.type) {
      case 'ping':
        conn.send({ type: 'pong', nonce: message.nonce });
        return;
      case 'hello':
        enqueue(async () => {
          const heads = await store.heads(TENANT, message.streams);
          conn.send(welcomeMessage('naive', config, store.incarnation, headsForWire(heads)));
        });
        return;
      case 'put':
        enqueue(async () => {
          const results: WireResult[] = [];
          for (const p of message.puts) {
            if (!p.ok) {
              results.push(p.result);
              continue;
            }
            const [result] = await store.apply([p.put]);
            results.push(wireResult(p.id, result!));
          }
          conn.send({ type: 'results', results });
        });
        return;
    }
  },
  async shutdown() {
    // A baseline needs no orderly drain: unanswered puts are simply not counted.
    stopping = true;
    await pruner.stop();
    await store.close();
  },
});
pruner.start();
