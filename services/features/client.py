"""The online feature read API, used by inference and the CLI.

``FeatureClient(redis_url, key_prefix="rp:", shards=1, cluster=False)`` (blocking, redis-py) and
``AsyncFeatureClient`` (same methods as coroutines, redis.asyncio) return user and item dicts with
exactly the keys and value types of :class:`recpilot.featurespec.OfflineFeatureStore`, so training and
serving see the same features. ``shards`` and ``cluster`` are the store's layout (keys.py:
``RECPILOT_REDIS_SHARDS``, ``RECPILOT_REDIS_CLUSTER``): with ``cluster`` the client is a
``RedisCluster`` (the URL names any node), and reads that span shards go out as one non-transactional
pipeline (in a cluster: one per node, sent together).

* ``fetch(user_id, item_ids, now_ms)`` -> ``(user, [item, ...])`` in ONE round trip (a Lua script
  per shard involved, that also sums the 1 h / 24 h window buckets server-side).
* ``candidates(user_id, n, now_ms)`` -> item ids: items co-visited with the user's recent items,
  popular items of the user's top-affinity categories, then globally popular ones (two round trips).
* ``popular(n, category=None)`` (the merge of every shard's exact top-n), ``item_meta(item_ids)``, ``ping()``.
* ``catalogue()`` (blocking client) -> ``{item_id: {"category", "price", "title"}}`` for every item
  the store knows (a scan: for a first load such as the search index's, not per request);
  ``catalogue_version()`` before it and ``catalogue_changes(since)`` after it read only the items
  new or changed since (the writer's change log, see keys.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from recpilot import featurespec as fs
from services.features import keys, scripts
from services.features.writer import merge_offsets


def _results(out: list, retry: bool) -> list | None:
    """The results of a pipeline of EVALSHA reads: None when a script was missing from a node's cache
    and ``retry`` (the caller loads it and sends the pipeline again); else the results, raising the
    first error among them."""
    from redis.exceptions import NoScriptError

    if retry and any(isinstance(r, NoScriptError) for r in out):
        return None
    for r in out:
        if isinstance(r, Exception):
            raise r
    return out

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


def connect(redis_url: str, cluster: bool = False, aio: bool = False, **redis_kwargs):
    """A redis-py client for ``redis_url``: ``Redis``, or ``RedisCluster`` with ``cluster`` (any node's
    URL; the client finds the others); ``aio``: the redis.asyncio one."""
    if aio:
        import redis.asyncio as aioredis

        cls = aioredis.RedisCluster if cluster else aioredis.Redis
    else:
        import redis

        cls = redis.RedisCluster if cluster else redis.Redis
    if cluster:
        redis_kwargs.pop("db", None)
    return cls.from_url(redis_url, **redis_kwargs)


def parse_popular(raw, n: int) -> list[str]:
    return merge_popular([raw], n)


def merge_popular(raws, n: int) -> list[str]:
    """The top ``n`` over the POPULAR answers of every shard (each holds disjoint items: exact)."""
    scores: dict[str, str] = {}
    for top, ties in raws:
        scores.update(_pairs(top))
        scores.update(_pairs(ties))
    ranked = sorted(scores.items(), key=lambda kv: (-float(kv[1]), kv[0]))
    return [k for k, _ in ranked[:n]]


def _top_categories(aff_flat, now_ms: int, k: int = TOP_CATEGORIES) -> list[str]:
    aff = parse_affinity(aff_flat)
    ranked = sorted(aff.items(), key=lambda kv: (-fs.decayed(kv[1][0], kv[1][1], now_ms), kv[0]))
    return [c for c, _ in ranked[:k]]


def _merge_ranked(lists) -> list[str]:
    """One shard's ZREVRANGE as is; several shards' (WITHSCORES) merged by score, then id."""
    if len(lists) == 1 and not (lists[0] and isinstance(lists[0][0], (tuple, list))):
        return [_s(x) for x in lists[0]]
    pairs = [(_s(m), float(sc)) for lst in lists for m, sc in lst]
    return [m for m, _ in sorted(pairs, key=lambda kv: (-kv[1], kv[0]))]


class _Layout:
    """Where a deployment's keys are: the prefix, the shard heads, and which shard holds what."""

    def __init__(self, prefix: str, shards: int, cluster: bool) -> None:
        self.prefix, self.shards = prefix, max(1, int(shards))
        self.heads = keys.heads(prefix, self.shards, cluster)

    def of(self, key_id: str) -> str:
        return self.heads[keys.shard_of(key_id, self.shards)]

    def fetch_calls(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> list[tuple[str, list[str], list[int]]]:
        """FETCH calls ``(head, args, item positions)``: one per shard involved; the user's shard's call
        (the first) reads the user too."""
        groups: dict[int, list[int]] = {}
        for pos, iid in enumerate(item_ids):
            groups.setdefault(keys.shard_of(iid, self.shards), []).append(pos)
        ushard = keys.shard_of(user_id, self.shards) if user_id else None
        order = ([ushard] if ushard is not None else []) + sorted(set(groups) - {ushard})
        if not order:
            order = [0]
        out = []
        for sh in order:
            pos = groups.get(sh, [])
            out.append((self.heads[sh], fetch_args(self.heads[sh], user_id if sh == ushard else "",
                                                   [item_ids[p] for p in pos], now_ms), pos))
        return out

    @staticmethod
    def parse_fetch(user_id: str, item_ids: Sequence[str], calls, raws) -> tuple[dict, list[dict]]:
        items: list = [None] * len(item_ids)
        user = parse_user(user_id, raws[0][:5])
        for (_, _, pos), raw in zip(calls, raws):
            for k, p in enumerate(pos):
                items[p] = parse_item(item_ids[p], raw[5 + 2 * k], raw[6 + 2 * k])
        return user, items

    def round1(self, pipe, user_id: str, n: int) -> None:
        scores = len(self.heads) > 1
        for h in self.heads:
            pipe.zrevrange(keys.popular_key(h), 0, n - 1, withscores=scores)
        h = self.of(user_id)
        pipe.lrange(f"{h}{keys.RECENT['recent_views']}{user_id}", 0, RECENT_FOR_CANDIDATES - 1)
        pipe.lrange(f"{h}{keys.RECENT['recent_clicks']}{user_id}", 0, RECENT_FOR_CANDIDATES - 1)
        pipe.hgetall(f"{h}{keys.AFFINITY}{user_id}")

    def plan_round2(self, r1, now_ms: int) -> tuple[list[str], list[str], list[str]]:
        S = len(self.heads)
        popular = _merge_ranked(r1[:S])
        return _plan_round2([popular, *r1[S:]], now_ms)

    def round2(self, pipe, recent: list[str], cats: list[str], n: int) -> None:
        scores = len(self.heads) > 1
        for i in recent:  # co-visitation: each shard holds partial counts (keys.py)
            for h in self.heads:
                pipe.zrevrange(keys.covisit_key(h, i), 0, n - 1, withscores=True)
        for c in cats:
            for h in self.heads:
                pipe.zrevrange(keys.popular_key(h, c), 0, n - 1, withscores=scores)

    def merge(self, n: int, popular, recent, cats, r2) -> list[str]:
        S = len(self.heads)
        ncv = len(recent) * S
        cat_lists = [_merge_ranked(r2[ncv + k * S: ncv + (k + 1) * S]) for k in range(len(cats))]
        return merge_candidates(n, popular, r2[:ncv], cat_lists)

    def catalogue_pattern(self) -> str:
        if self.heads[0] == self.prefix:
            return f"{_glob_escape(self.prefix)}{keys.ITEM}*"
        return f"{{{_glob_escape(self.prefix)}*}}{keys.ITEM}*"

    def catalogue_id(self, key) -> str | None:
        """The item id of a key found by :meth:`catalogue_pattern`, None for another key that matched."""
        k = _s(key)
        if self.heads[0] == self.prefix:
            return k[len(self.prefix) + len(keys.ITEM):]
        start = "{" + self.prefix
        if not k.startswith(start):
            return None
        num, sep, rest = k[len(start):].partition("}")
        if not (sep and num.isdigit() and rest.startswith(keys.ITEM)):
            return None
        iid = rest[len(keys.ITEM):]
        return iid if keys.shard_of(iid, self.shards) == int(num) else None


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


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


def merge_candidates(n: int, popular: list[str], covisit_lists, cat_lists) -> list[str]:
    """Co-visited items (counts summed over the lists: the recent items', and each one's shard
    partials), then the categories' popular items interleaved in affinity order, then popular ones."""
    covis: dict[str, float] = {}
    for res in covisit_lists:
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


def _as_version(heads: list[str], versions: list[int]):
    return versions[0] if len(heads) == 1 else tuple(versions)


def _since_vector(heads: list[str], since) -> list[int]:
    if isinstance(since, (tuple, list)):
        if len(since) != len(heads):
            raise ValueError(f"a catalogue version of {len(since)} shards for a store of {len(heads)}")
        return [int(v) for v in since]
    return [int(since)] * len(heads)


class FeatureClient:
    """Blocking read API (redis-py)."""

    def __init__(self, redis_url: str, key_prefix: str = "rp:", shards: int = 1, cluster: bool = False,
                 **redis_kwargs) -> None:
        self.prefix = key_prefix
        self.layout = _Layout(key_prefix, shards, cluster)
        self.redis = connect(redis_url, cluster, **redis_kwargs)
        self._fetch = self.redis.register_script(scripts.FETCH)
        self._popular = self.redis.register_script(scripts.POPULAR)
        self._changes = self.redis.register_script(scripts.CHANGES)

    def close(self) -> None:
        self.redis.close()

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:
            return False

    def _evals(self, script, calls: list[tuple[list[str], list]]) -> list:
        """One script over several shards: one call, or one non-transactional pipeline of EVALSHA
        (each routed by its key in a cluster); a script missing from a node's cache is loaded and the
        pipeline sent again (reads only)."""
        if len(calls) == 1:
            return [script(keys=calls[0][0], args=calls[0][1])]
        for attempt in (1, 2):
            with self.redis.pipeline(transaction=False) as pipe:
                for ks, args in calls:
                    pipe.execute_command("EVALSHA", script.sha, len(ks), *ks, *args)
                out = _results(pipe.execute(raise_on_error=False), retry=attempt == 1)
            if out is not None:
                return out
            self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    def fetch(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> tuple[dict, list[dict]]:
        item_ids = [str(i) for i in item_ids]
        calls = self.layout.fetch_calls(user_id, item_ids, now_ms)
        raws = self._evals(self._fetch, [([keys.offsets_key(h)], args) for h, args, _ in calls])
        return self.layout.parse_fetch(user_id, item_ids, calls, raws)

    def user(self, user_id: str, now_ms: int = 0) -> dict:
        return self.fetch(user_id, [], now_ms)[0]

    def item(self, item_id: str, now_ms: int) -> dict:
        return self.fetch("", [item_id], now_ms)[1][0]

    def popular(self, n: int, category: str | None = None) -> list[str]:
        if n <= 0:
            return []
        raws = self._evals(self._popular, [([keys.popular_key(h, category)], [n]) for h in self.layout.heads])
        return merge_popular(raws, n)

    def candidates(self, user_id: str, n: int, now_ms: int) -> list[str]:
        if n <= 0:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            self.layout.round1(pipe, user_id, n)
            r1 = pipe.execute()
        popular, recent, cats = self.layout.plan_round2(r1, now_ms)
        r2 = []
        if recent or cats:
            with self.redis.pipeline(transaction=False) as pipe:
                self.layout.round2(pipe, recent, cats, n)
                r2 = pipe.execute()
        return self.layout.merge(n, popular, recent, cats, r2)

    def item_meta(self, item_ids: Sequence[str]) -> dict[str, dict]:
        item_ids = [str(i) for i in item_ids]
        with self.redis.pipeline(transaction=False) as pipe:
            for i in item_ids:
                pipe.hmget(keys.item_key(self.layout.of(i), i), "category", "price", "title")
            rows = pipe.execute()
        return _parse_meta(item_ids, rows)

    def catalogue(self, batch: int = 1000) -> dict[str, dict]:
        """Every item the store holds, with its metadata (:meth:`item_meta`), read ``batch`` at a time
        (a SCAN of every node in a cluster)."""
        found = (self.layout.catalogue_id(k)
                 for k in self.redis.scan_iter(match=self.layout.catalogue_pattern(), count=batch))
        ids = [i for i in found if i is not None]
        out: dict[str, dict] = {}
        for i in range(0, len(ids), batch):
            out.update(self.item_meta(ids[i:i + batch]))
        return out

    def catalogue_version(self):
        """The last catalogue change version (0 before any; with several shards a tuple, one per
        shard): read it before :meth:`catalogue`, then pass it to :meth:`catalogue_changes` to get
        what changed during and after the scan."""
        heads = self.layout.heads
        with self.redis.pipeline(transaction=False) as pipe:
            for h in heads:
                pipe.get(keys.catalogue_version_key(h))
            return _as_version(heads, [_int(v) for v in pipe.execute()])

    def catalogue_changes(self, since, batch: int = 1000) -> tuple[object, dict[str, dict]] | None:
        """``(version, {item_id: metadata})`` of the items new or changed (category, price, title) after
        version ``since``; pass ``version`` as ``since`` next time. None when the store's version is
        below ``since`` (it was flushed or replaced): read the whole :meth:`catalogue` again.

        The change log holds each item once, with its last version, so it is as large as the catalogue
        and read in one call per shard (paging by position could skip an item that moves while being
        paged); each shard's version and log are read at one instant (one script)."""
        heads = self.layout.heads
        vec = _since_vector(heads, since)
        raws = self._evals(self._changes, [([keys.catalogue_version_key(h), keys.catalogue_changes_key(h)], [v])
                                           for h, v in zip(heads, vec)])
        versions = [_int(r[0]) for r in raws]
        if any(v < s for v, s in zip(versions, vec)):
            return None
        ids = [_s(i) for r in raws for i in r[1]]
        out: dict[str, dict] = {}
        for i in range(0, len(ids), batch):
            out.update(self.item_meta(ids[i:i + batch]))
        return _as_version(heads, versions), out

    def offsets(self) -> dict[str, int]:
        """Highest applied offset per ``<topic>:<partition>`` (for lag and tests; writer.merge_offsets)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for h in self.layout.heads:
                pipe.hgetall(keys.offsets_key(h))
            return merge_offsets(pipe.execute())

    def reset_offsets(self, sources: Sequence[str]) -> None:
        """Forget the offsets stored for ``sources`` in every shard (and the item side's journals)."""
        if not sources:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for h in self.layout.heads:
                pipe.hdel(keys.offsets_key(h), *[f for src in sources for f in (src, f"i|{src}", f"u|{src}")])
                for src in sources:
                    pipe.delete(keys.journal_key(h, src))
            pipe.execute()


class AsyncFeatureClient:
    """The same read API as coroutines (redis.asyncio), for the asyncio gRPC server."""

    def __init__(self, redis_url: str, key_prefix: str = "rp:", shards: int = 1, cluster: bool = False,
                 **redis_kwargs) -> None:
        self.prefix = key_prefix
        self.layout = _Layout(key_prefix, shards, cluster)
        self.redis = connect(redis_url, cluster, aio=True, **redis_kwargs)
        self._fetch = self.redis.register_script(scripts.FETCH)
        self._popular = self.redis.register_script(scripts.POPULAR)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def _evals(self, script, calls: list[tuple[list[str], list]]) -> list:
        if len(calls) == 1:
            return [await script(keys=calls[0][0], args=calls[0][1])]
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for ks, args in calls:
                    pipe.execute_command("EVALSHA", script.sha, len(ks), *ks, *args)
                out = _results(await pipe.execute(raise_on_error=False), retry=attempt == 1)
            if out is not None:
                return out
            await self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    async def fetch(self, user_id: str, item_ids: Sequence[str], now_ms: int) -> tuple[dict, list[dict]]:
        item_ids = [str(i) for i in item_ids]
        calls = self.layout.fetch_calls(user_id, item_ids, now_ms)
        raws = await self._evals(self._fetch, [([keys.offsets_key(h)], args) for h, args, _ in calls])
        return self.layout.parse_fetch(user_id, item_ids, calls, raws)

    async def user(self, user_id: str, now_ms: int = 0) -> dict:
        return (await self.fetch(user_id, [], now_ms))[0]

    async def item(self, item_id: str, now_ms: int) -> dict:
        return (await self.fetch("", [item_id], now_ms))[1][0]

    async def popular(self, n: int, category: str | None = None) -> list[str]:
        if n <= 0:
            return []
        raws = await self._evals(self._popular, [([keys.popular_key(h, category)], [n]) for h in self.layout.heads])
        return merge_popular(raws, n)

    async def candidates(self, user_id: str, n: int, now_ms: int) -> list[str]:
        if n <= 0:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            self.layout.round1(pipe, user_id, n)
            r1 = await pipe.execute()
        popular, recent, cats = self.layout.plan_round2(r1, now_ms)
        r2 = []
        if recent or cats:
            async with self.redis.pipeline(transaction=False) as pipe:
                self.layout.round2(pipe, recent, cats, n)
                r2 = await pipe.execute()
        return self.layout.merge(n, popular, recent, cats, r2)

    async def item_meta(self, item_ids: Sequence[str]) -> dict[str, dict]:
        item_ids = [str(i) for i in item_ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for i in item_ids:
                pipe.hmget(keys.item_key(self.layout.of(i), i), "category", "price", "title")
            rows = await pipe.execute()
        return _parse_meta(item_ids, rows)

    async def offsets(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for h in self.layout.heads:
                pipe.hgetall(keys.offsets_key(h))
            return merge_offsets(await pipe.execute())
