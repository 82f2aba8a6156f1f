"""One serving process as an object: :class:`InferenceApp` builds the parts from settings and
starts them in order (HTTP health/metrics, deployment sync, impression and metric-event
producers, catalogue refresher, the gRPC server over the data plane, the first-run bootstrap);
``stop()`` stops them in reverse. ``python -m services.inference`` runs one, and so does each
worker process of the multi-worker mode (:mod:`services.inference.workers`).
"""

from __future__ import annotations

import gc
import logging
import os
import socket

from recpilot.lifecycle import Lifecycle, name_os_thread
from recpilot.settings import PlatformSettings
from services.inference.settings import InferenceSettings

log = logging.getLogger("services.inference")


class InferenceApp:
    def __init__(self, settings: InferenceSettings, platform: PlatformSettings) -> None:
        self.platform = platform
        self.replica = settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.s = settings.model_copy(update={"grpc_host": settings.grpc_host or platform.bind_host})
        self._life = Lifecycle()
        self.executor = None  # services.inference.batching.ComputePool when compute_threads > 0
        self.server = None
        self.sync = None
        self.http = None
        self.plane = None

    def start(self) -> None:
        """Build and start every part; on a failure, stop what started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from recpilot import kafka
        from recpilot.httpserver import HealthServer
        from recpilot.metricevents import MetricPublisher
        from recpilot.models.deployments import DeploymentFollower
        from services.features.client import AsyncFeatureClient
        from services.inference.backends import configure_threads
        from services.inference.batching import ComputePool
        from services.inference.dataplane import DataPlane
        from services.inference.grpc_server import InferenceServer
        from services.inference.impressions import ImpressionLogger
        from services.inference.metrics import install_gc_metrics
        from services.inference.policy import PolicyRegistry
        from services.inference.routing import DeploymentSync, ModelManager
        from services.inference.search import BM25Index, CatalogueRefresher, load_catalogue
        from services.inference.telemetry import Telemetry

        s, platform, life = self.s, self.platform, self._life
        if s.worker_index >= 0:
            log.info("worker of a supervisor", extra={"worker": s.worker_index, "pid": os.getpid()})
        configure_threads(s.intra_op_threads, s.inter_op_threads)
        install_gc_metrics()
        if s.compute_threads:
            self.executor = ComputePool(s.compute_threads, "compute", initializer=name_os_thread)
        models = ModelManager(platform.model_repo, s.model_names, device=s.device,
                              batching_for=s.batching_for, executor=self.executor,
                              load_timeout_s=s.model_load_timeout_s)
        policies = PolicyRegistry(platform.model_repo, pool_size=s.policy_pool, load_timeout_s=s.model_load_timeout_s)
        features = AsyncFeatureClient(platform.redis_url, s.feature_key_prefix, shards=platform.redis_shards,
                                      cluster=platform.redis_cluster)
        # Impressions are off the request path: batched for impressions_linger_ms (fewer, larger
        # produce requests).
        impressions = ImpressionLogger(kafka.producer(platform, **{"client.id": f"inference-{self.replica}",
                                                                   "linger.ms": s.impressions_linger_ms}),
                                       s.impressions_topic, s.impressions_queue, s.impressions_queue_bytes)
        telemetry = Telemetry(self.replica)
        metric_events = MetricPublisher(kafka.producer(platform, **{"client.id": f"inference-metrics-{self.replica}"}),
                                        "inference", self.replica, topic=s.metrics_topic, key=self.replica)
        index = BM25Index.build(load_catalogue(s.catalogue_path, s.catalogue_seed, s.catalogue_items))
        sync = self.sync = DeploymentSync(
            models, lambda cb: DeploymentFollower(platform, self.replica, cb, s.deployments_topic,
                                                  repository=platform.model_repo,
                                                  acks_topic=s.deployments_acks_topic or None), policies)
        plane = self.plane = DataPlane(s, features, models, policies=policies, impressions=impressions, index=index,
                                       telemetry=telemetry,
                                       extra_ready=sync.readiness)
        self.server = InferenceServer(s, plane)
        self.http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=plane.ready,
                                 live=self.server.live)

        self.http.start()
        life.add("http", self.http.stop)
        sync.start()
        life.add("deployments", sync.stop)
        impressions.start()
        life.add("impressions", impressions.stop)
        metric_events.start(s.metrics_interval_s, telemetry.events)
        life.add("metric-events", metric_events.close)
        if s.catalogue_path is None and s.catalogue_items == 0:
            refresher = CatalogueRefresher(plane, platform.redis_url, s.feature_key_prefix, s.catalogue_refresh_s,
                                           shards=platform.redis_shards, cluster=platform.redis_cluster)
            refresher.start()
            life.add("catalogue", refresher.stop)
        self.server.start()
        life.add("grpc", self.server.stop)
        log.info("inference started", extra={"replica": self.replica, "grpc_port": self.server.port,
                                             "http_port": self.http.port, "models": s.model_names,
                                             "catalogue_items": len(index)})
        if s.bootstrap:
            from services.inference.bootstrap import Bootstrap

            boot = Bootstrap(s, platform, sync)
            boot.start()
            life.add("bootstrap", boot.stop)

    @property
    def running(self) -> bool:
        """False once the gRPC server or the deployment follower died."""
        return (self.server is not None and self.server.running and self.sync is not None
                and self.sync.follower.running)

    def stop(self) -> None:
        """Stop every started part in reverse order (idempotent)."""
        self._life.shutdown()
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        # model loads gc.freeze() (routing.py); frozen objects are never finalized and nanobind (triton,
        # imported with TensorFlow) would print pages of "leaked" lines into the log at exit
        gc.unfreeze()
