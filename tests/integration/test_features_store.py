"""The Redis side of the features: FeatureWriter's Lua script and the read API against a real Redis,
compared value by value with featurespec.OfflineFeatureStore. (The Kafka/faust path is covered by
test_features_pipeline.py.)"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from types import SimpleNamespace

import pytest

from recpilot import featurespec as fs
from recpilot.simulator import ShopSimulator, event_to_dict
from services.features.client import AsyncFeatureClient, FeatureClient
from services.features.writer import FeatureWriter
from tests.support.features import delete_prefix

HOUR = 3_600_000


def _partitioned(events, partitions=4, topic="t"):
    """Like Kafka with key = user id: per-partition order kept, partitions interleaved arbitrarily."""
    out: dict[str, list] = {}
    counters = Counter()
    for ev in events:
        p = zlib.crc32(ev.user_id.encode()) % partitions
        src = f"{topic}:{p}"
        out.setdefault(src, []).append((counters[src], ev))
        counters[src] += 1
    return out


def _apply(url, prefix, batches, user_ttl_s=0, shards=1):
    import redis.asyncio as aioredis

    async def go():
        r = aioredis.Redis.from_url(url)
        try:
            return await FeatureWriter(r, prefix, session_items=6, covisit_max=20, user_ttl_s=user_ttl_s,
                                       shards=shards).apply(batches)
        finally:
            await r.aclose()

    return asyncio.run(go())


@pytest.fixture
def prefix(redis_client, unique):
    p = f"test:feat:{unique}:"
    yield p
    delete_prefix(redis_client, p)


@pytest.fixture
def url(platform_settings):
    return platform_settings.redis_url


# shards=4 on one Redis: the split writer (item sides, then user sides per shard) and the merging reads
@pytest.mark.parametrize("shards", [1, 4])
def test_online_equals_offline_over_windows_and_replay(stack, url, prefix, shards):
    sim = ShopSimulator(seed=21, n_users=40, n_items=80)
    end = 1_800_000_000_000
    start = end - 30 * HOUR  # spans both windows, and bucket pruning (> 24 h)
    events = list(sim.events(4000, start, step_ms=30 * HOUR / 4000))
    offline = fs.OfflineFeatureStore()
    for ev in events:
        offline.apply(event_to_dict(ev))
    batches = _partitioned(events)

    # apply in two halves per partition, then replay overlapping ranges: counts must not move
    first = {s: evs[: len(evs) // 2] for s, evs in batches.items()}
    applied = _apply(url, prefix, first, shards=shards)
    assert sum(applied.values()) == sum(len(v) for v in first.values())
    applied = _apply(url, prefix, batches, shards=shards)
    assert sum(applied.values()) == len(events) - sum(len(v) for v in first.values())
    assert _apply(url, prefix, batches, shards=shards) == dict.fromkeys(batches, 0)
    assert _apply(url, prefix, {s: evs[len(evs) // 3:] for s, evs in batches.items()},
                  shards=shards) == dict.fromkeys(batches, 0)

    c = FeatureClient(url, prefix, shards=shards)
    try:
        assert c.offsets() == {s: len(v) - 1 for s, v in batches.items()}
        last_ts = events[-1].timestamp_ms
        item_ids = sorted({e.item_id for e in events if e.item_id}) + ["never-seen"]
        users = sorted({e.user_id for e in events}) + ["nobody"]
        # window edges: exactly at the last event, a minute and 59 minutes later, half a day later
        for now in (last_ts, last_ts + 60_000, last_ts + 59 * 60_000, last_ts + 12 * HOUR):
            for uid in users:
                user, items = c.fetch(uid, item_ids, now)
                assert user == offline.user(uid)
            for it in items:
                assert it == offline.item(it["item_id"], now), it["item_id"]
        # the windows are not trivially zero or all-time (the most viewed item)
        it = c.item(max(item_ids[:-1], key=lambda i: offline.items[i]["views"]), last_ts)
        assert 0 < it["views_1h"] < it["views_24h"] < it["views"]
        assert c.popular(15) == offline.top_popular(15)
        for cat, _ in Counter(v["category"] for v in offline.items.values()).most_common(2):
            expect = sorted(((s, i) for i, s in offline.popularity.items() if offline.items[i]["category"] == cat),
                            key=lambda si: (-si[0], si[1]))
            assert c.popular(5, cat) == [i for _, i in expect[:5]]
    finally:
        c.close()


def test_counts_equal_counts_from_input(stack, url, prefix):
    sim = ShopSimulator(seed=4, n_users=30, n_items=60)
    events = list(sim.events(3000, 1_800_000_000_000, 5))
    _apply(url, prefix, _partitioned(events))
    expected = Counter((e.item_id, fs.COUNT_FIELD[fs.EVENT_NAMES[e.event_type]])
                       for e in events if e.event_type in (1, 2, 3, 4))
    c = FeatureClient(url, prefix)
    try:
        ids = sorted({i for i, _ in expected})
        _, items = c.fetch("", ids, events[-1].timestamp_ms)
        for it in items:
            for f in fs.COUNT_FIELDS:
                assert it[f] == expected[(it["item_id"], f)]
        assert sum(it["views"] for it in items) == sum(1 for e in events if e.event_type == 1)
    finally:
        c.close()


@pytest.mark.parametrize("shards", [1, 3])
def test_async_client_matches_sync_and_candidates(stack, url, prefix, shards):
    from services.features import keys

    sim = ShopSimulator(seed=9, n_users=10, n_items=40)
    events = list(sim.events(800, 1_800_000_000_000, 1000))
    _apply(url, prefix, _partitioned(events), shards=shards)
    now = events[-1].timestamp_ms
    uid = events[-1].user_id
    items = sorted({e.item_id for e in events if e.item_id})[:12]
    sync = FeatureClient(url, prefix, shards=shards)
    heads = keys.heads(prefix, shards)

    async def go():
        ac = AsyncFeatureClient(url, prefix, shards=shards)
        try:
            return (await ac.fetch(uid, items, now), await ac.popular(7), await ac.candidates(uid, 15, now),
                    await ac.item_meta(items[:3]), await ac.ping())
        finally:
            await ac.close()

    try:
        fetched, pop, cands, meta, ok = asyncio.run(go())
        assert ok and sync.ping()
        assert fetched == sync.fetch(uid, items, now)
        assert pop == sync.popular(7)
        assert cands == sync.candidates(uid, 15, now)
        assert len(cands) == 15 == len(set(cands))
        # co-visitation: the first candidates were seen in a session with the user's recent items
        user = sync.user(uid)
        recent = (user["recent_clicks"] + user["recent_views"])[:5]
        covisited = set()
        for r in recent:  # (with shards: the partial counts of every shard)
            for h in heads:
                covisited |= {m.decode() for m in sync.redis.zrange(f"{h}cv:{r}", 0, -1)}
        assert cands[0] in covisited
        # unknown user: cold start falls back to global popularity
        if shards == 1:
            assert sync.candidates("nobody", 5, now) == [m.decode() for m in sync.redis.zrevrange(f"{prefix}pop", 0, 4)]
        else:  # the merge of the shards' top 5 (ties at a shard's cut in Redis' order)
            scores = {m.decode(): s for h in heads for m, s in sync.redis.zrevrange(f"{h}pop", 0, -1, withscores=True)}
            cold = sync.candidates("nobody", 5, now)
            assert len(cold) == 5 and min(scores[i] for i in cold) >= sorted(scores.values(), reverse=True)[4]
            assert cold[:4] == [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))][:4] or \
                len({scores[i] for i in cold}) < 5
        for iid in items[:3]:
            it = sim.by_id[iid]
            assert meta[iid] == {"category": it.category, "price": it.price, "title": it.title}
    finally:
        sync.close()


def test_bucket_memory_is_bounded(stack, url, prefix, redis_client):
    """Minute buckets older than the longest window behind an item's newest event are pruned."""
    from recpilot.pb import events_pb2

    def view(i, ts):
        ev = events_pb2.UserEvent(event_id=f"e{i}", user_id="u", session_id="s", event_type=events_pb2.VIEW,
                                  item_id="hot", timestamp_ms=ts)
        return ev

    t0 = 1_800_000_000_000
    evs = [(i, view(i, t0 + i * 60_000)) for i in range(3 * 24 * 60)]  # one view a minute for 3 days
    _apply(url, prefix, {"t:0": evs})
    fields = redis_client.hkeys(f"{prefix}ib:hot")
    minutes = [f for f in fields if f.startswith(b"m:")]
    assert len(minutes) <= 24 * 60 + 60 + 1
    # a second, sparse item takes the other read path (scan of few buckets instead of lookups)
    end = t0 + (3 * 24 * 60 - 1) * 60_000
    cold = [(i, view(i, end - (40 - i) * 20 * 60_000)) for i in range(40)]  # the last ~13 hours
    for _, ev in cold:
        ev.item_id = "cold"
    _apply(url, prefix, {"t:1": cold})
    offline = fs.OfflineFeatureStore()
    for _, ev in sorted(evs + cold, key=lambda oe: oe[1].timestamp_ms):
        offline.apply(event_to_dict(ev))
    c = FeatureClient(url, prefix)
    try:
        last = evs[-1][1].timestamp_ms
        it = c.item("hot", last)
        assert (it["views"], it["views_24h"], it["views_1h"]) == (3 * 24 * 60, 24 * 60, 60)
        for now in (last, last + 90_000, last + 30 * 60_000 + 1, last + 23 * 3_600_000, last + 25 * 3_600_000):
            _, items = c.fetch("", ["hot", "cold"], now)
            assert items == [offline.item("hot", now), offline.item("cold", now)], now
        assert 0 < c.item("cold", last)["views_1h"] < c.item("cold", last)["views_24h"] == 40
    finally:
        c.close()


