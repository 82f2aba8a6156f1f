"""Offline evaluation of a ranker on a holdout: AUC (with a bootstrap CI), log loss, recall@K, NDCG@K.

Everything here is plain numpy so that it can be checked by hand (see tests/unit/test_evaluate.py).

Definitions
-----------
* AUC: the probability that a random positive scores above a random negative, ties counted half
  (Mann-Whitney U with average ranks). Undefined (``None``) when the holdout has no positive or
  no negative.
* AUC confidence interval: percentile bootstrap over rows (``n_boot`` resamples, seeded); resamples
  without both classes are skipped.
* AUC difference of two scorers on the same rows (the ranker minus the popularity baseline or the
  production model): the point difference, and a *paired* percentile bootstrap CI — both AUCs on
  each resample — which is narrower than two separate CIs would suggest, since the scorers share
  the rows' luck.
* Log loss: mean binary cross-entropy with predictions clipped to [1e-7, 1 - 1e-7].
* recall@K and NDCG@K are computed per group (a request, or a user segment) that has at least one
  positive, then averaged over those groups. Inside a group the rows are ranked by score, highest
  first; ties are broken by row order (stable), so a constant scorer gets the logged order.
  recall@K = positives in the top K / positives in the group.
  NDCG@K = DCG@K / IDCG@K with binary gains, DCG = sum over top-K rows of rel / log2(rank + 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

QUANTILES = {"p01": 0.01, "p05": 0.05, "p10": 0.10, "p25": 0.25, "p50": 0.50,
             "p75": 0.75, "p90": 0.90, "p95": 0.95, "p99": 0.99}
HIST_BINS = 10
EPS = 1e-7


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # boundaries of runs of equal values
    bounds = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(xs)]))
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = _ranks(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _bootstrap_ci(n: int, stat: Callable[[np.ndarray], float | None], n_boot: int, level: float,
                  seed: int) -> list[float] | None:
    """Percentile CI of ``stat(idx)`` over ``n_boot`` seeded row resamples; resamples where it is
    undefined (``None``) are skipped."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        v = stat(rng.integers(0, n, n))
        if v is not None:
            vals.append(v)
    if not vals:
        return None
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def auc_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int = 200, level: float = 0.95,
           seed: int = 0) -> list[float] | None:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if auc(y, s) is None:
        return None
    return _bootstrap_ci(len(y), lambda idx: auc(y[idx], s[idx]), n_boot, level, seed)


