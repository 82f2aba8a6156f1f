"""The features worker's Kafka consumer offsets are lost (a new consumer group: the app id changed,
or the broker lost ``__consumer_offsets``): the worker re-reads the whole topic from the start, and
every event is skipped as already applied by the offsets stored in Redis with the features; nothing
changes. (A kill -9 mid-stream and a restart, with a replay of what the worker had written but not
committed: tests/fault/test_platform_faults.py.)"""

from __future__ import annotations

import re
import time

import pytest

from recpilot import featurespec as fs
from recpilot.kafka import create_topics, delete_topics
from recpilot.simulator import ShopSimulator, event_to_dict
from recpilot.stack.process import ServiceProcess
from services.features.client import FeatureClient
from tests.support.features import assert_matches_offline, delete_prefix, features_worker, send, wait_applied

N_EVENTS = 5_000


@pytest.fixture
def setup(stack, platform_settings, redis_client, unique, tmp_path):
    topic, prefix = f"test.features.fault.{unique}", f"test:ff:{unique}:"
    create_topics(platform_settings, [topic], 4)
    base_env = {"RECPILOT_FEATURES_INPUT_TOPIC": topic, "RECPILOT_FEATURES_KEY_PREFIX": prefix,
                "RECPILOT_FEATURES_METRICS_TOPIC": f"test.features.fault.metrics.{unique}",
                "RECPILOT_FEATURES_DATADIR": str(tmp_path / "faust")}
    log = platform_settings.home / "logs" / f"test-features-fault-{unique}.log"
    workers: list[ServiceProcess] = []

    def worker(group: str) -> ServiceProcess:
        w = features_worker({**base_env, "RECPILOT_FEATURES_APP_ID": group}, log)
        workers.append(w)
        return w

    client = FeatureClient(platform_settings.redis_url, prefix)
    yield {"topic": topic, "prefix": prefix, "worker": worker, "client": client}
    for w in workers:
        w.stop()
    client.close()
    delete_prefix(redis_client, prefix)
    delete_topics(platform_settings, [topic, base_env["RECPILOT_FEATURES_METRICS_TOPIC"]])


def _metric(worker: ServiceProcess, outcome: str) -> float:
    code, text = worker.get("/metrics")
    assert code == 200
    m = re.search(rf'^recpilot_features_events_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_new_consumer_group_rereads_everything_and_applies_nothing(platform_settings, setup, unique, wait_until):
    sim = ShopSimulator(seed=99, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    client = setup["client"]
    group = f"test-features-fault-{unique}"
    first = setup["worker"](group).start().wait_ready()
    send(platform_settings, setup["topic"], events)
    wait_applied(client, N_EVENTS, first, timeout=90)
    # the counter follows the Redis write that made the events visible
    wait_until(lambda: _metric(first, "applied") >= N_EVENTS, 30, lambda: f"applied {_metric(first, 'applied')}", 0.2)
    assert _metric(first, "applied") == N_EVENTS
    first.stop()
    offline = fs.OfflineFeatureStore()
    for ev in events:
        offline.apply(event_to_dict(ev))
    assert_matches_offline(client, events, now)
    assert client.popular(10) == offline.top_popular(10)
    stored = client.offsets()

    # A new consumer group starts from the beginning of the topic: everything is re-read, nothing applied.
    second = setup["worker"](f"{group}-replay").start().wait_ready(90)
    wait_until(lambda: (second.alive() or pytest.fail(second.log_tail())) and _metric(second, "replayed") >= N_EVENTS,
               60, lambda: f"replayed {_metric(second, 'replayed')} of {N_EVENTS}:\n{second.log_tail()}", 0.2)
    assert _metric(second, "replayed") == N_EVENTS
    assert _metric(second, "applied") == 0
    assert client.offsets() == stored
    assert_matches_offline(client, events, now)
    assert client.popular(10) == offline.top_popular(10)
