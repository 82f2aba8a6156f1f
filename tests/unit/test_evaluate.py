"""Offline metrics on examples small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recpilot.models import evaluate as ev


def test_auc_counts_correctly_ordered_pairs():
    # positives score 0.9 and 0.4; negatives 0.8, 0.3, 0.1.
    # 0.9 beats all 3 negatives, 0.4 beats 2 (0.3, 0.1): 5 of 6 pairs.
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    assert ev.auc(labels, scores) == pytest.approx(5 / 6)


def test_auc_ties_count_half_and_extremes():
    assert ev.auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    # one positive tied with one of two negatives, above the other: (1 + 0.5) / 2
    assert ev.auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.1])) == pytest.approx(0.75)
    assert ev.auc(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == pytest.approx(1.0)
    assert ev.auc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.9])) == pytest.approx(0.0)


def test_auc_undefined_without_both_classes():
    assert ev.auc(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])) is None
    assert ev.auc_ci(np.array([1, 1]), np.array([0.1, 0.2])) is None


def test_auc_ci_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.3).astype(float)
    scores = labels * 0.5 + rng.random(400)
    a = ev.auc(labels, scores)
    lo, hi = ev.auc_ci(labels, scores, n_boot=100, seed=3)
    assert lo < a < hi
    assert hi - lo < 0.2
    assert ev.auc_ci(labels, scores, n_boot=100, seed=3) == [lo, hi]


def test_auc_difference_with_a_paired_bootstrap():
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    good = np.array([0.9, 0.1, 0.8, 0.3, 0.2, 0.7, 0.4, 0.35])   # every positive above every negative: 1.0
    worse = np.array([0.9, 0.1, 0.3, 0.8, 0.2, 0.7, 0.4, 0.35])  # 0.3 beats 2 of 5 negatives, 0.7 beats 4: 11 / 15
    d = ev.auc_diff(y, good, worse, n_boot=300, seed=1)
    assert d["diff"] == pytest.approx(1.0 - ev.auc(y, worse)) and ev.auc(y, worse) == pytest.approx(11 / 15)
    lo, hi = d["ci"]
    assert 0 <= lo <= d["diff"] <= hi <= 1          # good is never worse on any resample
    assert ev.auc_diff(y, good, worse, n_boot=300, seed=1) == d   # seeded
    assert ev.auc_diff(y, good, good) == {"diff": 0.0, "ci": [0.0, 0.0]}
    assert ev.auc_diff(y, good, 1 - good) == {"diff": 1.0, "ci": [1.0, 1.0]}  # perfect minus reversed, on every resample
    assert ev.auc_diff(np.zeros(8), good, worse) is None


def test_logloss_by_hand():
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert ev.logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(expected)
    # clipped, not infinite
    assert math.isfinite(ev.logloss(np.array([1]), np.array([0.0])))


def test_recall_and_ndcg_at_k_by_hand():
    # group a: ranked by score -> rows 0,1,2,3 with labels 0,1,0,1; top 2 holds 1 of 2 positives.
    #   DCG@2 = 0/log2(2) + 1/log2(3); IDCG@2 = 1/log2(2) + 1/log2(3)
    # group b: no positive -> not counted.
    # group c: scores 0.1 (pos), 0.2 (neg): the positive is 2nd. recall 1, DCG = 1/log2(3), IDCG = 1.
    labels = np.array([0, 1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.2])
    groups = np.array(["a", "a", "a", "a", "b", "b", "c", "c"])
    out = ev.ranking_metrics(labels, scores, groups, k=2)
    ndcg_a = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg_c = 1 / math.log2(3)
    assert out["groups"] == 2
    assert out["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["ndcg@2"] == pytest.approx((ndcg_a + ndcg_c) / 2)


def test_ranking_metrics_perfect_and_no_positive():
    out = ev.ranking_metrics(np.array([1, 0, 0]), np.array([0.9, 0.2, 0.1]), np.array(["g"] * 3), k=10)
    assert out["recall@10"] == 1.0 and out["ndcg@10"] == 1.0
    none = ev.ranking_metrics(np.array([0, 0]), np.array([0.9, 0.2]), np.array(["g", "g"]), k=10)
    assert none["recall@10"] is None and none["groups"] == 0


def test_evaluate_scores_block_has_the_model_json_keys():
    m = ev.evaluate_scores(np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.4, 0.3, 0.1]),
                           np.array(["r1", "r1", "r2", "r2", "r2"]), k=10, n_boot=50)
    assert set(m) >= {"auc", "auc_ci", "logloss", "recall@10", "ndcg@10"}
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["positives"] == 2 and m["rows"] == 5
    # each request's single positive is ranked first -> perfect ranking metrics
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == 1.0


def test_popularity_baseline_is_smoothed_training_ctr():
    train_items = ["a"] * 10 + ["b"] * 10
    train_labels = np.array([1] * 5 + [0] * 5 + [1] * 1 + [0] * 9, dtype=float)
    s = ev.popularity_scores(train_items, train_labels, ["a", "b", "zzz"])
    # prior a = 1, b = 1 / global_ctr where global_ctr = (6 + 1) / (20 + 20) = 0.175
    g = 7 / 40
    assert s[0] == pytest.approx((5 + 1) / (10 + 1 / g))
    assert s[1] == pytest.approx((1 + 1) / (10 + 1 / g))
    assert s[2] == pytest.approx(g)  # unseen item: the global rate
    assert s[0] > s[1]


def test_distribution_summary():
    v = np.arange(1, 101, dtype=float)  # 1..100
    d = ev.distribution(v, bins=10)
    assert d["mean"] == pytest.approx(50.5)
    assert d["min"] == 1 and d["max"] == 100 and d["count"] == 100
    assert d["quantiles"]["p50"] == pytest.approx(50.5)
    assert len(d["histogram"]["bounds"]) == len(d["histogram"]["counts"]) == 10
    assert sum(d["histogram"]["counts"]) == 100
    assert d["histogram"]["bounds"][-1] == 100
    const = ev.distribution(np.full(5, 2.0))
    assert const["histogram"] == {"bounds": [2.0], "counts": [5]}


def test_compare_reports_worse_beyond_tolerance():
    assert ev.compare({"auc": 0.70, "logloss": 0.30}, {"auc": 0.72, "logloss": 0.30}, tolerance=0.01)
    assert not ev.compare({"auc": 0.715, "logloss": 0.30}, {"auc": 0.72, "logloss": 0.30}, tolerance=0.01)
    assert not ev.compare({"auc": 0.7}, None)
