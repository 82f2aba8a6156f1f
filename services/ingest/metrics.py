"""Prometheus metrics of the ingest service (module level, few labels)."""

from prometheus_client import Counter, Gauge, Histogram

from services.ingest.validate import REASONS

RECEIVED = Counter("recpilot_ingest_events_received_total", "raw messages consumed")
ACCEPTED = Counter("recpilot_ingest_events_accepted_total", "valid, distinct events published to the clean topic")
REJECTED = Counter("recpilot_ingest_events_rejected_total", "messages sent to the dead-letter topic", ["reason"])
DUPLICATES = Counter("recpilot_ingest_events_duplicate_total", "valid events dropped as duplicates of an event_id")
MISSING = Counter("recpilot_ingest_missing_fields_total", "messages rejected for a missing required field", ["field"])
MISSING_RATE = Gauge("recpilot_ingest_missing_field_ratio", "share of messages with a missing required field (last interval)")
RESTARTS = Counter("recpilot_ingest_restarts_total", "in-process restarts of the ingest loop after a failed batch")
BATCHES = Counter("recpilot_ingest_batches_total", "batches processed and committed")
BATCH_SECONDS = Histogram(
    "recpilot_ingest_batch_seconds", "process + deliver + commit time of one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LAG = Gauge("recpilot_ingest_consumer_lag_messages", "raw messages not yet consumed (from librdkafka statistics)")
DEDUP_ENTRIES = Gauge("recpilot_ingest_dedup_entries", "event ids held by the de-duplicator")
DEDUP_EVICTIONS = Counter(
    "recpilot_ingest_dedup_evictions_total",
    "event ids dropped by the de-duplicator at capacity before their TTL ran out (a later duplicate of one passes)")
EVENT_DELAY = Histogram(
    "recpilot_ingest_event_delay_seconds", "ingest time minus event time (first event of each batch)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

for _r in REASONS:
    REJECTED.labels(reason=_r)
