"""kill -9 the features worker in the middle of a stream while it writes to a three-master Redis
Cluster with 12 shards (each batch: item sides on the items' shards, then user sides on the users'),
restart it: every count, item and user equals exactly what the events imply -- across the nodes, the
per-shard offsets and the item side's journal make the replay apply every event once per side."""

from __future__ import annotations

import time

import pytest

from recpilot.simulator import ShopSimulator
from tests.support.features import (PacedStream, FeaturesTestbed, applied, offline_store, wait_applied,
                                    wait_matches_offline)

N_EVENTS = 12_000
SHARDS = 12


@pytest.fixture
def setup(stack, platform_settings, redis_cluster, unique, tmp_path):
    bed = FeaturesTestbed(platform_settings, "cff", unique, tmp_path, cluster_url=redis_cluster.url, shards=SHARDS,
                  session_timeout_s=6, heartbeat_interval_s=1)
    yield bed
    bed.close()


def test_kill9_mid_stream_on_a_cluster_then_restart_counts_exact(platform_settings, setup):
    sim = ShopSimulator(seed=77, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    client = setup.client
    first = setup.worker().start().wait_ready()
    stream = PacedStream(platform_settings, setup.topic, events)  # keeps going across the crash
    stream.start()
    wait_applied(client, N_EVENTS // 4, first, timeout=60)
    first.kill9()
    assert applied(client) < N_EVENTS, "the stream had already ended: the kill was not mid-stream"

    second = setup.worker().start().wait_ready(90)
    stream.finish()
    wait_applied(client, N_EVENTS, second, timeout=90)
    wait_matches_offline(client, events, now)
    assert client.popular(10) == offline_store(events).top_popular(10)
