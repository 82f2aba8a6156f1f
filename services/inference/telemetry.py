"""Compact metric events for the monitor: every ``metrics_interval_s`` one batch of protobuf
``MetricEvent`` on ``metrics.inference`` (key = instance):

* ``latency_ms`` (summary on :data:`LATENCY_BOUNDS_MS`, labels method) and ``requests`` / ``failures`` / ``fallbacks`` (values,
  labels method[, code|reason]) for SLOs;
* ``score`` (summary, labels model, version, variant): the distribution of the scores of the
  shown items, bucketed on the model's reference histogram bounds when model.json has them, for
  prediction drift;
* ``feature`` (summary, labels feature, model, version): each dense input of the shown items, on
  the reference bounds, for data drift.

Both count the items a response showed, not every scored candidate: a trained version's reference
(``recpilot train``, model.json ``reference``) is computed over its training rows, one per shown item
of the logged impressions, so serving is compared with the same population. The candidates as a
whole (hundreds per request, most never shown, in candidate-generation order) have another
distribution by construction, and compared with that reference they looked like drift on nearly
every feature.

Recording is O(1)-ish on the event loop (bounded reservoirs under a lock); :meth:`Telemetry.events`
builds an interval's events and is the collect function of the service's
:class:`recpilot.metricevents.MetricPublisher`, which produces them from its own thread.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict

import numpy as np

from recpilot.featurespec import DENSE_FEATURES
from recpilot.metricevents import metric_event, summary

_MAX_SCORES = 20_000
_MAX_ROWS = 2_000
_Q = {"p01": 1, "p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "p99": 99}
# Latency buckets (ms): the monitor's latency SLO counts the requests above its threshold from them,
# so a threshold should be one of these bounds.
LATENCY_BOUNDS_MS = [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000]


def summary_of(values: np.ndarray, bounds: list[float] | None = None):
    v = np.asarray(values, dtype=np.float64)
    quantiles = {name: np.percentile(v, q) for name, q in _Q.items()}
    counts = None
    if bounds:  # v counts in the first bucket whose bound is >= v (as the model's reference
        # histogram counts, recpilot.models.evaluate.distribution); the last count: above all bounds
        counts = np.bincount(np.searchsorted(np.asarray(bounds, dtype=np.float64), v, side="left"),
                             minlength=len(bounds) + 1)
    return summary(v.size, v.sum(), v.min(), v.max(), quantiles, bounds or None, counts)


class Telemetry:
    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._lock = threading.Lock()
        self._reset()
        self._rng = random.Random(0)

    def _reset(self) -> None:
        self._lat: dict[str, list[float]] = defaultdict(list)
        self._counts: dict[tuple, int] = defaultdict(int)
        self._scores: dict[tuple, list[np.ndarray]] = defaultdict(list)
        self._nscores: dict[tuple, int] = defaultdict(int)
        self._rows: dict[tuple, list[np.ndarray]] = defaultdict(list)
        self._nrows: dict[tuple, int] = defaultdict(int)
        self._meta: dict[tuple, dict] = {}

    # -- recording (event loop) ------------------------------------------------------------------
    def request(self, method: str, seconds: float, code: str = "OK", fallback_reason: str = "") -> None:
        with self._lock:
            if len(self._lat[method]) < 50_000:
                self._lat[method].append(seconds * 1000)
            self._counts[("requests", method, "")] += 1
            if code != "OK":
                self._counts[("failures", method, code)] += 1
            if fallback_reason:
                self._counts[("fallbacks", method, fallback_reason)] += 1

    def scored(self, model: str, version: str, variant: str, meta: dict, scores: np.ndarray, dense: np.ndarray) -> None:
        if len(scores) == 0:
            return
        key = (model, version, variant)
        with self._lock:
            self._meta[(model, version)] = meta
            if self._nscores[key] < _MAX_SCORES:
                self._scores[key].append(scores)
                self._nscores[key] += len(scores)
            mk = (model, version)
            if self._nrows[mk] < _MAX_ROWS:
                take = dense[:20]  # the shown items' rows (at most 20 per request)
                self._rows[mk].append(take)
                self._nrows[mk] += len(take)

    # -- one interval's events (the publisher's thread) ----------------------------------------------
    def events(self) -> list:
        with self._lock:
            lat, counts, scores, rows, metas = self._lat, self._counts, self._scores, self._rows, self._meta
            self._reset()
        now = int(time.time() * 1000)
        out = []

        def ev(name, labels, value=0.0, summary=None):
            out.append(metric_event("inference", self.instance, name, value, labels, timestamp_ms=now, summary=summary))

        for method, xs in lat.items():
            if xs:
                ev("latency_ms", {"method": method}, float(np.mean(xs)), summary_of(np.asarray(xs), LATENCY_BOUNDS_MS))
        for (name, method, extra), n in counts.items():
            labels = {"method": method}
            if extra:
                labels["code" if name == "failures" else "reason"] = extra
            ev(name, labels, float(n))
        for (model, version, variant), parts in scores.items():
            ref = (metas.get((model, version)) or {}).get("reference", {}).get("score", {})
            v = np.concatenate(parts)
            ev("score", {"model": model, "version": version, "variant": variant}, float(v.mean()),
               summary_of(v, (ref.get("histogram") or {}).get("bounds")))
        for (model, version), parts in rows.items():
            ref = (metas.get((model, version)) or {}).get("reference", {})
            m = np.concatenate(parts)
            names = (metas.get((model, version)) or {}).get("dense_features") or list(DENSE_FEATURES)
            for j, fname in enumerate(names[: m.shape[1]]):
                bounds = ((ref.get(fname) or {}).get("histogram") or {}).get("bounds")
                ev("feature", {"feature": fname, "model": model, "version": version}, float(m[:, j].mean()),
                   summary_of(m[:, j], bounds))
        return out
