"""The inference server keeps answering while the broker of its impressions is down (kill -9), under
steady Recommend load, in-process (tests/support/inference.py's ``Running``): no request fails,
impressions queue up to the bound (``impressions_queue``, which also holds the producer's own
buffer) and are then dropped and counted; the server stays ready."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from recpilot import kafka
from recpilot.kafka import create_topics
from tests.support.broker import kill9
from tests.support.inference import Load, Running, small_world

pytestmark = pytest.mark.timeout(180)
QUEUE = 20
SERVING = health_pb2.HealthCheckResponse.SERVING


def _dropped() -> float:
    return REGISTRY.get_sample_value("recpilot_inference_impressions_total", {"outcome": "dropped"}) or 0.0


def test_kafka_down_impressions_bounded_then_dropped_answers_go_on(stack, platform_settings, private_broker,
                                                                    tmp_path, unique, wait_until):
    bsettings, _broker, table = private_broker
    world = small_world(platform_settings, platform_settings.redis_url, tmp_path / "models", unique)
    r = Running(world, producer=kafka.producer(bsettings), impressions_queue=QUEUE)
    create_topics(bsettings, [r.topic], 1)
    load = None
    try:
        assert r.wait_serving() == SERVING
        load = Load(r)
        wait_until(lambda: r.impressions.delivered >= 10, 30, "no impression delivered before the outage")
        kill9(table)
        before = _dropped()
        wait_until(lambda: r.impressions.dropped > 0, 30,
                   lambda: f"nothing dropped: queued {len(r.impressions._q)}, producer {len(r.impressions.producer)}")
        n = len(load.answers)
        wait_until(lambda: len(load.answers) >= n + 50, 20, "answers stopped while Kafka is down")
        assert _dropped() > before
        assert len(r.impressions._q) <= QUEUE  # queued: at the bound
        assert len(r.impressions.producer) <= 2 * QUEUE  # the producer's buffer (messages + requests)
        assert not load.errors
        assert r.service.ready()[0] and r.health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
    finally:
        if load is not None:
            load.stop()
        r.close(impressions_timeout=1.0)
    assert not load.errors
