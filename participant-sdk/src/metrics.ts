/**
 * Prometheus metrics of one participant (prom-client), in a registry of its own: the host
 * service usually has its own `/metrics`, so it can merge this one
 * (`Registry.merge([hostRegistry, app.twoPhase.metrics])`) or let the SDK serve it
 * (`metricsRoute`). Every series carries the label `participant="<name>"` — a label of each
 * metric, not a registry default label, so it survives `Registry.merge`. No default process
 * metrics here: those belong to the host's registry (and would collide in a merge).
 *
 * Gauges that describe the log (prepared count, oldest prepared age) are read from the store when
 * scraped, so they are right after a restart.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { BrokerRejectReason } from '@fastify-2pc/amqp'
import type { AmqpCounter, RejectedKind } from './amqp.js'
import type { EngineObserver } from './engine.js'
import type { ParticipantRecords } from './store/store.js'
import { whenValue } from './store/steps.js'

export interface ParticipantMetrics {
  registry: Registry
  /** For the engine: flushes and events. */
  observer: EngineObserver
  onQuery: (result: 'committed' | 'aborted' | 'pending' | 'failed') => void
  onPrune: (deleted: number) => void
  onAmqp: (counter: AmqpCounter) => void
  onAmqpRejected: (kind: RejectedKind, reason: BrokerRejectReason) => void
  /** For the batch route: calls carried by one request. */
  onBatch: (calls: number) => void
}

const AMQP_NOTICE_RESULTS: Partial<Record<AmqpCounter, string>> = {
  applied: 'applied', repeated: 'repeated', deadLettered: 'dead_lettered', failed: 'failed'
}

export function createParticipantMetrics (name: string, records: ParticipantRecords): ParticipantMetrics {
  const registry = new Registry()
  const p = { participant: name }
  const summary = (): ReturnType<ParticipantRecords['preparedSummary']> =>
    records.available ? records.preparedSummary() : { count: 0, oldestUpdatedAt: null }

  new Gauge({
    name: 'twopc_participant_prepared',
    help: 'Transactions held prepared (voted yes, decision not known yet): their reservations are blocked',
    labelNames: ['participant'],
    registers: [registry],
    collect () { return whenValue(summary(), s => { this.set(p, s.count) }) }
  })
  new Gauge({
    name: 'twopc_participant_prepared_oldest_age_seconds',
    help: 'Age of the oldest prepared transaction (0 when none)',
    labelNames: ['participant'],
    registers: [registry],
    collect () {
      return whenValue(summary(), ({ oldestUpdatedAt: oldest }) => {
        this.set(p, oldest === null ? 0 : Math.max(0, (Date.now() - oldest) / 1000))
      })
    }
  })
  const events = new Counter({
    name: 'twopc_participant_callbacks_total',
    help: 'Callbacks (prepare/commit/abort) applied, by kind, source (http, amqp, recovery) and outcome (yes, no, read-only, ok, tx_unknown, tx_already_committed, tx_already_aborted, handler_failed, log_failed, error)',
    labelNames: ['kind', 'source', 'outcome', 'participant'],
    registers: [registry]
  })
  const queries = new Counter({
    name: 'twopc_participant_recovery_queries_total',
    help: 'In-doubt recovery: decision queries to the coordinator, by result (committed, aborted, pending, failed)',
    labelNames: ['result', 'participant'],
    registers: [registry]
  })
  const pruned = new Counter({
    name: 'twopc_participant_log_pruned_total',
    help: 'Settled records and tombstones deleted after the retention time',
    labelNames: ['participant'],
    registers: [registry]
  })
  const flushBatch = new Histogram({
    name: 'twopc_participant_log_flush_batch_size',
    help: 'Callbacks per group-committed participant-log flush (one local transaction)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    labelNames: ['participant'],
    registers: [registry]
  })
  const flushSeconds = new Histogram({
    name: 'twopc_participant_log_flush_duration_seconds',
    help: 'Duration of one participant-log flush (handlers, records and commit; the fsync runs after it: inline while quick, else on the thread pool)',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
    labelNames: ['participant'],
    registers: [registry]
  })
  const syncBatch = new Histogram({
    name: 'twopc_participant_log_sync_batch_size',
    help: 'Callbacks made durable (and answered) by one fdatasync of the WAL',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    labelNames: ['participant'],
    registers: [registry]
  })
  const syncSeconds = new Histogram({
    name: 'twopc_participant_log_sync_duration_seconds',
    help: 'Duration of one fdatasync of the WAL (on the event loop while quick, else on the thread pool)',
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
    labelNames: ['participant'],
    registers: [registry]
  })
  const batchCalls = new Histogram({
    name: 'twopc_participant_batch_calls',
    help: 'Callbacks carried by one batch request (POST {prefix}/batch)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    labelNames: ['participant'],
    registers: [registry]
  })
  const flushFailures = new Counter({
    name: 'twopc_participant_log_flush_failures_total',
    help: 'Flushes whose local transaction failed (every callback of the batch got a retryable error)',
    labelNames: ['participant'],
    registers: [registry]
  })
  const notices = new Counter({
    name: 'twopc_participant_amqp_notices_total',
    help: 'RabbitMQ decision notices, by result (applied, repeated, dead_lettered, failed)',
    labelNames: ['result', 'participant'],
    registers: [registry]
  })
  const acks = new Counter({
    name: 'twopc_participant_amqp_acks_total',
    help: 'Ack notices published to RabbitMQ, by result (published, failed)',
    labelNames: ['result', 'participant'],
    registers: [registry]
  })
  const rejected = new Counter({
    name: 'twopc_participant_amqp_rejected_total',
    help: 'RabbitMQ messages refused because their signature failed (with a secret), by kind (decision: dead-lettered, event: dropped) and reason (missing, malformed, mismatch, legacy-scheme)',
    labelNames: ['kind', 'reason', 'participant'],
    registers: [registry]
  })
  const rechecks = new Counter({
    name: 'twopc_participant_amqp_rechecks_total',
    help: 'In-doubt re-checks started by coordinator.started or a (re)connect to RabbitMQ',
    labelNames: ['participant'],
    registers: [registry]
  })

  // Zero from the start (a labelled series appears only once touched).
  for (const counter of [pruned, flushFailures, rechecks]) counter.inc(p, 0)

  return {
    registry,
    observer: {
      onFlush (size, ms, ok) {
        flushBatch.observe(p, size)
        flushSeconds.observe(p, ms / 1000)
        if (!ok) flushFailures.inc(p)
      },
      onSync (events, ms) {
        syncBatch.observe(p, events)
        syncSeconds.observe(p, ms / 1000)
      },
      onEvent (kind, source, outcome) {
        events.inc({ kind, source, outcome, ...p })
      }
    },
    onQuery (result) { queries.inc({ result, ...p }) },
    onPrune (deleted) { if (deleted > 0) pruned.inc(p, deleted) },
    onBatch (calls) { batchCalls.observe(p, calls) },
    onAmqp (counter) {
      const result = AMQP_NOTICE_RESULTS[counter]
      if (result !== undefined) notices.inc({ result, ...p })
      else if (counter === 'acksPublished') acks.inc({ result: 'published', ...p })
      else if (counter === 'ackPublishFailures') acks.inc({ result: 'failed', ...p })
      else if (counter === 'rechecks') rechecks.inc(p)
    },
    onAmqpRejected (kind, reason) { rejected.inc({ kind, reason, ...p }) }
  }
}
