/**
 * Prometheus metrics of the coordinator (prom-client, its own registry per app so tests and
 * several coordinators in one process don't collide). Gauges that describe the log (in doubt,
 * needs attention, outbox) are read from the log when scraped, so they are right after a restart.
 */
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client'
import type { LogStore } from './log/log-store.js'

export interface CoordinatorMetrics {
  registry: Registry
  begun: Counter
  committed: Counter
  aborted: Counter<'reason'>
  phase1: Histogram
  phase2: Histogram
  retries: Counter
  heuristics: Counter<'kind'>
  flushBatch: Histogram
  flushSeconds: Histogram
  syncBatch: Histogram
  syncSeconds: Histogram
  callbackBatch: Histogram
  httpRequests: Counter<'method' | 'route' | 'status'>
  httpSeconds: Histogram<'method' | 'route'>
  outboxPublished: Counter
  amqpRejected: Counter<'reason'>
}

export function createMetrics (log: LogStore, outboxEnabled: () => boolean): CoordinatorMetrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'twopc_' })
  const latency = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]

  const logState = (): ReturnType<LogStore['gauges']> => log.gauges()
  const age = (since: number | null): number => (since === null ? 0 : Math.max(0, (Date.now() - since) / 1000))

  new Gauge({
    name: 'twopc_transactions_in_doubt',
    help: 'Transactions preparing: participants may hold prepared state waiting for the decision',
    registers: [registry],
    collect () { if (log.open) this.set(logState().inDoubt) }
  })
  new Gauge({
    name: 'twopc_transactions_in_doubt_oldest_age_seconds',
    help: 'Age of the oldest transaction in doubt (0 when none)',
    registers: [registry],
    collect () { if (log.open) this.set(age(logState().oldestInDoubt)) }
  })
  new Gauge({
    name: 'twopc_transactions_needs_attention',
    help: 'Transactions flagged for an operator (retry budget exhausted or heuristic outcome)',
    registers: [registry],
    collect () { if (log.open) this.set(logState().attention) }
  })
  new Gauge({
    name: 'twopc_transactions_needs_attention_oldest_age_seconds',
    help: 'Age of the oldest unresolved attention entry (0 when none)',
    registers: [registry],
    collect () { if (log.open) this.set(age(logState().oldestAttention)) }
  })
  new Gauge({
    name: 'twopc_outbox_depth',
    help: 'Outbox rows waiting to be published to RabbitMQ',
    registers: [registry],
    collect () { if (log.open && outboxEnabled()) this.set(log.outboxStats().depth) }
  })
  new Gauge({
    name: 'twopc_outbox_parked',
    help: 'Outbox rows parked after a permanent publish failure',
    registers: [registry],
    collect () { if (log.open && outboxEnabled()) this.set(log.outboxStats().dead) }
  })
  new Gauge({
    name: 'twopc_outbox_publish_lag_seconds',
    help: 'Age of the oldest unpublished outbox row (0 when empty)',
    registers: [registry],
    collect () { if (log.open && outboxEnabled()) this.set(age(log.outboxStats().oldestCreatedAt)) }
  })

  return {
    registry,
    begun: new Counter({ name: 'twopc_transactions_begun_total', help: 'Transactions begun', registers: [registry] }),
    committed: new Counter({ name: 'twopc_transactions_committed_total', help: 'Commit decisions logged', registers: [registry] }),
    aborted: new Counter({ name: 'twopc_transactions_aborted_total', help: 'Abort decisions logged, by reason', labelNames: ['reason'], registers: [registry] }),
    phase1: new Histogram({ name: 'twopc_phase1_duration_seconds', help: 'Commit requested to decision durable', buckets: latency, registers: [registry] }),
    phase2: new Histogram({ name: 'twopc_phase2_duration_seconds', help: 'Decision durable to every participant acked', buckets: latency, registers: [registry] }),
    retries: new Counter({ name: 'twopc_phase2_retries_total', help: 'Failed phase-2 deliveries (each is retried)', registers: [registry] }),
    heuristics: new Counter({ name: 'twopc_attention_entries_total', help: 'Attention entries recorded, by kind (heuristic, retry-budget, unauthorized, not-found)', labelNames: ['kind'], registers: [registry] }),
    flushBatch: new Histogram({ name: 'twopc_log_flush_batch_size', help: 'Steps per group-committed log write (one SQLite transaction)', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: [registry] }),
    flushSeconds: new Histogram({ name: 'twopc_log_flush_duration_seconds', help: 'Duration of one log write (SQLite transaction, without the fsync)', buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25], registers: [registry] }),
    syncBatch: new Histogram({ name: 'twopc_log_sync_batch_size', help: 'Steps made durable by one fdatasync of the log', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], registers: [registry] }),
    syncSeconds: new Histogram({ name: 'twopc_log_sync_duration_seconds', help: 'Duration of one fdatasync of the log (on the event loop while quick, else on the thread pool)', buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25], registers: [registry] }),
    callbackBatch: new Histogram({ name: 'twopc_callback_batch_size', help: 'Callbacks per batch request to a participant (lone calls go out singly and are not counted)', buckets: [2, 4, 8, 16, 32, 64, 128, 256], registers: [registry] }),
    httpRequests: new Counter({ name: 'twopc_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['method', 'route', 'status'], registers: [registry] }),
    httpSeconds: new Histogram({ name: 'twopc_http_request_duration_seconds', help: 'HTTP request duration by route', labelNames: ['method', 'route'], buckets: latency, registers: [registry] }),
    outboxPublished: new Counter({ name: 'twopc_outbox_published_total', help: 'Outbox rows confirmed by RabbitMQ', registers: [registry] }),
    amqpRejected: new Counter({
      name: 'twopc_amqp_rejected_total',
      help: 'Acks from RabbitMQ refused because their signature failed (with TWOPC_SECRET), by reason (missing, malformed, mismatch, legacy-scheme); each is dead-lettered',
      labelNames: ['reason'],
      registers: [registry]
    })
  }
}
