"""`python -m services.ingest`: validate, normalise and de-duplicate raw shop events.

Loads settings, sets up logging, builds the domain objects and the Kafka transport, runs until
SIGTERM (then: stop the loop after its batch commits, flush, stop metrics)."""

from __future__ import annotations

import logging

from recpilot import kafka as rkafka
from recpilot.httpserver import HealthServer
from recpilot.lifecycle import Lifecycle
from recpilot.log import setup_logging
from recpilot.settings import load_service
from services.ingest.dedup import Deduplicator
from services.ingest.pipeline import Ingestor
from services.ingest.reporter import MetricReporter
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.validate import Validator

log = logging.getLogger("services.ingest")


def main() -> int:
    platform, s = load_service("ingest", IngestSettings)
    setup_logging("ingest", platform.log_level)

    ingestor = Ingestor(
        Validator(s.max_payload_bytes, s.max_future_ms, int(s.max_age_s * 1000), s.max_id_length),
        Deduplicator(s.dedup_capacity, int(s.dedup_ttl_s * 1000)),
    )
    service = IngestService(s, platform, ingestor)
    reporter = MetricReporter(
        rkafka.producer(platform, **{"client.id": f"ingest-metrics-{s.instance_id}", "linger.ms": 50}),
        s.metrics_topic, s.metrics_interval_s, s.instance_id,
        lambda: (service.snapshot, service.lag, len(ingestor.dedup)),
    )
    http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=service.ready)

    life = Lifecycle()
    life.install_signal_handlers()
    http.start()
    life.add("http", http.stop)
    try:
        service.start()
    except Exception:
        log.exception("ingest failed to start")
        life.shutdown()
        return 1
    life.add("metric-reporter", reporter.stop)
    reporter.start()
    life.add("ingest", service.stop)
    life.wait(check=lambda: service.running)
    life.shutdown()
    if service.error is not None:
        log.error("ingest stopped on an error", extra={"error": repr(service.error)})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
