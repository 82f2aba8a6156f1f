"""One definition of recpilot's features, shared by the online feature service, training and serving.

The online feature service (``services/features``) keeps these values in Redis; its read API returns,
per user and per item, plain dicts with exactly the keys below. :class:`OfflineFeatureStore` computes
the same dicts in memory by replaying events (for training from raw events and for tests that compare
online and offline). :func:`build_batch` turns a user dict and item dicts into the ranker's input
tensors; serving and training both call it, so there is no training/serving skew.

Definitions
-----------
Item (all counts by event time):
  views, clicks, carts, purchases            all-time counts of VIEW, CLICK, ADD_TO_CART, PURCHASE
  <count>_1h, <count>_24h                    the same over sliding windows ending at ``now_ms``,
                                             from per-minute buckets (window resolution: 1 minute)
  ctr                                        smoothed click-through rate, Beta(CTR_PRIOR_CLICKS,
                                             CTR_PRIOR_VIEWS - CTR_PRIOR_CLICKS) prior:
                                             (clicks + 1) / (views + 20), i.e. 5% with no data,
                                             and ~clicks/views once views >> 20
  category, price, last_event_ms             last seen (from event context["category"] and price)
User:
  recent_views / recent_clicks / recent_purchases   item ids, newest first, at most RECENT_LEN
  affinity                                   {category: [score, ts_ms]}: a time-decayed sum of
                                             EVENT_WEIGHTS with half-life AFFINITY_HALF_LIFE_MS;
                                             the value at time t is score * 2 ** (-(t - ts_ms) / H)
  last_event_ms, session_id, session_events  the current session's event count
  events                                     all-time event count
Global:
  popularity: items ranked by PURCHASE*5 + ADD_TO_CART*3 + CLICK*2 + VIEW*1 (all-time score)
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Sequence
from itertools import chain, repeat
from operator import itemgetter

import numpy as np

EVENT_NAMES = {1: "VIEW", 2: "CLICK", 3: "ADD_TO_CART", 4: "PURCHASE", 5: "SEARCH"}
COUNT_FIELD = {"VIEW": "views", "CLICK": "clicks", "ADD_TO_CART": "carts", "PURCHASE": "purchases"}
COUNT_FIELDS = ("views", "clicks", "carts", "purchases")
WINDOWS_S = {"1h": 3600, "24h": 86400}
BUCKET_MS = 60_000
CTR_PRIOR_CLICKS = 1.0
CTR_PRIOR_VIEWS = 20.0
RECENT_LEN = 20
AFFINITY_HALF_LIFE_MS = 6 * 3600 * 1000
EVENT_WEIGHTS = {"VIEW": 1.0, "CLICK": 2.0, "ADD_TO_CART": 3.0, "PURCHASE": 5.0}
POPULARITY_WEIGHTS = EVENT_WEIGHTS

# The ranker's dense input, in this order.
DENSE_FEATURES = (
    "item_log_views", "item_log_clicks", "item_log_carts", "item_log_purchases",
    "item_log_views_1h", "item_log_clicks_1h", "item_log_views_24h", "item_log_clicks_24h",
    "item_log_purchases_24h", "item_ctr", "item_log_price",
    "user_cat_affinity", "user_cat_affinity_share",
    "user_viewed_item", "user_clicked_item", "user_bought_item", "user_log_session_events",
)
# The ranker's categorical input: (name, hash buckets).
ID_FEATURES = (("user_id", 50_000), ("item_id", 100_000), ("category", 1_000))


def stable_hash(value: str, buckets: int) -> int:
    """A hash that is the same in every process and language (CRC-32), modulo ``buckets``."""
    return zlib.crc32(value.encode()) % buckets


def smoothed_ctr(clicks: float, views: float) -> float:
    return (clicks + CTR_PRIOR_CLICKS) / (views + CTR_PRIOR_VIEWS)


def decayed(score: float, ts_ms: int, now_ms: int) -> float:
    if now_ms <= ts_ms:
        return score
    return score * 2.0 ** (-(now_ms - ts_ms) / AFFINITY_HALF_LIFE_MS)


def window_counts(buckets: dict[str, dict[int, int]], now_ms: int) -> dict[str, int]:
    """``buckets[count_field][minute_index] = n`` -> ``{"views_1h": ..., "clicks_24h": ...}``."""
    now_bucket = now_ms // BUCKET_MS
    out = {}
    for field in COUNT_FIELDS:
        per = buckets.get(field, {})
        for wname, secs in WINDOWS_S.items():
            start = now_bucket - secs * 1000 // BUCKET_MS
            out[f"{field}_{wname}"] = int(sum(n for b, n in per.items() if start < int(b) <= now_bucket))
    return out


def empty_item(item_id: str) -> dict:
    item = {"item_id": item_id, **{f: 0 for f in COUNT_FIELDS}, "ctr": smoothed_ctr(0, 0),
            "category": "", "price": 0.0, "last_event_ms": 0}
    for f in COUNT_FIELDS:
        for w in WINDOWS_S:
            item[f"{f}_{w}"] = 0
    return item


def empty_user(user_id: str) -> dict:
    return {"user_id": user_id, "recent_views": [], "recent_clicks": [], "recent_purchases": [],
            "affinity": {}, "last_event_ms": 0, "session_id": "", "session_events": 0, "events": 0}


# The numeric item keys build_batch reads (counts, then price), in one pass.
_NUMERIC = ("views", "clicks", "carts", "purchases", "views_1h", "clicks_1h", "views_24h", "clicks_24h",
            "purchases_24h", "price")
_NUMERIC_GET = itemgetter(*_NUMERIC)
_CTR_GET = itemgetter("ctr")


# Columns of DENSE_FEATURES that depend on the item alone (0..ITEM_DENSE-1); the rest depend on the
# user too. Serving caches the item part per item (``item_columns``) and computes the user part per
# request (``user_columns``); ``build_batch`` is exactly the two together.
ITEM_DENSE = 11


def item_columns(items: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The item-only part of the ranker inputs for N items: dense float32 [N, ITEM_DENSE] (columns
    0..10 of DENSE_FEATURES), ids int64 [N, 2] (the item and category id columns of ID_FEATURES) and
    the item categories (strings, for the user-dependent columns)."""
    n = len(items)
    dense = np.empty((n, ITEM_DENSE), dtype=np.float32)
    ids = np.empty((n, 2), dtype=np.int64)
    if n == 0:
        return dense, ids, []
    try:  # fast path: every item has every numeric key, none of them None/"" (what the read API returns)
        num = np.fromiter(chain.from_iterable(map(_NUMERIC_GET, items)), dtype=np.float64,
                          count=n * len(_NUMERIC)).reshape(n, len(_NUMERIC))
    except (KeyError, TypeError, ValueError):
        num = np.stack([np.fromiter((it.get(key) or 0 for it in items), dtype=np.float64, count=n)
                        for key in _NUMERIC], axis=1)
    counts = num[:, 0:9]
    views, clicks = num[:, 0], num[:, 1]
    dense[:, 0:9] = np.log1p(counts)
    try:
        ctr = np.fromiter(map(_CTR_GET, items), dtype=np.float64, count=n)
    except KeyError:
        ctr = np.fromiter((it["ctr"] if "ctr" in it else np.nan for it in items), dtype=np.float64, count=n)
    missing = np.isnan(ctr)
    if missing.any():
        ctr[missing] = smoothed_ctr(clicks[missing], views[missing])
    dense[:, 9] = ctr
    dense[:, 10] = np.log1p(np.maximum(num[:, 9], 0.0))
    cats = [it.get("category") or "" for it in items]
    (_, _), (_, item_buckets), (_, cat_buckets) = ID_FEATURES
    ids[:, 0] = np.fromiter((zlib.crc32(str(it["item_id"]).encode()) for it in items), dtype=np.int64,
                            count=n) % item_buckets
    ids[:, 1] = np.fromiter((zlib.crc32(c.encode()) for c in cats), dtype=np.int64, count=n) % cat_buckets
    return dense, ids, cats


