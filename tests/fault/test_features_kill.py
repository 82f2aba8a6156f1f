"""kill -9 the features worker in the middle of a stream of known events, restart it: the final Redis
state equals exactly what the events imply (no loss, no double count). Then a worker in a NEW
consumer group re-reads the whole topic: every event is skipped as already applied and nothing
changes."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest

from recpilot import featurespec as fs
from recpilot.kafka import create_topics, delete_topics
from recpilot.simulator import ShopSimulator, event_to_dict
from recpilot.stack.process import ServiceProcess
from services.features.client import FeatureClient
from tests.support.features import applied, delete_prefix, features_worker, send, wait_applied

N_EVENTS = 20_000


@pytest.fixture
def setup(stack, platform_settings, redis_client, unique, tmp_path):
    topic, prefix = f"test.features.fault.{unique}", f"test:ff:{unique}:"
    create_topics(platform_settings, [topic], 4)
    base_env = {"RECPILOT_FEATURES_INPUT_TOPIC": topic, "RECPILOT_FEATURES_KEY_PREFIX": prefix,
                "RECPILOT_FEATURES_METRICS_TOPIC": f"test.features.fault.metrics.{unique}",
                "RECPILOT_FEATURES_SESSION_TIMEOUT_S": "6", "RECPILOT_FEATURES_HEARTBEAT_INTERVAL_S": "1",
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


def test_kill9_mid_stream_then_restart_counts_exact(platform_settings, setup, unique):
    sim = ShopSimulator(seed=99, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    client = setup["client"]
    group = f"test-features-fault-{unique}"
    first = setup["worker"](group).start().wait_ready()

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
    applied_at_kill = applied(client)
    assert applied_at_kill < N_EVENTS, "the stream had already ended: the kill was not mid-stream"

    second = setup["worker"](group).start().wait_ready(90)
    th.join(60)
    assert sent == [N_EVENTS]  # all delivered
    wait_applied(client, N_EVENTS, second, timeout=90)

    offline = fs.OfflineFeatureStore()
    for ev in events:
        offline.apply(event_to_dict(ev))
    expected = Counter((e.item_id, fs.COUNT_FIELD[fs.EVENT_NAMES[e.event_type]])
                       for e in events if e.event_type in (1, 2, 3, 4))
    item_ids = sorted({e.item_id for e in events if e.item_id})
    users = sorted({e.user_id for e in events})

    def check_exact():
        _, items = client.fetch("", item_ids, now)
        for it in items:
            assert {f: it[f] for f in fs.COUNT_FIELDS} == {f: expected[(it["item_id"], f)] for f in fs.COUNT_FIELDS}
            assert it == offline.item(it["item_id"], now)
        for uid in users:
            assert client.user(uid) == offline.user(uid)
        assert client.popular(10) == offline.top_popular(10)

    check_exact()
    assert second.get("/readyz")[0] == 200
    second.stop()

    # A new consumer group starts from the beginning of the topic: everything is re-read, nothing applied.
    third = setup["worker"](f"{group}-replay").start().wait_ready(90)
    t0 = time.monotonic()
    while _metric(third, "replayed") < N_EVENTS:
        assert time.monotonic() - t0 < 60 and third.alive(), third.log_tail()
        time.sleep(0.2)
    assert _metric(third, "replayed") == N_EVENTS
    assert _metric(third, "applied") == 0
    check_exact()