def _event(user, item, ts, etype=None, **context):
    from recpilot.pb import events_pb2

    ev = events_pb2.UserEvent(event_id=f"{user}-{item}-{ts}", user_id=user, session_id=f"s-{user}",
                              event_type=etype or events_pb2.VIEW, item_id=item, timestamp_ms=ts, price=5.0)
    for k, v in context.items():
        ev.context[k] = v
    return ev


def test_user_keys_expire_after_the_idle_ttl_refreshed_on_write(stack, url, prefix, redis_client, wait_until):
    from recpilot.pb import events_pb2
    from services.features import keys

    t0 = 1_800_000_000_000
    first = [_event("u1", "i1", t0, category="books"), _event("u1", "i2", t0 + 1, events_pb2.CLICK, category="books"),
             _event("u1", "i2", t0 + 2, events_pb2.PURCHASE, category="books")]
    _apply(url, prefix, {"t:0": list(enumerate(first))}, user_ttl_s=100)
    user_keys = [f"{prefix}{k}u1" for k in keys.USER_KEYS]
    ttls = {k: redis_client.ttl(k) for k in user_keys}
    assert all(0 < t <= 100 for t in ttls.values()), ttls  # every user key exists and expires
    for k in (f"{prefix}i:i1", f"{prefix}ib:i2", f"{prefix}pop", f"{prefix}popc:books", f"{prefix}cv:i1",
              f"{prefix}off", f"{prefix}ichg", f"{prefix}iver"):
        assert redis_client.ttl(k) == -1, k  # never an item, a count or an offset

    for k in user_keys:
        redis_client.expire(k, 5)
    _apply(url, prefix, {"t:0": [(3, _event("u1", "", t0 + 3, events_pb2.SEARCH))]}, user_ttl_s=100)
    assert all(redis_client.ttl(k) > 5 for k in user_keys)  # one event refreshes all of the user's keys
    _apply(url, prefix, {"t:0": [(3, _event("u1", "", t0 + 3, events_pb2.SEARCH))]}, user_ttl_s=1)
    assert all(redis_client.ttl(k) > 5 for k in user_keys)  # a replayed event writes nothing, not even the TTL

    _apply(url, prefix, {"t:1": [(0, _event("u2", "i1", t0 + 4, category="books"))]}, user_ttl_s=1)
    _apply(url, prefix, {"t:2": [(0, _event("u3", "i1", t0 + 5, category="books"))]}, user_ttl_s=0)
    wait_until(lambda: not redis_client.exists(*[f"{prefix}{k}u2" for k in keys.USER_KEYS]), 10,
               "u2's keys did not expire")
    c = FeatureClient(url, prefix)
    try:
        assert c.user("u2") == fs.empty_user("u2")  # an expired user reads as a new one
        assert c.item("i1", t0 + 10)["views"] == 3 and c.item("i2", t0 + 10)["purchases"] == 1  # counts stay
        assert redis_client.ttl(f"{prefix}u:u3") == -1  # 0: no TTL
        assert c.user("u1")["events"] == 4
    finally:
        c.close()