def user_columns(user: dict, item_ids: Sequence[str], cats: Sequence[str], now_ms: int,
                 dense: np.ndarray) -> int:
    """Fill the user-dependent columns (ITEM_DENSE..D-1) of ``dense`` [N, D] for N items with these ids
    and categories; return the user id column of ID_FEATURES."""
    n = len(item_ids)
    aff = {c: decayed(float(s), int(t), now_ms) for c, (s, t) in (user.get("affinity") or {}).items()}
    aff_total = sum(aff.values())
    if aff:
        aff[""] = 0.0  # an item without a category has no affinity
        a = np.fromiter(map(aff.get, cats, repeat(0.0, n)), dtype=np.float64, count=n)
    else:
        a = np.zeros(n)
    dense[:, 11] = np.log1p(a)
    dense[:, 12] = a / (aff_total + 1.0)
    for column, key in ((13, "recent_views"), (14, "recent_clicks"), (15, "recent_purchases")):
        seen = set(user.get(key) or ())
        if seen:
            dense[:, column] = np.fromiter(map(seen.__contains__, item_ids), dtype=np.float64, count=n)
        else:
            dense[:, column] = 0.0
    dense[:, 16] = math.log1p(float(user.get("session_events") or 0))
    return stable_hash(str(user.get("user_id", "")), ID_FEATURES[0][1])


