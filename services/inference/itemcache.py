"""The item-only part of the ranker inputs, cached per item as numpy rows.

Item features (windowed counts with one-minute resolution, click rate, price, category) change
slowly, so serving reuses them for ``ttl_s`` and reads only the user (always fresh) plus the missing
or expired items from the feature store, in one round trip. What is cached is not the raw feature
dict but its encoded row (``featurespec.item_columns``): a request gathers its candidates' rows with
one numpy index instead of re-encoding 200 dicts, then ``featurespec.user_columns`` adds the
user-dependent columns. The result is exactly ``featurespec.build_batch(user, items, now_ms)``
(a unit test checks it), so training and serving still share one feature definition.

Every entry lives ``ttl_s`` +- 25 %, so items read together expire spread out.

Stale-while-revalidate: an entry past its TTL but within ``stale_s`` more is still used, and its
id is reported back so the caller refreshes it in the background (``stale``), off the request
path. Only items never seen (or older than TTL + stale_s) are read on the request path.

Single-threaded (the event loop's thread). A request copies its rows out before it awaits the
feature store, so a concurrent ``put`` (which may clear the cache when it is full) never changes
what an in-flight request sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter

import numpy as np

from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES, ITEM_DENSE, item_columns

_D, _K = len(DENSE_FEATURES), len(ID_FEATURES)


class ItemCache:
    def __init__(self, ttl_s: float, max_items: int, stale_s: float = 0.0, initial: int = 1024) -> None:
        self.ttl_s = ttl_s
        self.stale_s = stale_s if ttl_s > 0 else 0.0
        self.max_items = max_items
        self._index: dict[str, int] = {}
        self._dense = np.empty((initial, ITEM_DENSE), dtype=np.float32)
        self._ids = np.empty((initial, 2), dtype=np.int64)
        self._cats: list[str] = []
        self._expires = np.empty(initial, dtype=np.float64)
        self._rng = np.random.default_rng()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._index)

    def clear(self) -> None:
        self._index.clear()
        self._cats.clear()

    def gather(self, item_ids: Sequence[str], now: float,
               stale: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """Inputs for these items as far as cached and usable at ``now`` (monotonic seconds):
        ``dense [N, D]`` and ``ids [N, K]`` with the item columns filled, the categories, and the
        positions (into item_ids) of the items that are missing or too old, whose rows are unset.
        Ids used although past their TTL are appended to ``stale`` (to be refreshed)."""
        n = len(item_ids)
        dense = np.empty((n, _D), dtype=np.float32)
        ids = np.empty((n, _K), dtype=np.int64)
        rows = np.fromiter(map(self._index.get, item_ids, repeat(-1, n)), dtype=np.int64, count=n)
        ok = rows >= 0
        if ok.any():
            expires = self._expires[rows[ok]]
            if self.stale_s > 0:
                old = expires < now
                if old.any() and stale is not None:
                    where = np.flatnonzero(ok)[old & (expires + self.stale_s >= now)]
                    stale.extend(item_ids[i] for i in where.tolist())
                ok[ok] = expires + self.stale_s >= now
            else:
                ok[ok] = expires >= now
        hit = rows[ok]
        if len(hit) == n:
            dense[:, :ITEM_DENSE] = self._dense[rows]
            ids[:, 1:] = self._ids[rows]
            cats = list(itemgetter(*rows.tolist())(self._cats)) if n > 1 else [self._cats[int(rows[0])]]
            missing = np.empty(0, dtype=np.int64)
        else:
            dense[ok, :ITEM_DENSE] = self._dense[hit]
            ids[ok, 1:] = self._ids[hit]
            allcats = self._cats
            cats = [allcats[r] if good else "" for r, good in zip(rows.tolist(), ok.tolist())]
            missing = np.flatnonzero(~ok)
        self.hits += len(hit)
        self.misses += n - len(hit)
        return dense, ids, cats, missing

    def fill(self, dense: np.ndarray, ids: np.ndarray, cats: list[str], missing: np.ndarray,
             items: list[dict], now: float) -> None:
        """Encode the fetched feature dicts of the missing positions into the request's arrays
        and remember them until ``now + ttl_s``."""
        if not len(missing):
            return
        item_dense, item_ids, item_cats = item_columns(items)
        dense[missing, :ITEM_DENSE] = item_dense
        ids[missing, 1:] = item_ids
        for pos, c in zip(missing.tolist(), item_cats):
            cats[pos] = c
        self.put([it["item_id"] for it in items], item_dense, item_ids, item_cats, now)

    def put(self, item_ids: Sequence[str], item_dense: np.ndarray, item_ids_cols: np.ndarray,
            item_cats: list[str], now: float) -> None:
        if self.ttl_s <= 0:
            return
        new = sum(1 for i in item_ids if i not in self._index)
        if len(self._index) + new > self.max_items:
            self.clear()
        rows = []
        for i, c in zip(item_ids, item_cats):
            r = self._index.get(i)
            if r is None:
                r = len(self._cats)
                self._index[i] = r
                self._cats.append(c)
            else:
                self._cats[r] = c
            rows.append(r)
        need = len(self._cats)
        if need > len(self._expires):
            cap = max(need, 2 * len(self._expires))
            self._dense = np.resize(self._dense, (cap, ITEM_DENSE))
            self._ids = np.resize(self._ids, (cap, 2))
            self._expires = np.resize(self._expires, cap)
        r = np.asarray(rows, dtype=np.int64)
        self._dense[r] = item_dense
        self._ids[r] = item_ids_cols
        # Each entry lives ttl_s +- 25 % (uniform): entries read together do not all expire together,
        # so background refreshes stay a steady trickle instead of a burst every ttl_s.
        self._expires[r] = now + self.ttl_s * self._rng.uniform(0.75, 1.25, len(r))
