"""The inference service's parts in process: BM25 retrieval, the default policy, settings, metric
events, and the item feature cache on the serving path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recpilot.featurespec import DENSE_FEATURES
from recpilot.pb import events_pb2
from recpilot.settings import SettingsError, load
from services.inference.policy import PolicyRegistry, RankerOrderPolicy
from services.inference.search import BM25Index, tokenize
from services.inference.settings import InferenceSettings
from services.inference.telemetry import Telemetry

ITEMS = [
    {"item_id": "a", "title": "Red running shoes", "category": "footwear"},
    {"item_id": "b", "title": "Blue running jacket", "category": "outerwear"},
    {"item_id": "c", "title": "Red red scarf", "category": "accessories"},
    {"item_id": "d", "title": "Leather boots", "category": "footwear"},
]


def test_bm25_scores_match_the_formula():
    idx = BM25Index.build(ITEMS)
    hits = dict(idx.search("red", 10))
    assert set(hits) == {"a", "c"}
    # hand-computed Okapi BM25 for "red" in doc c (tf=2, len 4) with N=4, n=2, avgdl=(4+4+4+3)/4
    n_docs, df, avgdl = 4, 2, 15 / 4
    idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
    want_c = idf * 2 * 2.2 / (2 + 1.2 * (1 - 0.75 + 0.75 * 4 / avgdl))
    assert hits["c"] == pytest.approx(want_c)
    assert hits["c"] > hits["a"]  # term frequency counts


def test_bm25_category_ranking_and_restrict():
    idx = BM25Index.build(ITEMS)
    assert [i for i, _ in idx.search("footwear", 10)] == ["d", "a"]  # shorter doc first at equal tf
    assert [i for i, _ in idx.search("running footwear", 10)][0] == "a"  # both terms
    assert [i for i, _ in idx.search("running", 10, restrict={"b"})] == ["b"]
    assert idx.search("nothing-matches", 10) == []
    assert tokenize("Red-Shoes, 42!") == ["red", "shoes", "42"]


def test_default_policy_keeps_ranker_order_with_propensity_one():
    pol, variant = PolicyRegistry().choose("any-model", "user")
    assert isinstance(pol, RankerOrderPolicy) and variant == "production" and pol.version == "ranker-order"
    slate = pol.choose(np.array([0.1, 0.9, 0.5, 0.9], np.float32), np.zeros((4, len(DENSE_FEATURES))), 3)
    assert slate.pool[slate.shown].tolist() == [1, 3, 2] and slate.propensities.tolist() == [1.0, 1.0, 1.0]


def test_settings_reject_bad_values(monkeypatch):
    monkeypatch.setenv("RECPILOT_INFERENCE_TLS_CERT", "/x.pem")
    with pytest.raises(SettingsError, match="tls_cert and tls_key"):
        load(InferenceSettings)
    monkeypatch.delenv("RECPILOT_INFERENCE_TLS_CERT")
    monkeypatch.setenv("RECPILOT_INFERENCE_BATCHING", '{"max_batch_size": 0}')
    with pytest.raises(SettingsError, match="RECPILOT_INFERENCE_BATCHING"):
        load(InferenceSettings)
    monkeypatch.setenv("RECPILOT_INFERENCE_BATCHING", '{"max_batch_size": 64, "max_queue_delay_ms": 1}')
    monkeypatch.setenv("RECPILOT_INFERENCE_BATCHING_PER_MODEL", '{"big": {"enabled": false}}')
    s = load(InferenceSettings)
    assert s.batching_for("ranker").max_batch_size == 64 and s.batching_for("big").enabled is False
    with pytest.raises(ValueError, match="holds a model's re-ranking policies"):
        InferenceSettings(model_names=["ranker", "ranker.policy"])
    assert s.http_port == 9103 and s.grpc_port == 50051


def test_metric_events_summarise_scores_features_and_latency():
    t = Telemetry("i1")
    bounds = [0.25, 0.5, 0.75]
    meta = {"dense_features": list(DENSE_FEATURES), "reference": {"score": {"histogram": {"bounds": bounds}}}}
    scores = np.array([0.1, 0.3, 0.6, 0.9], np.float32)
    dense = np.tile(np.arange(len(DENSE_FEATURES), dtype=np.float32), (4, 1))
    t.scored("ranker", "3", "production", meta, scores, dense)
    t.request("Recommend", 0.004)
    t.request("Recommend", 0.006, fallback_reason="deadline")
    t.request("Recommend", 0.001, code="INVALID_ARGUMENT")
    evs = t.events()
    by = {(e.name, tuple(sorted(e.labels.items()))): e for e in evs}
    score = by[("score", (("model", "ranker"), ("variant", "production"), ("version", "3")))]
    assert score.summary.count == 4 and list(score.summary.bucket_counts) == [1, 1, 1, 1]
    assert score.value == pytest.approx(0.475)
    lat = by[("latency_ms", (("method", "Recommend"),))]
    assert lat.summary.count == 3 and lat.summary.max == pytest.approx(6.0)
    assert by[("requests", (("method", "Recommend"),))].value == 3
    assert by[("fallbacks", (("method", "Recommend"), ("reason", "deadline")))].value == 1
    assert by[("failures", (("code", "INVALID_ARGUMENT"), ("method", "Recommend")))].value == 1
    feat = by[("feature", (("feature", DENSE_FEATURES[5]), ("model", "ranker"), ("version", "3")))]
    assert feat.value == 5.0 and all(isinstance(e, events_pb2.MetricEvent) for e in evs)
    assert t.events() == []  # the window was reset


def test_item_feature_cache_fetches_only_missing_items_and_user_always():
    import asyncio

    import numpy as np

    from recpilot.featurespec import ITEM_DENSE, OfflineFeatureStore, build_batch
    from services.inference.service import RankingService

    store = OfflineFeatureStore()
    for n, iid in enumerate(["a", "b", "c"]):
        store.apply({"event_type": "VIEW", "user_id": "u", "item_id": iid, "timestamp_ms": 1000 + n,
                     "context": {"category": "x"}})

    class OfflineSource:  # the read API computed by featurespec's offline store (no Redis)
        def __init__(self):
            self.asked, self.now = [], []

        async def fetch(self, user_id, item_ids, now_ms):
            self.asked.append(list(item_ids))
            self.now.append(now_ms)
            return store.user(user_id), [store.item(i, now_ms) for i in item_ids]

    src = OfflineSource()
    svc = RankingService(InferenceSettings(item_cache_ms=60_000), src, models=None)

    async def run():
        first = await svc._inputs("u", ["a", "b"])
        items_before = {i: store.item(i, src.now[0]) for i in "ab"}
        store.apply({"event_type": "CLICK", "user_id": "u", "item_id": "a", "timestamp_ms": 2000})
        second = await svc._inputs("u", ["b", "c", "a"])
        return first, items_before, second

    (u1, d1, i1), before, (u2, d2, i2) = asyncio.run(run())
    assert src.asked == [["a", "b"], ["c"]]  # cached items are not asked again
    assert u1["events"] == 3 and u2["events"] == 4  # the user is always fresh
    assert u2["recent_clicks"] == ["a"]
    # item columns: the cached copy of "a" (within its TTL, before the click); user columns: fresh
    want_d, want_i = build_batch(u2, [before["b"], store.item("c", src.now[1]), before["a"]], src.now[1])
    assert np.array_equal(d2, want_d) and np.array_equal(i2, want_i)
    assert d2[2, DENSE_FEATURES.index("user_clicked_item")] == 1.0
    fresh_a = build_batch(u2, [store.item("a", src.now[1])], src.now[1])[0]
    assert not np.array_equal(d2[2, :ITEM_DENSE], fresh_a[0, :ITEM_DENSE])  # clicks changed, not seen yet


def test_item_cache_rows_equal_build_batch_through_expiry_and_clearing():
    """The serving path (cached item rows + user columns) gives exactly featurespec.build_batch."""
    import random

    import numpy as np

    from recpilot.featurespec import OfflineFeatureStore, build_batch, user_columns
    from recpilot.models.data import simulated_events
    from services.inference.itemcache import ItemCache

    store = OfflineFeatureStore()
    evs = simulated_events(6000, seed=5)
    for e in evs:
        store.apply(e)
    now_ms = evs[-1]["timestamp_ms"] + 5000
    rng = random.Random(1)
    items, users = sorted(store.items), sorted(store.users)
    cache = ItemCache(ttl_s=10.0, max_items=150)  # small: forces clears while requests go on
    fetched_total = 0
    for t in range(60):
        now = float(t)  # monotonic seconds: entries expire after 10 "seconds"
        user = store.user(rng.choice(users))
        cands = rng.sample(items, 40) + ["never-seen-item"]
        dense, ids, cats, missing = cache.gather(cands, now)
        fetched = [store.item(cands[i], now_ms) for i in missing.tolist()]
        fetched_total += len(fetched)
        cache.fill(dense, ids, cats, missing, fetched, now)
        ids[:, 0] = user_columns(user, cands, cats, now_ms, dense)
        want_d, want_i = build_batch(user, [store.item(i, now_ms) for i in cands], now_ms)
        assert np.array_equal(dense, want_d) and np.array_equal(ids, want_i), t
        assert len(cache) <= 150
    assert 0 < fetched_total < 60 * 41  # some hits, some misses
    assert cache.hits > 0 and cache.misses > 0


def test_stale_items_are_served_and_refreshed_in_the_background():
    import asyncio
    import time

    import numpy as np

    from recpilot.featurespec import OfflineFeatureStore, build_batch
    from services.inference.itemcache import ItemCache
    from services.inference.service import RankingService

    # the cache alone: past its TTL an entry is still used (reported stale) until TTL + stale_s
    c = ItemCache(ttl_s=1.0, max_items=10, stale_s=5.0)
    store = OfflineFeatureStore()
    store.apply({"event_type": "VIEW", "user_id": "u", "item_id": "a", "timestamp_ms": 1, "context": {"category": "x"}})
    d, i, cats, missing = c.gather(["a"], 0.0)
    c.fill(d, i, cats, missing, [store.item("a", 0)], 0.0)
    for now, want_missing, want_stale in ((0.5, [], []), (3.0, [], ["a"]), (6.5, [0], [])):
        stale: list[str] = []
        _, _, _, missing = c.gather(["a"], now, stale)
        assert missing.tolist() == want_missing and stale == want_stale, now

    # the service: a stale item is not read on the request path, but re-read right after
    for n, iid in enumerate(["a", "b"]):
        store.apply({"event_type": "VIEW", "user_id": "u", "item_id": iid, "timestamp_ms": 1000 + n,
                     "context": {"category": "x"}})

    class OfflineSource:
        def __init__(self):
            self.asked = []

        async def fetch(self, user_id, item_ids, now_ms):
            self.asked.append((user_id, list(item_ids)))
            return store.user(user_id), [store.item(i, now_ms) for i in item_ids]

    src = OfflineSource()
    svc = RankingService(InferenceSettings(item_cache_ms=20, item_stale_ms=60_000), src, models=None)

    async def run():
        await svc._inputs("u", ["a", "b"])
        store.apply({"event_type": "CLICK", "user_id": "u", "item_id": "a", "timestamp_ms": 2000})
        time.sleep(0.05)  # past the 20 ms TTL
        _, d_stale, _ = await svc._inputs("u", ["a", "b"])
        await svc._refresh_task  # the background re-read
        _, d_fresh, _ = await svc._inputs("u", ["a", "b"])
        return d_stale, d_fresh

    d_stale, d_fresh = asyncio.run(run())
    assert src.asked[0] == ("u", ["a", "b"])
    assert src.asked[1] == ("u", [])  # the request itself read only the user
    assert src.asked[2] == ("", ["a", "b"])  # the background refresh
    assert src.asked[3] == ("u", [])
    clicks = DENSE_FEATURES.index("item_log_clicks")
    assert d_stale[0, clicks] == 0.0 and d_fresh[0, clicks] == np.float32(np.log1p(1))
    totals = [DENSE_FEATURES.index(f) for f in ("item_log_views", "item_log_clicks", "item_ctr", "item_log_price")]
    want = build_batch(store.user("u"), [store.item("a", 0), store.item("b", 0)], 0)[0]
    assert np.array_equal(d_fresh[:, totals], want[:, totals])
