"""``MetricEvent`` messages for the monitor, published by every service to ``metrics.<service>``.

* :func:`metric_event` / :func:`summary` build the messages (pure functions).
* :class:`MetricPublisher` produces them with a recpilot.kafka producer: one call per batch of
  events (an interval's worth), never blocking the caller: a full producer queue or a produce error
  drops the event and counts it; delivery failures reported by the broker are counted too. With
  :meth:`MetricPublisher.start` it also runs a background thread that publishes what a collect
  function returns every interval; :meth:`MetricPublisher.close` publishes the last interval and
  flushes. Each interval it publishes also carries the process's resource use
  (:class:`ResourceSampler`: ``cpu_cores``, ``memory_rss_bytes``, ``cpu_limit_cores``, and
  ``gpu_memory_bytes`` when torch is loaded with a GPU), for the monitor's resource detector.

Usage::

    pub = MetricPublisher(producer, "ingest", instance)
    pub.publish([pub.event("accepted_total", 270), pub.event("rejected_total", 3, reason="oversized")])
    pub.start(interval_s, collect)   # or call publish() from a timer the service already has
    ...
    pub.close()
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import KafkaException

from recpilot.lifecycle import name_os_thread
from recpilot.pb import events_pb2

log = logging.getLogger(__name__)

MetricEvent = events_pb2.MetricEvent


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def summary(count: int, sum: float, min: float, max: float, quantiles: Mapping[str, float] | None = None,
            bucket_bounds: Iterable[float] | None = None, bucket_counts: Iterable[int] | None = None,
            scale: float = 1.0) -> events_pb2.Summary:
    """A distribution summary; every value (not the counts) is multiplied by ``scale`` (e.g. s -> ms)."""
    s = events_pb2.Summary(count=int(count), sum=float(sum) * scale, min=float(min) * scale,
                           max=float(max) * scale)
    for name, v in (quantiles or {}).items():
        s.quantiles[name] = float(v) * scale
    if bucket_bounds is not None:
        s.bucket_bounds.extend(float(b) * scale for b in bucket_bounds)
    if bucket_counts is not None:
        s.bucket_counts.extend(int(c) for c in bucket_counts)
    return s


def metric_event(service: str, instance: str, name: str, value: float = 0.0, labels: Mapping[str, str] | None = None,
                 *, timestamp_ms: int | None = None, summary: events_pb2.Summary | None = None) -> MetricEvent:
    ev = MetricEvent(service=service, name=name, value=float(value), instance=instance,
                     timestamp_ms=now_ms() if timestamp_ms is None else timestamp_ms)
    if labels:
        ev.labels.update(labels)
    if summary is not None:
        ev.summary.CopyFrom(summary)
    return ev


class ResourceSampler:
    """The process's resource use since the previous :meth:`sample`: CPU cores used (user+system
    CPU seconds per wall second), resident memory, the cores it may run on, and the GPU memory
    torch has allocated when torch is already imported and has a GPU (never imports it)."""

    def __init__(self) -> None:
        self._prev = (time.monotonic(), self._cpu())

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def sample(self) -> dict[str, float]:
        now, cpu = time.monotonic(), self._cpu()
        (t0, c0), self._prev = self._prev, (now, cpu)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        out = {"cpu_cores": (cpu - c0) / (now - t0) if now > t0 else 0.0,
               "memory_rss_bytes": float(self.rss_bytes()), "cpu_limit_cores": float(cores)}
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    out["gpu_memory_bytes"] = float(torch.cuda.memory_allocated())
            except Exception:  # a broken driver never stops the metrics
                pass
        return out


class MetricPublisher:
    """Produces a service's metric events to ``topic`` (default ``metrics.<service>``).

    ``producer`` is anything with confluent-kafka's ``produce(topic, value, key, on_delivery=)``,
    ``poll(timeout)`` and ``flush(timeout)``; the message key is ``key`` (default: the service name).
    Counters: ``sent`` (handed to the producer), ``dropped`` (refused by it: queue full or a produce
    error), ``undelivered`` (reported failed by the broker, or still queued when :meth:`close` gave up).
    """

    def __init__(self, producer, service: str, instance: str, *, topic: str | None = None,
                 key: str | bytes | None = None) -> None:
        self.producer = producer
        self.service, self.instance = service, instance
        self.topic = topic or f"metrics.{service}"
        key = service if key is None else key
        self.key = key.encode() if isinstance(key, str) else key
        self.sent = self.dropped = self.undelivered = 0
        self._collect: Callable[[], Iterable[MetricEvent]] | None = None
        self._interval_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resources = ResourceSampler()

    # -- building ------------------------------------------------------------------------------
    def event(self, name: str, value: float = 0.0, labels: Mapping[str, str] | None = None, *,
              timestamp_ms: int | None = None, summary: events_pb2.Summary | None = None) -> MetricEvent:
        """One event of this publisher's service and instance (labels may also be given as a dict)."""
        return metric_event(self.service, self.instance, name, value, labels,
                            timestamp_ms=timestamp_ms, summary=summary)

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, events: Iterable[MetricEvent]) -> int:
        """Hand ``events`` to the producer without waiting; return how many it took."""
        produce, topic, key, done = self.producer.produce, self.topic, self.key, self._on_delivery
        n = dropped = 0
        for ev in events:
            try:
                produce(topic, ev.SerializeToString(), key, on_delivery=done)
                n += 1
            except (BufferError, KafkaException) as exc:
                dropped += 1
                log.warning("metric event dropped", extra={"topic": topic, "error": repr(exc), "collapse": True})
        self.producer.poll(0)  # serves delivery reports of earlier batches
        self.sent += n
        self.dropped += dropped
        return n

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self.undelivered += 1
            log.warning("metric event not delivered", extra={"topic": self.topic, "error": str(err),
                                                            "collapse": True})

    # -- periodic thread ---------------------------------------------------------------------------
    def start(self, interval_s: float, collect: Callable[[], Iterable[MetricEvent]]) -> None:
        """Every ``interval_s`` publish ``collect()`` from a background thread (an error in
        ``collect`` is logged and the next interval runs)."""
        self._collect, self._interval_s = collect, interval_s
        self._thread = threading.Thread(target=self._run, name=f"{self.service}-metrics", daemon=True)
        self._thread.start()

    def resource_events(self) -> list[MetricEvent]:
        """The process's resource use since the previous call, as events."""
        now = now_ms()
        return [self.event(name, value, timestamp_ms=now) for name, value in self._resources.sample().items()]

    def publish_collected(self) -> int:
        """Publish one interval now (what the thread does every interval), with the resource events."""
        if self._collect is None:
            return 0
        return self.publish([*self._collect(), *self.resource_events()])

    def _run(self) -> None:
        name_os_thread()
        while not self._stop.wait(self._interval_s):
            try:
                self.publish_collected()
            except Exception:
                log.exception("metric events not published")

    def close(self, timeout: float = 10.0) -> int:
        """Stop the thread, publish the last interval, wait up to ``timeout`` for delivery;
        return :attr:`undelivered`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            try:
                self.publish_collected()
            except Exception:
                log.exception("final metric events not published")
        left = self.producer.flush(timeout)
        if left:
            self.undelivered += left
            log.warning("metric events not delivered at close", extra={"topic": self.topic, "events": left})
        return self.undelivered
