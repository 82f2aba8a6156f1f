"""Property-based tests of ingest validation (Hypothesis, no I/O): arbitrary bytes, arbitrary JSON
and arbitrary protobuf never make the validator or the pipeline raise; each message gives either a
clean event that satisfies the clean-topic invariants or a rejection with one of the known reasons."""

from __future__ import annotations

import json
import math
import unicodedata

from google.protobuf import unknown_fields
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recpilot.pb import events_pb2
from services.ingest.dedup import Deduplicator
from services.ingest.pipeline import Ingestor
from services.ingest.validate import REASONS, Rejection, Validator

NOW = 1_800_000_000_000
DAY = 86_400_000
V = Validator()
IDS = ("event_id", "user_id", "session_id", "item_id", "request_id")
FIELDS = tuple(events_pb2.UserEvent.DESCRIPTOR.fields_by_name)

fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _no_control(s: str) -> bool:
    return not any(unicodedata.category(c) == "Cc" for c in s)


def assert_clean(e: events_pb2.UserEvent, v: Validator = V) -> None:
    """What every event on the clean topic satisfies."""
    assert type(e) is events_pb2.UserEvent
    back = events_pb2.UserEvent.FromString(e.SerializeToString())
    assert back == e and len(unknown_fields.UnknownFieldSet(back)) == 0
    assert e.event_id and e.user_id
    for f in IDS:
        s = getattr(e, f)
        assert len(s) <= v.max_id_length and s == s.strip() and (not s or s.isprintable()), (f, s)
    assert len(e.query) <= v.max_query_length
    assert len(e.context) <= v.max_context_entries
    for k, val in e.context.items():
        assert len(k) <= v.max_context_key_length and len(val) <= v.max_context_value_length
    for s in (*(getattr(e, f) for f in IDS), e.query, *e.context.keys(), *e.context.values()):
        s.encode("utf-8")  # valid UTF-8: no lone surrogate
        assert _no_control(s), s
    assert e.event_type in (1, 2, 3, 4, 5)
    if e.event_type != 5:
        assert e.item_id
    else:
        assert e.query and e.query == e.query.strip()
    assert math.isfinite(e.price) and e.price >= 0
    assert NOW - v.max_age_ms <= e.timestamp_ms <= NOW + v.max_future_ms
    assert e.ingested_at_ms == NOW


def verdict(value: bytes, v: Validator = V) -> events_pb2.UserEvent | Rejection:
    """The validator's answer (it must not raise), checked; the pipeline gives the same."""
    r = v.check(value, NOW)
    if isinstance(r, Rejection):
        assert r.reason in REASONS and r.reason != "internal_error", r
        r.detail.encode("utf-8")  # goes into a Kafka header
    else:
        assert_clean(r, v)
    assert Ingestor(v, Deduplicator()).process(value, NOW) == r
    return r


# -- arbitrary bytes ------------------------------------------------------------------------------
@fuzz
@given(st.binary(max_size=400) | st.builds(lambda p, b: p + b, st.sampled_from([b"{", b" {", b"\n{", b"\x0a"]),
                                         st.binary(max_size=200)))
@example(b'{"a":' + b"[" * 60_000)  # nested deeper than the JSON decoder's recursion limit
@example(b"[" * 60_000)
def test_arbitrary_bytes(value):
    verdict(value)


# -- arbitrary JSON ---------------------------------------------------------------------------------
any_text = st.text(st.characters(), max_size=12)  # every code point, lone surrogates included
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(any_text, c, max_size=3),
                           max_leaves=12)
id_like = st.text(st.characters(), min_size=1, max_size=20) | st.sampled_from(["e1", " u1 ", "item-1", "\ud800"])
event_types = st.sampled_from(["VIEW", "click", " search ", "PURCHASE", "add_to_cart", "HOVER", ""]) | st.integers(-3, 9)
timestamps = st.integers(NOW - 8 * DAY, NOW + 600_000) | st.floats() | st.integers()
json_events = st.fixed_dictionaries({}, optional={
    "event_id": id_like | json_values, "user_id": id_like, "session_id": id_like, "item_id": id_like,
    "request_id": id_like, "query": any_text | st.text(st.characters(), max_size=1100),
    "event_type": event_types | json_values, "price": st.floats() | st.integers() | json_values,
    "timestamp_ms": timestamps, "ingested_at_ms": timestamps,
    "context": st.dictionaries(any_text, scalars, max_size=6) | json_values,
}) | st.dictionaries(st.sampled_from(FIELDS) | any_text, json_values, max_size=5)


def _json_bytes(obj, ascii_only: bool) -> bytes:
    # ensure_ascii writes a lone surrogate as the escape \udXXX; otherwise surrogatepass writes its
    # (invalid) UTF-8 bytes
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@fuzz
@given(json_values, st.booleans())
def test_arbitrary_json(obj, ascii_only):
    verdict(_json_bytes(obj, ascii_only))


@fuzz
@given(json_events, st.booleans())
@example({"event_id": "\ud800", "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": NOW}, True)
@example({"event_id": "e", "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": NOW,
          "context": {"\udc00": "x"}}, True)
@example({"event_id": "e", "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": NOW,
          "price": 10**400}, True)