def build_batch(user: dict, items: list[dict], now_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Ranker inputs for one user and N candidate items: dense float32 [N, D], ids int64 [N, K].

    Column-wise (one pass per feature, numpy for the arithmetic): ``item_columns`` then
    ``user_columns``. Training calls this; serving calls the same two functions with the item part
    cached per item (services.inference.itemcache), so both see identical inputs."""
    n = len(items)
    dense = np.empty((n, len(DENSE_FEATURES)), dtype=np.float32)
    ids = np.empty((n, len(ID_FEATURES)), dtype=np.int64)
    if n == 0:
        return dense, ids
    item_dense, item_ids_cols, cats = item_columns(items)
    dense[:, :ITEM_DENSE] = item_dense
    ids[:, 1:] = item_ids_cols
    ids[:, 0] = user_columns(user, [it["item_id"] for it in items], cats, now_ms, dense)
    return dense, ids


class OfflineFeatureStore:
    """The online features, computed in memory by replaying events in order.

    ``apply(event)`` takes a dict with UserEvent field names (event_type as a name or number).
    ``user(id)``/``item(id, now_ms)`` return the same dicts as the online read API.
    """

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}
        self.buckets: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        self.users: dict[str, dict] = {}
        self.popularity: dict[str, float] = defaultdict(float)

    def apply(self, ev: dict) -> None:
        etype = ev.get("event_type")
        etype = EVENT_NAMES.get(etype, etype) if isinstance(etype, int) else str(etype)
        ts = int(ev.get("timestamp_ms") or 0)
        uid = str(ev.get("user_id") or "")
        iid = str(ev.get("item_id") or "")
        ctx = ev.get("context") or {}
        user = self.users.setdefault(uid, empty_user(uid))
        user["events"] += 1
        sid = str(ev.get("session_id") or "")
        if sid and sid != user["session_id"]:
            user["session_id"], user["session_events"] = sid, 0
        user["session_events"] += 1
        user["last_event_ms"] = max(user["last_event_ms"], ts)
        if etype not in COUNT_FIELD or not iid:
            return
        field = COUNT_FIELD[etype]
        item = self.items.setdefault(iid, empty_item(iid))
        item[field] += 1
        self.buckets[iid][field][ts // BUCKET_MS] += 1
        if ctx.get("category"):
            item["category"] = ctx["category"]
        if float(ev.get("price") or 0) > 0:
            item["price"] = float(ev["price"])
        item["last_event_ms"] = max(item["last_event_ms"], ts)
        self.popularity[iid] += POPULARITY_WEIGHTS[etype]
        lst = {"VIEW": "recent_views", "CLICK": "recent_clicks", "PURCHASE": "recent_purchases"}.get(etype)
        if lst:
            user[lst] = ([iid] + [x for x in user[lst] if x != iid])[:RECENT_LEN]
        cat = item["category"]
        if cat:
            score, t0 = user["affinity"].get(cat, (0.0, ts))
            user["affinity"][cat] = [decayed(score, t0, ts) + EVENT_WEIGHTS[etype], max(ts, t0)]

    def item(self, item_id: str, now_ms: int) -> dict:
        base = dict(self.items.get(item_id) or empty_item(item_id))
        base.update(window_counts(self.buckets.get(item_id, {}), now_ms))
        base["ctr"] = smoothed_ctr(base["clicks"], base["views"])
        return base

    def user(self, user_id: str) -> dict:
        return dict(self.users.get(user_id) or empty_user(user_id))

    def top_popular(self, n: int) -> list[str]:
        return [i for i, _ in sorted(self.popularity.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
