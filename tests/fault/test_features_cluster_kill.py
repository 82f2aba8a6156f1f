"""kill -9 the features worker in the middle of a stream while it writes to a three-master Redis
Cluster with 12 shards (each batch: item sides on the items' shards, then user sides on the users'),
restart it: every count, item and user equals exactly what the events imply -- across the nodes, the
per-shard offsets and the item side's journal make the replay apply every event once per side."""

from __future__ import annotations

import threading
import time

import pytest

from recpilot import featurespec as fs
from recpilot.kafka import create_topics, delete_topics
from recpilot.simulator import ShopSimulator, event_to_dict
from services.features.client import FeatureClient, connect
from tests.support.features import (applied, delete_prefix, features_worker, send, wait_applied,
                                   wait_matches_offline)

N_EVENTS = 12_000
SHARDS = 12


@pytest.fixture
def setup(stack, platform_settings, redis_cluster, unique, tmp_path):
    topic, prefix = f"test.features.cfault.{unique}", f"test:cff:{unique}:"
    create_topics(platform_settings, [topic], 4)
    env = {"RECPILOT_FEATURES_INPUT_TOPIC": topic, "RECPILOT_FEATURES_KEY_PREFIX": prefix,
           "RECPILOT_FEATURES_METRICS_TOPIC": f"test.features.cfault.metrics.{unique}",
           "RECPILOT_FEATURES_SESSION_TIMEOUT_S": "6", "RECPILOT_FEATURES_HEARTBEAT_INTERVAL_S": "1",
           "RECPILOT_FEATURES_DATADIR": str(tmp_path / "faust"), "RECPILOT_FEATURES_APP_ID": f"test-cff-{unique}",
           "RECPILOT_REDIS_URL": redis_cluster.url, "RECPILOT_REDIS_CLUSTER": "true",
           "RECPILOT_REDIS_SHARDS": str(SHARDS)}
    log = platform_settings.home / "logs" / f"test-features-cfault-{unique}.log"
    workers = []

    def worker():
        w = features_worker(env, log)
        workers.append(w)
        return w

    client = FeatureClient(redis_cluster.url, prefix, shards=SHARDS, cluster=True)
    yield {"topic": topic, "worker": worker, "client": client}
    for w in workers:
        w.stop()
    client.close()
    raw = connect(redis_cluster.url, cluster=True)
    delete_prefix(raw, prefix)
    raw.close()
    delete_topics(platform_settings, [topic, env["RECPILOT_FEATURES_METRICS_TOPIC"]])


def test_kill9_mid_stream_on_a_cluster_then_restart_counts_exact(platform_settings, setup):
    sim = ShopSimulator(seed=77, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    client = setup["client"]
    first = setup["worker"]().start().wait_ready()
    sent = []

    def produce():  # a steady stream that keeps going across the crash
        send(platform_settings, setup["topic"], events, paced=True)
        sent.append(len(events))

    th = threading.Thread(target=produce, daemon=True)
    th.start()
    t0 = time.monotonic()
    while applied(client) < N_EVENTS // 4:
        assert time.monotonic() - t0 < 60 and first.alive(), first.log_tail()
        time.sleep(0.02)
    first.kill9()
    assert applied(client) < N_EVENTS, "the stream had already ended: the kill was not mid-stream"

    second = setup["worker"]().start().wait_ready(90)
    th.join(60)
    assert sent == [N_EVENTS]
    wait_applied(client, N_EVENTS, second, timeout=90)
    wait_matches_offline(client, events, now)
    offline = fs.OfflineFeatureStore()
    for ev in events:
        offline.apply(event_to_dict(ev))
    assert client.popular(10) == offline.top_popular(10)
