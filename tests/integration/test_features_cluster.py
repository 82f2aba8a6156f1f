"""The feature store on a Redis Cluster (three masters, Debian's redis-server): keys hash-tagged per
shard, every Lua call on one slot, the clients in cluster mode. The writer and the read API compared
value by value with featurespec.OfflineFeatureStore, and the features worker as a real process
(`RECPILOT_REDIS_CLUSTER=true RECPILOT_REDIS_SHARDS=12`) applying a stream exactly."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter

import pytest

from recpilot.simulator import ShopSimulator
from services.features import keys
from services.features.client import AsyncFeatureClient, FeatureClient, connect
from services.features.writer import FeatureWriter
from tests.support.features import (FeaturesTestbed, assert_matches_offline, delete_prefix, offline_store, send,
                                    wait_applied, wait_matches_offline)

SHARDS = 12
HOUR = 3_600_000


def _partitioned(events, partitions=4, topic="t"):
    out: dict[str, list] = {}
    counters = Counter()
    for ev in events:
        src = f"{topic}:{zlib.crc32(ev.user_id.encode()) % partitions}"
        out.setdefault(src, []).append((counters[src], ev))
        counters[src] += 1
    return out


def _apply(url, prefix, batches):
    async def go():
        r = connect(url, cluster=True, aio=True)
        try:
            return await FeatureWriter(r, prefix, session_items=6, covisit_max=20, shards=SHARDS,
                                       cluster=True).apply(batches)
        finally:
            await r.aclose()

    return asyncio.run(go())


def _evalsha_calls(cluster) -> dict[int, int]:
    import redis

    out = {}
    for p in cluster.ports:
        stats = redis.Redis(host=cluster.host, port=p).info("commandstats")
        out[p] = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return out


def _keys_per_node(cluster, prefix) -> dict[int, list[bytes]]:
    import redis

    return {p: list(redis.Redis(host=cluster.host, port=p).scan_iter(f"{{{prefix}*", count=1000))
            for p in cluster.ports}


@pytest.fixture
def cluster_client(redis_cluster):
    c = connect(redis_cluster.url, cluster=True)
    yield c
    c.close()


@pytest.fixture
def prefix(cluster_client, unique):
    p = f"test:fc:{unique}:"
    yield p
    delete_prefix(cluster_client, p)


def test_writer_and_reads_on_a_cluster_equal_offline_one_slot_per_call(redis_cluster, prefix):
    sim = ShopSimulator(seed=31, n_users=50, n_items=120)
    end = 1_800_000_000_000
    events = list(sim.events(4000, end - 26 * HOUR, step_ms=26 * HOUR / 4000))
    offline = offline_store(events)
    batches = _partitioned(events)
    before = _evalsha_calls(redis_cluster)
    half = {s: evs[: len(evs) // 2] for s, evs in batches.items()}
    assert sum(_apply(redis_cluster.url, prefix, half).values()) == sum(len(v) for v in half.values())
    assert sum(_apply(redis_cluster.url, prefix, batches).values()) == len(events) - sum(len(v) for v in half.values())
    assert _apply(redis_cluster.url, prefix, batches) == dict.fromkeys(batches, 0)  # a replay applies nothing

    # the keys are spread over all three masters, each key in the slot of one shard tag, and every
    # master ran APPLY calls (a call touching two slots would have failed with CROSSSLOT)
    tag_slots = {_slot(h) for h in keys.heads(prefix, SHARDS)}
    per_node = _keys_per_node(redis_cluster, prefix)
    assert all(per_node.values()), {p: len(v) for p, v in per_node.items()}
    assert all(_slot(k.decode()) in tag_slots for ks in per_node.values() for k in ks)
    after = _evalsha_calls(redis_cluster)
    assert all(after[p] > before[p] for p in redis_cluster.ports), (before, after)

    c = FeatureClient(redis_cluster.url, prefix, shards=SHARDS, cluster=True)
    try:
        assert c.offsets() == {s: len(v) - 1 for s, v in batches.items()}
        now = events[-1].timestamp_ms + 60_000
        assert_matches_offline(c, events, now)
        assert c.popular(15) == offline.top_popular(15)
        cat = Counter(v["category"] for v in offline.items.values()).most_common(1)[0][0]
        expect = sorted(((s, i) for i, s in offline.popularity.items() if offline.items[i]["category"] == cat),
                        key=lambda si: (-si[0], si[1]))
        assert c.popular(5, cat) == [i for _, i in expect[:5]]
        uid = events[-1].user_id
        cands = c.candidates(uid, 15, now)
        assert len(cands) == 15 == len(set(cands))
        meta = c.catalogue()
        assert set(meta) == set(offline.items) and all(meta[i]["category"] == offline.items[i]["category"] for i in meta)
        version, changed = c.catalogue_changes(0)
        assert set(changed) == set(offline.items) and version == c.catalogue_version()
        assert c.catalogue_changes(version) == (version, {})

        async def via_async():
            ac = AsyncFeatureClient(redis_cluster.url, prefix, shards=SHARDS, cluster=True)
            try:
                return (await ac.fetch(uid, sorted(offline.items)[:20], now), await ac.popular(7),
                        await ac.candidates(uid, 15, now), await ac.offsets(), await ac.ping())
            finally:
                await ac.close()

        fetched, pop, acands, offs, ok = asyncio.run(via_async())
        assert ok and fetched == c.fetch(uid, sorted(offline.items)[:20], now)
        assert pop == c.popular(7) and acands == cands and offs == c.offsets()
    finally:
        c.close()


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return key_slot(key.encode())


@pytest.fixture
def cluster_pipeline(stack, platform_settings, redis_cluster, unique, tmp_path):
    bed = FeaturesTestbed(platform_settings, "fcp", unique, tmp_path, cluster_url=redis_cluster.url, shards=SHARDS,
                  metrics_interval_s=1)
    yield bed
    bed.close()


def test_worker_process_applies_a_stream_to_the_cluster_exactly(platform_settings, cluster_pipeline, wait_until):
    sim = ShopSimulator(seed=17, n_users=60, n_items=150)
    now = int(time.time() * 1000)
    events = list(sim.events(8000, now - 2 * HOUR, step_ms=2 * HOUR / 8000))
    client = cluster_pipeline.client
    worker = cluster_pipeline.worker().start().wait_ready()
    send(platform_settings, cluster_pipeline.topic, events)
    wait_applied(client, len(events), worker)

    wait_matches_offline(client, events, now)
    offline = offline_store(events)
    assert client.popular(20) == offline.top_popular(20)
    code, text = worker.get("/metrics")
    assert code == 200 and f'recpilot_features_events_total{{outcome="applied"}} {float(len(events))}' in text

    # a worker configured with another number of shards refuses the store (its keys would be others)
    wrong = cluster_pipeline.worker(RECPILOT_FEATURES_APP_ID=f"wrong-{time.time_ns()}", RECPILOT_REDIS_SHARDS="3")
    wrong.start()
    wait_until(lambda: not wrong.alive(), 60, "the worker with another shard count to exit")
    assert "RECPILOT_REDIS_SHARDS=12" in wrong.log_tail()
