import { loadConfig } from '../../src/config.js';
import { SeqgateError } from '../../src/errors.js';
import { errorMessage, wireResult, type WireResult } from '../../src/protocol/messages.js';
import { newIncarnation, startArmServer, welcomeMessage } from './common.js';

/**
 * Arm (a), the ceiling: seqgate's WebSocket path and codec with no storage. Each put frame is
 * scanned, decoded and validated exactly as seqgate does it (canonical state, fingerprint), and
 * each valid put is answered at once with a result of the shape seqgate sends.
 */

const config = loadConfig(process.argv.slice(2), process.env);
const incarnation = newIncarnation();

await startArmServer('echo', config, {
  message(conn, message) {
    if (message instanceof SeqgateError) {
      conn.send(errorMessage(message));
      return;
    }
    switch (message.type) {
      case 'ping':
        conn.send({ type: 'pong', nonce: message.nonce });
        return;
      case 'hello':
        conn.send(
          welcomeMessage(
            'echo',
            config,
            incarnation,
            message.streams.map((stream) => ({ stream, epoch: 0, seq: 0, prunedThrough: 0 })),
          ),
        );
        return;
      case 'put': {
        const committedAt = Date.now();
        const results: WireResult[] = message.puts.map((p) => {
          if (!p.ok) return p.result;
          const { stream, epoch, seq, key } = p.put;
          return wireResult(p.id, {
            kind: 'ack',
            replay: false,
            ack: { outcome: 'applied', stream, epoch, seq, key, version: 1, deleted: p.put.state === null, committedAt },
          });
        });
        conn.send({ type: 'results', results });
        return;
      }
    }
  },
});
