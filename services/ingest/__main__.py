"""`python -m services.ingest`: validate, normalise and de-duplicate raw shop events.

Loads settings, sets up logging, builds the domain objects and the Kafka transport, runs until
SIGTERM (then: stop the loop after its batch commits, flush, stop metrics)."""

from __future__ import annotations

import logging

from recpilot import kafka as rkafka
from recpilot.httpserver import HealthServer
from recpilot.lifecycle import Lifecycle
from recpilot.log import setup_logging
from recpilot.metricevents import MetricPublisher
from recpilot.settings import load_service
from services.ingest import metrics as M
from services.ingest.dedup import Deduplicator
from services.ingest.pipeline import Ingestor
from services.ingest.reporter import IntervalMetrics
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.validate import Validator

log = logging.getLogger("services.ingest")


def main() -> int:
    platform, s = load_service("ingest", IngestSettings)
    setup_logging("ingest", platform.log_level)

    def build() -> IngestService:  # a fresh service: new clients, a new de-duplicator (warmed at start)
        ingestor = Ingestor(
            Validator(s.max_payload_bytes, s.max_future_ms, int(s.max_age_s * 1000), s.max_id_length,
                      s.max_query_length, s.max_context_entries, s.max_context_key_length,
                      s.max_context_value_length),
            Deduplicator(s.dedup_capacity, int(s.dedup_ttl_s * 1000)),
        )
        return IngestService(s, platform, ingestor)

    current = [build()]
    metric_events = MetricPublisher(
        rkafka.producer(platform, **{"client.id": f"ingest-metrics-{s.instance_id}", "linger.ms": 50}),
        "ingest", s.instance_id, topic=s.metrics_topic)
    interval_metrics = IntervalMetrics(
        s.instance_id, lambda: (current[0].snapshot, current[0].lag, len(current[0].ingestor.dedup)))
    http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=lambda: current[0].ready())

    life = Lifecycle()
    if not life.start_service("ingest", current, http, metric_events, s.metrics_interval_s, interval_metrics):
        return 1
    delay = 1.0
    while True:
        life.wait(check=lambda: current[0].running, on_stop=False)
        failed = current[0]
        if life.stopping.is_set() or failed.error is None or not s.restart_on_error:
            if not life.stopping.is_set():
                log.error("the ingest loop stopped; shutting down", extra={"error": repr(failed.error)})
            break
        # The failed batch was not committed: start afresh, as a process restart would. The delay
        # doubles while restarts make no progress (a batch that keeps failing) and is 1 s again
        # after a run that committed batches.
        if failed.batches:
            delay = 1.0
        log.error("ingest loop failed; restarting", extra={"error": repr(failed.error), "in_s": delay})
        failed.stop()
        delay = life.restart(current, build, name="ingest", delay=delay, backoff_max_s=s.restart_backoff_max_s,
                             on_attempt=M.RESTARTS.inc)
    life.shutdown()
    if current[0].error is not None:
        log.error("ingest stopped on an error", extra={"error": repr(current[0].error)})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