@pytest.mark.parametrize("shards", [1, 2])
def test_catalogue_change_log_holds_new_and_changed_items_only(stack, url, prefix, shards):
    from services.inference.search import BM25Index, CatalogueRefresher

    t0 = 1_800_000_000_000
    c = FeatureClient(url, prefix, shards=shards)
    service = SimpleNamespace(index=BM25Index())
    ref = CatalogueRefresher(service, url, prefix, 60.0, shards=shards)
    zero = 0 if shards == 1 else (0,) * shards
    try:
        assert c.catalogue_version() == zero and c.catalogue_changes(0) == (zero, {})
        _apply(url, prefix, {"t:0": [(0, _event("u1", "x", t0, title="Wool hat", category="hats")),
                                     (1, _event("u1", "y", t0 + 1, title="Red scarf", category="scarves"))]},
               shards=shards)
        v1, changed = c.catalogue_changes(0)
        assert v1 == c.catalogue_version() > zero
        assert changed == {"x": {"title": "Wool hat", "category": "hats", "price": 5.0},
                           "y": {"title": "Red scarf", "category": "scarves", "price": 5.0}}
        assert ref.refresh() == 2 and [i for i, _ in service.index.search("hat", 5)] == ["x"]

        # more events with the same metadata, and a replay: nothing changed
        _apply(url, prefix, {"t:0": [(1, _event("u1", "y", t0 + 1, title="Red scarf", category="scarves")),
                                     (2, _event("u2", "x", t0 + 2, title="Wool hat", category="hats"))]},
               shards=shards)
        assert c.catalogue_changes(v1) == (v1, {})
        assert ref.refresh() == 0

        _apply(url, prefix, {"t:0": [(3, _event("u2", "y", t0 + 3, title="Green scarf", category="scarves")),
                                     (4, _event("u2", "z", t0 + 4, title="Green gloves", category="gloves"))]},
               shards=shards)
        v2, changed = c.catalogue_changes(v1)
        assert v2 != v1 and set(changed) == {"y", "z"} and changed["y"]["title"] == "Green scarf"
        assert ref.refresh() == 2
        assert [i for i, _ in service.index.search("green", 5)] == ["y", "z"]  # equal scores: by id
        assert service.index.search("red", 5) == [] and len(service.index) == 3

        # the store flushed (its keys gone): the change version went back, the refresher reads it whole
        delete_prefix(c.redis, prefix)
        assert c.catalogue_changes(v2) is None
        ref.refresh()
        assert len(service.index) == 0
    finally:
        ref.stop()
        c.close()


