"""Impression log: every response goes to the ``impressions`` topic, off the request path.

The request handler only appends a small record to an in-memory deque (O(1), no lock, no
wake-up, no I/O, no serialisation); a background thread drains it every few milliseconds, builds
the feature snapshot and the protobuf ``Impression`` and hands it to the idempotent Kafka producer,
whose delivery reports are counted. When Kafka is slow the queue
absorbs bursts; when it is full (``max_pending`` records, or ``max_bytes`` of their estimated
memory, :meth:`ImpressionRecord.approx_bytes`), the newest impressions are dropped and counted
rather than slowing answers down or growing the process without bound (Kafka down). The producer's
own buffer is held to the same bounds (``max_pending`` messages not yet acknowledged, ``max_bytes``
of their serialised values): with the broker gone the thread stops handing records over, the
deque fills and later impressions are dropped, instead of librdkafka absorbing them up to its
own, much larger, limits. On shutdown the queue is drained and the producer flushed, for at most
``stop``'s timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from recpilot.lifecycle import name_os_thread
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
    # The ranker's inputs of the shown items, in position order ([k, D] float32); turned into
    # ``"<position>:<feature>"`` entries of ``features`` off the request path (see snapshot_keys).
    # Without it, the rows of ``pool_dense`` at ``pool_index`` are used.
    shown_dense: np.ndarray | None = None
    # The pool the policy chose from (the ranker's top M, best first): ids, ranker scores [M] and
    # ranker inputs [M, D]; each shown item's pool row; the policy's exploration rule and variant.
    pool_item_ids: list[str] | None = None
    pool_scores: np.ndarray | None = None
    pool_dense: np.ndarray | None = None
    pool_index: list[int] | None = None
    exploration: str = ""
    policy_variant: str = ""
    nbytes: int = 0  # set by ImpressionLogger.log: approx_bytes() when queued

    def approx_bytes(self) -> int:
        """The memory this record holds while queued, estimated from its sizes (no traversal)."""
        n = _RECORD_BYTES + _ITEM_BYTES * len(self.items) + _ENTRY_BYTES * (len(self.features) + len(self.context))
        n += len(self.query) + len(self.user_id) + len(self.session_id)
        if self.shown_dense is not None:
            n += self.shown_dense.nbytes
        if self.pool_item_ids is not None:
            n += _POOL_BYTES + _POOL_ITEM_BYTES * len(self.pool_item_ids)
        for a in (self.pool_scores, self.pool_dense):
            if a is not None:
                n += _ARRAY_BYTES + a.nbytes
        return n

    def to_proto(self):
        from recpilot.pb import events_pb2

        imp = events_pb2.Impression(
            request_id=self.request_id, user_id=self.user_id, session_id=self.session_id,
            surface=self.surface, query=self.query, model_name=self.model_name,
            model_version=self.model_version, policy_version=self.policy_version,
            timestamp_ms=self.timestamp_ms, fallback=self.fallback, variant=self.variant,
            exploration=self.exploration, policy_variant=self.policy_variant,
        )
        rows = self.pool_index
        if rows is not None:
            for (iid, pos, score, prop), row in zip(self.items, rows):
                imp.items.add(item_id=iid, position=pos, score=score, propensity=prop, pool_index=row)
        else:
            for iid, pos, score, prop in self.items:
                imp.items.add(item_id=iid, position=pos, score=score, propensity=prop)
        imp.features.update(self.features)
        shown = self.shown_dense
        if shown is None and self.pool_dense is not None and rows:
            shown = self.pool_dense[rows]
        if shown is not None and len(shown):
            # float32 -> Python float, exactly as float(row[j]); keys built once per position
            imp.features.update(zip(snapshot_keys(len(shown)), shown.ravel().tolist()))
        if self.pool_item_ids is not None:
            imp.pool_item_ids.extend(self.pool_item_ids)
        if self.pool_scores is not None:
            imp.pool_scores.extend(self.pool_scores.tolist())
        if self.pool_dense is not None:
            imp.pool_dense.extend(self.pool_dense.ravel().tolist())
        imp.context.update(self.context)
        return imp


# approx_bytes()'s sizes, measured with tracemalloc over 10,000 records built as the service builds
# them (CPython 3.11, 64-bit): 797 B with no items and the two user features, 2,466 B with 10 items,
# 8,900 B with 50, 3,732 B with 10 items and 10 context entries. So: a record with its strings and
# empty containers, one (item_id, position, score, propensity) entry, one features/context entry.
_RECORD_BYTES = 550
_ITEM_BYTES = 160
_ENTRY_BYTES = 130
# The pool, measured the same way (200 candidates with 7-character ids, the pool's ids, ranker scores
# and inputs as the service slices them): 5,150 B more per record with a pool of 40, 13,540 B with
# 100, of which the arrays' data (nbytes, counted as such) is 2,880 B and 7,200 B; the rest is the
# id list and the id strings the pool keeps alive (about 64 B each) and two array headers.
_POOL_BYTES = 60
_POOL_ITEM_BYTES = 70
_ARRAY_BYTES = 112

_SNAPSHOT_KEYS: list[str] = []


def snapshot_keys(n: int) -> list[str]:
    """``"<position>:<feature>"`` for positions 1..n, row-major (pre-built, grown on demand)."""
    from recpilot.featurespec import DENSE_FEATURES

    d = len(DENSE_FEATURES)
    while len(_SNAPSHOT_KEYS) < n * d:
        pos = len(_SNAPSHOT_KEYS) // d + 1
        _SNAPSHOT_KEYS.extend(f"{pos}:{fname}" for fname in DENSE_FEATURES)
    return _SNAPSHOT_KEYS[: n * d]


class ImpressionLogger:
    def __init__(self, producer, topic: str, max_pending: int = 100_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.producer = producer
        self.topic = topic
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self._q: deque[ImpressionRecord] = deque()
        # Bytes queued = _bytes_in - _bytes_out, each written by one side only (no lock, no lost update).
        self._bytes_in = 0
        self._bytes_out = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._inflight_bytes = 0  # serialised values handed to the producer, not yet reported (thread only)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def log(self, rec: ImpressionRecord) -> None:
        """Never blocks: the request path only appends (deque.append is atomic)."""
        size = rec.nbytes = rec.approx_bytes()
        if len(self._q) >= self.max_pending or self._bytes_in - self._bytes_out + size > self.max_bytes:
            self.dropped += 1
            m.IMPRESSIONS.labels("dropped").inc()
            return
        self._bytes_in += size
        self._q.append(rec)

    @property
    def pending_bytes(self) -> int:
        return self._bytes_in - self._bytes_out

    def _delivery(self, err, msg) -> None:
        self._inflight_bytes -= len(msg.value() or b"")
        if err is None:
            self.delivered += 1
            m.IMPRESSIONS.labels("delivered").inc()
        else:
            self.failed += 1
            m.IMPRESSIONS.labels("failed").inc()
            log.warning("impression not delivered", extra={"error": str(err), "collapse": True})

    def _drain(self) -> None:
        """Hand queued records to the producer while its buffer is within the bounds; the rest
        stay queued for the next round."""
        q = self._q
        m.IMPRESSIONS_PENDING.set(len(q))
        room = self.max_pending - len(self.producer)
        while q and room > 0 and self._inflight_bytes < self.max_bytes:
            rec = q.popleft()
            try:
                data = rec.to_proto().SerializeToString()
                self.producer.produce(self.topic, value=data, key=rec.user_id.encode(), on_delivery=self._delivery)
            except BufferError:  # librdkafka's own limits: keep the record for the next round
                q.appendleft(rec)
                break
            except Exception:
                self._bytes_out += rec.nbytes
                self.failed += 1
                m.IMPRESSIONS.labels("failed").inc()
                log.exception("impression not produced", extra={"request_id": rec.request_id})
                continue
            self._bytes_out += rec.nbytes
            self._inflight_bytes += len(data)
            room -= 1
        self.producer.poll(0)

    def _run(self) -> None:
        name_os_thread()
        while True:
            stopping = self._stop.wait(0.005)  # a batch every 5 ms: no per-request wake-up
            self._drain()
            if stopping:
                return

    def stop(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():  # finish here what the thread left queued (broker slow or gone)
            while self._q and time.monotonic() < deadline:
                self._drain()
                self.producer.poll(0.05)
        remaining = self.producer.flush(max(0.0, deadline - time.monotonic())) + len(self._q)
        if remaining:
            log.error("impressions not delivered at shutdown", extra={"count": remaining})
