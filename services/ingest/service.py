"""The Kafka transport around :class:`services.ingest.pipeline.Ingestor`.

Consumes ``raw_topic`` in batches; for each message publishes the clean event (keyed by user id)
to ``clean_topic`` or the original bytes to ``dlq_topic`` with headers ``error``,
``error_detail``, ``source_topic``, ``source_partition``, ``source_offset`` (original headers
kept), or drops a duplicate.

Nothing about one message stops the stream: a message whose handling raises (validation, or
producing its clean event fails for a reason of its own, such as its size) goes to the DLQ as
``internal_error`` with the exception in ``error_detail``. The DLQ copy of a message over
``max_payload_bytes`` (or one the producer refuses as too large) is its first
``dlq_prefix_bytes`` bytes with the headers ``original_size`` and ``original_sha256``, since a
copy of a message at the broker's size limit plus headers cannot be produced; original headers
that cannot be read or copied are left out (header ``original_headers: dropped``), and so is the
end of a key too large to copy (header ``original_key_size``). Failures that are not about one
message (the producer or the broker) fail the batch as below; so does a refusal the broker reports
only in a delivery report (e.g. a topic whose ``max.message.bytes`` is below the producer's).

The consumer offsets move only with the output:

* ``transactional=False`` (default): idempotent producer; after a batch the producer is flushed,
  delivery errors are checked, and only then the offsets are committed (at-least-once).
* ``transactional=True``: each batch is one Kafka transaction holding the produced messages and
  the consumer offsets (``send_offsets_to_transaction``): exactly-once raw -> clean for
  ``read_committed`` readers. After a crash, ``init_transactions`` aborts the open batch and the
  batch is consumed again (read_uncommitted readers see both the aborted records and the retry).

Either way, at start (and when a rebalance brings partitions new to this replica: another replica
left or died) the de-duplicator is warmed with the event ids published to the clean topic
during the last TTL, so a replayed batch and duplicates that straddle a restart are still dropped.

The loop is :class:`recpilot.kafka.ConsumeLoop`: the batch handler produces (and, without a
transaction, flushes); the loop then commits the offsets, or hands them to the transaction. Any
failure in a batch stops the loop without committing; the entry point (``__main__``) then starts
a fresh service in-process with backoff (or exits non-zero when ``restart_on_error`` is off) and
the batch is replayed by the next start.
"""

from __future__ import annotations

import hashlib
import logging
import time

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from recpilot import kafka as rkafka
from recpilot.pb import events_pb2
from recpilot.settings import PlatformSettings
from services.ingest import metrics as M
from services.ingest.pipeline import Ingestor, Stats
from services.ingest.settings import IngestSettings
from services.ingest.validate import Rejection

