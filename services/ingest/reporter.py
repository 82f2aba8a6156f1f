"""Data-quality metric events for the monitor: every ``interval_s`` a few ``MetricEvent`` messages
on ``metrics.ingest`` (key "ingest") built from the ingest counters and published by
:class:`recpilot.metricevents.MetricPublisher`.

Names (``value``; ``labels`` in brackets):
  received_total, accepted_total, duplicates_total, rejected_total      cumulative counts
  rejected_total[reason]                                                cumulative, per reason seen
  missing_field_rate, reject_rate, duplicate_rate                       share of the interval's messages
  events_per_s                                                          messages received per second (interval)
  consumer_lag                                                          raw messages not yet consumed
  dedup_entries                                                         ids held by the de-duplicator
  dedup_evictions_total                                                 ids dropped at capacity before their TTL
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from recpilot import metricevents
from recpilot.pb import events_pb2
from services.ingest import metrics as M
from services.ingest.pipeline import Stats


def metric_events(cur: Stats, prev: Stats, seconds: float, now_ms: int, instance: str,
                  lag: int | None = None, dedup_entries: int | None = None) -> list[events_pb2.MetricEvent]:
    """The metric events for one interval (pure function)."""
    d = cur.minus(prev)
    ev = partial(metricevents.metric_event, "ingest", instance, timestamp_ms=now_ms)
    out = [
        ev("received_total", cur.received), ev("accepted_total", cur.accepted),
        ev("duplicates_total", cur.duplicates), ev("rejected_total", cur.rejected_total),
        ev("missing_field_rate", d.missing_field_rate),
        ev("reject_rate", d.rejected_total / d.received if d.received else 0.0),
        ev("duplicate_rate", d.duplicates / d.received if d.received else 0.0),
        ev("events_per_s", d.received / seconds if seconds > 0 else 0.0),
        ev("dedup_evictions_total", cur.dedup_evicted),
    ]
    out += [ev("rejected_total", n, {"reason": r}) for r, n in sorted(cur.rejected.items()) if n]
    if lag is not None:
        out.append(ev("consumer_lag", lag))
    if dedup_entries is not None:
        out.append(ev("dedup_entries", dedup_entries))
    return out


class IntervalMetrics:
    """The collect function for the publisher: each call returns the events of the interval since
    the previous call (and sets the missing-field-rate gauge)."""

    def __init__(self, instance: str, source: Callable[[], tuple[Stats, int | None, int | None]]) -> None:
        self.instance, self.source = instance, source
        self._prev = Stats()
        self._prev_t = time.monotonic()

    def __call__(self) -> list[events_pb2.MetricEvent]:
        cur, lag, entries = self.source()
        t = time.monotonic()
        events = metric_events(cur, self._prev, t - self._prev_t, metricevents.now_ms(), self.instance, lag, entries)
        M.MISSING_RATE.set(cur.minus(self._prev).missing_field_rate)
        self._prev, self._prev_t = cur, t
        return events
