"""Compact metric events for the monitor: every ``metrics_interval_s`` one batch of protobuf
``MetricEvent`` on ``metrics.inference`` (key = instance):

* ``latency_ms`` (summary, labels method) and ``requests`` / ``failures`` / ``fallbacks`` (values,
  labels method[, code|reason]) for SLOs;
* ``score`` (summary, labels model, version, variant): the distribution of the served scores
  (all candidates), bucketed on the model's reference histogram bounds when model.json has them,
  for prediction drift;
* ``feature`` (summary, labels feature, model, version): each dense input over a sample of the
  scored rows, on the reference bounds, for data drift.

Recording is O(1)-ish on the event loop (bounded reservoirs under a lock); building and producing
happens in a background thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict

import numpy as np

from recpilot.featurespec import DENSE_FEATURES
from recpilot.lifecycle import name_os_thread

log = logging.getLogger(__name__)

_MAX_SCORES = 20_000
_MAX_ROWS = 2_000
_Q = {"p01": 1, "p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "p99": 99}


def summary_of(values: np.ndarray, bounds: list[float] | None = None):
    from recpilot.pb import events_pb2

    v = np.asarray(values, dtype=np.float64)
    s = events_pb2.Summary(count=int(v.size), sum=float(v.sum()), min=float(v.min()), max=float(v.max()))
    for name, q in _Q.items():
        s.quantiles[name] = float(np.percentile(v, q))
    if bounds:
        b = np.asarray(bounds, dtype=np.float64)
        counts = np.bincount(np.searchsorted(b, v, side="right"), minlength=len(b) + 1)
        s.bucket_bounds.extend(b.tolist())
        s.bucket_counts.extend(int(c) for c in counts)
    return s


class Telemetry:
    def __init__(self, producer, topic: str, instance: str, interval_s: float) -> None:
        self.producer, self.topic, self.instance, self.interval_s = producer, topic, instance, interval_s
        self._lock = threading.Lock()
        self._reset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._rng = random.Random(0)
        self.published = 0

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
        key = (model, version, variant)
        with self._lock:
            self._meta[(model, version)] = meta
            if self._nscores[key] < _MAX_SCORES:
                self._scores[key].append(scores)
                self._nscores[key] += len(scores)
            mk = (model, version)
            if self._nrows[mk] < _MAX_ROWS:
                take = dense[: max(1, min(len(dense), 20))]  # a few rows per request
                self._rows[mk].append(take)
                self._nrows[mk] += len(take)

    # -- publishing (thread) ---------------------------------------------------------------------
    def events(self) -> list:
        from recpilot.pb import events_pb2

        with self._lock:
            lat, counts, scores, rows, metas = self._lat, self._counts, self._scores, self._rows, self._meta
            self._reset()
        now = int(time.time() * 1000)
        out = []

        def ev(name, labels, value=0.0, summary=None):
            e = events_pb2.MetricEvent(service="inference", name=name, value=value, timestamp_ms=now,
                                       instance=self.instance)
            e.labels.update(labels)
            if summary is not None:
                e.summary.CopyFrom(summary)
            out.append(e)

        for method, xs in lat.items():
            if xs:
                ev("latency_ms", {"method": method}, float(np.mean(xs)), summary_of(np.asarray(xs)))
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

    def flush_once(self) -> int:
        evs = self.events()
        for e in evs:
            self.producer.produce(self.topic, key=self.instance.encode(), value=e.SerializeToString())
        self.producer.poll(0)
        self.published += len(evs)
        return len(evs)

    def _run(self) -> None:
        name_os_thread()
        while not self._stop.wait(self.interval_s):
            try:
                self.flush_once()
            except Exception:
                log.exception("metric events not published")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.flush_once()
            self.producer.flush(10)
        except Exception:
            log.exception("final metric events not published")
