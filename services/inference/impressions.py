"""Impression log: every response goes to the ``impressions`` topic, off the request path.

The request handler only appends a small record to an in-memory queue (O(1), no I/O, no
serialisation); a background thread builds the protobuf ``Impression`` and hands it to the
idempotent Kafka producer, whose delivery reports are counted. When Kafka is slow the queue
absorbs bursts; when it is full, the newest impressions are dropped and counted rather than
slowing answers down. On shutdown the queue is drained and the producer flushed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from services.inference import metrics as m

log = logging.getLogger(__name__)


@dataclass
class ImpressionRecord:
    request_id: str
    user_id: str
    session_id: str
    surface: str  # "recommend" | "search"
    query: str
    model_name: str
    model_version: str
    policy_version: str
    items: list[tuple[str, int, float, float]]  # (item_id, position, score, propensity)
    features: dict[str, float]
    timestamp_ms: int
    fallback: bool
    variant: str
    context: dict[str, str] = field(default_factory=dict)

    def to_proto(self):
        from recpilot.pb import events_pb2

        imp = events_pb2.Impression(
            request_id=self.request_id, user_id=self.user_id, session_id=self.session_id,
            surface=self.surface, query=self.query, model_name=self.model_name,
            model_version=self.model_version, policy_version=self.policy_version,
            timestamp_ms=self.timestamp_ms, fallback=self.fallback, variant=self.variant,
        )
        for iid, pos, score, prop in self.items:
            imp.items.add(item_id=iid, position=pos, score=score, propensity=prop)
        imp.features.update(self.features)
        imp.context.update(self.context)
        return imp


class ImpressionLogger:
    def __init__(self, producer, topic: str, max_pending: int = 100_000) -> None:
        self.producer = producer
        self.topic = topic
        self._q: queue.Queue = queue.Queue(maxsize=max_pending)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def log(self, rec: ImpressionRecord) -> None:
        """Never blocks: the request path only enqueues."""
        try:
            self._q.put_nowait(rec)
        except queue.Full:
            self.dropped += 1
            m.IMPRESSIONS.labels("dropped").inc()

    def _delivery(self, err, _msg) -> None:
        if err is None:
            self.delivered += 1
            m.IMPRESSIONS.labels("delivered").inc()
        else:
            self.failed += 1
            m.IMPRESSIONS.labels("failed").inc()
            log.warning("impression not delivered", extra={"error": str(err)})

    def _send(self, rec: ImpressionRecord) -> None:
        data = rec.to_proto().SerializeToString()
        while True:
            try:
                self.producer.produce(self.topic, value=data, key=rec.user_id.encode(), on_delivery=self._delivery)
                return
            except BufferError:  # librdkafka queue full: wait for deliveries
                self.producer.poll(0.05)

    def _run(self) -> None:
        while True:
            try:
                rec = self._q.get(timeout=0.1)
            except queue.Empty:
                self.producer.poll(0)
                if self._stop.is_set():
                    return
                continue
            try:
                self._send(rec)
            except Exception:
                self.failed += 1
                m.IMPRESSIONS.labels("failed").inc()
                log.exception("impression not produced", extra={"request_id": rec.request_id})
            self.producer.poll(0)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        t0 = time.monotonic()
        while not self._q.empty() and time.monotonic() - t0 < timeout:  # thread died: finish here
            self._send(self._q.get_nowait())
        remaining = self.producer.flush(timeout)
        if remaining:
            log.error("impressions not delivered at shutdown", extra={"count": remaining})
