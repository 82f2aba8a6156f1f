"""The input topic is deleted and created again while the offsets of the old one stay in Redis, then the
features worker restarts: its new records are numbered from 0 again, below the stored offsets. The
worker reports it (log, metric, /readyz) and holds them instead of skipping them as replays; after
`recpilot features reset-offsets` they are applied, each exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from recpilot.kafka import admin, create_topics, delete_topics
from recpilot.simulator import ShopSimulator
from services.features.client import FeatureClient
from tests.support.features import (assert_matches_offline, delete_prefix, features_worker, send, wait_applied,
                                    worker_env)

N_OLD, N_NEW = 1200, 600


def _topics(platform) -> dict:
    return admin(platform).list_topics(timeout=10).topics


def _ready(worker) -> tuple[int, dict]:
    if worker.address is None:  # started, not listening yet
        return 0, {}
    code, body = worker.get("/readyz")
    try:
        return code, json.loads(body)
    except ValueError:
        return code, {}


def test_recreated_topic_is_reported_held_and_applied_after_reset(stack, platform_settings, redis_client, tmp_path,
                                                                 unique, wait_until):
    topic, mtopic = f"test.features.recreated.{unique}", f"test.features.recreated.metrics.{unique}"
    prefix = f"test:frc:{unique}:"
    create_topics(platform_settings, [topic], 2)
    env = worker_env(topic, mtopic, f"test-frc-{unique}", tmp_path / "faust", key_prefix=prefix, metrics_interval_s=1)
    worker = features_worker(env, platform_settings.home / "logs" / f"test-features-recreated-{unique}.log")
    client = FeatureClient(platform_settings.redis_url, prefix)
    try:
        sim = ShopSimulator(seed=23, n_users=30, n_items=80)
        now = int(time.time() * 1000)
        events = list(sim.events(N_OLD + N_NEW, now - 3_600_000, step_ms=3_600_000 / (N_OLD + N_NEW)))
        worker.start().wait_ready()
        send(platform_settings, topic, events[:N_OLD])
        wait_applied(client, N_OLD, worker)
        worker.stop()
        old_offsets = client.offsets()

        assert delete_topics(platform_settings, [topic]) == {}
        wait_until(lambda: topic not in _topics(platform_settings), 30, "the topic was not deleted")
        create_topics(platform_settings, [topic], 2)
        wait_until(lambda: len(getattr(_topics(platform_settings).get(topic), "partitions", {})) == 2, 30,
                   "the topic was not created again")
        send(platform_settings, topic, events[N_OLD:])  # offsets from 0 again, all below the stored ones

        worker.start()
        code, ready = wait_until(lambda: (r := _ready(worker))[1].get("offsets_ahead_of_topic") and r, 45,
                                 lambda: f"/readyz never reported the offsets: {_ready(worker)}\n{worker.log_tail()}")
        assert code == 503 and set(ready["offsets_ahead_of_topic"]) <= {f"{topic}:0", f"{topic}:1"}
        wait_until(lambda: "stored offsets are ahead of the topic's end" in worker.log_tail(200), 10,
                   worker.log_tail)
        _, metrics = worker.get("/metrics")
        assert "recpilot_features_offsets_ahead_partitions 0.0" not in metrics
        time.sleep(1.0)  # the worker holds the new events a while (what is checked, not a wait)
        assert client.offsets() == old_offsets and worker.alive()
        assert_matches_offline(client, events[:N_OLD], now)  # nothing new applied, nothing lost yet

        out = subprocess.run([sys.executable, "-m", "recpilot.cli", "features", "reset-offsets", "--topic", topic,
                              "--json"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert set(json.loads(out.stdout)["reset"]) == set(old_offsets)

        wait_applied(client, N_NEW, worker)
        assert sum(v + 1 for v in client.offsets().values()) == N_NEW
        assert_matches_offline(client, events, now)  # the old events once, the new ones once
        wait_until(lambda: _ready(worker)[0] == 200, 20, lambda: f"not ready after the reset: {_ready(worker)}")
        _, metrics = worker.get("/metrics")
        assert "recpilot_features_offsets_ahead_partitions 0.0" in metrics
        assert "recpilot_features_events_total{outcome=\"replayed\"} 0.0" in metrics
    finally:
        worker.stop()
        client.close()
        delete_prefix(redis_client, prefix)
        delete_topics(platform_settings, [topic, mtopic])
