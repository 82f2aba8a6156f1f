"""The control topic as a log: replaying it into a :class:`~.state.DeploymentBook` and writing to it.

``control.deployments`` is the only store of deployment state. It carries
:class:`~recpilot.pb.deployments_pb2.ControlMessage` envelopes keyed by model name: commands written
by the controller (the CLI, the monitor, rl_feedback). The serving replicas' acknowledgements go to
a topic of their own, ``control.acks`` (:func:`recpilot.topics.acks_topic`; the same envelope with
an ``ack`` body), so that WRITE on the control topic can be granted to the control plane alone.
Both keep everything (retention forever), so anyone rebuilds the state by replaying the control
topic from the beginning, including after a restart of the broker (Kafka keeps the log on disk).
An ack found on the control topic (an earlier version wrote them there) is skipped, as is anything
but an ack on the acks topic.

* reading: :class:`ControlLogReader` (assign from the beginning, watermarks, read to the end, tail),
  :class:`AckLogReader` (the same for the acks topic, into the book's ``acks``),
  :func:`replay` (one-shot), :class:`DeploymentFollower` (the thread inside each serving replica
  that keeps the state current, calls ``on_change`` and publishes acks, REJECTED ones included, to
  the acks topic);
* a reader given the model repository applies its checks while replaying (:mod:`.checks`) and starts
  from the deployment snapshot kept there when the log was lost or truncated (:mod:`.snapshot`,
  reported: log, ``recpilot_deployments_control_log_lost``, ``log_problems``);
* writing: :func:`ensure_control_topic` (one partition, retention forever; for the acks topic too)
  and :func:`publish_message` (one message, waited for until the broker confirmed it).

The Kafka client is imported inside the functions that use it, so importing this module stays
light.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Gauge

from recpilot.errors import Unavailable
from recpilot.models.deployments.checks import repository_admission
from recpilot.models.deployments.snapshot import StartPlan, plan_start, read_snapshot
from recpilot.models.deployments.state import (ACK_NAMES, DeploymentBook, DeploymentError, DeploymentSettings, Outcome,
                                               now_ms)
from recpilot.pb import deployments_pb2 as pb
from recpilot.settings import PlatformSettings
from recpilot.topics import CONTROL_DEPLOYMENTS
from recpilot.topics import acks_topic as acks_topic_of

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while a broker restarts, ...) go through logging:
# JSON in services; the CLI silences this logger and reports errors itself.
kafka_log = logging.getLogger("recpilot.deployments.kafka")

# Metrics of the follower inside each serving replica (and of the controller in the CLI).

_m_applied = Counter("recpilot_deployments_commands_applied_total",
                     "deployment commands applied to the followed state (replay included)")
_m_rejected = Counter("recpilot_deployments_commands_rejected_total",
                      "deployment commands in the log that were invalid against the state they met")
_m_lost = Gauge("recpilot_deployments_control_log_lost",
                 "1 while the deployment state comes from the snapshot because the control topic lost commands")
_m_truncated = Gauge("recpilot_deployments_control_log_truncated",
                     "1 when the control topic's low watermark was above 0 at start")
_m_acks = Counter("recpilot_deployments_acks_published_total", "acknowledgements published by this process",
                  ["status"])
_m_stray = Counter("recpilot_deployments_stray_messages_total",
                   "messages skipped for being on the wrong topic: an ack on the control topic (written by an "
                   "earlier version), a command or state on the acks topic", ["topic"])


class ControlTopicUnavailable(DeploymentError, Unavailable):
    """The control topic cannot be read now (broker unreachable, topic without a leader, a replay
    that did not finish in time); retrying later may succeed."""


class PublishError(DeploymentError, Unavailable):
    """Publishing (or reading back) a validated command failed; whether it reached the log is
    unknown, so the message says to check the status."""


# --------------------------------------------------------------------------------------------
# the topic and writing to it
# --------------------------------------------------------------------------------------------
def control_topic_spec(topic: str):
    from recpilot.topics import TopicSpec

    # Commands (and, on their own topic, acks) are the audit trail and the state: keep them
    # forever, one partition.
    return TopicSpec(topic, 1, {"retention.ms": "-1"})


def ensure_control_topic(settings: PlatformSettings, topic: str, timeout: float = 20.0) -> list[str]:
    """Create the control topic (or an acks topic) if missing (1 partition, retention forever);
    return warnings about an existing topic whose configuration would lose deployment history (also
    logged). Only reads metadata when the topic exists: no CREATE grant needed then."""
    from confluent_kafka.admin import ConfigResource

    from recpilot.kafka import admin, ensure_topics

    adm = admin(settings, logger=kafka_log)
    ensure_topics(adm, [control_topic_spec(topic)], timeout=timeout)
    warnings = []
    try:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs = adm.describe_configs([res], request_timeout=timeout)[res].result(timeout)
        retention = configs["retention.ms"].value if "retention.ms" in configs else None
        policy = configs["cleanup.policy"].value if "cleanup.policy" in configs else "delete"
        if "compact" in (policy or ""):
            warnings.append(f"topic {topic} has cleanup.policy={policy}: compaction keeps only the last command "
                            "per model and destroys the deployment history; use cleanup.policy=delete, retention.ms=-1")
        if retention is not None and retention != "-1":
            warnings.append(f"topic {topic} has retention.ms={retention}: commands older than that are deleted and "
                            "the replayed state will be wrong; set retention.ms=-1")
        parts = len(adm.list_topics(topic, timeout=timeout).topics[topic].partitions)
        if parts != 1:
            warnings.append(f"topic {topic} has {parts} partitions: the history order across models is then not "
                            "total (each model's own order still is); create it with 1 partition")
    except Exception as exc:  # the check is advisory
        log.debug("could not check the control topic configuration", extra={"topic": topic, "error": str(exc)})
    for w in warnings:
        log.warning(w)
    return warnings


def publish_message(producer, topic: str, message: pb.ControlMessage, key: str, timeout: float, what: str) -> None:
    """Produce ``message`` (keyed by model name) and wait until the broker confirmed it; raises
    :class:`PublishError` (``what`` not delivered) if the broker reported a delivery error."""
    from recpilot.kafka import flush_or_raise

    errors: list = []
    producer.produce(topic, key=key.encode(), value=message.SerializeToString(),
                     on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
    flush_or_raise(producer, timeout)
    if errors:
        raise PublishError(f"{what} not delivered: {errors[0]}")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def repository_book(repository, deploy: DeploymentSettings | None = None) -> DeploymentBook:
    """A book that applies the checks of ``repository`` (a ModelRepository or its root; none when
    it is None) while replaying."""
    if repository is None:
        return DeploymentBook()
    from recpilot.models.repository import ModelRepository
    from recpilot.settings import load

    if not hasattr(repository, "meta"):
        repository = ModelRepository(repository)
    deploy = deploy or load(DeploymentSettings)
    return DeploymentBook(admit=repository_admission(repository, deploy.auc_tolerance, deploy.logloss_tolerance))


class ControlLogReader:
    """Reads the control topic from the beginning into a :class:`DeploymentBook` and then tails it
    (the generic one-shot reader is :class:`recpilot.kafka.TopicReader`; no consumer
    group offsets are used or committed: every reader replays everything).

    With ``snapshot_root`` (the model repository) the start is planned by
    :func:`.snapshot.plan_start`: the book may be seeded from the snapshot and the log read from
    its offsets; ``start_plan`` says how it started and ``problems`` what was wrong with the log."""

    _kind = "control"  # the label of recpilot_deployments_stray_messages_total

    def __init__(self, settings: PlatformSettings, topic: str, book: DeploymentBook | None = None,
                 client_id: str = "recpilot-deployments", lock: threading.RLock | None = None,
                 snapshot_root: Path | None = None) -> None:
        from recpilot.kafka import consumer

        self._lock = lock or threading.RLock()
        self._client_id = client_id
        self._offsets_client = None
        self._admin = None
        self.settings, self.topic = settings, topic
        self.book = book or DeploymentBook()
        self.snapshot_root = snapshot_root
        self.start_plan: StartPlan | None = None
        self.topic_id: str | None = None
        self._consumer = consumer(settings, group_id=f"{client_id}-{uuid.uuid4().hex[:12]}",
                                  **{"client.id": client_id, "enable.partition.eof": False, "logger": kafka_log})
        self._positions: dict[int, int] = {}   # partition -> next offset to read
        self._assigned = False
        self.on_message: Callable[[str, object], None] | None = None
        self.on_before: Callable[[int, int], None] | None = None

    def close(self) -> None:
        self._consumer.close()
        if self._offsets_client is not None:
            self._offsets_client.close()
            self._offsets_client = None
        self._admin = None

    @property
    def problems(self) -> list[str]:
        return list(self.start_plan.problems) if self.start_plan is not None else []

    @property
    def positions(self) -> dict[int, int]:
        """The next offset to read, per partition."""
        return dict(self._positions)

    def _topic_id(self, timeout: float) -> str | None:
        """The topic's id (a recreated topic has a new one); None when the broker does not say."""
        from confluent_kafka import TopicCollection

        from recpilot.kafka import admin

        try:
            if self._admin is None:
                self._admin = admin(self.settings, logger=kafka_log)
            desc = self._admin.describe_topics(TopicCollection([self.topic]), request_timeout=timeout)[self.topic]
            return str(desc.result(timeout).topic_id)
        except Exception as exc:
            log.debug("topic id not available", extra={"topic": self.topic, "error": str(exc)})
            return None

    def _plan(self, lows: dict[int, int], ends: dict[int, int], topic_id: str | None) -> dict[int, int]:
        """Plan the start against the snapshot, seed the book, report; the offsets to read from."""
        plan = plan_start(read_snapshot(self.snapshot_root, self.topic), topic_id, lows, ends, self.topic)
        with self._lock:
            if plan.seed is not None:
                self.book.seed(plan.seed, plan.read_from)
        reported = self.start_plan.problems if self.start_plan is not None else None
        self.start_plan, self.topic_id = plan, topic_id
        _m_lost.set(1 if plan.lost else 0)
        _m_truncated.set(1 if plan.truncated else 0)
        if plan.problems != reported:
            for problem in plan.problems:
                (log.error if plan.lost or plan.seed is None else log.warning)(
                    problem, extra={"topic": self.topic, "snapshot_root": str(self.snapshot_root)})
        return plan.read_from

    def _assign(self, timeout: float) -> bool:
        """Assign every partition from the beginning. False if the topic does not exist; raises
        :class:`ControlTopicUnavailable` if it exists but is not ready (no leader yet) within ``timeout``."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        deadline = time.monotonic() + timeout
        while True:
            md = self._consumer.list_topics(self.topic, timeout=max(deadline - time.monotonic(), 0.5))
            tmd = md.topics.get(self.topic)
            if tmd is None or (tmd.error is not None and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                if self.snapshot_root is not None:
                    self._plan({}, {}, None)
                return False
            if tmd.error is None and tmd.partitions and all(p.leader >= 0 and p.error is None
                                                            for p in tmd.partitions.values()):
                break
            if time.monotonic() > deadline:
                raise ControlTopicUnavailable(
                    f"topic {self.topic} is not ready: {tmd.error or 'partitions without a leader'}")
            time.sleep(0.2)
        parts = sorted(tmd.partitions)
        self._positions = {p: 0 for p in parts}
        start = {p: OFFSET_BEGINNING for p in parts}
        if self.snapshot_root is not None:
            lows, ends = self.watermarks(max(deadline - time.monotonic(), 1.0))
            read_from = self._plan(lows, ends, self._topic_id(max(deadline - time.monotonic(), 1.0)))
            start.update({p: o for p, o in read_from.items() if p in start})
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in start.items()])
        self._positions = {p: max(o, 0) for p, o in start.items()}
        self._assigned = True
        return True

    def watermarks(self, timeout: float) -> tuple[dict[int, int], dict[int, int]]:
        """``(low, high)`` offsets per partition, from the broker now."""
        from confluent_kafka import TopicPartition

        from recpilot.kafka import consumer

        # A client of its own: on the fetching consumer's connection this request would queue
        # behind the broker's long-poll fetch (fetch.wait.max.ms, 500 ms) whenever the log is idle.
        if self._offsets_client is None:
            self._offsets_client = consumer(self.settings, group_id=f"{self._client_id}-offsets",
                                            **{"client.id": f"{self._client_id}-offsets", "logger": kafka_log})
        lows, ends = {}, {}
        for p in self._positions:
            lows[p], ends[p] = self._offsets_client.get_watermark_offsets(TopicPartition(self.topic, p),
                                                                          timeout=timeout)
        return lows, ends

    def poll_once(self, timeout: float = 0.2, max_messages: int = 500) -> int:
        """Consume what is there (up to ``timeout``); apply it to the book. Returns messages applied."""
        n = 0
        # poll() returns with the first message (consume(n, t) would wait for n messages or t);
        # both outside the lock, so state() readers never wait on Kafka.
        first = self._consumer.poll(timeout)
        if first is None:
            return 0
        msgs = [first] + (self._consumer.consume(max_messages - 1, 0) if max_messages > 1 else [])
        with self._lock:
            for m in msgs:
                n += self._apply_message(m)
        return n

    def _apply_message(self, m) -> int:
        from confluent_kafka import KafkaError, KafkaException

        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return 0
            if err.fatal():
                raise KafkaException(err)
            log.warning("control topic consumer error", extra={"error": str(err), "collapse": True})
            return 0
        if self.on_before is not None:
            self.on_before(m.partition(), m.offset())
        self._positions[m.partition()] = m.offset() + 1
        kind, obj = self._apply(m.value(), m.offset())
        if kind == "stray":
            _m_stray.labels(self._kind).inc()
        if self.on_message is not None:
            self.on_message(kind, obj)
        return 1

    @property
    def assigned(self) -> bool:
        """The topic was found and is being read (False while it does not exist)."""
        return self._assigned

    def _apply(self, value: bytes | None, offset: int) -> tuple[str, object]:
        return self.book.apply_bytes(value, offset)

    def caught_up(self, ends: dict[int, int], lows: dict[int, int] | None = None) -> bool:
        lows = lows or {}
        return all(self._positions.get(p, 0) >= end or end <= lows.get(p, 0) for p, end in ends.items())

    def read_to_end(self, timeout: float) -> DeploymentBook:
        """Replay up to the end offsets the broker reports now. An absent topic is an empty log.
        Raises :class:`ControlTopicUnavailable` if the broker does not answer within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            if not self._assigned and not self._assign(timeout):
                return self.book
            lows, ends = self.watermarks(max(deadline - time.monotonic(), 1.0))
        except DeploymentError:
            raise
        except Exception as exc:
            raise ControlTopicUnavailable(
                f"cannot read {self.topic} from Kafka at {self.settings.kafka_bootstrap}: {exc}") from None
        while not self.caught_up(ends, lows):
            if time.monotonic() > deadline:
                raise ControlTopicUnavailable(
                    f"replaying {self.topic} from {self.settings.kafka_bootstrap} did not finish within "
                    f"{timeout:g}s (read {self._positions}, end {ends})")
            self.poll_once(0.2)
        return self.book


