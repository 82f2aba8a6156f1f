"""The inference server keeps answering while Redis (a private redis-server holding the features) is
down (kill -9), under steady Recommend load, in-process (tests/support/inference.py's ``Running``):
answers are popularity fallbacks that say why, readiness stays ready with ``"redis": false``, and
once Redis is back the answers are the model's again."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from recpilot.net import free_port
from recpilot.stack.redis import redis_server_binary
from tests.support.inference import Load, Running, small_world
from tests.support.redis import PrivateRedis

pytestmark = pytest.mark.timeout(180)
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed")
def test_redis_down_answers_are_fallbacks_then_model_answers(stack, platform_settings, tmp_path, unique,
                                                             wait_until):
    rds = PrivateRedis(tmp_path, free_port())
    rds.start()
    load = r = None
    try:
        world = small_world(platform_settings, rds.url, tmp_path / "models", unique)
        r = Running(world, redis_url=rds.url)
        assert r.wait_serving() == SERVING
        wait_until(lambda: r.service.ready()[1]["redis"], 10, "the health loop never saw Redis up")
        load = Load(r)
        wait_until(lambda: load.answers and not load.answers[-1].fallback, 10, "no model answer before the outage")
        rds.kill9()
        n = len(load.answers)
        wait_until(lambda: r.service.ready()[1]["redis"] is False, 10, "readiness never reported Redis down")
        wait_until(lambda: sum(a.fallback for a in load.answers[n:]) >= 20, 10, "no fallback answers")
        down = [a for a in load.answers[n:] if a.fallback]
        assert {a.fallback_reason for a in down} <= {"features_unavailable", "features_timeout"}, down[0]
        ok, details = r.service.ready()
        assert ok and details["redis"] is False
        assert r.health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        assert not load.errors
        rds.start()  # the same data (AOF)
        wait_until(lambda: r.service.ready()[1]["redis"], 15, "readiness never saw Redis back")
        m = len(load.answers)
        wait_until(lambda: any(not a.fallback for a in load.answers[m:]), 15, "no model answer after Redis is back")
        assert load.answers[-1].model_version == "1"
    finally:
        if load is not None:
            load.stop()
        if r is not None:
            r.close()
        rds.stop()
    assert not load.errors
