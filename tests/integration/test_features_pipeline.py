"""The features worker as a real process (`python -m services.features`, faust) on the real stack:
events sent with a plain confluent-kafka producer end up in Redis exactly as
featurespec.OfflineFeatureStore computes them (no training/serving skew), the counts equal the
counts computed from the input, the CLI prints them, and the worker exports freshness and
publishes MetricEvents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer

from recpilot import featurespec as fs
from recpilot.pb import events_pb2
from recpilot.simulator import ShopSimulator
from tests.support.features import FeaturesTestbed, assert_matches_offline, offline_store, send, wait_applied


@pytest.fixture
def pipeline(stack, platform_settings, unique, tmp_path):
    """A test's own topics, group and key prefix (tests/support/features.FeaturesTestbed), workers publishing
    metrics every second."""
    bed = FeaturesTestbed(platform_settings, "fp", unique, tmp_path, metrics_interval_s=1)
    yield bed
    bed.close()


def test_stream_matches_offline_store_and_input_counts(platform_settings, pipeline, unique):
    sim = ShopSimulator(seed=13, n_users=60, n_items=150)
    now = int(time.time() * 1000)
    events = list(sim.events(10_000, now - 3 * 3_600_000, step_ms=3 * 3_600_000 / 10_000))
    client = pipeline.client
    worker = pipeline.worker().start().wait_ready()
    send(platform_settings, pipeline.topic, events)
    wait_applied(client, len(events), worker)

    offline = offline_store(events)
    item_ids = sorted({e.item_id for e in events if e.item_id})
    for uid in sorted({e.user_id for e in events}):
        user, items = client.fetch(uid, item_ids, now)
        assert user == offline.user(uid)
    for it in items:
        assert it == offline.item(it["item_id"], now)
    assert client.popular(20) == offline.top_popular(20)

    expected = Counter((e.item_id, fs.COUNT_FIELD[fs.EVENT_NAMES[e.event_type]])
                       for e in events if e.event_type in (1, 2, 3, 4))
    for it in items:
        assert {f: it[f] for f in fs.COUNT_FIELDS} == {f: expected[(it["item_id"], f)] for f in fs.COUNT_FIELDS}

    # freshness and event counts are on /metrics; readiness names the partitions
    code, text = worker.get("/metrics")
    assert code == 200
    line = next(ln for ln in text.splitlines() if ln.startswith('recpilot_features_events_total{outcome="applied"}'))
    assert float(line.split()[-1]) == len(events)
    assert f"recpilot_features_freshness_seconds_count {float(len(events))}" in text
    code, body = worker.get("/readyz")
    assert code == 200 and len(json.loads(body)["partitions"]) == 4
    log = worker.log_path.read_text()
    assert "fetch tuning not applied" not in log  # faust/aiokafka internals it relies on are still there
    assert '"level": "ERROR"' not in log


def test_cli_shows_item_counts_sent_with_plain_producer(platform_settings, pipeline, unique):
    worker = pipeline.worker().start().wait_ready()
    item = f"cli-item-{unique}"
    ts = int(time.time() * 1000)
    kinds = [events_pb2.VIEW] * 5 + [events_pb2.CLICK] * 2 + [events_pb2.ADD_TO_CART, events_pb2.PURCHASE]
    events = []
    for k, et in enumerate(kinds):
        ev = events_pb2.UserEvent(event_id=f"{unique}-{k}", user_id=f"cli-user-{k % 3}", session_id="s",
                                  event_type=et, item_id=item, price=19.5, timestamp_ms=ts + k)
        ev.context["category"] = "books"
        events.append(ev)
    send(platform_settings, pipeline.topic, events)
    wait_applied(pipeline.client, len(events), worker)

    env = {**os.environ, **pipeline.env}
    out = subprocess.run([sys.executable, "-m", "recpilot.cli", "features", "item", item, "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert (shown["views"], shown["clicks"], shown["carts"], shown["purchases"]) == (5, 2, 1, 1)
    assert shown["views_1h"] == 5 and shown["category"] == "books" and shown["price"] == 19.5
    assert shown["ctr"] == pytest.approx((2 + 1) / (5 + 20))

    out = subprocess.run([sys.executable, "-m", "recpilot.cli", "features", "user", "cli-user-0", "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    user = json.loads(out.stdout)
    assert user["events"] == 3 and user["recent_views"] == [item]


def test_metric_events_published(platform_settings, pipeline, unique):
    worker = pipeline.worker().start().wait_ready()
    sim = ShopSimulator(seed=2, n_users=10, n_items=20)
    events = list(sim.events(500, int(time.time() * 1000) - 1000, 1))
    send(platform_settings, pipeline.topic, events)
    wait_applied(pipeline.client, len(events), worker)
    c = Consumer({"bootstrap.servers": platform_settings.kafka_bootstrap, "group.id": f"t-{unique}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([pipeline.metrics_topic])
    seen: dict[str, events_pb2.MetricEvent] = {}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 30 and not (
                "freshness_ms" in seen and seen.get("events_applied_total", events_pb2.MetricEvent()).value == 500):
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            ev = events_pb2.MetricEvent.FromString(m.value())
            seen[ev.name] = ev
    finally:
        c.close()
    assert seen["events_applied_total"].service == "features"
    assert seen["events_applied_total"].value == 500
    fresh = seen["freshness_ms"]
    assert fresh.summary.count > 0 and fresh.summary.min >= 0
    assert fresh.summary.quantiles["p50"] <= fresh.summary.quantiles["p99"] <= fresh.summary.max
    assert seen["consumer_lag_messages"].labels["topic"] == pipeline.topic


def test_two_workers_share_partitions_and_counts_stay_exact(platform_settings, pipeline, unique):
    """Scale-out: a second worker in the same group takes over half the partitions (a rebalance in
    the middle of the stream); every event is applied exactly once between them."""
    first = pipeline.worker().start().wait_ready()
    sim = ShopSimulator(seed=31, n_users=60, n_items=100)
    now = int(time.time() * 1000)
    events = list(sim.events(8000, now - 3_600_000, step_ms=3_600_000 / 8000))
    send(platform_settings, pipeline.topic, events[:4000])
    second = pipeline.worker(first.log_path.with_suffix(".second.log")).start()
    second.wait_ready(60)
    send(platform_settings, pipeline.topic, events[4000:])
    wait_applied(pipeline.client, len(events), second)
    t0 = time.monotonic()
    while True:  # the first worker reports its new (smaller) assignment once the rebalance is done
        parts = [json.loads(w.get("/readyz")[1]).get("partitions", []) for w in (first, second)]
        if len(parts[0]) + len(parts[1]) == 4 or time.monotonic() - t0 > 30:
            break
        time.sleep(0.2)
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == [f"{pipeline.topic}[{p}]" for p in range(4)]
    assert_matches_offline(pipeline.client, events, now)


def test_a_stalled_worker_restarts_itself_and_counts_stay_exact(platform_settings, pipeline, unique, wait_until):
    """The group-coordination watchdog's restart, on a real worker: with ``group_stall_s`` shorter
    than the heartbeat interval every worker looks stalled a few seconds after each assignment, so
    this one logs where aiokafka's coordination task waits and re-executes itself, again and again
    (same pid); every event is still applied exactly once."""
    worker = pipeline.worker(RECPILOT_FEATURES_GROUP_STALL_S="3", RECPILOT_FEATURES_HEARTBEAT_INTERVAL_S="8").start()
    sim = ShopSimulator(seed=17, n_users=50, n_items=120)
    now = int(time.time() * 1000)
    events = list(sim.events(6000, now - 3_600_000, step_ms=3_600_000 / 6000))
    send(platform_settings, pipeline.topic, events[:3000])
    pid = worker.proc.pid

    def stalls() -> list[dict]:
        return [json.loads(ln) for ln in worker.log_path.read_text().splitlines()
                if "group coordination stalled" in ln]

    wait_until(lambda: len(stalls()) >= 2, 90, "the worker did not restart itself twice")
    send(platform_settings, pipeline.topic, events[3000:])
    wait_applied(pipeline.client, len(events), worker, timeout=90)
    assert worker.proc.pid == pid and worker.proc.poll() is None  # re-executed, not exited
    first = stalls()[0]
    assert first["level"] == "ERROR" and first["partitions"]
    chain = first["coordination"]["_coordination_task"]  # where aiokafka's coordination waits, all the way down
    assert "in _coordination_routine" in chain and "in __coordination_routine" in chain, chain
    assert_matches_offline(pipeline.client, events, now)
