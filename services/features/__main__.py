"""`python -m services.features`: the real-time feature pipeline (faust worker)."""

from __future__ import annotations

import logging

from recpilot.httpserver import HealthServer
from recpilot.lifecycle import Lifecycle
from recpilot.log import setup_logging
from recpilot.settings import load_service
from services.features.settings import FeaturesSettings

log = logging.getLogger("services.features")


def health_server(settings: FeaturesSettings, platform, pipeline) -> HealthServer:
    """/metrics, /healthz and /readyz on the features port, bound like every service's."""
    return HealthServer(settings.http_port, settings.http_host or platform.bind_host,
                        ready=pipeline.ready, live=pipeline.live)


def main() -> int:
    platform, settings = load_service("features", FeaturesSettings)
    setup_logging("features", platform.log_level)
    from services.features.app import FeaturePipeline

    pipeline = FeaturePipeline(settings, platform)
    life = Lifecycle()  # faust's worker owns SIGTERM/SIGINT; this orders what runs around it
    health = health_server(settings, platform, pipeline)
    health.start()
    life.add("http", health.stop)
    life.add("metric-events", pipeline.close)
    log.info("features starting", extra={"topic": settings.input_topic, "group": settings.app_id,
                                         "key_prefix": settings.key_prefix, "http_port": health.port,
                                         "event_loop": pipeline.loop_name, "redis_shards": platform.redis_shards,
                                         "redis_cluster": platform.redis_cluster})
    try:
        rc = pipeline.run()
    finally:
        life.shutdown()
    log.info("features stopped", extra={"exit_code": rc})
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
