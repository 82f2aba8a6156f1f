"""Ingest on the real test stack, as a real subprocess (`python -m services.ingest`) on per-test topics:
10,000 valid events plus malformed ones of every kind and duplicates go in; exactly the valid,
distinct ones come out on the clean topic, every malformed one is in the DLQ with its reason."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer

from recpilot.kafka import create_topics, delete_topics, read_to_end
from recpilot.pb import events_pb2
from recpilot.simulator import EXPECTED_REASON, MALFORMED_KINDS, ShopSimulator, event_to_json, malformed
from tests.support.ingest import ingest_process, topic_names, wait_committed

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def topics(stack, platform_settings, unique):
    names = topic_names(f"test-ingest-{unique}")
    create_topics(platform_settings, list(names.values()), 4)
    yield names
    delete_topics(platform_settings, list(names.values()))


def _scrape(proc) -> dict[str, float]:
    code, text = proc.get("/metrics", 5)
    assert code == 200, text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_valid_distinct_events_reach_clean_and_malformed_ones_the_dlq(platform_settings, topics, unique, tmp_path,
                                                                      wait_until):
    p = platform_settings
    now = int(time.time() * 1000)
    sim = ShopSimulator(seed=11, n_users=500, n_items=300)
    rng = random.Random(5)
    sent: list[tuple[bytes, bytes, str]] = []  # (key, value, expected: "valid" | "duplicate" | reason)
    valid: dict[str, events_pb2.UserEvent] = {}
    for i in range(10_000):
        e = sim.next_event(now - rng.randint(0, 60_000))
        valid[e.event_id] = e
        value = event_to_json(e) if i % 10 == 0 else e.SerializeToString()  # a tenth as JSON (kcat style)
        sent.append((e.user_id.encode(), value, "valid"))
    for kind in MALFORMED_KINDS:
        for _ in range(15):
            key, value = malformed(kind, sim.next_event(now), now, rng)
            sent.append((key, value, EXPECTED_REASON[kind]))
    originals = [s for s in sent if s[2] == "valid"]
    for _ in range(400):  # exact re-sends
        key, value, _ = rng.choice(originals)
        sent.append((key, value, "duplicate"))
    for e in rng.sample(list(valid.values()), 100):  # same event_id, other encoding
        sent.append((e.user_id.encode(), event_to_json(e), "duplicate"))
    head, tail = sent[:10_000], sent[10_000:]
    rng.shuffle(tail)
    sent = head + tail  # every duplicate comes after its original

    prod = Producer({"bootstrap.servers": p.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for key, value, _ in sent:
        prod.produce(topics["raw"], value, key)
        prod.poll(0)
    assert prod.flush(30) == 0

    group = f"test-ingest-{unique}"
    log_path = tmp_path / "ingest.log"
    proc = ingest_process(topics, group, log_path, metrics_interval_s=0.5, batch_size=2000).start()
    try:
        proc.wait_ready(90)
        wait_committed(p, group, topics["raw"], [0, 1, 2, 3], len(sent), proc)
        metrics = _scrape(proc)
        # the running reporter (not only its last report at shutdown) publishes the final counts
        reader = Consumer({"bootstrap.servers": p.kafka_bootstrap, "group.id": f"test-ingest-metrics-{unique}",
                           "auto.offset.reset": "earliest", "enable.auto.commit": False})
        reader.subscribe([topics["metrics"]])
        reported = {}

        def counted_everything():
            for m in reader.consume(1000, 0.2):
                if m.error() is None:
                    me = events_pb2.MetricEvent.FromString(m.value())
                    reported[(me.name, tuple(sorted(me.labels.items())))] = me.value
            return reported.get(("accepted_total", ())) == len(valid)

        try:
            wait_until(counted_everything, 60, lambda: f"no metric event counts every accepted event: {reported}")
        finally:
            reader.close()
    finally:
        rc = proc.stop(60)
    assert rc == 0, proc.log_tail(60)

    # clean: exactly the valid, distinct events, keyed by user id, stamped, content unchanged
    clean = read_to_end(p, topics["clean"], idle_s=1.0)
    got = {}
    for m in clean:
        e = events_pb2.UserEvent.FromString(m.value())
        assert e.event_id not in got, f"duplicate {e.event_id} on the clean topic"
        got[e.event_id] = e
        assert m.key() == e.user_id.encode()
        assert e.ingested_at_ms >= now
    assert set(got) == set(valid)
    for eid, e in got.items():
        expect = events_pb2.UserEvent()
        expect.CopyFrom(valid[eid])
        expect.ingested_at_ms = e.ingested_at_ms
        assert e == expect

    # DLQ: every malformed message, original bytes, headers naming the reason and the source
    raw = {(m.partition(), m.offset()): m.value() for m in read_to_end(p, topics["raw"], idle_s=0.5)}
    expected_bad = Counter(s[2] for s in sent if s[2] not in ("valid", "duplicate"))
    by_value = {s[1]: s[2] for s in sent if s[2] not in ("valid", "duplicate")}
    dlq = read_to_end(p, topics["dlq"], idle_s=1.0)
    reasons = []
    for m in dlq:
        h = {k: v.decode() for k, v in m.headers()}
        assert h["source_topic"] == topics["raw"]
        assert raw[(int(h["source_partition"]), int(h["source_offset"]))] == m.value()
        assert h["error"] == by_value[m.value()]
        assert h["error_detail"]
        reasons.append(h["error"])
    assert Counter(reasons) == expected_bad
    assert len(dlq) == len(MALFORMED_KINDS) * 15

    # data-quality metrics on /metrics ...
    n_bad = len(dlq)
    assert metrics["recpilot_ingest_events_received_total"] == len(sent)
    assert metrics["recpilot_ingest_events_accepted_total"] == len(valid)
    assert metrics["recpilot_ingest_events_duplicate_total"] == 500
    assert sum(v for k, v in metrics.items() if k.startswith("recpilot_ingest_events_rejected_total{")) == n_bad
    assert metrics['recpilot_ingest_events_rejected_total{reason="negative_price"}'] == 15
    # ... and as MetricEvent messages for the monitor
    last = {}
    for m in read_to_end(p, topics["metrics"], idle_s=0.5):
        me = events_pb2.MetricEvent.FromString(m.value())
        assert me.service == "ingest"
        last[(me.name, tuple(sorted(me.labels.items())))] = me.value
    assert last[("accepted_total", ())] == len(valid)
    assert last[("rejected_total", ())] == n_bad
    assert last[("rejected_total", (("reason", "oversized"),))] == 15
    assert last[("duplicates_total", ())] == 500


def test_json_from_a_plain_producer_and_readiness(platform_settings, topics, unique, tmp_path):
    """A kcat-style JSON line is accepted; /readyz is honest (503 once the broker is unreachable is
    not testable here without stopping the shared broker, so it checks the ready body)."""
    p = platform_settings
    now = int(time.time() * 1000)
    line = json.dumps({"event_id": f"kcat-{unique}", "user_id": "u-1", "event_type": "purchase",
                       "item_id": "item-000042", "price": 12.5, "timestamp_ms": now,
                       "context": {"category": "tops"}}).encode()
    prod = Producer({"bootstrap.servers": p.kafka_bootstrap})
    prod.produce(topics["raw"], line)
    assert prod.flush(10) == 0
    group = f"test-ingest-json-{unique}"
    log_path = tmp_path / "ingest.log"
    proc = ingest_process(topics, group, log_path, transactional="true").start()
    try:
        proc.wait_ready(90)
        code, text = proc.get("/readyz", 5)
        body = json.loads(text)
        assert code == 200 and body["status"] == "ok" and body["broker"] is True and body["loop_running"] is True
        wait_committed(p, group, topics["raw"], [0, 1, 2, 3], 1, proc)
    finally:
        assert proc.stop(60) == 0
    out = [events_pb2.UserEvent.FromString(m.value()) for m in read_to_end(p, topics["clean"], idle_s=0.5)]
    assert len(out) == 1
    e = out[0]
    assert (e.event_id, e.user_id, e.event_type, e.item_id, e.price, e.timestamp_ms) == (
        f"kcat-{unique}", "u-1", events_pb2.PURCHASE, "item-000042", 12.5, now)
    assert e.context["category"] == "tops"
