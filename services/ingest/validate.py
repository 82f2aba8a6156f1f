"""Validation and normalisation of raw shop events (domain code: no Kafka, no I/O).

A raw message is protobuf ``UserEvent`` bytes, or a JSON object with the same field names
(``event_type`` as a name such as "VIEW" or as its number). :meth:`Validator.check` returns
either a normalised ``UserEvent`` or a :class:`Rejection` with one of the fixed codes in
:data:`REASONS`; it does not raise, whatever the bytes.

Rules, in order:
  oversized            payload larger than ``max_payload_bytes`` (checked before decoding)
  undecodable          empty message, not protobuf (or a string in it not UTF-8), broken JSON,
                       JSON nested too deeply, JSON that is not an object
  unknown_field        a JSON key, or a protobuf field number, that is not a UserEvent field
  invalid_type         a JSON value of the wrong type (id not a string, price not a number, ...)
  missing_field        event_id, user_id, event_type or timestamp_ms absent/empty, or a SEARCH
                       without query (``detail`` names the field)
  unknown_event_type   event_type not one of VIEW, CLICK, ADD_TO_CART, PURCHASE, SEARCH
  missing_item_id      VIEW, CLICK, ADD_TO_CART or PURCHASE without item_id
  invalid_value        a JSON string that is not valid Unicode (a lone UTF-16 surrogate such as
                       "\\ud800"), a JSON number out of range; id longer than ``max_id_length`` or
                       not printable; query longer than ``max_query_length``, more than
                       ``max_context_entries`` context entries, a context key or value longer than
                       ``max_context_key_length`` / ``max_context_value_length``, or a query or
                       context string with a control character (Unicode category Cc); price NaN/inf
  negative_price       price < 0
  future_timestamp     timestamp_ms more than ``max_future_ms`` after now
  stale_timestamp      timestamp_ms older than ``max_age_s`` before now
  internal_error       not given by the validator: the pipeline's code for a message whose
                       handling raised (the exception is the detail)

So every string of an accepted event is valid UTF-8, within its length limit and free of control
characters, and an accepted event carries no field outside the UserEvent schema.

Normalisation: ids and a SEARCH query are stripped of surrounding whitespace; JSON event type
names are upper-cased; context values become strings; ``ingested_at_ms`` is set to now.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from recpilot.pb import events_pb2

REASONS = (
    "oversized", "undecodable", "unknown_field", "invalid_type", "missing_field",
    "unknown_event_type", "missing_item_id", "invalid_value", "negative_price",
    "future_timestamp", "stale_timestamp", "internal_error",
)
REQUIRED = ("event_id", "user_id", "event_type", "timestamp_ms")
NEEDS_ITEM = frozenset((1, 2, 3, 4))
SEARCH = 5
KNOWN_TYPES = frozenset((1, 2, 3, 4, 5))
_TYPE_BY_NAME = {n: v for n, v in events_pb2.EventType.items() if v in KNOWN_TYPES}
_STR_FIELDS = ("event_id", "user_id", "session_id", "item_id", "query", "request_id")
_ID_FIELDS = ("event_id", "user_id", "session_id", "item_id", "request_id")
_JSON_FIELDS = frozenset(events_pb2.UserEvent.DESCRIPTOR.fields_by_name)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str   # one of REASONS
    detail: str   # human-readable, e.g. the field name
    missing: str = ""  # the missing field for missing_field/missing_item_id (data-quality metrics)


def _bad_text(value: str, limit: int) -> bool:
    """Longer than ``limit`` or holding a control character (printable strings have none)."""
    return len(value) > limit or (not value.isprintable() and _CONTROL.search(value) is not None)


class Validator:
    def __init__(self, max_payload_bytes: int = 65_536, max_future_ms: int = 300_000,
                 max_age_ms: int = 7 * 86_400_000, max_id_length: int = 256, max_query_length: int = 1024,
                 max_context_entries: int = 64, max_context_key_length: int = 256,
                 max_context_value_length: int = 1024) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.max_future_ms = max_future_ms
        self.max_age_ms = max_age_ms
        self.max_id_length = max_id_length
        self.max_query_length = max_query_length
        self.max_context_entries = max_context_entries
        self.max_context_key_length = max_context_key_length
        self.max_context_value_length = max_context_value_length

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
        unknown = unknown_fields.UnknownFieldSet(ev)
        if len(unknown):
            numbers = sorted({f.field_number for f in unknown})
            return Rejection("unknown_field", "field number " + ",".join(map(str, numbers))[:180])
        return ev

    def _from_json(self, value: bytes) -> events_pb2.UserEvent | Rejection:
        try:
            d = json.loads(value)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return Rejection("undecodable", f"invalid JSON: {exc}"[:200])
        if not isinstance(d, dict):
            return Rejection("undecodable", "JSON value is not an object")
        unknown = d.keys() - _JSON_FIELDS
        if unknown:
            names = ",".join(sorted(unknown))[:200]
            return Rejection("unknown_field", names.encode("utf-8", "backslashreplace").decode())
        ev = events_pb2.UserEvent()
        for f in _STR_FIELDS:
            v = d.get(f)
            if v is None:
                continue
            if not isinstance(v, str):
                return Rejection("invalid_type", f"{f} must be a string, got {type(v).__name__}")
            try:
                setattr(ev, f, v)
            except UnicodeEncodeError as exc:  # a lone surrogate: not encodable as UTF-8
                return Rejection("invalid_value", f"{f} is not valid Unicode: {exc.reason}")
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
            try:
                ev.price = float(price)
            except OverflowError:
                return Rejection("invalid_value", "price out of range")
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
                try:
                    ev.context[k] = v if isinstance(v, str) else json.dumps(v)
                except UnicodeEncodeError as exc:
                    return Rejection("invalid_value", f"context is not valid Unicode: {exc.reason}")
        return ev

    # -- rules -------------------------------------------------------------------------------
    def check(self, value: bytes | None, now_ms: int) -> events_pb2.UserEvent | Rejection:
        ev = self.decode(value)
        if isinstance(ev, Rejection):
            return ev
        # normalise ids (strip surrounding whitespace) before the presence checks, and note the
        # first one too long or not printable (rejected after the presence checks)
        limit = self.max_id_length
        bad_id = None
        for f in _ID_FIELDS:
            v = getattr(ev, f)
            if v:
                if v != (s := v.strip()):
                    setattr(ev, f, s)
                    v = s
                if bad_id is None and (len(v) > limit or not v.isprintable()):
                    bad_id = f
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
        if bad_id is not None:
            return Rejection("invalid_value", f"{bad_id} longer than {limit} or with control characters")
        q = ev.query
        if q and _bad_text(q, self.max_query_length):
            return Rejection("invalid_value", f"query longer than {self.max_query_length} or with control characters")
        ctx = ev.context
        n = len(ctx)
        if n:
            if n > self.max_context_entries:
                return Rejection("invalid_value", f"more than {self.max_context_entries} context entries")
            kl, vl = self.max_context_key_length, self.max_context_value_length
            search = _CONTROL.search
            for k in ctx:  # _bad_text inlined; ctx[k] costs less than ctx.items() on upb maps
                v = ctx[k]
                if len(k) > kl or len(v) > vl or (
                        not (k.isprintable() and v.isprintable()) and (search(k) or search(v))):
                    return Rejection("invalid_value", f"context key longer than {kl} or value longer than {vl} "
                                     "or with control characters")
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