def test_sharded_crash_between_item_and_user_sides_replays_exactly(stack, url, prefix):
    """With shards, a batch's item sides run before its user sides. A crash between the two (the item
    sides applied, no user side) and a replay of the batch: the item sides are skipped, and the user
    sides still get the category each item had at each event (from the item side's journal), not the
    one it has now."""
    import redis.asyncio as aioredis

    from recpilot.pb import events_pb2

    t0 = 1_800_000_000_000
    evs = []
    for k in range(40):  # items change category half-way: 'old' for the first 20 events, 'new' after
        cat = "old" if k < 20 else "new"
        user = f"u{k % 3}" if k < 25 else f"u{3 + k % 2}"  # (a user's events on one partition, as keyed by user)
        evs.append(_event(user, f"i{k % 7}", t0 + k * 1000, events_pb2.CLICK if k % 3 else None, category=cat))
    batches = {"t:0": list(enumerate(evs[:25])), "t:1": list(enumerate(evs[25:]))}
    offline = fs.OfflineFeatureStore()
    for ev in evs[:25]:  # (the offline store replays t:0, then t:1: the writer's order per call)
        offline.apply(event_to_dict(ev))
    for ev in evs[25:]:
        offline.apply(event_to_dict(ev))

    async def item_sides_only():
        r = aioredis.Redis.from_url(url)
        try:
            w = FeatureWriter(r, prefix, session_items=6, covisit_max=20, shards=4)
            job = w.prepare(batches)
            await w._run_pending(job)  # the item sides only: then the "crash"
            assert job.phase == "i" and not job.pending and job.applied == {"t:0": 0, "t:1": 0}
        finally:
            await r.aclose()

    asyncio.run(item_sides_only())
    # a later batch moved every item to category 'newer' before the replay
    later = {"t:2": [(0, _event("u9", f"i{k}", t0 + 100_000 + k, category="newer")) for k in range(7)]}
    c = FeatureClient(url, prefix, shards=4)
    try:
        assert all(u["events"] == 0 for u in (c.user(f"u{k}") for k in range(5)))
        _apply(url, prefix, later, shards=4)
        assert c.user("u9")["affinity"].keys() == {"newer"}
        assert c.item("i3", t0)["category"] == "newer"
        # the replay comes in smaller batches than the first run (the consumer's batches differ):
        # the second half's batch must still find the categories the first run journaled
        first = {s: evs[:len(evs) // 2] for s, evs in batches.items()}
        rest = {s: evs[len(evs) // 2:] for s, evs in batches.items()}
        applied = _apply(url, prefix, first, shards=4)
        assert applied == {s: len(v) for s, v in first.items()}
        applied = _apply(url, prefix, rest, shards=4)
        assert applied == {s: len(v) for s, v in rest.items()}  # every user side, once
        for uid in (f"u{k}" for k in range(5)):
            assert c.user(uid) == offline.user(uid)
            assert set(c.user(uid)["affinity"]) <= {"old", "new"}
        for ev in later["t:2"]:
            offline.apply(event_to_dict(ev[1]))
        _, items = c.fetch("", [f"i{k}" for k in range(7)], t0 + 50_000)
        assert items == [offline.item(f"i{k}", t0 + 50_000) for k in range(7)]  # item sides not applied twice
        assert _apply(url, prefix, batches, shards=4) == {"t:0": 0, "t:1": 0}
    finally:
        c.close()


@pytest.mark.parametrize("shards", [1, 4])
def test_a_store_that_lost_acknowledged_writes_is_refused_not_written(stack, url, prefix, redis_client, shards):
    """A writer passes every call the offset it stored there itself; when Redis holds less (it lost
    acknowledged writes) APPLY writes nothing and the writer raises StoreBehind. A writer without
    that memory (a restarted worker), or one told to forget a reset partition, writes as before."""
    import redis.asyncio as aioredis

    from services.features import keys
    from services.features.writer import StoreBehind

    sim = ShopSimulator(seed=4, n_users=20, n_items=30)
    events = list(sim.events(60, 1_800_000_000_000 - HOUR, step_ms=HOUR / 60))
    first, second = [(i, e) for i, e in enumerate(events[:30])], [(30 + i, e) for i, e in enumerate(events[30:])]
    client = FeatureClient(url, prefix, shards=shards)

    async def go():
        r = aioredis.Redis.from_url(url)
        try:
            w = FeatureWriter(r, prefix, shards=shards)
            assert (await w.apply({"t:0": first}))["t:0"] == 30
            # Redis "loses" the last writes: every stored offset of the partition goes back to 9
            for head in w.heads:
                for field, _ in (await r.hgetall(keys.offsets_key(head))).items():
                    await r.hset(keys.offsets_key(head), field, 9)
            before = client.offsets()
            with pytest.raises(StoreBehind) as err:
                await w.apply({"t:0": second})
            assert err.value.stored == 9 and err.value.written >= 10 and err.value.source == "t:0"
            assert client.offsets() == before  # nothing of the refused call was written
            w.forget(["t:0"])  # a reset on purpose: written again from the stored offsets
            assert (await w.apply({"t:0": first[10:]}))["t:0"] == 20
            fresh = FeatureWriter(r, prefix, shards=shards)  # a restarted worker: no memory, no refusal
            assert (await fresh.apply({"t:0": second}))["t:0"] == 30
        finally:
            await r.aclose()

    try:
        asyncio.run(go())
        assert client.offsets() == {"t:0": 59}
    finally:
        client.close()
