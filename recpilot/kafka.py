"""Kafka plumbing shared by every confluent-kafka service.

* :func:`producer`, :func:`consumer`, :func:`admin` — the one place a confluent-kafka client is
  configured: each gets :func:`security_config` (TLS / SASL from :class:`PlatformSettings`);
  :func:`ssl_context` is the same TLS settings for the asyncio clients (faust/aiokafka).
* :func:`producer` — an idempotent producer (acks=all) with sane batching.
* :class:`ConsumeLoop` — auto-commit off; the handler performs its side effect for a batch
  (produce + wait for delivery, or a Redis write) and only then are the batch's offsets
  committed. A crash between the side effect and the commit replays the batch: at-least-once,
  which idempotent handlers turn into exactly-once effects.
* :func:`ensure_topics` — create the catalogue idempotently; :func:`create_topics` and
  :func:`delete_topics` for throw-away topics (benchmarks, tests).
* :class:`TopicReader` / :func:`read_to_end` — read partitions to their end without joining a
  group or committing; :func:`end_offsets`, :func:`committed_offsets` — where a topic ends and
  where a group is, without joining it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from recpilot.errors import Unavailable
from recpilot.lifecycle import LoopThread
from recpilot.settings import PlatformSettings
from recpilot.topics import TopicSpec

log = logging.getLogger(__name__)
# librdkafka's own log lines (broker connects and failures) as JSON records of this logger instead
# of raw lines on stderr; recpilot.log collapses their repeats while a broker is down. They are
# delivered by poll()/flush(), which every client here calls anyway.
client_log = logging.getLogger("recpilot.kafka.client")


def security_config(settings: PlatformSettings) -> dict[str, str]:
    """The librdkafka properties for the settings' security protocol; empty for PLAINTEXT."""
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return {}
    conf = {"security.protocol": proto}
    if proto.endswith("SSL"):
        for key, path in (("ssl.ca.location", settings.kafka_ssl_ca_location),
                          ("ssl.certificate.location", settings.kafka_ssl_certificate_location),
                          ("ssl.key.location", settings.kafka_ssl_key_location)):
            if path is not None:
                conf[key] = str(path)
        if settings.kafka_ssl_key_password is not None:
            conf["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    if proto.startswith("SASL_"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username or ""
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    return conf


def ssl_context(settings: PlatformSettings):
    """An :class:`ssl.SSLContext` for the settings (CA, optional client certificate, hostname
    checked), or None when the protocol uses no TLS; for clients that take a context (aiokafka)."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    import ssl

    ca = settings.kafka_ssl_ca_location
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None)
    if settings.kafka_ssl_certificate_location is not None:
        key_password = settings.kafka_ssl_key_password
        ctx.load_cert_chain(str(settings.kafka_ssl_certificate_location), str(settings.kafka_ssl_key_location),
                            key_password.get_secret_value() if key_password is not None else None)
    return ctx


def producer(settings: PlatformSettings, **overrides) -> Producer:
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "client.id": overrides.pop("client.id", "recpilot"),
        "logger": client_log,
        **security_config(settings),
    }
    conf.update(overrides)
    return Producer(conf)


def consumer(settings: PlatformSettings, group_id: str, **overrides) -> Consumer:
    conf = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "logger": client_log,
        **security_config(settings),
    }
    conf.update(overrides)
    return Consumer(conf)


def admin(settings: PlatformSettings, **overrides) -> AdminClient:
    # log_level 4: warnings and errors only (a short-lived admin client's teardown says "Purging 1
    # unserved events from background queue" at info level on stderr)
    conf = {"bootstrap.servers": settings.kafka_bootstrap, "log_level": 4, **security_config(settings)}
    conf.update(overrides)
    return AdminClient(conf)


def ensure_topics(adm: AdminClient, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    existing = set(adm.list_topics(timeout=timeout).topics)
    todo = [s for s in specs if s.name not in existing]
    if not todo:
        return []
    futures = adm.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=dict(s.config)) for s in todo],
        request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
    return created


def create_topics(settings: PlatformSettings, names: Iterable[str], partitions: int,
                  timeout: float = 30.0) -> list[str]:
    """Create the topics ``names`` (``partitions`` each) that do not exist yet; the names created."""
    return ensure_topics(admin(settings), [TopicSpec(n, partitions) for n in names], timeout)


def delete_topics(settings: PlatformSettings, names: Iterable[str], timeout: float = 30.0) -> dict[str, str]:
    """Delete the topics ``names``; one that does not exist counts as deleted. Returns the ones
    that could not be deleted, with the reason."""
    names = list(names)
    if not names:
        return {}
    adm = admin(settings)  # keep the client alive until the futures resolve
    failed = {}
    for name, fut in adm.delete_topics(names, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as exc:
            if not (exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                failed[name] = str(exc)
    return failed


def quiet_client_logs(name: str = client_log.name) -> None:
    """Silence the client logger ``name`` (librdkafka logs a line per retry) for a command that
    reports failures itself."""
    lg = logging.getLogger(name)
    lg.setLevel(logging.CRITICAL)
    lg.propagate = False
    lg.addHandler(logging.NullHandler())


class TopicReader:
    """One topic read without a consumer group: no subscription, no commits, so reading never
    moves any service's offsets. ``read_committed`` (default) hides aborted transactions."""

    def __init__(self, settings: PlatformSettings, topic: str, *, read_committed: bool = True,
                 group_id: str = "recpilot-reader", **overrides) -> None:
        self.topic = topic
        self.consumer = consumer(settings, group_id, **{
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted", **overrides})

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def partitions(self, timeout: float = 10.0) -> list[int]:
        """The topic's partitions; empty when the topic does not exist."""
        tmd = self.consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if tmd is None or tmd.error is not None:
            return []
        return sorted(tmd.partitions)

    def watermarks(self, partitions: Iterable[int] | None = None, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
        """(low, high) offsets per partition, asked of the broker now."""
        parts = self.partitions(timeout) if partitions is None else partitions
        return {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout, cached=False)
                for p in parts}

    def end_offsets(self, partitions: Iterable[int] | None = None, timeout: float = 10.0) -> dict[int, int]:
        return {p: hi for p, (_lo, hi) in self.watermarks(partitions, timeout).items()}

    def offsets_for_time(self, ts_ms: int, partitions: Iterable[int] | None = None,
                         timeout: float = 10.0) -> dict[int, int]:
        """Per partition, the first offset whose timestamp is >= ``ts_ms`` (-1: none)."""
        parts = self.partitions(timeout) if partitions is None else partitions
        found = self.consumer.offsets_for_times([TopicPartition(self.topic, p, ts_ms) for p in parts], timeout=timeout)
        return {tp.partition: tp.offset for tp in found}

    def read(self, starts: dict[int, int], on_message: Callable[[Message], None], timeout: float = 120.0,
             idle_s: float = 0.0, until: dict[int, int] | None = None) -> set[int]:
        """Read each partition of ``starts`` from its offset (``OFFSET_BEGINNING`` for the start)
        to its end, handing each message to ``on_message``; with ``idle_s``, go on until nothing
        new came for that long; with ``until`` (e.g. :meth:`end_offsets` taken before), stop each
        partition before that offset, so that what arrives meanwhile is not read. Returns the
        partitions that had not reached their end when ``timeout`` s passed (empty: all read)."""
        if until is not None:
            starts = {p: o for p, o in starts.items() if until.get(p, 0) > max(o, 0)}
        if not starts:
            return set()
        c = self.consumer
        c.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
        pending = set(starts)
        t0 = last = time.monotonic()
        try:
            while time.monotonic() - t0 < timeout:
                for m in c.consume(10_000, 0.2):
                    err = m.error()
                    if err is None:
                        if until is not None:
                            end = until[m.partition()]
                            if m.offset() >= end - 1:
                                pending.discard(m.partition())
                            if m.offset() >= end:
                                continue
                        on_message(m)
                        last = time.monotonic()
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                if not pending and time.monotonic() - last >= idle_s:
                    break
        finally:
            c.unassign()
        return pending


def read_to_end(settings: PlatformSettings, topic: str, *, read_committed: bool = True, idle_s: float = 0.0,
                timeout: float = 120.0) -> list[Message]:
    """Every message now in ``topic`` (all partitions, from the start to their end; with
    ``idle_s``, until nothing new came for that long), or what was read when ``timeout`` s passed."""
    out: list[Message] = []
    with TopicReader(settings, topic, read_committed=read_committed) as r:
        r.read({p: OFFSET_BEGINNING for p in r.partitions()}, out.append, timeout, idle_s)
    return out


def end_offsets(settings: PlatformSettings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The high watermark of each partition of ``topic``."""
    with TopicReader(settings, topic, group_id="recpilot-offsets-probe") as r:
        return r.end_offsets(timeout=timeout)


def committed_offsets(settings: PlatformSettings, group: str, topic: str, partitions: Iterable[int],
                      timeout: float = 10.0) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic`` (without joining the group); none is 0."""
    # read_uncommitted: do not wait for offsets pending in an open transaction (require_stable off)
    c = consumer(settings, group, **{"isolation.level": "read_uncommitted"})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        return {tp.partition: max(0, tp.offset) for tp in tps}
    finally:
        c.close()


def commit_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    """The offsets to commit after ``messages`` were handled: last offset + 1 per partition."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        if m.offset() >= last.get(key, -1):
            last[key] = m.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def usable(messages: Sequence[Message], on_error: Callable[[KafkaError], None] | None = None) -> list[Message]:
    """The messages of a ``consume()`` batch that carry data.

    Partition-EOF markers are skipped; a fatal error raises; any other error goes to ``on_error``
    (logged when there is none) — librdkafka retries those by itself."""
    good = []
    for m in messages:
        err = m.error()
        if err is None:
            good.append(m)
        elif err.code() == KafkaError._PARTITION_EOF:
            continue
        elif on_error is not None:
            on_error(err)
        elif err.fatal():
            raise KafkaException(err)
        else:
            log.warning("consumer error", extra={"error": str(err), "collapse": True})
    return good


class DeliveryError(Unavailable, RuntimeError):
    """The broker did not acknowledge every message in time."""


def produce_waiting(prod: Producer, topic: str, value: bytes | None, key: bytes | str | None = None, **kw) -> None:
    """``prod.produce``, waiting while the producer's local queue is full (serving delivery reports
    with ``poll`` until there is room) instead of failing with BufferError."""
    while True:
        try:
            prod.produce(topic, value, key, **kw)
            return
        except BufferError:
            prod.poll(0.05)


def flush_or_raise(prod: Producer, timeout: float = 30.0) -> None:
    """Wait until every queued message is acknowledged by the broker (or fail loudly)."""
    remaining = prod.flush(timeout)
    if remaining:
        raise DeliveryError(f"{remaining} messages not delivered within {timeout}s")


class ConsumeLoop(LoopThread):
    """Poll batches, hand each to ``handler``, commit only after the handler returned.

    ``handler(messages)`` must finish its side effect before returning (for a producer:
    produce then :func:`flush_or_raise`). Then the batch's offsets are committed: synchronously
    by the consumer, or by ``commit(offsets)`` when given (e.g. ``send_offsets_to_transaction`` +
    ``commit_transaction`` for a handler that produced inside a Kafka transaction). Then
    ``after_batch(messages)`` runs, if given (metrics). If any of these raises, the loop stops
    with the error in :attr:`error` (the batch was not committed and is replayed by the next
    consumer of the group); the owner exits non-zero or starts a fresh loop.

    ``on_assign(new)``, if given, runs on the loop's thread at each assignment, before any message
    of it is handled, with the partitions that are new to this consumer: neither held nor handed
    back by the revocation just before (the eager protocol revokes everything at each rebalance).

    Exposed for health checks: :attr:`last_poll` (monotonic time of the last ``consume`` return),
    :attr:`assigned` (the partitions held, as ``(topic, partition)``), :attr:`batches`.
    """

    def __init__(
        self,
        kafka_consumer: Consumer,
        topics: Sequence[str],
        handler: Callable[[list[Message]], None],
        *,
        commit: Callable[[list[TopicPartition]], None] | None = None,
        after_batch: Callable[[list[Message]], None] | None = None,
        batch_size: int = 500,
        poll_timeout: float = 0.2,
        on_error: Callable[[KafkaError], None] | None = None,
        on_assign: Callable[[set[tuple[str, int]]], None] | None = None,
        name: str = "consume-loop",
    ) -> None:
        self.consumer = kafka_consumer
        self.on_assign = on_assign
        self.topics = list(topics)
        self.handler = handler
        self.commit = commit or self._commit
        self.after_batch = after_batch
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.on_error = on_error
        LoopThread.__init__(self, name)
        self.batches = 0
        self.messages = 0
        self.last_poll = 0.0
        self.assigned: set[tuple[str, int]] = set()
        self._revoked: set[tuple[str, int]] = set()  # revoked since the last assignment

    # lifecycle (LoopThread): stop() stops taking new batches, lets the current one finish and
    # commit, and closes the consumer
    failure = "consume loop failed; the failed batch was not committed"

    def _on_assign(self, _consumer, partitions) -> None:
        gained = {(p.topic, p.partition) for p in partitions}
        new = gained - self.assigned - self._revoked
        self.assigned |= gained
        self._revoked = set()
        log.info("partitions assigned", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]})
        if self.on_assign is not None:  # on the loop's thread, before the partitions' first batch
            self.on_assign(new)

    def _on_revoke(self, _consumer, partitions) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        self.assigned -= revoked
        self._revoked |= revoked  # handed back in order: not new if the rebalance returns them
        log.info("partitions revoked", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]})

    def _on_lost(self, _consumer, partitions) -> None:
        self.assigned -= {(p.topic, p.partition) for p in partitions}  # another may have consumed them since
        log.info("partitions lost", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]})

    def _commit(self, offsets: list[TopicPartition]) -> None:
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def run(self) -> None:
        consumer = self.consumer
        consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        consume, batch_size, poll_timeout, on_error = consumer.consume, self.batch_size, self.poll_timeout, self.on_error
        handler, commit, after_batch, stop = self.handler, self.commit, self.after_batch, self._stop
        try:
            while not stop.is_set():
                msgs = consume(batch_size, poll_timeout)
                self.last_poll = time.monotonic()
                if not msgs:
                    continue
                good = usable(msgs, on_error)
                if not good:
                    continue
                handler(good)
                commit(commit_offsets(good))
                self.batches += 1
                self.messages += len(good)
                if after_batch is not None:
                    after_batch(good)
        finally:
            try:
                consumer.close()
            except Exception:
                log.exception("consumer close failed", extra={"loop": self.name})


# -- consumer statistics -----------------------------------------------------------------------
def consumer_lag(stats_json: str, topic: str) -> int | None:
    """The lag summed over the partitions of ``topic`` in a librdkafka statistics document (the
    argument of the consumer's ``stats_cb``); None when the document cannot be read."""
    try:
        st = json.loads(stats_json)
        parts = st.get("topics", {}).get(topic, {}).get("partitions", {})
        return sum(max(0, p.get("consumer_lag", -1)) for k, p in parts.items() if k != "-1")
    except (ValueError, AttributeError):
        return None
