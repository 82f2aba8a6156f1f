"""Validation and normalisation rules of ingest (no I/O)."""

from __future__ import annotations

import json
import random

import pytest

from recpilot.pb import events_pb2
from recpilot.simulator import EXPECTED_REASON, MALFORMED_KINDS, ShopSimulator, event_to_json, malformed
from services.ingest.validate import REASONS, Rejection, Validator

NOW = 1_800_000_000_000


def ev(**kw) -> events_pb2.UserEvent:
    base = dict(event_id="e1", user_id="u1", session_id="s1", event_type=1, item_id="item-000001",
                price=19.99, timestamp_ms=NOW - 1000)
    base.update(kw)
    ctx = base.pop("context", {"category": "tops"})
    e = events_pb2.UserEvent(**base)
    e.context.update(ctx)
    return e


def check(value, **kw):
    return Validator(**kw).check(value, NOW)


def reason(value, **kw):
    r = check(value, **kw)
    assert isinstance(r, Rejection), f"expected a rejection, got {r}"
    return r.reason


def test_valid_protobuf_is_accepted_normalised_and_stamped():
    raw = ev(user_id="  u1 ", item_id="item-000001\t").SerializeToString()
    out = check(raw)
    assert isinstance(out, events_pb2.UserEvent)
    assert out.user_id == "u1" and out.item_id == "item-000001"
    assert out.ingested_at_ms == NOW
    assert out.event_type == 1 and out.price == pytest.approx(19.99) and out.context["category"] == "tops"


def test_valid_json_with_type_name_and_scalar_context():
    raw = json.dumps({"event_id": "e9", "user_id": "u9", "event_type": "add_to_cart", "item_id": "i1",
                      "price": 5, "timestamp_ms": NOW, "context": {"page": 3, "device": "ios"}}).encode()
    out = check(raw)
    assert isinstance(out, events_pb2.UserEvent)
    assert out.event_type == events_pb2.ADD_TO_CART
    assert out.price == 5.0
    assert dict(out.context) == {"page": "3", "device": "ios"}


def test_json_equals_protobuf_after_conversion():
    sim = ShopSimulator(seed=3, n_users=50, n_items=100)
    for _ in range(200):
        e = sim.next_event(NOW - 10)
        a, b = check(e.SerializeToString()), check(event_to_json(e))
        assert a == b


@pytest.mark.parametrize(("raw", "code"), [
    (b"", "undecodable"),
    (b"\x0f\x01\x02", "undecodable"),
    (b'{"event_id": "e1", ', "undecodable"),
    (b"[1, 2]", "undecodable"),
    (b'{"event_id": "e1", "colour": "red"}', "unknown_field"),
    (b'{"event_id": 5, "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": 1}', "invalid_type"),
    (b'{"event_id": "e", "user_id": "u", "event_type": "VIEW", "item_id": "i", "price": "9", "timestamp_ms": 1}', "invalid_type"),
    (b'{"event_id": "e", "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": 1.5}', "invalid_type"),
    (b'{"event_id": "e", "user_id": "u", "event_type": true, "item_id": "i", "timestamp_ms": 1}', "invalid_type"),
    (b'{"event_id": "e", "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": 1, "context": {"a": [1]}}', "invalid_type"),
    (b'{"event_id": "e", "user_id": "u", "event_type": "HOVER", "item_id": "i", "timestamp_ms": 1}', "unknown_event_type"),
])
def test_json_and_bytes_rejections(raw, code):
    assert reason(raw) == code


def test_required_fields_and_detail_names_the_field():
    for field in ("event_id", "user_id", "timestamp_ms"):
        e = ev()
        e.ClearField(field)
        r = check(e.SerializeToString())
        assert (r.reason, r.detail, r.missing) == ("missing_field", field, field)
    e = ev()
    e.ClearField("event_type")
    assert check(e.SerializeToString()).detail == "event_type"
    assert reason(ev(event_id="   ").SerializeToString()) == "missing_field"


def test_item_id_required_where_the_type_needs_one_and_query_for_search():
    for t in (1, 2, 3, 4):
        r = check(ev(event_type=t, item_id="").SerializeToString())
        assert r.reason == "missing_item_id" and r.missing == "item_id"
    assert reason(ev(event_type=5, item_id="", query=" ").SerializeToString()) == "missing_field"
    ok = check(ev(event_type=5, item_id="", query=" red dress ").SerializeToString())
    assert isinstance(ok, events_pb2.UserEvent) and ok.query == "red dress"


def test_event_type_unknown_number():
    assert reason(ev(event_type=9).SerializeToString()) == "unknown_event_type"


def test_price_rules():
    assert reason(ev(price=-0.01).SerializeToString()) == "negative_price"
    assert reason(ev(price=float("nan")).SerializeToString()) == "invalid_value"
    assert reason(ev(price=float("inf")).SerializeToString()) == "invalid_value"
    assert isinstance(check(ev(price=0.0).SerializeToString()), events_pb2.UserEvent)


def test_timestamp_window_is_five_minutes_ahead_and_a_configurable_horizon_back():
    assert isinstance(check(ev(timestamp_ms=NOW + 300_000).SerializeToString()), events_pb2.UserEvent)
    assert reason(ev(timestamp_ms=NOW + 300_001).SerializeToString()) == "future_timestamp"
    day = 86_400_000
    assert isinstance(check(ev(timestamp_ms=NOW - 6 * day).SerializeToString()), events_pb2.UserEvent)
    assert reason(ev(timestamp_ms=NOW - 8 * day).SerializeToString()) == "stale_timestamp"
    assert reason(ev(timestamp_ms=NOW - 2 * day).SerializeToString(), max_age_ms=day) == "stale_timestamp"


def test_payload_size_limit_is_checked_before_decoding():
    big = ev(context={"note": "x" * 2000}).SerializeToString()
    assert reason(big, max_payload_bytes=1024) == "oversized"
    assert reason(b"{" + b" " * 2000, max_payload_bytes=1024) == "oversized"
    assert isinstance(check(big, max_payload_bytes=4096, max_context_value_length=2000), events_pb2.UserEvent)


def test_ids_too_long_or_with_control_characters():
    assert reason(ev(user_id="u" * 300).SerializeToString()) == "invalid_value"
    assert reason(ev(item_id="a\x00b").SerializeToString()) == "invalid_value"


def test_every_simulated_malformed_kind_gets_its_reason():
    sim = ShopSimulator(seed=5, n_users=100, n_items=200)
    rng = random.Random(1)
    assert set(EXPECTED_REASON.values()) <= set(REASONS)
    for kind in MALFORMED_KINDS:
        for _ in range(30):
            _key, value = malformed(kind, sim.next_event(NOW), NOW, rng)
            r = check(value)
            assert isinstance(r, Rejection) and r.reason == EXPECTED_REASON[kind], (kind, r)


def test_protobuf_that_starts_like_whitespace_and_brace_is_still_protobuf():
    # tag 0x0a (event_id), length 0x0b (whitespace byte), then an id that starts with "{"
    e = ev(event_id="{abc-12345}")
    raw = e.SerializeToString()
    assert raw[:3] == b"\x0a\x0b{"
    out = check(raw)
    assert isinstance(out, events_pb2.UserEvent) and out.event_id == "{abc-12345}"
    assert isinstance(check(b"\n  " + json.dumps({"event_id": "e", "user_id": "u", "event_type": "SEARCH",
                                                  "query": "hat", "timestamp_ms": NOW}).encode()),
                      events_pb2.UserEvent)