def auc_diff(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 200,
             level: float = 0.95, seed: int = 0) -> dict | None:
    """``{"diff": auc(a) - auc(b), "ci": [lo, hi]}`` with a paired bootstrap (module docstring)."""
    y = np.asarray(labels, dtype=np.float64)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    auc_a, auc_b = auc(y, a), auc(y, b)
    if auc_a is None or auc_b is None:
        return None

    def diff(idx: np.ndarray) -> float | None:
        ra = auc(y[idx], a[idx])
        return None if ra is None else ra - auc(y[idx], b[idx])   # same rows: defined for both or neither

    return {"diff": float(auc_a - auc_b), "ci": _bootstrap_ci(len(y), diff, n_boot, level, seed)}


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    if len(y) == 0:
        raise ValueError("logloss of an empty set")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _group_slices(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group, rows kept in their original order."""
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def ranking_metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10) -> dict:
    """Mean recall@k and NDCG@k over the groups with at least one positive."""
    y = np.asarray(labels, dtype=np.float64) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    recalls, ndcgs = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for idx in _group_slices(groups):
        gy = y[idx]
        n_pos = int(gy.sum())
        if n_pos == 0:
            continue
        order = np.argsort(-s[idx], kind="mergesort")[:k]
        top = gy[order].astype(np.float64)
        recalls.append(top.sum() / n_pos)
        dcg = float((top * discounts[: len(top)]).sum())
        idcg = float(discounts[: min(n_pos, k)].sum())
        ndcgs.append(dcg / idcg)
    if not recalls:
        return {f"recall@{k}": None, f"ndcg@{k}": None, "groups": 0}
    return {f"recall@{k}": float(np.mean(recalls)), f"ndcg@{k}": float(np.mean(ndcgs)), "groups": len(recalls)}


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10,
                    n_boot: int = 200, seed: int = 0) -> dict:
    """The metric block of model.json (``auc``, ``auc_ci``, ``logloss``, ``recall@k``, ``ndcg@k``)."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    rk = ranking_metrics(y, s, groups, k)
    return {
        "auc": auc(y, s),
        "auc_ci": auc_ci(y, s, n_boot=n_boot, seed=seed),
        "logloss": logloss(y, s),
        f"recall@{k}": rk[f"recall@{k}"],
        f"ndcg@{k}": rk[f"ndcg@{k}"],
        "rows": int(len(y)),
        "positives": int((y > 0.5).sum()),
        "ranking_groups": rk["groups"],
    }


def popularity_scores(train_items: Sequence, train_labels: np.ndarray, test_items: Sequence,
                      prior_clicks: float = 1.0, prior_views: float = 20.0) -> np.ndarray:
    """The popularity baseline: each item's smoothed click-through rate in the training window,
    (clicks + a) / (impressions + b), the same prior as featurespec's ``ctr``; unseen items get the
    global training CTR. A probability, so log loss is meaningful too."""
    train_items = np.asarray(train_items).astype(str)
    y = np.asarray(train_labels, dtype=np.float64)
    uniq, inv = np.unique(train_items, return_inverse=True)
    clicks = np.bincount(inv, weights=y, minlength=len(uniq))
    views = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    global_ctr = (y.sum() + prior_clicks) / (len(y) + prior_views)
    # scale the prior to the data's base rate so that rare-click data is not pulled up to 5%
    a = prior_clicks
    b = prior_clicks / global_ctr if global_ctr > 0 else prior_views
    ctr = dict(zip(uniq.tolist(), ((clicks + a) / (views + b)).tolist()))
    return np.array([ctr.get(str(i), global_ctr) for i in test_items], dtype=np.float64)


def distribution(values: np.ndarray, bins: int = HIST_BINS) -> dict:
    """Drift reference summary of one feature: mean, std, min, max, quantiles p01..p99 and a
    histogram of ``bins`` equal-width bins between min and max; ``bounds`` are the bins' upper
    bounds and ``counts`` their row counts (same length, like MetricEvent.Summary; a value v falls
    in the first bin whose bound is >= v)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0,
                "quantiles": {k: None for k in QUANTILES}, "histogram": {"bounds": [], "counts": []}}
    lo, hi = float(v.min()), float(v.max())
    if hi > lo:
        bounds = np.linspace(lo, hi, bins + 1)[1:]
        bounds[-1] = hi
    else:
        bounds = np.array([hi])
    idx = np.searchsorted(bounds, v, side="left")
    counts = np.bincount(np.minimum(idx, len(bounds) - 1), minlength=len(bounds))
    qs = np.quantile(v, list(QUANTILES.values()))
    return {
        "mean": float(v.mean()), "std": float(v.std()), "min": lo, "max": hi, "count": int(len(v)),
        "quantiles": {k: float(q) for k, q in zip(QUANTILES, qs)},
        "histogram": {"bounds": [float(b) for b in bounds], "counts": [int(c) for c in counts]},
    }


def reference_summary(dense: np.ndarray, feature_names: Sequence[str], scores: np.ndarray) -> dict:
    ref = {name: distribution(dense[:, j]) for j, name in enumerate(feature_names)}
    ref["score"] = distribution(scores)
    return ref


def compare(candidate: dict, other: dict | None, tolerance: float = 0.0) -> list[str]:
    """Reasons the candidate is worse than ``other`` beyond ``tolerance`` (AUC lower, log loss higher)."""
    if not other:
        return []
    reasons = []
    if candidate.get("auc") is not None and other.get("auc") is not None:
        if candidate["auc"] < other["auc"] - tolerance:
            reasons.append(f"auc {candidate['auc']:.4f} < {other['auc']:.4f} - {tolerance}")
    if candidate.get("logloss") is not None and other.get("logloss") is not None:
        if candidate["logloss"] > other["logloss"] + tolerance:
            reasons.append(f"logloss {candidate['logloss']:.4f} > {other['logloss']:.4f} + {tolerance}")
    return reasons


def format_table(rows: dict[str, dict | None], k: int = 10) -> str:
    """A small text table: one row per scorer (model, popularity, production)."""
    cols = ["auc", "auc_ci", "logloss", f"recall@{k}", f"ndcg@{k}"]
    out = [f"{'':<12}" + "".join(f"{c:>18}" for c in cols)]

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
        return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)

    for name, m in rows.items():
        if m is None:
            out.append(f"{name:<12}" + "".join(f"{'-':>18}" for _ in cols))
        else:
            out.append(f"{name:<12}" + "".join(f"{fmt(m.get(c)):>18}" for c in cols))
    return "\n".join(out)


Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
