"""The shared feature definitions, on a hand-checked example."""

import math

import numpy as np
import pytest

from recpilot.featurespec import (
    AFFINITY_HALF_LIFE_MS, DENSE_FEATURES, ID_FEATURES, OfflineFeatureStore, build_batch, smoothed_ctr, stable_hash,
)

H = 3_600_000


def _store():
    s = OfflineFeatureStore()
    evs = [
        ("VIEW", "u1", "i1", 0, "shoes", 50.0, "s1"),
        ("VIEW", "u2", "i1", 10 * 60_000, "shoes", 50.0, "s2"),
        ("CLICK", "u1", "i1", 20 * 60_000, "", 0.0, "s1"),
        ("PURCHASE", "u1", "i1", 2 * H, "", 0.0, "s1"),
        ("VIEW", "u1", "i2", 2 * H, "bags", 30.0, "s3"),
        ("SEARCH", "u1", "", 2 * H + 1, "", 0.0, "s3"),
    ]
    for t, u, i, ts, cat, price, sid in evs:
        s.apply({"event_type": t, "user_id": u, "item_id": i, "timestamp_ms": ts, "price": price,
                 "session_id": sid, "context": {"category": cat} if cat else {}})
    return s


def test_item_counts_windows_and_ctr():
    s = _store()
    now = 2 * H + 5 * 60_000
    i1 = s.item("i1", now)
    assert (i1["views"], i1["clicks"], i1["carts"], i1["purchases"]) == (2, 1, 0, 1)
    assert i1["views_1h"] == 0 and i1["purchases_1h"] == 1  # the views are over an hour old
    assert i1["views_24h"] == 2 and i1["clicks_24h"] == 1
    assert i1["ctr"] == pytest.approx((1 + 1) / (2 + 20))
    assert i1["category"] == "shoes" and i1["price"] == 50.0
    assert s.item("i1", now + 25 * H)["views_24h"] == 0
    assert smoothed_ctr(0, 0) == pytest.approx(0.05)
    assert s.top_popular(2) == ["i1", "i2"]  # 1+1+2+5 = 9 vs 1


def test_user_recent_lists_affinity_and_sessions():
    u = _store().user("u1")
    assert u["recent_views"] == ["i2", "i1"] and u["recent_clicks"] == ["i1"] and u["recent_purchases"] == ["i1"]
    assert u["session_id"] == "s3" and u["session_events"] == 2 and u["events"] == 5
    # shoes: view 1 at t=0, click 2 at 20 min, purchase 5 at 2 h, each decayed to the next update
    shoes = (1 * 2 ** (-20 * 60_000 / AFFINITY_HALF_LIFE_MS) + 2) * 2 ** (-(2 * H - 20 * 60_000) / AFFINITY_HALF_LIFE_MS) + 5
    assert u["affinity"]["shoes"][0] == pytest.approx(shoes)
    assert u["affinity"]["shoes"][1] == 2 * H
    assert u["affinity"]["bags"] == [1.0, 2 * H]


def test_build_batch_values():
    s = _store()
    now = 2 * H + 5 * 60_000
    user = s.user("u1")
    dense, ids = build_batch(user, [s.item("i1", now), s.item("i2", now), s.item("new", now)], now)
    assert dense.shape == (3, len(DENSE_FEATURES)) and dense.dtype == np.float32
    assert ids.shape == (3, len(ID_FEATURES)) and ids.dtype == np.int64
    row = dict(zip(DENSE_FEATURES, dense[0]))
    assert row["item_log_views"] == pytest.approx(math.log1p(2))
    assert row["item_ctr"] == pytest.approx(2 / 22)
    assert row["item_log_price"] == pytest.approx(math.log1p(50))
    shoes_now = user["affinity"]["shoes"][0] * 2 ** (-5 * 60_000 / AFFINITY_HALF_LIFE_MS)
    bags_now = 1.0 * 2 ** (-5 * 60_000 / AFFINITY_HALF_LIFE_MS)
    assert row["user_cat_affinity"] == pytest.approx(math.log1p(shoes_now), rel=1e-5)
    assert row["user_cat_affinity_share"] == pytest.approx(shoes_now / (shoes_now + bags_now + 1), rel=1e-5)
    assert (row["user_viewed_item"], row["user_clicked_item"], row["user_bought_item"]) == (1, 1, 1)
    assert row["user_log_session_events"] == pytest.approx(math.log1p(2))
    cold = dict(zip(DENSE_FEATURES, dense[2]))
    assert cold["item_ctr"] == pytest.approx(0.05) and cold["user_viewed_item"] == 0
    assert ids[0, 0] == ids[2, 0] == stable_hash("u1", ID_FEATURES[0][1])
    assert ids[1, 1] == stable_hash("i2", ID_FEATURES[1][1]) and ids[1, 2] == stable_hash("bags", ID_FEATURES[2][1])
    assert build_batch(user, [], now)[0].shape == (0, len(DENSE_FEATURES))
