"""Data-quality metric events for the monitor: every ``interval_s`` a few ``MetricEvent`` messages
on ``metrics.ingest`` (key "ingest") built from the ingest counters.

Names (``value``; ``labels`` in brackets):
  received_total, accepted_total, duplicates_total, rejected_total      cumulative counts
  rejected_total[reason]                                                cumulative, per reason seen
  missing_field_rate, reject_rate, duplicate_rate                       share of the interval's messages
  events_per_s                                                          messages received per second (interval)
  consumer_lag                                                          raw messages not yet consumed
  dedup_entries                                                         ids held by the de-duplicator
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Producer

from recpilot.pb import events_pb2
from services.ingest import metrics as M
from services.ingest.pipeline import Stats

log = logging.getLogger(__name__)


def metric_events(cur: Stats, prev: Stats, seconds: float, now_ms: int, instance: str,
                  lag: int | None = None, dedup_entries: int | None = None) -> list[events_pb2.MetricEvent]:
    """The metric events for one interval (pure function)."""
    d = cur.minus(prev)

    def ev(name: str, value: float, **labels: str) -> events_pb2.MetricEvent:
        return events_pb2.MetricEvent(service="ingest", name=name, value=float(value), labels=labels,
                                      timestamp_ms=now_ms, instance=instance)

    out = [
        ev("received_total", cur.received), ev("accepted_total", cur.accepted),
        ev("duplicates_total", cur.duplicates), ev("rejected_total", cur.rejected_total),
        ev("missing_field_rate", d.missing_field_rate),
        ev("reject_rate", d.rejected_total / d.received if d.received else 0.0),
        ev("duplicate_rate", d.duplicates / d.received if d.received else 0.0),
        ev("events_per_s", d.received / seconds if seconds > 0 else 0.0),
    ]
    out += [ev("rejected_total", n, reason=r) for r, n in sorted(cur.rejected.items()) if n]
    if lag is not None:
        out.append(ev("consumer_lag", lag))
    if dedup_entries is not None:
        out.append(ev("dedup_entries", dedup_entries))
    return out


class MetricReporter:
    def __init__(self, producer: Producer, topic: str, interval_s: float, instance: str,
                 source: Callable[[], tuple[Stats, int | None, int | None]]) -> None:
        self.producer, self.topic, self.interval_s, self.instance = producer, topic, interval_s, instance
        self.source = source
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev = Stats()
        self._prev_t = time.monotonic()
        self.sent = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.report()  # the last interval
        self.producer.flush(5)

    def report(self) -> None:
        cur, lag, entries = self.source()
        t = time.monotonic()
        events = metric_events(cur, self._prev, t - self._prev_t, time.time_ns() // 1_000_000,
                               self.instance, lag, entries)
        d = cur.minus(self._prev)
        M.MISSING_RATE.set(d.missing_field_rate)
        self._prev, self._prev_t = cur, t
        for e in events:
            try:
                self.producer.produce(self.topic, e.SerializeToString(), b"ingest")
            except BufferError:
                log.warning("metric event dropped: producer queue full", extra={"collapse": True})
        self.producer.poll(0)
        self.sent += len(events)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.report()
            except Exception:
                log.exception("metric report failed")
