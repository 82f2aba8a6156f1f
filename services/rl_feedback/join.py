"""The reward join: impressions and outcome events in, one ``Reward`` per shown item out.

Pure domain code: no Kafka, no clock of its own (event time comes in the messages; the
watermark and the publish time are passed in). One :class:`PartitionJoin` holds the join state of
one partition of the co-partitioned inputs (``impressions`` and ``events.clean`` share key and
partition count, so a user's impressions and outcomes meet in the same one).

Rules (``docs/learning.md``, section "Rewards"):

* An **outcome** is a CLICK, ADD_TO_CART or PURCHASE ``UserEvent`` (other types are ignored).
  One carrying ``request_id`` joins that impression's item, if the item was shown there and the
  outcome's event time is at most ``window_ms`` after the impression's. One without joins the
  most recent open impression of the same user that showed the item, with impression time <=
  outcome time <= impression time + ``window_ms``.
* **Out of order**: an outcome whose impression is not here yet is buffered until the watermark
  passes its event time + ``window_ms`` (then its impression, which is older than the outcome,
  would be closed already: counted ``unmatched``); an arriving impression claims the buffered
  outcomes that qualify.
* **Late**: an outcome for an impression already closed (its reward published), or one whose
  event time + window is already behind the watermark, or one outside its impression's window,
  is counted ``late`` and dropped.
* **Duplicates**: an event id seen before (on an open impression or in the buffer) is counted
  ``duplicate`` and dropped; a second outcome of the same type on an item sets no flag twice
  (``clicked`` etc. are flags; revenue sums distinct PURCHASE events; ``outcome_events`` counts
  distinct event ids). A second impression with the same request id is dropped.
* **Closing**: an impression closes when the watermark reaches its time + ``window_ms``; each
  shown item then yields exactly one ``Reward`` (reward 0 without outcome):
  ``reward = click*clicked + add_to_cart*added + purchase*purchased + revenue*revenue``.

State changes are recorded as changelog records (key, value or None for a delete) for the
transport to write in the same Kafka transaction as the rewards; :meth:`PartitionJoin.restore`
rebuilds the state from the latest value of every key.
"""

from __future__ import annotations

import heapq
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from recpilot.featurespec import DENSE_FEATURES
from recpilot.pb import events_pb2

Impression = events_pb2.Impression
UserEvent = events_pb2.UserEvent
Reward = events_pb2.Reward

CLICKED, CARTED, PURCHASED = 1, 2, 4
OUTCOME_FLAGS = {events_pb2.CLICK: CLICKED, events_pb2.ADD_TO_CART: CARTED, events_pb2.PURCHASE: PURCHASED}
IMP_PREFIX = b"i:"   # changelog key of an open impression: i:<request_id> -> encode_open(head, item parts)
EVENT_PREFIX = b"e:"  # changelog key of a held outcome: e:<event_id> -> UserEvent (request_id set once joined)
_D = len(DENSE_FEATURES)


@dataclass(frozen=True)
class Weights:
    """Reward weights; the defaults (click 1, the rest 0) make the reward a click: the CTR objective."""

    click: float = 1.0
    add_to_cart: float = 0.0
    purchase: float = 0.0
    revenue: float = 0.0

    def reward(self, flags: int, revenue: float) -> float:
        r = 0.0
        if flags & CLICKED:
            r += self.click
        if flags & CARTED:
            r += self.add_to_cart
        if flags & PURCHASED:
            r += self.purchase
        return r + self.revenue * revenue


@dataclass
class JoinStats:
    impressions: int = 0
    duplicate_impressions: int = 0
    outcomes: int = 0          # outcome events received (CLICK, ADD_TO_CART, PURCHASE)
    joined: int = 0            # outcome events attributed to a shown item
    buffered: int = 0          # outcome events that waited for their impression (out of order)
    duplicates: int = 0
    late: int = 0
    unmatched: int = 0         # buffered until the window passed without their impression
    not_shown: int = 0         # request_id given but the item was not in that impression
    ignored: int = 0           # events that are no outcome (VIEW, SEARCH)
    closed: int = 0            # impressions closed
    rewards: int = 0
    positive: int = 0          # rewards with an outcome

    def minus(self, other: JoinStats) -> JoinStats:
        return JoinStats(**{k: v - getattr(other, k) for k, v in self.__dict__.items()})

    def copy(self) -> JoinStats:
        return JoinStats(**self.__dict__)