log = logging.getLogger(__name__)
UserEvent = events_pb2.UserEvent


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _too_large(exc: KafkaException) -> bool:
    """The producer refused this one message for its size (not a producer or broker failure)."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


class IngestService:
    def __init__(self, settings: IngestSettings, platform: PlatformSettings, ingestor: Ingestor) -> None:
        self.s = settings
        self.platform = platform
        self.ingestor = ingestor
        self.producer: Producer | None = None
        self.loop: rkafka.ConsumeLoop | None = None
        self.started = False
        self.lag: int | None = None
        self.warmed = 0
        self._assigned_once = False  # the first assignment follows the warm-up of start()
        self._batch_t0 = 0.0
        self._published = Stats()  # what the Prometheus counters already hold
        self.snapshot = Stats()    # latest stats, copied by the loop thread after each batch
        self._delivery_errors: list[str] = []
        self._broker_ok = (0.0, False)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        s, p = self.s, self.platform
        conf = {"client.id": f"ingest-{s.instance_id}", "delivery.report.only.error": True,
                "on_delivery": self._on_delivery, "linger.ms": 10, "queue.buffering.max.messages": 500_000}
        if s.transactional:
            conf["transactional.id"] = s.txn_id
            conf["transaction.timeout.ms"] = s.transaction_timeout_ms
        self.producer = rkafka.producer(p, **conf)
        if s.transactional:
            self.producer.init_transactions(60)  # aborts a batch a crashed predecessor left open
        self._warm_dedup()
        conf = {"client.id": f"ingest-{s.instance_id}", "session.timeout.ms": s.session_timeout_ms,
                "statistics.interval.ms": int(max(1.0, min(s.metrics_interval_s, 5.0)) * 1000),
                "stats_cb": self._on_stats,
                "queued.max.messages.kbytes": 32 * 1024}  # prefetch bound: keeps RSS flat under a backlog
        if s.static_membership:
            conf["group.instance.id"] = s.instance_id
        self.loop = rkafka.ConsumeLoop(
            rkafka.consumer(p, s.group_id, **conf), [s.raw_topic], self._handle_batch,
            commit=self._commit_transaction if s.transactional else None, after_batch=self._after_batch,
            batch_size=s.batch_size, poll_timeout=s.poll_timeout_s, on_assign=self._on_assign, name="ingest-loop")
        self.loop.start()
        self.started = True
        log.info("ingest started", extra={"raw": s.raw_topic, "clean": s.clean_topic, "dlq": s.dlq_topic,
                                          "group": s.group_id, "transactional": s.transactional,
                                          "dedup_warmed": self.warmed})

    def stop(self, timeout: float = 60.0, drain_s: float = 10.0) -> None:
        """Stop taking batches; the current one finishes and commits; then close the consumer. What
        the broker has not confirmed ``drain_s`` later (only a failed batch's messages: never
        committed, so the next start replays them) is purged: left in this producer, they would be
        delivered once the broker is back, after the next start warmed its de-duplicator from the
        clean topic, and reach it twice."""
        if self.loop is not None:
            self.loop.stop(timeout)
        if self.producer is not None:
            left = self.producer.flush(drain_s)
            if left:
                self.producer.purge(in_queue=True, in_flight=True, blocking=True)
                self.producer.flush(0)  # their delivery reports (purged)
                log.warning("undelivered messages of the failed batch dropped; the next start replays it",
                            extra={"messages": left})

    @property
    def running(self) -> bool:
        return self.loop is not None and self.loop.running

    @property
    def error(self) -> BaseException | None:
        return self.loop.error if self.loop is not None else None

    @property
    def batches(self) -> int:
        return self.loop.batches if self.loop is not None else 0

    def ready(self) -> tuple[bool, dict]:
        loop = self.loop
        stalled = loop is None or time.monotonic() - loop.last_poll > self.s.stall_after_s
        ok_broker = self._broker_reachable()
        details = {"loop_running": self.running, "stalled": stalled, "broker": ok_broker,
                   "assigned_partitions": len(loop.assigned) if loop is not None else 0, "consumer_lag": self.lag,
                   "dedup_entries": len(self.ingestor.dedup)}
        if self.error is not None:
            details["error"] = repr(self.error)
        return (self.started and self.running and not stalled and ok_broker), details

    def _broker_reachable(self) -> bool:
        at, ok = self._broker_ok
        if time.monotonic() - at < 2.0 or self.producer is None:
            return ok
        try:
            md = self.producer.list_topics(self.s.raw_topic, timeout=2)
            ok = bool(md.brokers)
        except KafkaException:
            ok = False
        self._broker_ok = (time.monotonic(), ok)
        return ok

    # -- callbacks --------------------------------------------------------------------------------
    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _on_stats(self, raw: str) -> None:
        lag = rkafka.consumer_lag(raw, self.s.raw_topic)
        if lag is not None:
            self.lag = lag
            M.LAG.set(lag)

    # -- dedup warm-up ------------------------------------------------------------------------------
    def _on_assign(self, new: set[tuple[str, int]]) -> None:
        """Partitions new to this replica arrive after its first assignment (a replica of the group
        left or died): warm the de-duplicator again, before their first batch, with what the other
        replicas published to the clean topic, so that a batch a crashed replica published but did
        not commit, replayed here, is dropped as duplicates."""
        first, self._assigned_once = not self._assigned_once, True
        if new and not first:
            log.info("partitions new to this replica; dedup warm-up again", extra={"partitions": sorted(new)})
            self._warm_dedup()

    def _warm_dedup(self) -> None:
        """Remember the event ids published to the clean topic in the last TTL (at most capacity)."""
        s = self.s
        if not s.dedup_warmup:
            return
        dedup = self.ingestor.dedup
        reader = rkafka.TopicReader(self.platform, s.clean_topic, group_id=f"{s.group_id}-warmup",
                                    **{"client.id": f"ingest-warmup-{s.instance_id}"})
        t0 = time.monotonic()
        n = 0
        ev = UserEvent()

        def remember(m) -> None:
            nonlocal n
            try:
                ev.ParseFromString(m.value())
            except Exception:
                return
            dedup.remember(ev.event_id, ev.ingested_at_ms or m.timestamp()[1])
            n += 1

        try:
            parts = reader.partitions()
            if not parts:
                return
            since = reader.offsets_for_time(_now_ms() - int(s.dedup_ttl_s * 1000), parts)
            per_part = max(1, s.dedup_capacity // len(parts))
            starts = {}
            for p, (lo, hi) in reader.watermarks(parts).items():
                start = since[p] if since[p] >= 0 else hi
                start = max(start, hi - per_part, lo)
                if start < hi:
                    starts[p] = start
            pending = reader.read(starts, remember, timeout=s.dedup_warmup_timeout_s - (time.monotonic() - t0))
            if pending:
                log.warning("dedup warm-up timed out", extra={"partitions_left": sorted(pending)})
        finally:
            reader.close()
            self.warmed = n
            M.DEDUP_ENTRIES.set(len(dedup))
            log.info("dedup warm-up done", extra={"event_ids": n, "seconds": round(time.monotonic() - t0, 3)})

    # -- one batch, on the consume loop ----------------------------------------------------------
    def _handle_batch(self, msgs: list) -> None:
        """Produce the batch's outputs; without a transaction, wait until the broker has them."""
        self._batch_t0 = time.perf_counter()
        prod = self.producer
        if self.s.transactional:
            prod.begin_transaction()
            self._handle(msgs, prod)
        else:
            self._handle(msgs, prod)
            rkafka.flush_or_raise(prod, self.s.flush_timeout_s)
            self._raise_delivery_errors()

    def _commit_transaction(self, offsets: list[TopicPartition]) -> None:
        """The consumer offsets go into the batch's transaction, which is then committed."""
        timeout = self.s.flush_timeout_s
        self.producer.send_offsets_to_transaction(offsets, self.loop.consumer.consumer_group_metadata(), timeout)
        self.producer.commit_transaction(timeout)
        self._raise_delivery_errors()

    def _raise_delivery_errors(self) -> None:
        if self._delivery_errors:
            raise rkafka.DeliveryError(f"{len(self._delivery_errors)} messages failed: {self._delivery_errors[:3]}")

    def _after_batch(self, _msgs: list) -> None:
        M.BATCH_SECONDS.observe(time.perf_counter() - self._batch_t0)
        self._publish_stats()

    def _handle(self, msgs: list, prod: Producer) -> None:
        s = self.s
        clean = s.clean_topic
        process = self.ingestor.process
        produce, poll = prod.produce, prod.poll
        now = _now_ms()
        self.ingestor.dedup.expire(now)
        first_ts = 0
        for m in msgs:
            value = m.value()
            r = process(value, now)  # does not raise: a validation error is a Rejection
            if r is None:
                continue
            if r.__class__ is UserEvent:
                try:
                    out = r.SerializeToString()
                    while True:
                        try:
                            produce(clean, out, r.user_id)
                            break
                        except BufferError:
                            poll(0.05)
                    if not first_ts:
                        first_ts = r.timestamp_ms
                    continue
                except KafkaException as exc:
                    if not _too_large(exc):
                        raise  # the producer or the broker: the batch fails
                    r = self.ingestor.failed(r, exc)
                except Exception as exc:  # about this message only
                    r = self.ingestor.failed(r, exc)
            self._dead_letter(prod, m, value, r)
        poll(0)
        if first_ts:
            M.EVENT_DELAY.observe(max(0.0, (now - first_ts) / 1000.0))

    def _dead_letter(self, prod: Producer, m, value: bytes | None, r: Rejection) -> None:
        """The DLQ copy of ``m``: its bytes (a prefix with size and sha256 headers when over
        ``max_payload_bytes``), its own headers, then the reason and the source."""
        s = self.s
        ours = [("error", r.reason), ("error_detail", r.detail.encode("utf-8", "backslashreplace")),
                ("source_topic", m.topic()), ("source_partition", str(m.partition())),
                ("source_offset", str(m.offset()))]
        key = m.key()
        if r.reason == "internal_error":
            log.warning("handling a message raised; sent to the DLQ",
                        extra={"source_partition": m.partition(), "source_offset": m.offset(), "error": r.detail})
        if value is not None and len(value) > s.max_payload_bytes:
            value, trailer = self._prefix(value)
            ours += trailer
        try:
            rkafka.produce_waiting(prod, s.dlq_topic, value, key, headers=list(m.headers() or ()) + ours)
            return
        except KafkaException as exc:
            if not _too_large(exc):
                raise  # the producer or the broker: the batch fails
            problem: Exception = exc
            if value is not None and len(value) > s.dlq_prefix_bytes:
                value, trailer = self._prefix(value)
                ours += trailer
            if key is not None and len(key) > s.dlq_prefix_bytes:
                ours.append(("original_key_size", str(len(key))))
                key = key[:s.dlq_prefix_bytes]
        except (ValueError, TypeError) as exc:  # original headers that cannot be read or copied
            problem = exc
        log.warning("DLQ copy without its original headers",
                    extra={"source_partition": m.partition(), "source_offset": m.offset(), "error": repr(problem)})
        rkafka.produce_waiting(prod, s.dlq_topic, value, key, headers=ours + [("original_headers", "dropped")])

    def _prefix(self, value: bytes) -> tuple[bytes, list[tuple[str, str]]]:
        return value[:self.s.dlq_prefix_bytes], [("original_size", str(len(value))),
                                                 ("original_sha256", hashlib.sha256(value).hexdigest())]

    def _publish_stats(self) -> None:
        cur = self.ingestor.snapshot()
        d = cur.minus(self._published)
        M.RECEIVED.inc(d.received)
        M.ACCEPTED.inc(d.accepted)
        M.DUPLICATES.inc(d.duplicates)
        if d.dedup_evicted:
            M.DEDUP_EVICTIONS.inc(d.dedup_evicted)
        for reason, n in d.rejected.items():
            if n:
                M.REJECTED.labels(reason=reason).inc(n)
        for f, n in d.missing.items():
            if n:
                M.MISSING.labels(field=f).inc(n)
        M.BATCHES.inc()
        M.DEDUP_ENTRIES.set(len(self.ingestor.dedup))
        self._published = cur
        self.snapshot = cur
