"""De-duplication by event_id (bounded, with TTL), the pipeline's counters and the metric events."""

from __future__ import annotations

from recpilot.pb import events_pb2
from services.ingest.dedup import Deduplicator, id_key
from services.ingest.pipeline import Ingestor, Stats
from services.ingest.reporter import metric_events
from services.ingest.validate import Rejection, Validator

NOW = 1_800_000_000_000


def test_duplicate_within_ttl_and_not_after():
    d = Deduplicator(capacity=100, ttl_ms=1000)
    assert d.seen("a", 0) is False
    assert d.seen("a", 999) is True
    assert d.seen("a", 1000) is False  # expired: recorded again
    assert d.seen("a", 1500) is True


def test_memory_is_bounded_by_capacity_oldest_evicted_first():
    d = Deduplicator(capacity=3, ttl_ms=10_000)
    for i, k in enumerate("abcd"):
        assert d.seen(k, i) is False
    assert len(d) == 3 and d.evicted == 1
    assert d.seen("a", 5) is False  # evicted, so no longer known
    assert d.seen("d", 5) is True


def test_expire_drops_entries_older_than_ttl():
    d = Deduplicator(capacity=100, ttl_ms=100)
    for i in range(10):
        d.seen(f"e{i}", i * 20)
    d.expire(200)  # keeps first-seen > 100: e6..e9
    assert len(d) == 4
    assert d.seen("e9", 200) is True and d.seen("e0", 200) is False


def test_remember_feeds_warm_up_and_ids_hash_stably():
    d = Deduplicator(capacity=10, ttl_ms=1000)
    d.remember("x", 500)
    assert d.seen("x", 600) is True
    assert id_key("event-1") == id_key("event-1") != id_key("event-2")
    assert id_key("abc") == 0x5995d533d814bbd8  # the same in every process (not Python's salted hash)


def _ev(eid: str, **kw) -> bytes:
    base = dict(event_id=eid, user_id="u", event_type=1, item_id="i", timestamp_ms=NOW)
    base.update(kw)
    return events_pb2.UserEvent(**base).SerializeToString()


def test_ingestor_counts_accepted_duplicates_rejections_and_missing_fields():
    ing = Ingestor(Validator(), Deduplicator())
    out = [ing.process(v, NOW) for v in (
        _ev("a"), _ev("b"), _ev("a"), _ev("c", price=-1), _ev("", user_id="u"), _ev("d", item_id=""), b"\x0f")]
    assert [type(o).__name__ if o is not None else None for o in out] == [
        "UserEvent", "UserEvent", None, "Rejection", "Rejection", "Rejection", "Rejection"]
    st = ing.stats
    assert (st.received, st.accepted, st.duplicates, st.rejected_total) == (7, 2, 1, 4)
    assert st.rejected["negative_price"] == 1 and st.rejected["missing_field"] == 1
    assert st.rejected["missing_item_id"] == 1 and st.rejected["undecodable"] == 1
    assert st.missing == {"event_id": 1, "item_id": 1}
    assert abs(st.missing_field_rate - 2 / 7) < 1e-12


def test_invalid_event_does_not_mark_its_id_as_seen():
    ing = Ingestor(Validator(), Deduplicator())
    assert isinstance(ing.process(_ev("z", price=-5), NOW), Rejection)
    assert isinstance(ing.process(_ev("z"), NOW), events_pb2.UserEvent)


def test_metric_events_for_an_interval():
    prev = Stats(received=100, accepted=90, duplicates=5)
    prev.rejected["negative_price"] = 5
    cur = Stats(received=300, accepted=270, duplicates=10, missing={"item_id": 10})
    cur.rejected["negative_price"] = 10
    cur.rejected["missing_item_id"] = 10
    evs = metric_events(cur, prev, 2.0, NOW, "i1", lag=7, dedup_entries=270)
    by = {(e.name, tuple(sorted(e.labels.items()))): e.value for e in evs}
    assert by[("accepted_total", ())] == 270
    assert by[("rejected_total", ())] == 20
    assert by[("rejected_total", (("reason", "missing_item_id"),))] == 10
    assert by[("missing_field_rate", ())] == 10 / 200
    assert by[("reject_rate", ())] == 15 / 200
    assert by[("duplicate_rate", ())] == 5 / 200
    assert by[("events_per_s", ())] == 100.0
    assert by[("consumer_lag", ())] == 7
    assert all(e.service == "ingest" and e.instance == "i1" and e.timestamp_ms == NOW for e in evs)


def test_interval_metrics_report_the_interval_since_the_previous_call():
    from services.ingest.reporter import IntervalMetrics

    stats = [Stats(received=100, accepted=100), Stats(received=400, accepted=300, duplicates=100)]
    collect = IntervalMetrics("i1", lambda: (stats.pop(0), 3, 50))
    collect()
    by = {e.name: e.value for e in collect() if not e.labels}
    assert by["received_total"] == 400 and by["duplicate_rate"] == 100 / 300
    assert by["consumer_lag"] == 3 and by["dedup_entries"] == 50
