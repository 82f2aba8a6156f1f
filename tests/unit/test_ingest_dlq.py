"""The ingest transport's per-message decisions on a batch, with a stand-in producer (no I/O): one
message whose handling raises goes to the DLQ and the batch goes on; the DLQ copy of an oversized
message is a prefix with its size and sha256; producer failures still fail the batch; the
de-duplicator's evictions are counted."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from recpilot.pb import events_pb2
from recpilot.settings import PlatformSettings
from services.ingest.dedup import Deduplicator
from services.ingest.pipeline import Ingestor
from services.ingest.reporter import metric_events
from services.ingest.service import IngestService
from services.ingest.settings import IngestSettings
from services.ingest.validate import Validator


class Msg:
    """A consumed message, as confluent_kafka.Message answers."""

    def __init__(self, value, offset, key=b"k", headers=None, topic="t.raw", partition=0):
        self._value, self._offset, self._key, self._headers = value, offset, key, headers
        self._topic, self._partition = topic, partition

    def value(self):
        return self._value

    def key(self):
        return self._key

    def headers(self):
        if self._headers == "unreadable":  # a header key that is not UTF-8
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return self._headers

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


class Producer:
    """Records what is produced; refuses, as librdkafka does, a message over ``max_bytes`` and a
    header value that is not encodable as UTF-8."""

    def __init__(self, max_bytes=1_000_000, fail_with=None):
        self.max_bytes, self.fail_with, self.sent = max_bytes, fail_with, []

    def produce(self, topic, value=None, key=None, headers=None):
        if self.fail_with is not None:
            raise KafkaException(KafkaError(self.fail_with))
        hs = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers or ()]
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in hs)
        if size > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent.append((topic, value, key, dict(hs)))

    def poll(self, _timeout=0):
        return 0


def service(validator=None, dedup=None, **settings) -> IngestService:
    s = IngestSettings(raw_topic="t.raw", clean_topic="t.clean", dlq_topic="t.dlq", **settings)
    dedup = Deduplicator() if dedup is None else dedup  # an empty one is falsy (len 0)
    return IngestService(s, PlatformSettings(), Ingestor(validator or Validator(), dedup))


def event(eid: str, **kw) -> bytes:
    e = events_pb2.UserEvent(event_id=eid, user_id="u1", event_type=1, item_id="i1",
                             timestamp_ms=time.time_ns() // 1_000_000 - 1000, **kw)
    return e.SerializeToString()


def test_a_message_whose_handling_raises_goes_to_the_dlq_and_the_batch_goes_on():
    class Broken(Validator):
        def check(self, value, now_ms):
            if value == b"boom":
                raise RuntimeError("validator bug \ud800")  # a message that is not UTF-8 either
            return super().check(value, now_ms)

    svc, prod = service(Broken()), Producer()
    svc._handle([Msg(event("a"), 0), Msg(b"boom", 1, headers=[("trace", b"t1")]), Msg(event("b"), 2)], prod)
    assert [t for t, *_ in prod.sent] == ["t.clean", "t.dlq", "t.clean"]
    _, value, key, h = prod.sent[1]
    assert (value, key) == (b"boom", b"k")
    assert h["error"] == b"internal_error" and h["error_detail"] == b"RuntimeError: validator bug \\ud800"
    assert (h["trace"], h["source_topic"], h["source_partition"], h["source_offset"]) == (b"t1", b"t.raw", b"0", b"1")
    assert svc.ingestor.stats.rejected["internal_error"] == 1 and svc.ingestor.stats.accepted == 2


def test_a_rejection_detail_that_is_not_utf8_does_not_fail_the_batch():
    raw = json.dumps({"event_id": "e", "\ud800": 1}).encode()  # an unknown key holding a lone surrogate
    svc, prod = service(), Producer()
    svc._handle([Msg(raw, 0), Msg(event("a"), 1)], prod)
    assert [t for t, *_ in prod.sent] == ["t.dlq", "t.clean"]
    assert prod.sent[0][3]["error"] == b"unknown_field"


def test_the_dlq_copy_of_an_oversized_message_is_a_prefix_with_its_size_and_sha256():
    big = b"\x0a\x01x" + b"y" * 1_040_000  # at the broker's limit: a full copy with headers cannot be produced
    svc, prod = service(), Producer()
    svc._handle([Msg(big, 7, headers=[("trace", b"t1")]), Msg(event("a"), 8)], prod)
    assert [t for t, *_ in prod.sent] == ["t.dlq", "t.clean"]
    _, value, _, h = prod.sent[0]
    assert value == big[:4096]
    assert h["error"] == b"oversized" and h["trace"] == b"t1"
    assert int(h["original_size"]) == len(big) and h["original_sha256"].decode() == hashlib.sha256(big).hexdigest()
    svc2, prod2 = service(dlq_prefix_bytes=100), Producer()
    svc2._handle([Msg(big, 7)], prod2)
    assert prod2.sent[0][1] == big[:100]


def test_a_clean_event_the_producer_refuses_for_its_size_goes_to_the_dlq():
    valid_when_large = Validator(max_payload_bytes=2_000_000, max_context_value_length=100_000)
    svc, prod = service(valid_when_large, max_payload_bytes=2_000_000), Producer(max_bytes=50_000)
    big = event("big", context={"note": "x" * 60_000})
    svc._handle([Msg(big, 0, headers=[("trace", b"t1")]), Msg(event("a"), 1)], prod)
    assert [t for t, *_ in prod.sent] == ["t.dlq", "t.clean"]
    _, value, _, h = prod.sent[0]
    assert h["error"] == b"internal_error" and b"MSG_SIZE_TOO_LARGE" in h["error_detail"]
    assert value == big[:4096] and int(h["original_size"]) == len(big)
    assert h["original_headers"] == b"dropped" and "trace" not in h
    st = svc.ingestor.stats
    assert (st.accepted, st.rejected["internal_error"]) == (1, 1)
    assert not svc.ingestor.dedup.seen("big", time.time_ns() // 1_000_000)  # not published, so not a duplicate


def test_a_key_too_large_to_copy_is_cut_to_the_prefix_length():
    svc, prod = service(), Producer()
    key = b"k" * 1_040_000
    svc._handle([Msg(b"\x0f\x01", 0, key=key), Msg(event("a"), 1)], prod)
    assert [t for t, *_ in prod.sent] == ["t.dlq", "t.clean"]
    _, value, got_key, h = prod.sent[0]
    assert (value, got_key, h["original_key_size"]) == (b"\x0f\x01", key[:4096], b"1040000")


def test_original_headers_that_cannot_be_read_are_left_out_of_the_dlq_copy():
    svc, prod = service(), Producer()
    svc._handle([Msg(b"\x0f\x01", 0, headers="unreadable"), Msg(event("a"), 1)], prod)
    assert [t for t, *_ in prod.sent] == ["t.dlq", "t.clean"]
    h = prod.sent[0][3]
    assert h["error"] == b"undecodable" and h["original_headers"] == b"dropped" and h["source_offset"] == b"0"


@pytest.mark.parametrize("code", [KafkaError._FATAL, KafkaError._STATE, KafkaError._UNKNOWN_TOPIC])
def test_a_producer_or_broker_failure_still_fails_the_batch(code):
    svc = service()
    with pytest.raises(KafkaException):
        svc._handle([Msg(event("a"), 0)], Producer(fail_with=code))
    with pytest.raises(KafkaException):
        svc._handle([Msg(b"\x0f", 0)], Producer(fail_with=code))


def test_dedup_evictions_are_a_prometheus_counter_and_a_metric_event():
    def evictions() -> float:
        return REGISTRY.get_sample_value("recpilot_ingest_dedup_evictions_total") or 0.0

    before = evictions()
    svc, prod = service(dedup=Deduplicator(capacity=2)), Producer()
    svc._handle([Msg(event(f"e{i}"), i) for i in range(5)], prod)
    svc._publish_stats()
    assert evictions() - before == 3
    svc._handle([Msg(event("e9"), 9)], prod)
    svc._publish_stats()
    assert evictions() - before == 4
    by = {e.name: e.value for e in metric_events(svc.snapshot, type(svc.snapshot)(), 1.0, 0, "i1") if not e.labels}
    assert by["dedup_evictions_total"] == 4
