"""Redis dies (kill -9) and comes back while the features worker streams: the worker waits the outage
out (readiness says so), loses nothing and double-counts nothing. Uses a private redis-server
(AOF, fsync always) so the shared test Redis is never touched."""

from __future__ import annotations

import shutil
import time

import pytest

from recpilot.kafka import create_topics, delete_topics
from recpilot.net import free_port
from recpilot.simulator import ShopSimulator
from recpilot.stack.redis import redis_server_binary
from services.features.client import FeatureClient
from tests.support.features import PacedStream, assert_matches_offline, features_worker, wait_applied, worker_env
from tests.support.redis import PrivateRedis

N_EVENTS = 12_000


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed")
def test_redis_killed_and_restarted_mid_stream(stack, platform_settings, tmp_path, unique, wait_until):
    rport = free_port()
    rds = PrivateRedis(tmp_path, rport)
    rds.start()
    url = rds.url
    topic = f"test.features.redis.{unique}"
    create_topics(platform_settings, [topic], 4)
    worker = features_worker(worker_env(topic, f"test.features.redis.metrics.{unique}", f"test-fr-{unique}",
                                        tmp_path / "faust", redis_url=url),
                             platform_settings.home / "logs" / f"test-features-redis-{unique}.log")
    client = FeatureClient(url, "rp:", socket_timeout=2, socket_connect_timeout=2)
    try:
        worker.start().wait_ready()
        sim = ShopSimulator(seed=5, n_users=50, n_items=120)
        now = int(time.time() * 1000)
        events = list(sim.events(N_EVENTS, now - 3_600_000, step_ms=3_600_000 / N_EVENTS))

        stream = PacedStream(platform_settings, topic, events)  # keeps going across the outage
        stream.start()
        wait_applied(client, N_EVENTS // 4, worker, timeout=60)
        rds.kill9()
        code, body = wait_until(lambda: (r := worker.get("/readyz"))[0] == 503 and r, 30,
                                lambda: "readyz never reported Redis down:\n" + worker.log_tail())
        assert '"redis": false' in body
        assert worker.alive()
        time.sleep(1.5)  # the outage goes on while events keep coming (the length of the fault, not a wait)
        rds.start()
        stream.finish()
        wait_applied(client, N_EVENTS, worker, timeout=90)
        assert worker.alive()

        assert_matches_offline(client, events, now)
        code, text = worker.get("/metrics")
        errors = [ln for ln in text.splitlines() if ln.startswith("recpilot_features_write_errors_total ")]
        assert errors and float(errors[0].split()[-1]) > 0  # the outage was really hit
    finally:
        worker.stop()
        client.close()
        rds.stop()
        delete_topics(platform_settings, [topic, f"test.features.redis.metrics.{unique}"])
        shutil.rmtree(tmp_path, ignore_errors=True)