class AckLogReader(ControlLogReader):
    """Reads an acks topic (``control.acks``) from the beginning and tails it, recording the acks in
    ``book.acks`` (:meth:`DeploymentBook.apply_ack_bytes`: only ack bodies count; a command written
    there is never applied). No snapshot: acks are not state."""

    _kind = "acks"

    def __init__(self, settings: PlatformSettings, topic: str, book: DeploymentBook,
                 client_id: str = "recpilot-acks", lock: threading.RLock | None = None) -> None:
        super().__init__(settings, topic, book, client_id=client_id, lock=lock)

    def _apply(self, value: bytes | None, offset: int) -> tuple[str, object]:
        return self.book.apply_ack_bytes(value, offset)


def replay(settings: PlatformSettings, topic: str = CONTROL_DEPLOYMENTS, timeout: float = 20.0,
           repository: Path | None = None) -> DeploymentBook:
    """The deployment state of every model, rebuilt from the whole topic (with ``repository``: its
    checks applied and its snapshot used as :class:`ControlLogReader` does)."""
    reader = ControlLogReader(settings, topic, repository_book(repository), snapshot_root=repository)
    try:
        return reader.read_to_end(timeout)
    finally:
        reader.close()


# --------------------------------------------------------------------------------------------
# serving replicas
# --------------------------------------------------------------------------------------------
class DeploymentFollower:
    """Follows ``control.deployments`` for a serving replica.

    ``start()`` launches a thread that replays the topic from the beginning and then tails it.
    While replaying, commands are applied silently; once caught up with the end offsets seen at
    start, ``on_change(state, last_command)`` is called once per model that has a state, and
    ``ready`` becomes True. After that ``on_change(state, command)`` is called for every newly
    applied command. A live command that is rejected (invalid against the state, or, with
    ``repository``, failing its checks) changes nothing, is not passed on, and is answered with a
    REJECTED ack carrying the reason. ``on_change`` runs on the follower's thread; if it raises, a
    FAILED ack with the error is published for that command. ``ack(command, status, message)``
    publishes a :class:`DeploymentAck` with this replica's id to ``acks_topic`` (default: the
    control topic's, :func:`recpilot.topics.acks_topic`), never to the control topic, which a
    replica only reads. Acks found on the control topic (an earlier version's) are skipped.

    ``repository`` (the model repository's root): apply its checks while replaying and start from
    its deployment snapshot when the log was lost or truncated; ``problems`` then says what was
    wrong with the log (empty when nothing was).
    """

    def __init__(self, settings: PlatformSettings, replica_id: str,
                 on_change: Callable[[pb.DeploymentState, pb.DeploymentCommand], None] | None = None,
                 topic: str = CONTROL_DEPLOYMENTS, *, ensure_topic: bool = True, repository: Path | None = None,
                 deploy: DeploymentSettings | None = None, acks_topic: str | None = None) -> None:
        self.settings, self.replica_id, self.topic = settings, replica_id, topic
        self.acks_topic = acks_topic or acks_topic_of(topic)
        self.on_change = on_change
        self.ensure_topic = ensure_topic
        self.repository = repository
        self.book = repository_book(repository, deploy)
        self._reader: ControlLogReader | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = None
        self.error: BaseException | None = None
        self.applied = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        from recpilot.kafka import producer

        self._producer = producer(self.settings, **{"client.id": f"recpilot-follower-{self.replica_id}",
                                                     "logger": kafka_log})
        self._thread = threading.Thread(target=self._run_guarded, name=f"deployments-{self.replica_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._producer is not None:
            remaining = self._producer.flush(timeout)
            if remaining:
                log.warning("acks not delivered at stop", extra={"remaining": remaining})

    @property
    def ready(self) -> bool:
        """Caught up with the topic (every command up to start-up is applied) and still running."""
        return self._ready.is_set() and self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    @property
    def problems(self) -> list[str]:
        """What was wrong with the control log at start (lost, truncated); empty when nothing."""
        reader = self._reader
        return reader.problems if reader is not None else []

    @property
    def log_lost(self) -> bool:
        reader = self._reader
        return bool(reader is not None and reader.start_plan is not None and reader.start_plan.lost)

    # -- reading -------------------------------------------------------------------------
    def state(self, model_name: str) -> pb.DeploymentState:
        with self._lock:
            return self.book.state(model_name)

    def states(self) -> dict[str, pb.DeploymentState]:
        with self._lock:
            return {name: self.book.state(name) for name in self.book.states}

    # -- acks ----------------------------------------------------------------------------
    def ack(self, command: pb.DeploymentCommand, status: int, message: str = "") -> pb.DeploymentAck:
        """Publish this replica's acknowledgement of ``command`` and wait for the broker."""
        if self._producer is None:
            raise DeploymentError("the follower is not started")
        with self._lock:
            revision = self.book.outcomes.get(command.command_id, Outcome(command, False)).revision
        ack = pb.DeploymentAck(command_id=command.command_id, model_name=command.model_name, version=command.version,
                               status=status, replica=self.replica_id, message=message, revision=revision,
                               timestamp_ms=now_ms())
        publish_message(self._producer, self.acks_topic, pb.ControlMessage(ack=ack), command.model_name, 10.0,
                        f"ack for {command.command_id}")
        _m_acks.labels(ACK_NAMES.get(status, "UNSPECIFIED")).inc()
        return ack

    def _ensure_acks_topic(self) -> None:
        """Create the acks topic when missing. Following does not depend on it: a replica whose
        principal may not create topics (the example ACLs) still follows, and its acks fail
        (logged) until ``recpilot topics`` created it."""
        try:
            ensure_control_topic(self.settings, self.acks_topic, timeout=5.0)
        except Exception as exc:
            log.warning("cannot create the acks topic; acks are not delivered until it exists",
                        extra={"topic": self.acks_topic, "error": str(exc), "replica": self.replica_id})

    # -- the thread ----------------------------------------------------------------------
    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
            log.exception("deployment follower failed", extra={"replica": self.replica_id, "topic": self.topic})

    def _notify(self, state: pb.DeploymentState, cmd: pb.DeploymentCommand) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(state, cmd)
        except Exception as exc:
            log.exception("on_change failed", extra={"command_id": cmd.command_id, "model": cmd.model_name})
            try:
                self.ack(cmd, pb.FAILED, f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not publish the FAILED ack", extra={"command_id": cmd.command_id})

    def _reject(self, outcome: Outcome) -> None:
        cmd = outcome.command
        log.warning("deployment command rejected; serving what was served", extra={
            "command_id": cmd.command_id, "model": cmd.model_name[:80], "model_version": cmd.version[:80],
            "actor": cmd.actor[:80], "reason": outcome.reason, "replica": self.replica_id})
        try:
            self.ack(cmd, pb.REJECTED, outcome.reason)
        except Exception:
            log.exception("could not publish the REJECTED ack", extra={"command_id": cmd.command_id})

    def _run(self) -> None:
        reader = self._reader = ControlLogReader(self.settings, self.topic, self.book,
                                                 client_id=f"recpilot-follower-{self.replica_id}", lock=self._lock,
                                                 snapshot_root=self.repository)
        try:
            # Wait for the broker and the topic (a replica may start before either).
            ends = lows = None
            while not self._stop.is_set():
                try:
                    if self.ensure_topic:
                        ensure_control_topic(self.settings, self.topic, timeout=5.0)
                        self._ensure_acks_topic()
                    if reader._assign(5.0):
                        lows, ends = reader.watermarks(5.0)
                        break
                except Exception as exc:
                    log.warning("control topic not available yet", extra={"topic": self.topic, "error": str(exc),
                                                                          "collapse": True})
                self._stop.wait(1.0)
            if ends is None:
                return
            pending: list[tuple[pb.DeploymentState, pb.DeploymentCommand]] = []
            rejected: list[Outcome] = []
            initial: list[tuple[pb.DeploymentState, pb.DeploymentCommand]] | None = None

            def snapshot() -> list[tuple[pb.DeploymentState, pb.DeploymentCommand]]:
                snaps = [self.book.state(n) for n in sorted(self.book.states)]
                return [(st, st.history[-1]) for st in snaps if st.history]

            def on_before(partition: int, offset: int) -> None:
                # the first message past the end offsets seen at start: the replayed state is complete
                nonlocal initial
                if initial is None and offset >= ends.get(partition, 0):
                    initial = snapshot()

            def on_message(kind: str, obj: object) -> None:
                # called under self._lock right after the book applied the message
                if kind == "command" and isinstance(obj, Outcome) and obj.applied:
                    self.applied += 1
                    _m_applied.inc()
                    if initial is not None:  # a live command (after the replayed history)
                        st = self.book.state(obj.command.model_name)
                        pending.append((st, st.history[-1]))
                elif kind == "command" and isinstance(obj, Outcome):
                    _m_rejected.inc()
                    if initial is not None:  # a live command: answer it
                        rejected.append(obj)

            reader.on_before = on_before
            reader.on_message = on_message
            while not self._stop.is_set():
                reader.poll_once(0.2)
                with self._lock:
                    batch, pending[:] = list(pending), []
                    refused, rejected[:] = list(rejected), []
                    caught_up_now = not self._ready.is_set() and (initial is not None
                                                                  or reader.caught_up(ends, lows))
                    if caught_up_now and initial is None:
                        initial = snapshot()
                if caught_up_now:
                    for st, last in initial:
                        self._notify(st, last)
                    self._ready.set()
                    log.info("deployment state caught up", extra={"topic": self.topic, "models": len(initial),
                                                                  "replica": self.replica_id})
                for outcome in refused:
                    self._reject(outcome)
                for st, cmd in batch:
                    self._notify(st, cmd)
        finally:
            reader.close()
