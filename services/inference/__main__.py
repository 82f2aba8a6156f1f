"""``python -m services.inference``: load settings, set up logging, build the objects, run."""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from recpilot.httpserver import HealthServer
from recpilot.lifecycle import Lifecycle, name_os_thread
from recpilot.log import setup_logging
from recpilot.settings import load_service
from services.inference.settings import InferenceSettings

log = logging.getLogger("services.inference")


def main() -> int:
    platform, s = load_service("inference", InferenceSettings)
    setup_logging("inference", platform.log_level)
    if s.workers > 1:  # a supervisor of N single-process servers sharing the gRPC port
        from services.inference.workers import run_supervisor

        return run_supervisor(s, platform)

    from recpilot import kafka
    from recpilot.models.deployments import DeploymentFollower
    from services.features.client import AsyncFeatureClient
    from services.inference.backends import configure_threads
    from services.inference.impressions import ImpressionLogger
    from services.inference.routing import DeploymentSync, ModelManager
    from services.inference.search import BM25Index, CatalogueRefresher, load_catalogue
    from services.inference.server import InferenceServer
    from services.inference.service import RankingService
    from services.inference.telemetry import Telemetry

    replica = s.replica_id or f"{socket.gethostname()}:{os.getpid()}"
    if s.worker_index >= 0:
        log.info("worker of a supervisor", extra={"worker": s.worker_index, "pid": os.getpid()})
    host = s.grpc_host or platform.bind_host
    s = s.model_copy(update={"grpc_host": host})
    configure_threads(s.intra_op_threads, s.inter_op_threads)
    from services.inference.metrics import install_gc_metrics

    install_gc_metrics()
    executor = (ThreadPoolExecutor(s.compute_threads, thread_name_prefix="compute", initializer=name_os_thread)
                if s.compute_threads else None)
    models = ModelManager(platform.model_repo, s.model_names, device=s.device,
                          batching_for=s.batching_for, executor=executor)
    features = AsyncFeatureClient(platform.redis_url, s.feature_key_prefix)
    # Impressions are off the request path: batch them for 50 ms (fewer, larger produce requests:
    # about a fifth of the broker's and librdkafka's CPU at 500 req/s compared with 5 ms).
    impressions = ImpressionLogger(kafka.producer(platform, **{"client.id": f"inference-{replica}",
                                                               "linger.ms": s.impressions_linger_ms}),
                                   s.impressions_topic, s.impressions_queue)
    telemetry = Telemetry(kafka.producer(platform, **{"client.id": f"inference-metrics-{replica}"}),
                          s.metrics_topic, replica, s.metrics_interval_s)
    index = BM25Index.build(load_catalogue(s.catalogue_path, s.catalogue_seed, s.catalogue_items))
    service = RankingService(s, features, models, impressions=impressions, index=index, telemetry=telemetry)
    sync = DeploymentSync(models, lambda cb: DeploymentFollower(platform, replica, cb, s.deployments_topic))

    def follower_ready() -> tuple[bool, dict]:
        return sync.ready, {"deployments_caught_up": sync.ready}

    server = InferenceServer(s, service, models, extra_ready=follower_ready)
    http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=server.ready)

    life = Lifecycle()
    life.install_signal_handlers()
    http.start()
    life.add("http", http.stop)
    sync.start()
    life.add("deployments", sync.stop)
    impressions.start()
    life.add("impressions", impressions.stop)
    telemetry.start()
    life.add("metric-events", telemetry.stop)
    if s.catalogue_path is None and s.catalogue_items == 0:
        refresher = CatalogueRefresher(service, platform.redis_url, s.feature_key_prefix, s.catalogue_refresh_s)
        refresher.start()
        life.add("catalogue", refresher.stop)
    server.start()
    life.add("grpc", server.stop)
    log.info("inference started", extra={"replica": replica, "grpc_port": server.port, "http_port": http.port,
                                         "models": s.model_names, "catalogue_items": len(index)})
    if s.bootstrap:
        from services.inference.bootstrap import bootstrap_when_empty

        threading.Thread(target=bootstrap_when_empty, args=(s, platform, sync), name="bootstrap", daemon=True).start()
    try:
        life.wait(check=lambda: server.running and sync.follower.running)
    finally:
        life.shutdown()
        if executor is not None:
            executor.shutdown(wait=False)
        # model loads gc.freeze() (routing.py); frozen objects are never finalized and nanobind (triton,
        # imported with TensorFlow) would print pages of "leaked" lines into the log at exit
        gc.unfreeze()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
