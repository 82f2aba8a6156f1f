"""Prometheus metrics of the features service (module level) and the MetricEvent summariser."""

from __future__ import annotations

import random
import threading

from prometheus_client import Counter, Gauge, Histogram

from services.features.writer import RETRY_KINDS

EVENTS = Counter("recpilot_features_events_total", "events read from the input topic, by outcome",
                 ["outcome"])  # applied | replayed (already applied before a restart) | invalid
for _outcome in ("applied", "replayed", "invalid"):
    EVENTS.labels(_outcome)  # exported as 0 from the start
BATCHES = Counter("recpilot_features_batches_total", "Redis write batches (average batch = events / batches)")
WRITE_SECONDS = Histogram("recpilot_features_write_seconds", "time of one batch write to Redis",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
FRESHNESS = Histogram("recpilot_features_freshness_seconds",
                      "event time (timestamp_ms) to the moment its features are visible in Redis",
                      buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25,
                               0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60))
LAG = Gauge("recpilot_features_consumer_lag_messages", "messages behind the partition high watermarks")
ASSIGNED = Gauge("recpilot_features_assigned_partitions", "input partitions assigned to this worker")
WRITE_ERRORS = Counter("recpilot_features_write_errors_total",
                       "failed Redis batch writes (each failed attempt; the worker retries or stops)")
WRITE_RETRIES = Counter("recpilot_features_write_retries_total",
                        "batch writes retried after a Redis error, by kind (connection, timeout, loading, "
                        "misconf, readonly, oom, busy, ...)", ["kind"])
for _kind in RETRY_KINDS:
    WRITE_RETRIES.labels(_kind)  # exported as 0 from the start
OFFSETS_AHEAD = Gauge("recpilot_features_offsets_ahead_partitions",
                      "input partitions whose offset stored in Redis is at or beyond the topic's end (the topic "
                      "was recreated): their events wait for `recpilot features reset-offsets`")


class Reservoir:
    """A bounded uniform sample of values since the last :meth:`drain` (for p50/p99 in MetricEvents)."""

    def __init__(self, size: int = 10_000, seed: int = 0) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.values: list[float] = []
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add_many(self, values) -> None:
        with self.lock:
            for v in values:
                self.count += 1
                self.sum += v
                if v < self.min:
                    self.min = v
                if v > self.max:
                    self.max = v
                if len(self.values) < self.size:
                    self.values.append(v)
                else:
                    j = self.rng.randrange(self.count)
                    if j < self.size:
                        self.values[j] = v

    def drain(self) -> dict | None:
        """``{count, sum, min, max, quantiles: {p50, p90, p99}}`` of what was added, then reset."""
        with self.lock:
            if not self.count:
                return None
            vals = sorted(self.values)
            out = {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max,
                   "quantiles": {name: quantile(vals, q) for name, q in (("p50", .5), ("p90", .9), ("p99", .99))}}
            self._reset()
            return out


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]
