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
IMP_PREFIX = b"i:"   # changelog key of an open impression: i:<request_id> -> compact Impression
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
    """One open impression: its compact form and the outcomes of each shown item (by slot)."""

    __slots__ = ("rid", "user", "ts", "blob", "items", "flags", "revenue", "out_ts", "events")

    def __init__(self, rid: str, user: str, ts: int, blob: bytes, items: tuple[str, ...]) -> None:
        self.rid, self.user, self.ts, self.blob, self.items = rid, user, ts, blob, items
        self.flags: bytearray | None = None
        self.revenue: list[float] | None = None
        self.out_ts: list[int] | None = None
        self.events: dict[str, int] = {}  # event id -> slot


def compact(imp: Impression) -> Impression:
    """What the join keeps of an impression: the fields a Reward copies, the user-level features
    (``user:*``) and, as the "pool", only the shown items' dense rows (``pool_index`` = slot).
    The dense row of a shown item comes from the logged pool, else from the ``<position>:<feature>``
    snapshot entries; compacting a compact impression gives the same impression."""
    c = Impression(request_id=imp.request_id, user_id=imp.user_id, session_id=imp.session_id,
                   surface=imp.surface, model_name=imp.model_name, model_version=imp.model_version,
                   policy_version=imp.policy_version, timestamp_ms=imp.timestamp_ms, variant=imp.variant,
                   exploration=imp.exploration, policy_variant=imp.policy_variant)
    feats = imp.features
    c.features.update({k: v for k, v in feats.items() if k.startswith("user:")})
    pool = imp.pool_dense
    npool = len(pool) // _D
    rows: list[float] = []
    have_rows = True
    for j, it in enumerate(imp.items):
        c.items.add(item_id=it.item_id, position=it.position, score=it.score, propensity=it.propensity,
                    pool_index=j)
        if not have_rows:
            continue
        if npool and it.pool_index < npool:
            rows.extend(pool[it.pool_index * _D:(it.pool_index + 1) * _D])
        else:
            keys = [f"{it.position}:{f}" for f in DENSE_FEATURES]
            if all(k in feats for k in keys):  # (a protobuf map's [] would insert a missing key)
                rows.extend([feats[k] for k in keys])
            else:
                have_rows = False
    if have_rows and rows:
        c.pool_dense.extend(rows)
    return c


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
        c = compact(imp)
        blob = c.SerializeToString()
        st = _Open(rid, c.user_id, c.timestamp_ms, blob, tuple(it.item_id for it in c.items))
        self.open[rid] = st
        self.stats.impressions += 1
        heapq.heappush(self._due, (st.ts + self.window_ms, rid))
        self._by_user.setdefault(st.user, []).append(st)
        if self._log:
            self.out.changelog.append((IMP_PREFIX + rid.encode(), blob))
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
        c = Impression.FromString(imp.blob)
        head = Reward(request_id=imp.rid, user_id=imp.user, model_version=c.model_version,
                      policy_version=c.policy_version, impression_ts_ms=imp.ts, session_id=c.session_id,
                      surface=c.surface, variant=c.variant, published_ms=published_ms)
        head.features.update(c.features)
        hb = head.SerializeToString()
        key = imp.user.encode()
        dense = list(c.pool_dense)
        d = _D if len(dense) == _D * len(c.items) else 0
        flags, revenue, out_ts = imp.flags, imp.revenue, imp.out_ts
        if flags is not None:
            nev = [0] * len(imp.items)
            for slot in imp.events.values():
                nev[slot] += 1
        rewards = self.out.rewards
        weights = self.weights
        positive = 0
        for j, it in enumerate(c.items):
            r = Reward(item_id=it.item_id, position=it.position, propensity=it.propensity, score=it.score,
                       dense=dense[j * d:(j + 1) * d] if d else None)
            if flags is not None and flags[j]:
                f = flags[j]
                r.clicked = bool(f & CLICKED)
                r.added_to_cart = bool(f & CARTED)
                r.purchased = bool(f & PURCHASED)
                r.revenue = revenue[j]
                r.reward = weights.reward(f, revenue[j])
                r.outcome_ts_ms = out_ts[j]
                r.outcome_events = nev[j]
                self.out.latencies_ms.append(published_ms - out_ts[j])
                positive += 1
            rewards.append((key, hb + r.SerializeToString()))  # concatenated fields = merged message
        st = self.stats
        st.closed += 1
        st.rewards += len(c.items)
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
                    self.impression(Impression.FromString(v))
            for k, v in latest.items():
                if v is not None and k.startswith(EVENT_PREFIX):
                    self.outcome(UserEvent.FromString(v))
        finally:
            self._log = True
            self.stats = saved

    @property
    def buffered(self) -> int:
        return len(self._buffer)
