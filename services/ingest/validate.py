"""Validation and normalisation of raw shop events (domain code: no Kafka, no I/O).

A raw message is protobuf ``UserEvent`` bytes, or a JSON object with the same field names
(``event_type`` as a name such as "VIEW" or as its number). :meth:`Validator.check` returns
either a normalised ``UserEvent`` or a :class:`Rejection` with one of the fixed codes in
:data:`REASONS`.

Rules, in order:
  oversized            payload larger than ``max_payload_bytes`` (checked before decoding)
  undecodable          empty message, not protobuf, broken JSON, JSON that is not an object
  unknown_field        a JSON key that is not a UserEvent field
  invalid_type         a JSON value of the wrong type (id not a string, price not a number, ...)
  missing_field        event_id, user_id, event_type or timestamp_ms absent/empty, or a SEARCH
                       without query (``detail`` names the field)
  unknown_event_type   event_type not one of VIEW, CLICK, ADD_TO_CART, PURCHASE, SEARCH
  missing_item_id      VIEW, CLICK, ADD_TO_CART or PURCHASE without item_id
  invalid_value        id longer than ``max_id_length`` or with control characters, price NaN/inf
  negative_price       price < 0
  future_timestamp     timestamp_ms more than ``max_future_ms`` after now
  stale_timestamp      timestamp_ms older than ``max_age_s`` before now

Normalisation: ids, query and context are stripped of surrounding whitespace; JSON event type
names are upper-cased; context values become strings; ``ingested_at_ms`` is set to now.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from recpilot.pb import events_pb2

REASONS = (
    "oversized", "undecodable", "unknown_field", "invalid_type", "missing_field",
    "unknown_event_type", "missing_item_id", "invalid_value", "negative_price",
    "future_timestamp", "stale_timestamp",
)
REQUIRED = ("event_id", "user_id", "event_type", "timestamp_ms")
NEEDS_ITEM = frozenset((1, 2, 3, 4))
SEARCH = 5
KNOWN_TYPES = frozenset((1, 2, 3, 4, 5))
_TYPE_BY_NAME = {n: v for n, v in events_pb2.EventType.items() if v in KNOWN_TYPES}
_STR_FIELDS = ("event_id", "user_id", "session_id", "item_id", "query", "request_id")
_ID_FIELDS = ("event_id", "user_id", "session_id", "item_id", "request_id")
_JSON_FIELDS = frozenset(events_pb2.UserEvent.DESCRIPTOR.fields_by_name)


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str   # one of REASONS
    detail: str   # human-readable, e.g. the field name
    missing: str = ""  # the missing field for missing_field/missing_item_id (data-quality metrics)


def _bad_id(value: str, limit: int) -> bool:
    return len(value) > limit or not value.isprintable()


class Validator:
    def __init__(self, max_payload_bytes: int = 65_536, max_future_ms: int = 300_000,
                 max_age_ms: int = 7 * 86_400_000, max_id_length: int = 256) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_future_ms = max_future_ms
        self.max_age_ms = max_age_ms
        self.max_id_length = max_id_length

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, value: bytes | None) -> events_pb2.UserEvent | Rejection:
        if not value:
            return Rejection("undecodable", "empty message")
        if len(value) > self.max_payload_bytes:
            return Rejection("oversized", f"{len(value)} bytes > {self.max_payload_bytes}")
        first = value[:1]
        if first == b"{":
            return self._from_json(value)
        if first in b" \t\r\n" and value.lstrip()[:1] == b"{":
            # JSON after whitespace, or a protobuf that happens to start with such bytes
            # (0x0a is the tag of event_id): JSON first, then protobuf
            r = self._from_json(value)
            if r.__class__ is not Rejection or r.reason != "undecodable":
                return r
            ev = self._from_protobuf(value)
            return r if ev.__class__ is Rejection else ev
        return self._from_protobuf(value)

    @staticmethod
    def _from_protobuf(value: bytes) -> events_pb2.UserEvent | Rejection:
        ev = events_pb2.UserEvent()
        try:
            ev.ParseFromString(value)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return Rejection("undecodable", f"not a UserEvent protobuf: {exc}"[:200])
        return ev

    def _from_json(self, value: bytes) -> events_pb2.UserEvent | Rejection:
        try:
            d = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            return Rejection("undecodable", f"invalid JSON: {exc}"[:200])
        if not isinstance(d, dict):
            return Rejection("undecodable", "JSON value is not an object")
        unknown = d.keys() - _JSON_FIELDS
        if unknown:
            return Rejection("unknown_field", ",".join(sorted(unknown))[:200])
        ev = events_pb2.UserEvent()
        for f in _STR_FIELDS:
            v = d.get(f)
            if v is None:
                continue
            if not isinstance(v, str):
                return Rejection("invalid_type", f"{f} must be a string, got {type(v).__name__}")
            setattr(ev, f, v)
        et = d.get("event_type")
        if et is not None:
            if isinstance(et, str):
                name = et.strip().upper()
                if not name:
                    pass
                elif name in _TYPE_BY_NAME:
                    ev.event_type = _TYPE_BY_NAME[name]
                else:
                    return Rejection("unknown_event_type", f"event_type {et[:40]!r}")
            elif isinstance(et, int) and not isinstance(et, bool):
                if et not in KNOWN_TYPES:
                    return Rejection("unknown_event_type", f"event_type {et}")
                ev.event_type = et
            else:
                return Rejection("invalid_type", f"event_type must be a name or number, got {type(et).__name__}")
        price = d.get("price")
        if price is not None:
            if isinstance(price, bool) or not isinstance(price, (int, float)):
                return Rejection("invalid_type", f"price must be a number, got {type(price).__name__}")
            ev.price = float(price)
        for f in ("timestamp_ms", "ingested_at_ms"):
            ts = d.get(f)
            if ts is None:
                continue
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or (isinstance(ts, float) and not ts.is_integer()):
                return Rejection("invalid_type", f"{f} must be an integer, got {ts!r}"[:200])
            if not -(2**63) <= ts < 2**63:
                return Rejection("invalid_value", f"{f} out of range")
            setattr(ev, f, int(ts))
        ctx = d.get("context")
        if ctx is not None:
            if not isinstance(ctx, dict):
                return Rejection("invalid_type", f"context must be an object, got {type(ctx).__name__}")
            for k, v in ctx.items():
                if isinstance(v, (dict, list)):
                    return Rejection("invalid_type", f"context[{k[:40]!r}] must be a scalar")
                ev.context[k] = v if isinstance(v, str) else json.dumps(v)
        return ev

    # -- rules -------------------------------------------------------------------------------
    def check(self, value: bytes | None, now_ms: int) -> events_pb2.UserEvent | Rejection:
        ev = self.decode(value)
        if isinstance(ev, Rejection):
            return ev
        # normalise ids (strip surrounding whitespace) before the presence checks
        for f in _ID_FIELDS:
            v = getattr(ev, f)
            if v and v != (s := v.strip()):
                setattr(ev, f, s)
        if not ev.event_id:
            return Rejection("missing_field", "event_id", "event_id")
        if not ev.user_id:
            return Rejection("missing_field", "user_id", "user_id")
        et = ev.event_type
        if et == 0:
            return Rejection("missing_field", "event_type", "event_type")
        if et not in KNOWN_TYPES:
            return Rejection("unknown_event_type", f"event_type {et}")
        if not ev.timestamp_ms:
            return Rejection("missing_field", "timestamp_ms", "timestamp_ms")
        if et in NEEDS_ITEM:
            if not ev.item_id:
                return Rejection("missing_item_id", f"{events_pb2.EventType.Name(et)} needs item_id", "item_id")
        elif et == SEARCH:
            q = ev.query.strip()
            if not q:
                return Rejection("missing_field", "query", "query")
            if q != ev.query:
                ev.query = q
        limit = self.max_id_length
        for f in _ID_FIELDS:
            v = getattr(ev, f)
            if v and _bad_id(v, limit):
                return Rejection("invalid_value", f"{f} longer than {limit} or with control characters")
        price = ev.price
        if price != 0.0:
            if not math.isfinite(price):
                return Rejection("invalid_value", f"price {price}")
            if price < 0:
                return Rejection("negative_price", f"price {price}")
        ts = ev.timestamp_ms
        if ts > now_ms + self.max_future_ms:
            return Rejection("future_timestamp", f"timestamp_ms {ts} is {ts - now_ms} ms ahead")
        if ts < now_ms - self.max_age_ms:
            return Rejection("stale_timestamp", f"timestamp_ms {ts} is {now_ms - ts} ms old")
        ev.ingested_at_ms = now_ms
        return ev
