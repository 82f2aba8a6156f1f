"""The Redis side of the features: FeatureWriter's Lua script and the read API against a real Redis,
compared value by value with featurespec.OfflineFeatureStore. (The Kafka/faust path is covered by
test_features_pipeline.py.)"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter

import pytest

from recpilot import featurespec as fs
from recpilot.simulator import ShopSimulator, event_to_dict
from services.features.client import AsyncFeatureClient, FeatureClient
from services.features.writer import FeatureWriter

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


def _apply(url, prefix, batches):
    import redis.asyncio as aioredis

    async def go():
        r = aioredis.Redis.from_url(url)
        try:
            return await FeatureWriter(r, prefix, session_items=6, covisit_max=20).apply(batches)
        finally:
            await r.aclose()

    return asyncio.run(go())


@pytest.fixture
def prefix(redis_client, unique):
    p = f"test:feat:{unique}:"
    yield p
    keys = list(redis_client.scan_iter(f"{p}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def url(platform_settings):
    return platform_settings.redis_url


def test_online_equals_offline_over_windows_and_replay(stack, url, prefix):
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
    applied = _apply(url, prefix, first)
    assert sum(applied.values()) == sum(len(v) for v in first.values())
    applied = _apply(url, prefix, batches)
    assert sum(applied.values()) == len(events) - sum(len(v) for v in first.values())
    assert _apply(url, prefix, batches) == dict.fromkeys(batches, 0)
    assert _apply(url, prefix, {s: evs[len(evs) // 3:] for s, evs in batches.items()}) == dict.fromkeys(batches, 0)

    c = FeatureClient(url, prefix)
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


def test_async_client_matches_sync_and_candidates(stack, url, prefix):
    sim = ShopSimulator(seed=9, n_users=10, n_items=40)
    events = list(sim.events(800, 1_800_000_000_000, 1000))
    _apply(url, prefix, _partitioned(events))
    now = events[-1].timestamp_ms
    uid = events[-1].user_id
    items = sorted({e.item_id for e in events if e.item_id})[:12]
    sync = FeatureClient(url, prefix)

    async def go():
        ac = AsyncFeatureClient(url, prefix)
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
        for r in recent:
            covisited |= {m.decode() for m in sync.redis.zrange(f"{prefix}cv:{r}", 0, -1)}
        assert cands[0] in covisited
        # unknown user: cold start falls back to global popularity
        assert sync.candidates("nobody", 5, now) == [m.decode() for m in sync.redis.zrevrange(f"{prefix}pop", 0, 4)]
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