class _Open:
    """One open impression: its rewards' bytes without the outcome (a shared head, one part per
    shown item) and the outcomes of each shown item (by slot)."""

    __slots__ = ("rid", "user", "ts", "head", "items", "parts", "flags", "revenue", "out_ts", "events")

    def __init__(self, rid: str, user: str, ts: int, head: bytes, items: tuple[str, ...], parts: list[bytes]) -> None:
        self.rid, self.user, self.ts, self.head, self.items, self.parts = rid, user, ts, head, items, parts
        self.flags: bytearray | None = None
        self.revenue: list[float] | None = None
        self.out_ts: list[int] | None = None
        self.events: dict[str, int] = {}  # event id -> slot


# Rewards are built from serialized parts: a protobuf message's serialization followed by another's
# is the serialization of the two merged, so the fields every reward of an impression shares are
# encoded once (the head), each shown item's fields once at arrival (by hand: item_id,
# position, propensity, score, dense; checked against the protobuf parser by the unit tests), and
# only the publish time and an item's outcome at close.
_F32 = struct.Struct("<f").pack
_ROW = struct.Struct(f"<{_D}f").pack
_VARINT1 = [bytes([i]) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _VARINT1[n]
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_PROP_SCORE = struct.Struct("<BfBBf").pack  # tag 5 fixed32, propensity, tag 21 fixed32 (2 bytes), score
_DENSE_TAG = b"\xa2\x01" + _varint(4 * _D)   # tag 20 length-delimited (packed floats), length


def _published(ms: int) -> bytes:
    return b"\x98\x01" + _varint(ms)  # Reward.published_ms (19)


def reward_parts(imp: Impression) -> tuple[bytes, list[bytes], tuple[str, ...]]:
    """The head (fields shared by the impression's rewards, with the user-level ``user:*``
    features), one part per shown item (Reward item_id (3), position (4), propensity (5), score
    (21), dense (20)), and the shown item ids. An item's dense row comes from the logged pool, else
    from the ``<position>:<feature>`` snapshot entries, else is left empty."""
    head = Reward(request_id=imp.request_id, user_id=imp.user_id, model_version=imp.model_version,
                  policy_version=imp.policy_version, impression_ts_ms=imp.timestamp_ms, session_id=imp.session_id,
                  surface=imp.surface, variant=imp.variant, model_name=imp.model_name,
                  policy_variant=imp.policy_variant)
    feats = imp.features
    if feats:
        head.features.update({k: v for k, v in feats.items() if k.startswith("user:")})
    items = [(it.item_id, it.position, it.propensity, it.score, it.pool_index) for it in imp.items]
    pool = imp.pool_dense
    npool = len(pool) // _D
    rows: dict[int, bytes] = {}
    if npool and items:
        idx = [x[4] for x in items]
        lo, hi = max(0, min(idx)), min(npool - 1, max(idx))
        if lo <= hi:  # one slice of the pool's rows lo..hi, packed at once, cut into rows
            raw = struct.pack(f"<{(hi - lo + 1) * _D}f", *pool[lo * _D:(hi + 1) * _D])
            rb = 4 * _D
            rows = {i: raw[(i - lo) * rb:(i - lo + 1) * rb] for i in idx if lo <= i <= hi}
    parts = []
    varint = _varint
    for iid, pos, prop, score, pi in items:
        b = iid.encode()
        dense = rows.get(pi)
        if dense is None:
            keys = [f"{pos}:{f}" for f in DENSE_FEATURES]
            # (a protobuf map's [] would insert a missing key)
            dense = _ROW(*[feats[k] for k in keys]) if all(k in feats for k in keys) else b""
        parts.append(b"".join((b"\x1a", varint(len(b)), b, b"\x20", varint(pos),
                               _PROP_SCORE(0x2D, prop, 0xAD, 0x01, score), _DENSE_TAG if dense else b"", dense)))
    return head.SerializeToString(), parts, tuple(x[0] for x in items)


_FRAME = b"R1"


def encode_open(head: bytes, parts: list[bytes]) -> bytes:
    """The changelog value of an open impression: its head and item parts, length-framed."""
    n = len(parts)
    return b"".join([_FRAME, struct.pack(f"<H{n + 1}I", n, len(head), *map(len, parts)), head, *parts])


def decode_open(value: bytes) -> tuple[bytes, list[bytes]]:
    if value[:2] != _FRAME:
        raise ValueError("not an rl_feedback open-impression record")
    (n,) = struct.unpack_from("<H", value, 2)
    lens = struct.unpack_from(f"<{n + 1}I", value, 4)
    pos = 4 + 4 * (n + 1)
    out = []
    for ln in lens:
        out.append(value[pos:pos + ln])
        pos += ln
    return out[0], out[1:]


class Watermark:
    """The event-time watermark of one partition pair (two inputs: impressions and outcomes).

    Per input: the largest event time read (capped by the wall clock), or — while that input is
    caught up (the consumer reached its end) — the wall clock minus ``grace_ms``. The watermark
    is the smaller of the two inputs' values and never goes back. So while either input is still
    behind (a restart reading its backlog), time advances only as fast as its data does, and
    outcomes are read before their windows close.
    """

    __slots__ = ("grace_ms", "max_ts", "at_end", "value")

    def __init__(self, grace_ms: int, inputs: int = 2) -> None:
        self.grace_ms = grace_ms
        self.max_ts = [0] * inputs
        self.at_end = [False] * inputs
        self.value = 0

    def observe(self, i: int, ts: int) -> None:
        """Input ``i`` delivered a message of event time ``ts`` (so it is not at its end)."""
        if ts > self.max_ts[i]:
            self.max_ts[i] = ts
        self.at_end[i] = False

    def reached_end(self, i: int) -> None:
        self.at_end[i] = True

    def advance(self, now_ms: int) -> int:
        live = now_ms - self.grace_ms
        v = min(live if end else min(ts, now_ms) for ts, end in zip(self.max_ts, self.at_end))
        if v > self.value:
            self.value = v
        return self.value


@dataclass
class Output:
    """What one step produced: rewards (key, value) and changelog records (key, value or None)."""

    rewards: list[tuple[bytes, bytes]] = field(default_factory=list)
    changelog: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    latencies_ms: list[int] = field(default_factory=list)  # published_ms - outcome_ts_ms of rewards with an outcome

    def __bool__(self) -> bool:
        return bool(self.rewards or self.changelog)


class PartitionJoin:
    """The join state of one partition (see the module docstring for the rules)."""

    def __init__(self, window_ms: int, weights: Weights | None = None) -> None:
        self.window_ms = window_ms
        self.weights = weights or Weights()
        self.stats = JoinStats()
        self.out = Output()
        self.watermark = 0
        self._log = True
        self.open: dict[str, _Open] = {}
        self._due: list[tuple[int, str]] = []               # (close time, request id)
        self._by_user: dict[str, list[_Open]] = {}           # open impressions of a user, arrival order
        self._closed: dict[str, int] = {}                    # request id -> close time (for late outcomes)
        self._closed_order: deque[tuple[int, str]] = deque()
        self._seen: dict[str, str] = {}                      # held event id -> request id ("" buffered)
        self._buffer: dict[str, UserEvent] = {}              # buffered outcomes by event id
        self._buf_req: dict[str, list[str]] = {}             # request id -> buffered event ids
        self._buf_user: dict[str, list[str]] = {}            # user id -> buffered event ids without request id
        self._buf_due: list[tuple[int, str]] = []            # (expiry, event id)

    # -- output ----------------------------------------------------------------------------------
    def take(self) -> Output:
        out, self.out = self.out, Output()
        return out

    # -- impressions -----------------------------------------------------------------------------
    def impression(self, imp: Impression) -> None:
        rid = imp.request_id
        if not rid or rid in self.open or rid in self._closed:
            self.stats.duplicate_impressions += 1
            return
        head, parts, items = reward_parts(imp)
        self._open(head, parts, rid, imp.user_id, imp.timestamp_ms, items)

    def _open(self, head: bytes, parts: list[bytes], rid: str, user: str, ts: int, items: tuple[str, ...]) -> None:
        st = _Open(rid, user, ts, head, items, parts)
        self.open[rid] = st
        self.stats.impressions += 1
        heapq.heappush(self._due, (st.ts + self.window_ms, rid))
        self._by_user.setdefault(st.user, []).append(st)
        if self._log:
            self.out.changelog.append((IMP_PREFIX + rid.encode(), encode_open(head, parts)))
        if self._buffer:
            self._claim(st)

    def _claim(self, st: _Open) -> None:
        """Buffered outcomes that belong to the newly arrived impression ``st``."""
        for eid in self._buf_req.pop(st.rid, ()):
            ev = self._buffer.pop(eid, None)
            if ev is not None:
                del self._seen[eid]
                self._attach(st, ev, OUTCOME_FLAGS[ev.event_type], buffered=True)
        ids = self._buf_user.get(st.user)
        if ids:
            keep = []
            for eid in ids:
                ev = self._buffer.get(eid)
                if ev is None:
                    continue
                if st.ts <= ev.timestamp_ms <= st.ts + self.window_ms and ev.item_id in st.items:
                    del self._buffer[eid]
                    del self._seen[eid]
                    self._attach(st, ev, OUTCOME_FLAGS[ev.event_type], buffered=True)
                else:
                    keep.append(eid)
            if keep:
                self._buf_user[st.user] = keep
            else:
                del self._buf_user[st.user]

    # -- outcomes --------------------------------------------------------------------------------
    def outcome(self, ev: UserEvent) -> None:
        flag = OUTCOME_FLAGS.get(ev.event_type)
        if flag is None:
            self.stats.ignored += 1
            return
        st = self.stats
        st.outcomes += 1
        eid = ev.event_id
        if eid in self._seen:
            st.duplicates += 1
            return
        ts = ev.timestamp_ms
        rid = ev.request_id
        if rid:
            imp = self.open.get(rid)
            if imp is None and rid in self._closed:
                st.late += 1
                return
        else:
            imp = self._latest(ev.user_id, ev.item_id, ts)
        if imp is not None:
            self._attach(imp, ev, flag)
            return
        if ts + self.window_ms <= self.watermark:
            st.late += 1
            return
        self._hold(ev)

    def _latest(self, user: str, item: str, ts: int) -> _Open | None:
        """The most recent open impression of ``user`` that showed ``item`` at most a window before ``ts``."""
        best = None
        w = self.window_ms
        for imp in self._by_user.get(user, ()):
            if imp.ts <= ts <= imp.ts + w and item in imp.items and (best is None or imp.ts >= best.ts):
                best = imp
        return best

    def _hold(self, ev: UserEvent) -> None:
        eid = ev.event_id
        self.stats.buffered += 1
        self._buffer[eid] = ev
        self._seen[eid] = ""
        if ev.request_id:
            self._buf_req.setdefault(ev.request_id, []).append(eid)
        else:
            self._buf_user.setdefault(ev.user_id, []).append(eid)
        heapq.heappush(self._buf_due, (ev.timestamp_ms + self.window_ms, eid))
        if self._log:
            self.out.changelog.append((EVENT_PREFIX + eid.encode(), ev.SerializeToString()))

    def _attach(self, imp: _Open, ev: UserEvent, flag: int, buffered: bool = False) -> None:
        st = self.stats
        try:
            slot = imp.items.index(ev.item_id)
        except ValueError:
            st.not_shown += 1
            self._forget(ev, buffered)
            return
        ts = ev.timestamp_ms
        if ts > imp.ts + self.window_ms:
            st.late += 1
            self._forget(ev, buffered)
            return
        eid = ev.event_id
        if imp.flags is None:
            k = len(imp.items)
            imp.flags, imp.revenue, imp.out_ts = bytearray(k), [0.0] * k, [0] * k
        imp.flags[slot] |= flag
        if flag == PURCHASED:
            imp.revenue[slot] += ev.price
        if ts > imp.out_ts[slot]:
            imp.out_ts[slot] = ts
        imp.events[eid] = slot
        self._seen[eid] = imp.rid
        st.joined += 1
        if self._log:
            if ev.request_id != imp.rid:
                ev.request_id = imp.rid  # the changelog holds the attribution made
            self.out.changelog.append((EVENT_PREFIX + eid.encode(), ev.SerializeToString()))

    def _forget(self, ev: UserEvent, buffered: bool) -> None:
        if buffered and self._log:
            self.out.changelog.append((EVENT_PREFIX + ev.event_id.encode(), None))

    # -- closing ---------------------------------------------------------------------------------
    def advance(self, watermark: int, published_ms: int) -> None:
        """Move event time to ``watermark``: close every impression whose window ended (its rewards
        stamped ``published_ms``) and expire buffered outcomes that can no longer join."""
        if watermark > self.watermark:
            self.watermark = watermark
        wm = self.watermark
        due = self._due
        while due and due[0][0] <= wm:
            _, rid = heapq.heappop(due)
            imp = self.open.pop(rid, None)
            if imp is not None:
                self._close(imp, published_ms)
        bdue = self._buf_due
        while bdue and bdue[0][0] <= wm:
            _, eid = heapq.heappop(bdue)
            ev = self._buffer.pop(eid, None)
            if ev is None:
                continue
            del self._seen[eid]
            self.stats.unmatched += 1
            rid = ev.request_id
            lst = self._buf_req.get(rid) if rid else self._buf_user.get(ev.user_id)
            if lst is not None:
                lst.remove(eid)
                if not lst:
                    (self._buf_req if rid else self._buf_user).pop(rid or ev.user_id)
            if self._log:
                self.out.changelog.append((EVENT_PREFIX + eid.encode(), None))
        horizon = wm - self.window_ms
        co = self._closed_order
        while co and co[0][0] <= horizon:
            _, rid = co.popleft()
            self._closed.pop(rid, None)

    def _close(self, imp: _Open, published_ms: int) -> None:
        key = imp.user.encode()
        prefix = imp.head + _published(published_ms)
        rewards = self.out.rewards
        flags = imp.flags
        positive = 0
        if flags is None:
            rewards.extend([(key, prefix + part) for part in imp.parts])
        else:
            revenue, out_ts, weights = imp.revenue, imp.out_ts, self.weights
            nev = [0] * len(imp.items)
            for slot in imp.events.values():
                nev[slot] += 1
            for j, part in enumerate(imp.parts):
                f = flags[j]
                if not f:
                    rewards.append((key, prefix + part))
                    continue
                o = Reward(clicked=bool(f & CLICKED), added_to_cart=bool(f & CARTED), purchased=bool(f & PURCHASED),
                           revenue=revenue[j], reward=weights.reward(f, revenue[j]), outcome_ts_ms=out_ts[j],
                           outcome_events=nev[j])
                rewards.append((key, prefix + part + o.SerializeToString()))
                self.out.latencies_ms.append(published_ms - out_ts[j])
                positive += 1
        n = len(imp.parts)
        st = self.stats
        st.closed += 1
        st.rewards += n
        st.positive += positive
        lst = self._by_user.get(imp.user)
        if lst is not None:
            lst.remove(imp)
            if not lst:
                del self._by_user[imp.user]
        seen = self._seen
        log = self._log
        cl = self.out.changelog
        for eid in imp.events:
            seen.pop(eid, None)
            if log:
                cl.append((EVENT_PREFIX + eid.encode(), None))
        if log:
            cl.append((IMP_PREFIX + imp.rid.encode(), None))
        self._closed[imp.rid] = imp.ts + self.window_ms
        self._closed_order.append((imp.ts + self.window_ms, imp.rid))

    # -- state -----------------------------------------------------------------------------------
    def restore(self, records: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes | None]]) -> None:
        """Rebuild the state from changelog records (latest value per key wins; None deletes).
        Writes no changelog and counts nothing in the stats."""
        latest: dict[bytes, bytes | None] = dict(records.items() if isinstance(records, Mapping) else records)
        saved = self.stats.copy()
        self._log = False
        try:
            for k, v in latest.items():
                if v is not None and k.startswith(IMP_PREFIX):
                    head, parts = decode_open(v)
                    h = Reward.FromString(head)
                    self._open(head, parts, h.request_id, h.user_id, h.impression_ts_ms,
                               tuple(Reward.FromString(p).item_id for p in parts))
            for k, v in latest.items():
                if v is not None and k.startswith(EVENT_PREFIX):
                    self.outcome(UserEvent.FromString(v))
        finally:
            self._log = True
            self.stats = saved

    @property
    def buffered(self) -> int:
        return len(self._buffer)
