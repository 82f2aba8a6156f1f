"""A small deterministic shop-event synthesizer for the features tests and benchmark.

Users browse in sessions; items follow a long-tailed (Zipf-like) popularity; each item has a fixed
category, price and title; a view may lead to a click, a cart and a purchase. Events come out in
event-time order. (The platform-wide load generator is `recpilot generate`; this one is local to
the features part so its tests and benchmark do not depend on another part.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from recpilot.pb import events_pb2

ETYPE = {"VIEW": events_pb2.VIEW, "CLICK": events_pb2.CLICK, "ADD_TO_CART": events_pb2.ADD_TO_CART,
         "PURCHASE": events_pb2.PURCHASE, "SEARCH": events_pb2.SEARCH}


class ShopSynth:
    def __init__(self, n_users: int = 200, n_items: int = 500, n_categories: int = 12, seed: int = 7,
                 zipf_s: float = 1.1, tag: str = "") -> None:
        self.rng = random.Random(seed)
        self.tag = tag
        self.items = [f"{tag}i{k}" for k in range(n_items)]
        weights = [1.0 / (k + 1) ** zipf_s for k in range(n_items)]
        total = sum(weights)
        self.cum = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.cat = {i: f"c{self.rng.randrange(n_categories)}" for i in self.items}
        self.price = {i: round(self.rng.uniform(2, 300), 2) for i in self.items}
        self.users = [f"{tag}u{k}" for k in range(n_users)]
        self.session: dict[str, tuple[str, int]] = {}
        self.seq = 0

    def _item(self) -> str:
        import bisect

        return self.items[min(bisect.bisect_left(self.cum, self.rng.random()), len(self.items) - 1)]

    def _event(self, uid: str, etype: str, item: str, ts: int) -> events_pb2.UserEvent:
        self.seq += 1
        sid, _ = self.session[uid]
        ev = events_pb2.UserEvent(event_id=f"{self.tag}e{self.seq}", user_id=uid, session_id=sid,
                                  event_type=ETYPE[etype], item_id=item if etype != "SEARCH" else "",
                                  timestamp_ms=ts)
        if etype == "SEARCH":
            ev.query = "shoes"
        else:
            ev.price = self.price[item]
            ev.context["category"] = self.cat[item]
            ev.context["title"] = f"Item {item}"
        return ev

    def events(self, n: int, start_ms: int, step_ms: float = 1.0) -> Iterator[events_pb2.UserEvent]:
        """``n`` events with timestamps start_ms, start_ms + step, ... (several per user action)."""
        ts = float(start_ms)
        out = 0
        while out < n:
            uid = self.rng.choice(self.users)
            sid, left = self.session.get(uid, ("", 0))
            if left <= 0:
                self.session[uid] = (f"{uid}-s{self.seq}", self.rng.randint(3, 15))
            sid, left = self.session[uid]
            self.session[uid] = (sid, left - 1)
            if self.rng.random() < 0.05:
                chain = [("SEARCH", "")]
            else:
                item = self._item()
                chain = [("VIEW", item)]
                if self.rng.random() < 0.15:
                    chain.append(("CLICK", item))
                    if self.rng.random() < 0.3:
                        chain.append(("ADD_TO_CART", item))
                        if self.rng.random() < 0.4:
                            chain.append(("PURCHASE", item))
            for etype, item in chain:
                if out >= n:
                    break
                yield self._event(uid, etype, item, int(ts))
                ts += step_ms
                out += 1


def to_dict(ev: events_pb2.UserEvent) -> dict:
    """The dict OfflineFeatureStore.apply takes."""
    return {"event_id": ev.event_id, "user_id": ev.user_id, "session_id": ev.session_id,
            "event_type": int(ev.event_type), "item_id": ev.item_id, "price": ev.price,
            "timestamp_ms": ev.timestamp_ms, "context": dict(ev.context)}
