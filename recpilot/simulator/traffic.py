"""Shop traffic: interleaved shopper sessions as ``UserEvent`` messages, plus (when asked) a share
of malformed messages of every kind ingest must reject and a share of exact duplicates.

:class:`ShopSimulator` is open-loop: ``next_event(now_ms)`` advances one of many concurrent sessions
by one step (VIEW of an item chosen by taste and popularity, then CLICK / ADD_TO_CART / PURCHASE
by the click model, sometimes a SEARCH). :meth:`ShopSimulator.outcomes_for` turns a ranked list
returned by the Recommender into the shopper's clicks with the position-bias model.

:class:`TrafficMix` wraps it into Kafka records ``(key, value, kind)`` where ``kind`` is "valid",
"duplicate" or one of :data:`MALFORMED_KINDS` (with the ingest rejection code each must get in
:data:`EXPECTED_REASON`).
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from recpilot.pb import events_pb2
from recpilot.simulator.catalogue import CATEGORY_NAMES, Item, catalogue
from recpilot.simulator.shoppers import ClickModel, Population, User, WeightedSampler, category_queries

VIEW, CLICK, ADD_TO_CART, PURCHASE, SEARCH = 1, 2, 3, 4, 5
DEVICES = ("web", "ios", "android")

# Malformed message kinds and the ingest rejection code each one must get.
EXPECTED_REASON = {
    "bad_bytes": "undecodable",
    "bad_json": "undecodable",
    "wrong_type": "invalid_type",
    "missing_id": "missing_field",
    "missing_item": "missing_item_id",
    "negative_price": "negative_price",
    "future_timestamp": "future_timestamp",
    "stale_timestamp": "stale_timestamp",
    "oversized": "oversized",
    "unknown_type": "unknown_event_type",
}
MALFORMED_KINDS = tuple(EXPECTED_REASON)


@dataclass
class _Session:
    user: User
    session_id: str
    steps_left: int
    last_item: Item | None = None
    state: str = "browse"  # browse -> clicked -> carted
    request_id: str = ""


@dataclass
class ShopSimulator:
    seed: int = 42
    n_users: int = 10_000
    n_items: int = 2_000
    concurrent_sessions: int = 200
    mean_session_events: float = 8.0
    search_share: float = 0.08
    click_model: ClickModel = field(default_factory=ClickModel)
    start_ms: int | None = None
    # Prefix of event and session ids. None: fresh for every simulator, so two runs with the same seed
    # (a second `make run`) never reuse an event id, which ingest would drop as a duplicate. The
    # shoppers' behaviour depends on the seed only; pass a run_id for byte-identical streams.
    run_id: str | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.items = catalogue(self.seed, self.n_items)
        self.by_id = {it.item_id: it for it in self.items}
        self.population = Population(self.seed, self.n_users)
        self.global_sampler = WeightedSampler(self.items, [it.popularity for it in self.items])
        self.cat_samplers: dict[str, WeightedSampler] = {}
        for cat in CATEGORY_NAMES:
            members = [it for it in self.items if it.category == cat]
            if members:
                self.cat_samplers[cat] = WeightedSampler(members, [it.popularity for it in members])
        self.taste_samplers: dict[int, WeightedSampler] = {}
        self.queries = category_queries()
        self.sessions: list[_Session] = []
        self._event_seq = 0
        self.rng.getrandbits(32)  # drawn as before run_id existed: the same seed gives the same behaviour
        self._run = self.run_id or os.urandom(4).hex()

    # -- helpers ---------------------------------------------------------------------------
    def _elapsed_s(self, now_ms: int) -> float:
        if self.start_ms is None:
            self.start_ms = now_ms
        return max(0.0, (now_ms - self.start_ms) / 1000.0)

    def _new_session(self) -> _Session:
        rng = self.rng
        user = self.population.sample(rng.random())
        steps = 1 + int(rng.expovariate(1.0 / max(1.0, self.mean_session_events - 1)))
        return _Session(user, f"s-{self._run}-{rng.getrandbits(40):010x}", steps)

    def _pick_category(self, user: User, elapsed_s: float) -> str:
        tastes = self.click_model.tastes(user, elapsed_s)
        s = WeightedSampler(list(CATEGORY_NAMES), list(tastes)) if tastes is not user.tastes else None
        if s is None:
            s = self.taste_samplers.get(user.index)
            if s is None:
                s = self.taste_samplers[user.index] = WeightedSampler(list(CATEGORY_NAMES), list(user.tastes))
        return s.sample(self.rng.random())

    def pick_item(self, user: User, elapsed_s: float = 0.0) -> Item:
        if self.rng.random() < 0.7:
            cat = self._pick_category(user, elapsed_s)
            sampler = self.cat_samplers.get(cat)
            if sampler is not None:
                return sampler.sample(self.rng.random())
        return self.global_sampler.sample(self.rng.random())

    def new_event_id(self) -> str:
        self._event_seq += 1
        return f"e-{self._run}-{self._event_seq:010d}"

    def event(self, sess: _Session, event_type: int, now_ms: int, item: Item | None = None,
              query: str = "", request_id: str = "") -> events_pb2.UserEvent:
        ev = events_pb2.UserEvent(
            event_id=self.new_event_id(), user_id=sess.user.user_id, session_id=sess.session_id,
            event_type=event_type, timestamp_ms=now_ms, request_id=request_id,
        )
        ctx = ev.context
        ctx["device"] = DEVICES[sess.user.index % 3]
        if item is not None:
            ev.item_id = item.item_id
            ev.price = item.price
            ctx["category"] = item.category
            if event_type == VIEW:  # the product page: the shop's tracking sends its title
                ctx["title"] = item.title
        if query:
            ev.query = query
        return ev

    # -- open-loop stream ------------------------------------------------------------------
    def next_event(self, now_ms: int) -> events_pb2.UserEvent:
        rng = self.rng
        elapsed = self._elapsed_s(now_ms)
        while len(self.sessions) < self.concurrent_sessions:
            self.sessions.append(self._new_session())
        idx = int(rng.random() * len(self.sessions))
        sess = self.sessions[idx]
        sess.steps_left -= 1
        if sess.steps_left <= 0:
            self.sessions[idx] = self._new_session()
        cm = self.click_model
        if sess.state == "clicked" and sess.last_item is not None:
            if rng.random() < cm.p_cart:
                sess.state = "carted"
                return self.event(sess, ADD_TO_CART, now_ms, sess.last_item, request_id=sess.request_id)
            sess.state = "browse"
        elif sess.state == "carted" and sess.last_item is not None:
            sess.state = "browse"
            if rng.random() < cm.p_purchase:
                return self.event(sess, PURCHASE, now_ms, sess.last_item, request_id=sess.request_id)
        elif sess.state == "viewed" and sess.last_item is not None:
            if rng.random() < min(0.95, 3.0 * cm.attractiveness(sess.user, sess.last_item, elapsed)):
                sess.state = "clicked"
                return self.event(sess, CLICK, now_ms, sess.last_item, request_id=sess.request_id)
            sess.state = "browse"
        if rng.random() < self.search_share:
            cat = self._pick_category(sess.user, elapsed)
            words = self.queries[cat]
            return self.event(sess, SEARCH, now_ms, query=words[int(rng.random() * len(words))])
        item = self.pick_item(sess.user, elapsed)
        sess.last_item, sess.state, sess.request_id = item, "viewed", ""
        return self.event(sess, VIEW, now_ms, item)

    def events(self, n: int, start_ms: int, step_ms: float = 1.0) -> Iterator[events_pb2.UserEvent]:
        """``n`` events of the open-loop stream stamped ``start_ms``, ``start_ms + step_ms``, ...:
        the same events for the same seed and ``run_id``."""
        for k in range(n):
            yield self.next_event(int(start_ms + k * step_ms))

    # -- closed loop with the Recommender ---------------------------------------------------
    def outcomes_for(self, user: User, session_id: str, ranked_item_ids: list[str], request_id: str,
                     now_ms: int, rng: random.Random | None = None) -> list[events_pb2.UserEvent]:
        """What a shopper does with a ranked list: position-bias clicks, then carts and purchases.

        Unknown item ids (not in this catalogue) are skipped; events carry ``request_id``. ``rng``
        (default: the simulator's own) draws the clicks: the in-process mode passes its own, so the
        open-loop stream does not depend on what a policy showed."""
        rng = rng or self.rng
        sess = _Session(user, session_id, 1, request_id=request_id)
        elapsed = self._elapsed_s(now_ms)
        out = []
        cm = self.click_model
        for pos, iid in enumerate(ranked_item_ids, start=1):
            item = self.by_id.get(iid)
            if item is None:
                continue
            if rng.random() < cm.click_probability(user, item, pos, elapsed):
                out.append(self.event(sess, CLICK, now_ms, item, request_id=request_id))
                # the click opens the product page, which the shop tracks as a VIEW
                out.append(self.event(sess, VIEW, now_ms, item, request_id=request_id))
                if rng.random() < cm.p_cart:
                    out.append(self.event(sess, ADD_TO_CART, now_ms, item, request_id=request_id))
                    if rng.random() < cm.p_purchase:
                        out.append(self.event(sess, PURCHASE, now_ms, item, request_id=request_id))
        return out


def event_to_json(ev: events_pb2.UserEvent) -> bytes:
    d = {
        "event_id": ev.event_id, "user_id": ev.user_id, "session_id": ev.session_id,
        "event_type": events_pb2.EventType.Name(ev.event_type), "timestamp_ms": ev.timestamp_ms,
    }
    if ev.item_id:
        d["item_id"] = ev.item_id
        d["price"] = ev.price
    if ev.query:
        d["query"] = ev.query
    if ev.request_id:
        d["request_id"] = ev.request_id
    if ev.context:
        d["context"] = dict(ev.context)
    return json.dumps(d, separators=(",", ":")).encode()


def event_to_dict(ev: events_pb2.UserEvent) -> dict:
    """The event as the dict ``featurespec.OfflineFeatureStore.apply`` takes (``event_type`` as its number)."""
    return {"event_id": ev.event_id, "user_id": ev.user_id, "session_id": ev.session_id,
            "event_type": int(ev.event_type), "item_id": ev.item_id, "price": ev.price,
            "timestamp_ms": ev.timestamp_ms, "request_id": ev.request_id, "context": dict(ev.context)}


class TrafficMix:
    """Kafka records from a :class:`ShopSimulator` with malformed and duplicate shares.

    ``next(now_ms) -> (key, value, kind)``. Valid events are protobuf (or JSON with
    ``fmt="json"``); a duplicate re-sends the exact bytes of a recent valid event.
    """

    def __init__(self, sim: ShopSimulator, malformed_share: float = 0.0, duplicate_share: float = 0.0,
                 fmt: str = "proto", oversize_bytes: int = 70_000) -> None:
        if fmt not in ("proto", "json"):
            raise ValueError("fmt must be proto or json")
        if not (0 <= malformed_share <= 1 and 0 <= duplicate_share <= 1 and malformed_share + duplicate_share <= 1):
            raise ValueError("shares must be in [0, 1] and sum to at most 1")
        self.sim = sim
        self.malformed_share = malformed_share
        self.duplicate_share = duplicate_share
        self.fmt = fmt
        self.oversize_bytes = oversize_bytes
        self.recent: deque[tuple[bytes, bytes]] = deque(maxlen=1000)
        self.rng = random.Random(sim.seed + 1)
        self.counts: dict[str, int] = {}

    def encode(self, ev: events_pb2.UserEvent) -> bytes:
        return ev.SerializeToString() if self.fmt == "proto" else event_to_json(ev)

    def next(self, now_ms: int) -> tuple[bytes, bytes, str]:
        r = self.rng.random()
        if r < self.duplicate_share and self.recent:
            key, value = self.recent[int(self.rng.random() * len(self.recent))]
            kind = "duplicate"
        elif r < self.duplicate_share + self.malformed_share:
            kind = MALFORMED_KINDS[int(self.rng.random() * len(MALFORMED_KINDS))]
            key, value = malformed(kind, self.sim.next_event(now_ms), now_ms, self.rng, self.oversize_bytes)
        else:
            ev = self.sim.next_event(now_ms)
            key, value, kind = ev.user_id.encode(), self.encode(ev), "valid"
            self.recent.append((key, value))
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return key, value, kind


def malformed(kind: str, ev: events_pb2.UserEvent, now_ms: int, rng: random.Random,
              oversize_bytes: int = 70_000) -> tuple[bytes, bytes]:
    """A message of malformed ``kind`` derived from a valid event ``ev`` (which is consumed)."""
    key = ev.user_id.encode()
    if kind == "bad_bytes":
        # 0x0f = field 1 with wire type 7, which does not exist: never parses as protobuf
        return key, b"\x0f" + rng.randbytes(24)
    if kind == "bad_json":
        return key, event_to_json(ev)[:-7]
    if kind == "wrong_type":
        d = json.loads(event_to_json(ev))
        if rng.random() < 0.5:
            d["price"] = "cheap"
        else:
            d["user_id"] = 12345
        return key, json.dumps(d).encode()
    if kind == "missing_id":
        if rng.random() < 0.5:
            ev.ClearField("event_id")
        else:
            ev.ClearField("user_id")
            key = b""
        return key, ev.SerializeToString()
    if kind == "missing_item":
        ev.event_type = VIEW
        ev.ClearField("item_id")
        return key, ev.SerializeToString()
    if kind == "negative_price":
        ev.event_type = PURCHASE
        if not ev.item_id:
            ev.item_id = "item-000000"
        ev.price = -round(1 + rng.random() * 50, 2)
        return key, ev.SerializeToString()
    if kind == "future_timestamp":
        ev.timestamp_ms = now_ms + 3_600_000
        return key, ev.SerializeToString()
    if kind == "stale_timestamp":
        ev.timestamp_ms = now_ms - 400 * 86_400_000
        return key, ev.SerializeToString()
    if kind == "oversized":
        ev.context["note"] = "x" * oversize_bytes
        return key, ev.SerializeToString()
    if kind == "unknown_type":
        ev.event_type = 42
        return key, ev.SerializeToString()
    raise ValueError(f"unknown malformed kind {kind!r}")
