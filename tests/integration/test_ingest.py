"""Ingest on the real test stack, as a real subprocess (`python -m services.ingest`) on per-test topics:
10,000 valid events plus malformed ones of every kind and duplicates go in; exactly the valid,
distinct ones come out on the clean topic, every malformed one is in the DLQ with its reason. A
fuzzed stream (random bytes, random JSON, lone surrogates, unknown fields, a message at the
broker's size limit) ends message by message in the clean topic or the DLQ, without a restart."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import Consumer, Producer

from recpilot.kafka import create_topics, delete_topics, read_to_end
from recpilot.pb import events_pb2
from recpilot.simulator import EXPECTED_REASON, MALFORMED_KINDS, ShopSimulator, event_to_json, malformed
from services.ingest.validate import REASONS
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
        original = raw[(int(h["source_partition"]), int(h["source_offset"]))]
        _assert_dlq_copy(m.value(), original, h)
        assert h["error"] == by_value[original]
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


def _assert_dlq_copy(copy: bytes | None, original: bytes | None, h: dict[str, str]) -> None:
    """The DLQ copy is the original, or its prefix with its size and sha256 (an oversized one)."""
    if "original_size" in h:
        assert original[:len(copy)] == copy and len(copy) < len(original)
        assert int(h["original_size"]) == len(original)
        assert h["original_sha256"] == hashlib.sha256(original).hexdigest()
    else:
        assert copy == original


def _random_text(rng: random.Random) -> str:
    """A few code points of every kind, lone UTF-16 surrogates and control characters included."""
    ranges = ((0, 0x1F), (0x20, 0x7E), (0x7F, 0x9F), (0xA0, 0xD7FF), (0xD800, 0xDFFF), (0xE000, 0x10FFFF))
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 8)))


def _random_json(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth >= 3 or r < 0.5:
        return rng.choice([None, True, rng.randint(-(10**20), 10**20), rng.random() * 10**rng.randint(-5, 308),
                           float("nan"), _random_text(rng), "VIEW"])
    if r < 0.75:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = list(events_pb2.UserEvent.DESCRIPTOR.fields_by_name) + [_random_text(rng)]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _json_bytes(obj, rng: random.Random) -> bytes:
    # ensure_ascii writes a lone surrogate as a \udXXX escape; otherwise as (invalid) UTF-8 bytes
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def test_a_fuzzed_stream_ends_message_by_message_in_clean_or_dlq_without_a_restart(
        platform_settings, topics, unique, tmp_path):
    p = platform_settings
    now = int(time.time() * 1000)
    rng = random.Random(14)
    sim = ShopSimulator(seed=14, n_users=100, n_items=100)
    sent: list[tuple[bytes | None, str, str]] = []  # (value, expected outcome, event_id or "")
    for _ in range(400):
        e = sim.next_event(now - rng.randint(0, 60_000))
        roll = rng.random()
        if roll < 0.35:  # valid: clean
            sent.append((e.SerializeToString() if roll < 0.25 else event_to_json(e), "clean", e.event_id))
        elif roll < 0.5:
            sent.append((rng.randbytes(rng.randint(1, 300)), "dlq", ""))
        elif roll < 0.65:
            sent.append((_json_bytes(_random_json(rng), rng), "dlq", ""))
        elif roll < 0.85:  # an event with one field (not its id) replaced: clean or DLQ
            d = json.loads(event_to_json(e))
            d[rng.choice(["user_id", "session_id", "item_id", "query", "event_type", "price", "timestamp_ms",
                          "context", "request_id"])] = _random_json(rng, rng.randint(1, 3))
            sent.append((_json_bytes(d, rng), "either", e.event_id))
        else:  # a protobuf field number UserEvent does not have, as an unknown JSON key is
            sent.append((e.SerializeToString() + b"\xa0\x06\x01", "unknown_field", ""))  # field 100, varint 1
    e = sim.next_event(now)
    surrogate = json.loads(event_to_json(e))
    surrogate["event_id"] = "\ud800"
    sent += [
        (json.dumps(surrogate).encode(), "invalid_value", ""),  # the escape "\ud800", valid JSON
        (b'{"a":' + b"[" * 50_000, "undecodable", ""),  # deeper than the JSON decoder's recursion limit
        (rng.randbytes(1_040_000), "oversized", ""),  # at the broker's limit: only a prefix fits in the DLQ
        (b"x" * 70_000, "oversized", ""),
        (b"", "undecodable", ""),
        (None, "undecodable", ""),
    ]
    keys = {len(sent): rng.randbytes(1_040_000)}  # a key at the broker's limit, on a message for the DLQ
    sent.append((b"\x0f\x01", "undecodable", ""))
    delivered: dict[int, tuple[int, int]] = {}

    def on_delivery(i, err, msg):
        assert err is None, err
        delivered[i] = (msg.partition(), msg.offset())

    prod = Producer({"bootstrap.servers": p.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 20,
                     "message.max.bytes": 1_048_000})
    for i, (value, _, _) in enumerate(sent):
        prod.produce(topics["raw"], value, keys.get(i), on_delivery=lambda err, msg, i=i: on_delivery(i, err, msg))
        prod.poll(0)
    assert prod.flush(30) == 0 and len(delivered) == len(sent)

    group = f"test-ingest-fuzz-{unique}"
    proc = ingest_process(topics, group, tmp_path / "ingest.log", batch_size=50).start()
    try:
        proc.wait_ready(90)
        wait_committed(p, group, topics["raw"], [0, 1, 2, 3], len(sent), proc, timeout=60)
        code, body = proc.get("/readyz", 5)
        assert code == 200, body
        metrics = _scrape(proc)
    finally:
        rc = proc.stop(60)
    assert rc == 0, proc.log_tail(60)
    assert metrics["recpilot_ingest_restarts_total"] == 0
    assert metrics["recpilot_ingest_events_received_total"] == len(sent)

    # every source offset ends exactly once, in the clean topic or in the DLQ
    index_by_id = {eid: i for i, (_, _, eid) in enumerate(sent) if eid}
    ends: dict[tuple[int, int], list[str]] = defaultdict(list)
    dlq_headers: dict[tuple[int, int], dict[str, str]] = {}
    for m in read_to_end(p, topics["clean"], idle_s=1.0):
        e = events_pb2.UserEvent.FromString(m.value())
        ends[delivered[index_by_id[e.event_id]]].append("clean")
    raw = {(m.partition(), m.offset()): m.value() for m in read_to_end(p, topics["raw"], idle_s=0.5)}
    for m in read_to_end(p, topics["dlq"], idle_s=1.0):
        h = {k: v.decode() for k, v in m.headers()}
        origin = (int(h["source_partition"]), int(h["source_offset"]))
        _assert_dlq_copy(m.value(), raw[origin], h)
        assert h["error"] in REASONS and h["error"] != "internal_error" and h["error_detail"], h
        ends[origin].append(h["error"])
        dlq_headers[origin] = h
    assert sorted(ends) == sorted(delivered.values())
    for i, (value, expected, _) in enumerate(sent):
        got = ends[delivered[i]]
        assert len(got) == 1, (i, value[:80] if value else value, got)
        if expected == "dlq":
            assert got != ["clean"], (i, value[:80])
        elif expected != "either":
            assert got == [expected], (i, value[:80] if value else value, got)
    assert sum(1 for v in ends.values() if v == ["clean"]) == metrics["recpilot_ingest_events_accepted_total"]
    cut = sorted(int(h["original_size"]) for h in dlq_headers.values() if "original_size" in h)
    assert cut == [70_000, 1_040_000]  # the oversized ones, as prefixes (checked against the raw bytes above)
    assert dlq_headers[delivered[min(keys)]]["original_key_size"] == "1040000"


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
