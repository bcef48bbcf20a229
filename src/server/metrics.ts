import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BatchInfo } from './committer.js';

/**
 * Prometheus metrics (prom-client, on a registry of our own rather than the global one, so that
 * several servers in one process — as in tests — never share counters).
 */
export class Metrics {
  readonly registry = new Registry();
  readonly outcomes: Counter<'outcome' | 'replay' | 'transport'>;
  readonly rejectedFrames: Counter<'code'>;
  readonly batchSize: Histogram;
  readonly commitSeconds: Histogram;
  readonly prunedAcks: Counter;
  readonly httpRequests: Counter<'route' | 'status'>;
  readonly slowConsumers: Counter<'transport'>;

  constructor(sources: { connections: () => number; putsInFlight: () => number }) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 10 });
    this.outcomes = new Counter({
      name: 'seqgate_put_outcomes_total',
      help: 'Put outcomes, by outcome, replay (true for a duplicate answered with its stored ack) and transport.',
      labelNames: ['outcome', 'replay', 'transport'],
      registers,
    });
    this.rejectedFrames = new Counter({
      name: 'seqgate_rejected_frames_total',
      help: 'Frames rejected as a whole, by error code.',
      labelNames: ['code'],
      registers,
    });
    this.batchSize = new Histogram({
      name: 'seqgate_batch_writes',
      help: 'Writes per committed batch (group commit).',
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
      registers,
    });
    this.commitSeconds = new Histogram({
      name: 'seqgate_commit_seconds',
      help: 'Time to run and commit one batch.',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.prunedAcks = new Counter({
      name: 'seqgate_pruned_acks_total',
      help: 'Acks deleted by the background pruner for age; evictions by the per-stream cap are not counted.',
      registers,
    });
    this.httpRequests = new Counter({
      name: 'seqgate_http_requests_total',
      help: 'HTTP API requests by route and status.',
      labelNames: ['route', 'status'],
      registers,
    });
    this.slowConsumers = new Counter({
      name: 'seqgate_slow_consumers_total',
      help: 'Connections (ws) and changefeed responses (http) closed because their reader left too many bytes unread for too long.',
      labelNames: ['transport'],
      registers,
    });
    new Gauge({
      name: 'seqgate_connections',
      help: 'Open WebSocket connections.',
      registers,
      collect() {
        this.set(sources.connections());
      },
    });
    new Gauge({
      name: 'seqgate_puts_in_flight',
      help: 'Writes received and not yet committed.',
      registers,
      collect() {
        this.set(sources.putsInFlight());
      },
    });
  }

  observeBatch(info: BatchInfo): void {
    if (info.puts === 0) return;
    this.batchSize.observe(info.puts);
    this.commitSeconds.observe(info.durationMs / 1000);
  }

  countOutcome(outcome: string, replay: boolean, transport: 'ws' | 'http'): void {
    this.outcomes.inc({ outcome, replay: String(replay), transport });
  }
}
