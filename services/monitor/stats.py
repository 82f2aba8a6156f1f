"""The statistics the drift detectors and ``recpilot report drift`` compare distributions with.
Pure numpy functions on histogram counts; light to import.

Histograms follow ``MetricEvent.Summary``: a value v counts in the first bucket whose upper bound is
>= v, and the counts may hold one more entry than the bounds (the values above the last bound). A
model version's reference histogram (``model.json`` ``reference``, recpilot.models.evaluate) has as
many counts as bounds; :func:`align` pads it with an empty overflow bucket.

* :func:`psi`: population stability index, sum (c - r) ln(c / r) over the buckets' shares
  (smoothed by ``eps``); the usual reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.
* :func:`js_distance`: Jensen-Shannon distance (base 2), in [0, 1].
* :func:`wasserstein_binned`: the 1-D Wasserstein-1 distance between two binned distributions, in
  the feature's units (divide by the reference's std for an effect size in sigmas).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def align(ref_counts: Sequence[float], cur_counts: Sequence[float], n_bounds: int | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """The two count vectors on the same buckets: each padded with an empty overflow bucket when it
    has one count per bound (``n_bounds``, default: the shorter length) and the other has one more.
    ValueError when they cannot describe the same bounds."""
    r = np.asarray(ref_counts, dtype=np.float64)
    c = np.asarray(cur_counts, dtype=np.float64)
    n = min(len(r), len(c)) if n_bounds is None else n_bounds
    if len(r) not in (n, n + 1) or len(c) not in (n, n + 1):
        raise ValueError(f"histograms on different bounds: {len(r)} and {len(c)} counts for {n} bounds")
    if len(r) != len(c):
        r = np.append(r, 0.0) if len(r) == n else r
        c = np.append(c, 0.0) if len(c) == n else c
    return r, c


def shares(counts: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Bucket shares, each at least ``eps`` (renormalised), so empty buckets do not give infinities."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    p = counts / total if total > 0 else np.full(len(counts), 1.0 / max(1, len(counts)))
    p = np.maximum(p, eps)
    return p / p.sum()


def psi(ref_counts: Sequence[float], cur_counts: Sequence[float], eps: float = 1e-4) -> float:
    r, c = align(ref_counts, cur_counts)
    pr, pc = shares(r, eps), shares(c, eps)
    return float(np.sum((pc - pr) * np.log(pc / pr)))


def js_distance(ref_counts: Sequence[float], cur_counts: Sequence[float]) -> float:
    r, c = align(ref_counts, cur_counts)
    pr = r / r.sum() if r.sum() > 0 else np.full(len(r), 1.0 / len(r))
    pc = c / c.sum() if c.sum() > 0 else np.full(len(c), 1.0 / len(c))
    m = 0.5 * (pr + pc)

    def kl(p: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))

    return float(np.sqrt(max(0.0, 0.5 * kl(pr) + 0.5 * kl(pc))))


def bucket_edges(bounds: Sequence[float], n_buckets: int, lower: float | None = None) -> np.ndarray:
    """The ``n_buckets + 1`` edges of the buckets of ``bounds`` (upper bounds): the first bucket
    starts at ``lower`` (default: one bucket width below the first bound), the overflow bucket (when
    there is one) is as wide as the last bucket."""
    b = np.asarray(bounds, dtype=np.float64)
    width = float(b[1] - b[0]) if len(b) > 1 else 1.0
    last = float(b[-1] - b[-2]) if len(b) > 1 else 1.0
    lo = float(b[0] - width) if lower is None else float(min(lower, b[0]))
    edges = np.concatenate([[lo], b])
    if n_buckets == len(b) + 1:
        edges = np.append(edges, b[-1] + last)
    elif n_buckets != len(b):
        raise ValueError(f"{n_buckets} buckets for {len(b)} bounds")
    return edges


def wasserstein_binned(bounds: Sequence[float], ref_counts: Sequence[float], cur_counts: Sequence[float],
                       lower: float | None = None) -> float:
    """W1 between the two histograms, with each bucket's mass at its centre: the sum over bucket
    boundaries of |CDF_ref - CDF_cur| times the distance between neighbouring centres."""
    r, c = align(ref_counts, cur_counts, len(bounds))
    if r.sum() <= 0 or c.sum() <= 0:
        return 0.0
    edges = bucket_edges(bounds, len(r), lower)
    centres = 0.5 * (edges[:-1] + edges[1:])
    cdf_gap = np.abs(np.cumsum(r / r.sum()) - np.cumsum(c / c.sum()))[:-1]
    return float(np.sum(cdf_gap * np.diff(centres)))


def categorical(ref: Mapping[str, float], cur: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Two category -> count maps as count vectors over the union of their categories (sorted)."""
    keys = sorted(set(ref) | set(cur))
    return keys, np.array([ref.get(k, 0.0) for k in keys], float), np.array([cur.get(k, 0.0) for k in keys], float)