def test_arbitrary_json_events(obj, ascii_only):
    verdict(_json_bytes(obj, ascii_only))


# -- arbitrary protobuf ------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@st.composite
def unknown_field(draw) -> bytes:
    """One well-formed field whose number is not in UserEvent."""
    number = draw(st.integers(12, 40) | st.integers(41, 2**29 - 1).filter(lambda n: not 19_000 <= n < 20_000))
    wire = draw(st.sampled_from([0, 1, 2, 5]))
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(draw(st.integers(0, 2**64 - 1)))
    if wire == 1:
        return tag + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return tag + draw(st.binary(min_size=4, max_size=4))
    payload = draw(st.binary(max_size=20))
    return tag + _varint(len(payload)) + payload


text = st.text(st.characters(codec="utf-8"), max_size=20)  # what a protobuf string can hold


@st.composite
def protobuf_messages(draw) -> tuple[bytes, bool]:
    """(bytes, has_unknown_fields): a UserEvent with arbitrary values, maybe unknown fields appended,
    maybe cut or with a byte changed."""
    e = events_pb2.UserEvent()
    for f in IDS:
        if draw(st.booleans()):
            setattr(e, f, draw(text | st.sampled_from(["e1", "u1", " item-1 ", "a\x00b", "x" * 300])))
    e.event_type = draw(st.sampled_from([1, 2, 3, 4, 5]) | st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        e.query = draw(text | st.sampled_from([" hat ", "red\ndress", "q" * 2000, "\u2028", "\x85"]))
    if draw(st.booleans()):
        e.price = draw(st.floats())
    e.timestamp_ms = draw(st.integers(NOW - 8 * DAY, NOW + 600_000) | st.integers(-(2**63), 2**63 - 1))
    e.context.update(draw(st.dictionaries(text, text | st.just("v\tv"), max_size=4)))
    raw = e.SerializeToString()
    extra = draw(st.lists(unknown_field(), max_size=3))
    raw += b"".join(extra)
    mutation = draw(st.sampled_from(["none", "none", "cut", "flip"]))
    if mutation == "cut" and raw:
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif mutation == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw, bool(extra) and mutation == "none"


@fuzz
@given(protobuf_messages())
def test_arbitrary_protobuf(msg):
    raw, has_unknown = msg
    r = verdict(raw)
    if has_unknown and raw[:1] not in b"{ \t\r\n":
        # unknown fields are refused, as a JSON key outside the schema is
        assert isinstance(r, Rejection) and r.reason == "unknown_field", r


@fuzz
@given(protobuf_messages(), st.integers(8, 40), st.integers(1, 40), st.integers(0, 5))
def test_limits_from_settings_hold_on_clean_events(msg, id_len, text_len, entries):
    v = Validator(max_id_length=id_len, max_query_length=text_len, max_context_entries=entries,
                  max_context_key_length=text_len, max_context_value_length=text_len)
    verdict(msg[0], v)


# -- the cases found, as plain tests ------------------------------------------------------------------
def _json_event(**kw) -> bytes:
    d = {"event_id": "e", "user_id": "u", "event_type": "VIEW", "item_id": "i", "timestamp_ms": NOW - 1}
    d.update(kw)
    return json.dumps(d).encode()


def test_a_lone_surrogate_in_a_json_string_is_an_invalid_value():
    for raw in (_json_event(event_id="\ud800"), _json_event(context={"k": "\udfff"}),
                _json_event(context={"\ud800": "v"})):
        r = V.check(raw, NOW)
        assert isinstance(r, Rejection) and r.reason == "invalid_value" and "Unicode" in r.detail


def test_json_nested_too_deeply_is_undecodable_and_a_huge_price_invalid():
    assert V.check(b'{"a":' + b"[" * 60_000, NOW).reason == "undecodable"
    assert V.check(_json_event(price=10**400), NOW).reason == "invalid_value"


def test_protobuf_unknown_fields_are_refused_like_json_ones():
    e = events_pb2.UserEvent(event_id="e", user_id="u", event_type=1, item_id="i", timestamp_ms=NOW - 1)
    r = V.check(e.SerializeToString() + _varint(99 << 3) + _varint(7), NOW)
    assert isinstance(r, Rejection) and (r.reason, r.detail) == ("unknown_field", "field number 99")
    assert V.check(_json_event(colour="red"), NOW).reason == "unknown_field"


def test_query_and_context_strings_have_limits_and_no_control_characters():
    e = events_pb2.UserEvent(event_id="e", user_id="u", event_type=5, query="red\x00dress", timestamp_ms=NOW - 1)
    assert V.check(e.SerializeToString(), NOW).reason == "invalid_value"
    e.query = "q" * 1025
    assert V.check(e.SerializeToString(), NOW).reason == "invalid_value"
    e.query = "red dress \u2014 size \u00bd \U0001F468\u200d\U0001F469"  # printable or not, no control character
    assert isinstance(V.check(e.SerializeToString(), NOW), events_pb2.UserEvent)
    e.context["note"] = "line\nbreak"
    assert V.check(e.SerializeToString(), NOW).reason == "invalid_value"
    del e.context["note"]
    e.context.update({f"k{i}": "v" for i in range(65)})
    assert V.check(e.SerializeToString(), NOW).reason == "invalid_value"

