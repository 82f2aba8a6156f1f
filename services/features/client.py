"""The online feature read API, used by inference and the CLI.

``FeatureClient(redis_url, key_prefix="rp:")`` (blocking, redis-py) and ``AsyncFeatureClient`` (same
methods as coroutines, redis.asyncio) return user and item dicts with exactly the keys and value
types of :class:`recpilot.featurespec.OfflineFeatureStore`, so training and serving see the same
features.

* ``fetch(user_id, item_ids, now_ms)`` -> ``(user, [item, ...])`` in ONE round trip (a Lua script
  that also sums the 1 h / 24 h window buckets server-side).
* ``candidates(user_id, n, now_ms)`` -> item ids: items co-visited with the user's recent items,
  popular items of the user's top-affinity categories, then globally popular ones (two round trips).
* ``popular(n, category=None)``, ``item_meta(item_ids)``, ``ping()``.
* ``catalogue()`` (blocking client) -> ``{item_id: {"category", "price", "title"}}`` for every item
  the store knows (a scan: for a first load such as the search index's, not per request);
  ``catalogue_version()`` before it and ``catalogue_changes(since)`` after it read only the items
  new or changed since (the writer's change log, see keys.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from recpilot import featurespec as fs
from services.features import keys, scripts

RECENT_FOR_CANDIDATES = 5
TOP_CATEGORIES = 3


def _s(v) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


def _pairs(flat) -> dict[str, str]:
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}


def _int(v, default: int = 0) -> int:
    s = _s(v)
    return int(s) if s else default


def parse_affinity(flat) -> dict[str, list]:
    out = {}
    for cat, val in _pairs(flat).items():
        score, ts = val.split("|", 1)
        out[cat] = [float(score), int(ts)]
    return out


def parse_user(user_id: str, raw: Sequence) -> dict:
    h = _pairs(raw[0])
    user = fs.empty_user(user_id)
    user.update(
        recent_views=[_s(x) for x in raw[1]],
        recent_clicks=[_s(x) for x in raw[2]],
        recent_purchases=[_s(x) for x in raw[3]],
        affinity=parse_affinity(raw[4]),
        last_event_ms=_int(h.get("last_event_ms")),
        session_id=h.get("session_id", ""),
        session_events=_int(h.get("session_events")),
        events=_int(h.get("events")),
    )
    return user


def parse_item(item_id: str, vals: Sequence, sums: Sequence) -> dict:
    item = fs.empty_item(item_id)
    for f, v in zip(fs.COUNT_FIELDS, vals[:4]):
        item[f] = _int(v)
    item["category"] = _s(vals[4])
    price = _s(vals[5])
    item["price"] = float(price) if price else 0.0
    item["last_event_ms"] = _int(vals[6])
    for k, v in zip(scripts.WINDOW_KEYS, sums):
        item[k] = int(v)
    item["ctr"] = fs.smoothed_ctr(item["clicks"], item["views"])
    return item


def parse_fetch(user_id: str, item_ids: Sequence[str], raw: Sequence) -> tuple[dict, list[dict]]:
    user = parse_user(user_id, raw[:5])
    items = [parse_item(iid, raw[5 + 2 * i], raw[6 + 2 * i]) for i, iid in enumerate(item_ids)]
    return user, items


def fetch_args(prefix: str, user_id: str, item_ids: Sequence[str], now_ms: int) -> list[str]:
    return [prefix, user_id or "", str(int(now_ms)), *[str(i) for i in item_ids]]


def parse_popular(raw, n: int) -> list[str]:
    top, ties = raw
    scores = _pairs(top)
    scores.update(_pairs(ties))
    ranked = sorted(scores.items(), key=lambda kv: (-float(kv[1]), kv[0]))
    return [k for k, _ in ranked[:n]]


def _top_categories(aff_flat, now_ms: int, k: int = TOP_CATEGORIES) -> list[str]:
    aff = parse_affinity(aff_flat)
    ranked = sorted(aff.items(), key=lambda kv: (-fs.decayed(kv[1][0], kv[1][1], now_ms), kv[0]))
    return [c for c, _ in ranked[:k]]


def _round1(pipe, prefix: str, user_id: str, n: int) -> None:
    pipe.zrevrange(keys.popular_key(prefix), 0, n - 1)
    pipe.lrange(f"{prefix}{keys.RECENT['recent_views']}{user_id}", 0, RECENT_FOR_CANDIDATES - 1)
    pipe.lrange(f"{prefix}{keys.RECENT['recent_clicks']}{user_id}", 0, RECENT_FOR_CANDIDATES - 1)
    pipe.hgetall(f"{prefix}{keys.AFFINITY}{user_id}")


def _plan_round2(r1, now_ms: int) -> tuple[list[str], list[str], list[str]]:
    popular = [_s(x) for x in r1[0]]
    recent: list[str] = []
    for x in list(r1[2]) + list(r1[1]):  # clicks first: stronger signal
        s = _s(x)
        if s not in recent:
            recent.append(s)
    recent = recent[:RECENT_FOR_CANDIDATES]
    aff = r1[3]
    flat = [v for kv in aff.items() for v in kv] if isinstance(aff, dict) else aff
    return popular, recent, _top_categories(flat, now_ms)


def _round2(pipe, prefix: str, recent: list[str], cats: list[str], n: int) -> None:
    for i in recent:
        pipe.zrevrange(keys.covisit_key(prefix, i), 0, n - 1, withscores=True)
    for c in cats:
        pipe.zrevrange(keys.popular_key(prefix, c), 0, n - 1)


def merge_candidates(n: int, popular: list[str], recent: list[str], cats: list[str], r2) -> list[str]:
    covis: dict[str, float] = {}
    for res in r2[:len(recent)]:
        for member, score in res:
            m = _s(member)
            covis[m] = covis.get(m, 0.0) + float(score)
    out: list[str] = []
    seen: set[str] = set()

    def add(i: str) -> None:
        if i not in seen and len(out) < n:
            seen.add(i)
            out.append(i)

    for i, _ in sorted(covis.items(), key=lambda kv: (-kv[1], kv[0])):
        add(i)
    # category lists interleaved in affinity order
    cat_lists = [[_s(x) for x in res] for res in r2[len(recent):]]
    for rank in range(max((len(c) for c in cat_lists), default=0)):
        for lst in cat_lists:
            if rank < len(lst):
                add(lst[rank])
    for i in popular:
        add(i)
    return out


def _parse_meta(item_ids, rows) -> dict[str, dict]:
    out = {}
    for iid, (cat, price, title) in zip(item_ids, rows):
        p = _s(price)
        out[iid] = {"category": _s(cat), "price": float(p) if p else 0.0, "title": _s(title)}
    return out


class FeatureClient:
    """Blocking read API (redis-py)."""

    def __init__(self, redis_url: str, key_prefix: str = "rp:", **redis_kwargs) -> None:
        import redis

        self.prefix = key_prefix
        self.redis = redis.Redis.from_url(redis_url, **redis_kwargs)
        self._fetch = self.redis.register_script(scripts.FETCH)
        self._popular = self.redis.register_script(scripts.POPULAR)

    def close(self) -> None:
        self.redis.close()

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:
            return False

    def fetch(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> tuple[dict, list[dict]]:
        item_ids = [str(i) for i in item_ids]
        raw = self._fetch(args=fetch_args(self.prefix, user_id, item_ids, now_ms))
        return parse_fetch(user_id, item_ids, raw)

    def user(self, user_id: str, now_ms: int = 0) -> dict:
        return self.fetch(user_id, [], now_ms)[0]

    def item(self, item_id: str, now_ms: int) -> dict:
        return self.fetch("", [item_id], now_ms)[1][0]

    def popular(self, n: int, category: str | None = None) -> list[str]:
        if n <= 0:
            return []
        return parse_popular(self._popular(keys=[keys.popular_key(self.prefix, category)], args=[n]), n)

    def candidates(self, user_id: str, n: int, now_ms: int) -> list[str]:
        if n <= 0:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            _round1(pipe, self.prefix, user_id, n)
            r1 = pipe.execute()
        popular, recent, cats = _plan_round2(r1, now_ms)
        r2 = []
        if recent or cats:
            with self.redis.pipeline(transaction=False) as pipe:
                _round2(pipe, self.prefix, recent, cats, n)
                r2 = pipe.execute()
        return merge_candidates(n, popular, recent, cats, r2)

    def item_meta(self, item_ids: Sequence[str]) -> dict[str, dict]:
        item_ids = [str(i) for i in item_ids]
        with self.redis.pipeline(transaction=False) as pipe:
            for i in item_ids:
                pipe.hmget(keys.item_key(self.prefix, i), "category", "price", "title")
            rows = pipe.execute()
        return _parse_meta(item_ids, rows)

    def catalogue(self, batch: int = 1000) -> dict[str, dict]:
        """Every item the store holds, with its metadata (:meth:`item_meta`), read ``batch`` at a time."""
        head = keys.item_key(self.prefix, "")
        ids = [_s(k)[len(head):] for k in self.redis.scan_iter(match=f"{head}*", count=batch)]
        out: dict[str, dict] = {}
        for i in range(0, len(ids), batch):
            out.update(self.item_meta(ids[i:i + batch]))
        return out

    def catalogue_version(self) -> int:
        """The last catalogue change version (0 before any): read it before :meth:`catalogue`, then
        pass it to :meth:`catalogue_changes` to get what changed during and after the scan."""
        return _int(self.redis.get(keys.catalogue_version_key(self.prefix)))

    def catalogue_changes(self, since: int, batch: int = 1000) -> tuple[int, dict[str, dict]] | None:
        """``(version, {item_id: metadata})`` of the items new or changed (category, price, title) after
        version ``since``; pass ``version`` as ``since`` next time. None when the store's version is
        below ``since`` (it was flushed or replaced): read the whole :meth:`catalogue` again.

        The change log holds each item once, with its last version, so it is as large as the catalogue
        and read in one call (paging by position could skip an item that moves while being paged)."""
        with self.redis.pipeline(transaction=True) as pipe:  # the version and the log at one instant
            pipe.get(keys.catalogue_version_key(self.prefix))
            pipe.zrangebyscore(keys.catalogue_changes_key(self.prefix), f"({int(since)}", "+inf")
            version, ids = pipe.execute()
        version = _int(version)
        if version < since:
            return None
        ids = [_s(i) for i in ids]
        out: dict[str, dict] = {}
        for i in range(0, len(ids), batch):
            out.update(self.item_meta(ids[i:i + batch]))
        return version, out

    def offsets(self) -> dict[str, int]:
        """Highest applied offset per ``<topic>:<partition>`` (for lag and tests)."""
        return {_s(k): int(v) for k, v in self.redis.hgetall(keys.offsets_key(self.prefix)).items()}


class AsyncFeatureClient:
    """The same read API as coroutines (redis.asyncio), for the asyncio gRPC server."""

    def __init__(self, redis_url: str, key_prefix: str = "rp:", **redis_kwargs) -> None:
        import redis.asyncio as aioredis

        self.prefix = key_prefix
        self.redis = aioredis.Redis.from_url(redis_url, **redis_kwargs)
        self._fetch = self.redis.register_script(scripts.FETCH)
        self._popular = self.redis.register_script(scripts.POPULAR)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def fetch(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> tuple[dict, list[dict]]:
        item_ids = [str(i) for i in item_ids]
        raw = await self._fetch(args=fetch_args(self.prefix, user_id, item_ids, now_ms))
        return parse_fetch(user_id, item_ids, raw)

    async def user(self, user_id: str, now_ms: int = 0) -> dict:
        return (await self.fetch(user_id, [], now_ms))[0]

    async def item(self, item_id: str, now_ms: int) -> dict:
        return (await self.fetch("", [item_id], now_ms))[1][0]

    async def popular(self, n: int, category: str | None = None) -> list[str]:
        if n <= 0:
            return []
        raw = await self._popular(keys=[keys.popular_key(self.prefix, category)], args=[n])
        return parse_popular(raw, n)

    async def candidates(self, user_id: str, n: int, now_ms: int) -> list[str]:
        if n <= 0:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            _round1(pipe, self.prefix, user_id, n)
            r1 = await pipe.execute()
        popular, recent, cats = _plan_round2(r1, now_ms)
        r2 = []
        if recent or cats:
            async with self.redis.pipeline(transaction=False) as pipe:
                _round2(pipe, self.prefix, recent, cats, n)
                r2 = await pipe.execute()
        return merge_candidates(n, popular, recent, cats, r2)

    async def item_meta(self, item_ids: Sequence[str]) -> dict[str, dict]:
        item_ids = [str(i) for i in item_ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in item_ids:
                pipe.hmget(keys.item_key(self.prefix, i), "category", "price", "title")
            rows = await pipe.execute()
        return _parse_meta(item_ids, rows)

    async def offsets(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.offsets_key(self.prefix))
        return {_s(k): int(v) for k, v in raw.items()}
