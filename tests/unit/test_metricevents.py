import time

import pytest
from confluent_kafka import KafkaError

from recpilot.metricevents import MetricPublisher, metric_event, summary
from recpilot.pb import events_pb2


class FakeProducer:
    """Records produce calls; ``full`` makes produce raise BufferError; ``queued`` is what flush leaves."""

    def __init__(self, full_after: int | None = None, queued: int = 0) -> None:
        self.produced: list[tuple[str, bytes, bytes]] = []
        self.callbacks = []
        self.polls: list[float] = []
        self.flushes: list[float] = []
        self.full_after, self.queued = full_after, queued

    def produce(self, topic, value, key, on_delivery=None):
        if self.full_after is not None and len(self.produced) >= self.full_after:
            raise BufferError("Local: Queue full")
        self.produced.append((topic, value, key))
        self.callbacks.append(on_delivery)

    def poll(self, timeout):
        self.polls.append(timeout)
        return 0

    def flush(self, timeout):
        self.flushes.append(timeout)
        return self.queued


def _decoded(prod):
    return [events_pb2.MetricEvent.FromString(v) for _, v, _ in prod.produced]


def test_event_and_summary_builders():
    s = summary(4, 2.0, 0.1, 0.9, {"p50": 0.5}, bucket_bounds=[0.25, 0.5], bucket_counts=[1, 2, 1], scale=1000.0)
    ev = metric_event("features", "i1", "freshness_ms", 900.0, {"topic": "events.clean"}, timestamp_ms=123, summary=s)
    assert (ev.service, ev.instance, ev.name, ev.value, ev.timestamp_ms) == ("features", "i1", "freshness_ms", 900.0, 123)
    assert dict(ev.labels) == {"topic": "events.clean"}
    assert (ev.summary.count, ev.summary.sum, ev.summary.min, ev.summary.max) == (4, 2000.0, 100.0, 900.0)
    assert ev.summary.quantiles["p50"] == 500.0
    assert list(ev.summary.bucket_bounds) == [250.0, 500.0] and list(ev.summary.bucket_counts) == [1, 2, 1]
    before = time.time_ns() // 1_000_000
    plain = metric_event("ingest", "i1", "accepted_total", 3)
    assert not plain.HasField("summary") and not plain.labels and plain.timestamp_ms >= before


def test_publish_produces_one_batch_to_the_service_topic_keyed_by_service():
    prod = FakeProducer()
    pub = MetricPublisher(prod, "monitor", "m-1")
    assert pub.publish([pub.event("alerts_total", 2, {"detector": "drift"}), pub.event("checks_total", 9)]) == 2
    assert [(t, k) for t, _, k in prod.produced] == [("metrics.monitor", b"monitor")] * 2
    evs = _decoded(prod)
    assert [(e.service, e.instance, e.name, e.value) for e in evs] == [
        ("monitor", "m-1", "alerts_total", 2.0), ("monitor", "m-1", "checks_total", 9.0)]
    assert dict(evs[0].labels) == {"detector": "drift"}
    assert prod.polls == [0] and prod.flushes == []  # handed over, not waited for
    assert pub.sent == 2 and pub.dropped == 0


def test_topic_and_key_can_be_given():
    prod = FakeProducer()
    pub = MetricPublisher(prod, "inference", "replica-3", topic="metrics.inference.test", key="replica-3")
    pub.publish([pub.event("requests", 1)])
    assert prod.produced[0][0] == "metrics.inference.test" and prod.produced[0][2] == b"replica-3"


def test_a_full_queue_drops_and_counts_instead_of_blocking():
    prod = FakeProducer(full_after=1)
    pub = MetricPublisher(prod, "ingest", "i1")
    assert pub.publish([pub.event(n) for n in ("a", "b", "c")]) == 1
    assert (pub.sent, pub.dropped) == (1, 2)
    assert [e.name for e in _decoded(prod)] == ["a"]


def test_delivery_failures_and_events_left_at_close_are_counted():
    prod = FakeProducer(queued=2)
    pub = MetricPublisher(prod, "ingest", "i1")
    pub.publish([pub.event("a"), pub.event("b"), pub.event("c")])
    prod.callbacks[0](None, None)
    prod.callbacks[1](KafkaError(KafkaError._MSG_TIMED_OUT), None)
    assert pub.undelivered == 1
    assert pub.close(3.0) == 3 and prod.flushes == [3.0]


def test_periodic_thread_publishes_each_interval_and_the_last_one_at_close():
    prod = FakeProducer()
    pub = MetricPublisher(prod, "rl_feedback", "r1")
    calls = []

    def collect():
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("a broken interval is logged, not fatal")
        return [pub.event("interval", len(calls))]

    pub.start(0.01, collect)
    deadline = time.monotonic() + 10
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.close(1.0)
    n = len(calls)
    assert n >= 4
    decoded = _decoded(prod)
    values = [e.value for e in decoded if e.name == "interval"]
    assert values == [float(i) for i in range(1, n + 1) if i != 2]  # the last one came from close()
    resources = [e for e in decoded if e.name != "interval"]  # each interval carries the process's resource use
    assert {e.name for e in resources} >= {"cpu_cores", "memory_rss_bytes", "cpu_limit_cores"}
    assert all(e.service == "rl_feedback" and e.instance == "r1" for e in resources)
    assert [e.value for e in resources if e.name == "memory_rss_bytes"][0] > 10e6
    assert pub.sent == len(decoded) and prod.flushes == [1.0]
    time.sleep(0.05)
    assert len(calls) == n  # the thread stopped


def test_close_without_a_thread_only_flushes():
    prod = FakeProducer()
    pub = MetricPublisher(prod, "features", "f1")
    assert pub.close(2.0) == 0
    assert prod.produced == [] and prod.flushes == [2.0]


@pytest.mark.parametrize("key", [b"raw", "raw"])
def test_key_bytes_or_str(key):
    prod = FakeProducer()
    MetricPublisher(prod, "x", "i", key=key).publish([metric_event("x", "i", "n")])
    assert prod.produced[0][2] == b"raw"
