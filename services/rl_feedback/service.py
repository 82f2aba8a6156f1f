"""The Kafka transport around :class:`services.rl_feedback.join.PartitionJoin`.

One consumer (group ``group_id``, ``read_committed``) reads ``impressions`` and ``events.clean``.
The two are co-partitioned (same key, user id, and partition count: checked at start, the service
refuses to start otherwise), and the ``range`` assignor gives partition p of both topics to the
same member, so partition p is one join task with its own :class:`PartitionJoin` and
:class:`Watermark`.

Exactly one ``Reward`` per (request, item), however often anything restarts: every step is one
Kafka transaction holding

* the rewards of the impressions whose window closed (topic ``rewards``, key user id),
* the join-state changes (topic ``rl_feedback.join-changelog``, compacted, partition p for task p:
  ``i:<request_id>`` -> the open impression, ``e:<event_id>`` -> an outcome held on an open
  impression or buffered, None once it closed or expired),
* the consumer offsets of the messages read (``send_offsets_to_transaction``).

So the rewards, the state and the input position move together or not at all. On assignment a
task's state is rebuilt from its changelog partition (read_committed, to its end) before its
first message is processed; a crash aborts the open transaction (``init_transactions`` of the
next start under the same transactional id, or the broker after ``transaction_timeout_ms``) and
the messages after the last commit are read again into the state of the last commit. Rebalances
(eager ``range`` assignor) happen inside ``consume``, between transactions, so a revoked task
has committed everything it did.

Event time: the loop gives each task a watermark per :class:`Watermark` (the smaller, over the
two inputs, of the largest event time read, or wall clock - ``grace_ms`` while that input is at
its end: librdkafka's partition-EOF event, reported when the consumer's position reaches the
partition's end). Windows close on it, so a restart reading a backlog closes windows only as
fast as the backlog's own event time, never before the outcomes it holds are read.

The loop is the service's own (not :class:`recpilot.kafka.ConsumeLoop`): windows must close on
idle polls too, partition EOF is an input, and assignment restores state.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from recpilot import kafka as rkafka
from recpilot.errors import FailedPrecondition
from recpilot.lifecycle import LoopThread
from recpilot.pb import events_pb2
from recpilot.settings import PlatformSettings
from recpilot.topics import TopicSpec, catalogue
from services.rl_feedback import metrics as M
from services.rl_feedback.join import JoinStats, PartitionJoin, Watermark, Weights
from services.rl_feedback.settings import RlFeedbackSettings

log = logging.getLogger(__name__)
Impression = events_pb2.Impression
UserEvent = events_pb2.UserEvent
_EOF = KafkaError._PARTITION_EOF


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Task:
    __slots__ = ("partition", "join", "wm")

    def __init__(self, partition: int, join: PartitionJoin, wm: Watermark) -> None:
        self.partition, self.join, self.wm = partition, join, wm


def check_copartitioned(adm, s: RlFeedbackSettings, timeout: float = 10.0) -> int:
    """The partition count shared by the impressions and events topics (and the changelog, when
    it exists); :class:`FailedPrecondition` when they differ or a topic is missing."""
    md = adm.list_topics(timeout=timeout).topics
    counts = {}
    for t in (s.impressions_topic, s.events_topic):
        tm = md.get(t)
        if tm is None or tm.error is not None:
            raise FailedPrecondition(f"topic {t} does not exist (recpilot up creates the catalogue)")
        counts[t] = len(tm.partitions)
    n = counts[s.impressions_topic]
    if counts[s.events_topic] != n:
        raise FailedPrecondition(
            f"{s.impressions_topic} ({n} partitions) and {s.events_topic} ({counts[s.events_topic]}) are not "
            "co-partitioned: the reward join needs both keyed by user id with the same partition count "
            "(RECPILOT_IMPRESSIONS_PARTITIONS = RECPILOT_EVENTS_PARTITIONS when the topics are created)")
    cl = md.get(s.changelog_topic)
    if cl is not None and cl.error is None and len(cl.partitions) != n:
        raise FailedPrecondition(f"{s.changelog_topic} has {len(cl.partitions)} partitions, {s.impressions_topic} {n}: "
                                 "the join changelog must be co-partitioned with its inputs")
    return n


class RlFeedbackService(LoopThread):
    def __init__(self, settings: RlFeedbackSettings, platform: PlatformSettings, weights: Weights | None = None) -> None:
        self.s = settings
        self.platform = platform
        self.weights = weights or Weights(settings.reward_click, settings.reward_add_to_cart,
                                          settings.reward_purchase, settings.reward_revenue)
        self.tasks: dict[int, _Task] = {}
        self.producer = None
        self.consumer = None
        self.started = False
        self.transactions = 0
        self.last_poll = 0.0
        LoopThread.__init__(self, "rl-feedback-loop")
        self._stats_lock = threading.Lock()
        self._closed_stats = JoinStats()  # stats of tasks revoked from this replica
        self._published = JoinStats()
        self._latencies: list[int] = []    # ms, since the last metrics interval
        self._delivery_errors: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        s, p = self.s, self.platform
        adm = rkafka.admin(p)
        n = check_copartitioned(adm, s)
        spec = {t.name: t for t in catalogue(p)}.get(s.changelog_topic)
        rkafka.ensure_topics(adm, [TopicSpec(s.changelog_topic, n, spec.config if spec else {"cleanup.policy": "compact"})])
        self.producer = rkafka.producer(p, **{
            "client.id": f"rl-feedback-{s.instance_id}", "transactional.id": s.txn_id,
            "transaction.timeout.ms": s.transaction_timeout_ms, "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000, "delivery.report.only.error": True,
            "on_delivery": self._on_delivery})
        self.producer.init_transactions(60)  # aborts what a crashed predecessor left open
        self.consumer = rkafka.consumer(p, s.group_id, **{
            "client.id": f"rl-feedback-{s.instance_id}", "isolation.level": "read_committed",
            "enable.partition.eof": True, "partition.assignment.strategy": "range",
            "session.timeout.ms": s.session_timeout_ms, "queued.max.messages.kbytes": 64 * 1024,
            **({"group.instance.id": s.instance_id} if s.static_membership else {})})
        self.last_poll = time.monotonic()  # the stall clock starts with the loop
        LoopThread.start(self)
        self.started = True
        log.info("rl_feedback started", extra={"impressions": s.impressions_topic, "events": s.events_topic,
                                                "rewards": s.rewards_topic, "changelog": s.changelog_topic,
                                                "partitions": n, "window_s": s.window_s, "grace_ms": s.grace_ms,
                                                "weights": self.weights.__dict__})

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the current step commits; close the consumer (leaves the group)."""
        LoopThread.stop(self, timeout)

    def stalled_for(self) -> float:
        """Seconds since the loop last polled (0 while it is not running)."""
        return time.monotonic() - self.last_poll if self.running else 0.0

    def ready(self) -> tuple[bool, dict]:
        stalled = time.monotonic() - self.last_poll > self.s.stall_after_s
        tasks = dict(self.tasks)
        details = {"loop_running": self.running, "stalled": stalled, "partitions": sorted(tasks),
                   "open_impressions": sum(len(t.join.open) for t in tasks.values()),
                   "buffered_outcomes": sum(t.join.buffered for t in tasks.values()),
                   "transactions": self.transactions}
        if self.error is not None:
            details["error"] = repr(self.error)
        return (self.started and self.running and not stalled and bool(tasks)), details

    # -- assignment -----------------------------------------------------------------------------
    def _on_assign(self, _consumer, partitions) -> None:
        mine = sorted({tp.partition for tp in partitions if tp.topic == self.s.impressions_topic} - set(self.tasks))
        if mine:
            self.tasks.update(self._restore(mine))
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})

    def _on_revoke(self, _consumer, partitions) -> None:
        for tp in partitions:
            if tp.topic == self.s.impressions_topic:
                task = self.tasks.pop(tp.partition, None)
                if task is not None:
                    with self._stats_lock:
                        self._closed_stats = _plus(self._closed_stats, task.join.stats)
        log.info("partitions revoked", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})

    def _restore(self, parts: list[int]) -> dict[int, _Task]:
        """The tasks of ``parts``, each with its state read from its changelog partition (read_committed,
        from the start to the end; the latest record of each key is the state)."""
        t0 = time.monotonic()
        latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in parts}

        def keep(m) -> None:
            latest[m.partition()][m.key()] = m.value()

        reader = rkafka.TopicReader(self.platform, self.s.changelog_topic, group_id=f"{self.s.group_id}-restore",
                                    **{"client.id": f"rl-feedback-restore-{self.s.instance_id}"})
        try:
            starts = {p: OFFSET_BEGINNING for p, (lo, hi) in reader.watermarks(parts).items() if hi > lo}
            pending = reader.read(starts, keep, timeout=self.s.restore_timeout_s)
        finally:
            reader.close()
        if pending:
            raise FailedPrecondition(f"changelog partitions {sorted(pending)} not read to their end in "
                                     f"{self.s.restore_timeout_s}s")
        tasks = {}
        for p in parts:
            join = PartitionJoin(self.s.window_ms, self.weights)
            join.restore(latest[p])
            M.RESTORED.inc(len(latest[p]))
            tasks[p] = _Task(p, join, Watermark(self.s.grace_ms))
            log.info("join state restored", extra={"partition": p, "records": len(latest[p]), "open": len(join.open),
                                                   "buffered": join.buffered})
        log.info("join state restore done", extra={"partitions": parts, "seconds": round(time.monotonic() - t0, 3)})
        return tasks

    # -- the loop -------------------------------------------------------------------------------
    failure = "rl_feedback loop failed; the open transaction is not committed"

    def finished(self) -> None:
        try:
            self.consumer.close()
        except Exception:
            log.exception("consumer close failed")

    def run(self) -> None:
        s = self.s
        c = self.consumer
        c.subscribe([s.impressions_topic, s.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                    on_lost=self._on_revoke)
        imp_topic = s.impressions_topic
        parse_imp, parse_ev = Impression.FromString, UserEvent.FromString
        stop, tasks = self._stop, self.tasks
        while not stop.is_set():
            msgs = c.consume(s.batch_size, s.poll_timeout_s)
            self.last_poll = time.monotonic()
            t0 = time.perf_counter()
            offsets: dict[tuple[str, int], int] = {}
            for m in msgs:
                err = m.error()
                topic, p = m.topic(), m.partition()
                task = tasks.get(p)
                if err is not None:
                    if err.code() == _EOF:
                        if task is not None:
                            task.wm.reached_end(0 if topic == imp_topic else 1)
                    elif err.fatal():
                        raise KafkaException(err)
                    else:
                        log.warning("consumer error", extra={"error": str(err), "collapse": True})
                    continue
                offsets[(topic, p)] = m.offset() + 1
                if task is None:  # not a task of ours (cannot happen with range on co-partitioned topics)
                    continue
                if topic == imp_topic:
                    imp = parse_imp(m.value())
                    task.wm.observe(0, imp.timestamp_ms)
                    task.join.impression(imp)
                else:
                    ev = parse_ev(m.value())
                    task.wm.observe(1, ev.timestamp_ms)
                    task.join.outcome(ev)
            now = now_ms()
            for task in tasks.values():
                task.join.advance(task.wm.advance(now), now)
            self._commit(offsets, t0)

    def _commit(self, offsets: dict[tuple[str, int], int], t0: float) -> None:
        """One transaction: every task's rewards and changelog records, and the offsets read."""
        s = self.s
        outs = [(t.partition, t.join.take()) for t in self.tasks.values()]
        if not offsets and not any(o for _p, o in outs):
            return
        prod = self.producer
        rewards_topic, cl_topic = s.rewards_topic, s.changelog_topic
        prod.begin_transaction()
        lat: list[int] = []
        for p, out in outs:
            for key, value in out.rewards:
                rkafka.produce_waiting(prod, rewards_topic, value, key)
            for key, value in out.changelog:
                rkafka.produce_waiting(prod, cl_topic, value, key, partition=p)
            lat += out.latencies_ms
        if offsets:
            prod.send_offsets_to_transaction([TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                             self.consumer.consumer_group_metadata(), s.commit_timeout_s)
        prod.commit_transaction(s.commit_timeout_s)
        if self._delivery_errors:
            raise rkafka.DeliveryError(f"{len(self._delivery_errors)} messages failed: {self._delivery_errors[:3]}")
        self.transactions += 1
        if self.transactions == 1:
            log.info("first transaction committed", extra={"rewards": sum(len(o.rewards) for _p, o in outs),
                                                           "offsets": len(offsets)})
        M.BATCHES.inc()
        M.BATCH_SECONDS.observe(time.perf_counter() - t0)
        if lat:
            with self._stats_lock:
                self._latencies += lat
            for v in lat:
                M.REWARD_LATENCY.observe(v / 1000.0)
        self._publish_stats()

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    # -- metrics --------------------------------------------------------------------------------
    def stats(self) -> JoinStats:
        with self._stats_lock:
            total = self._closed_stats
        for t in list(self.tasks.values()):
            total = _plus(total, t.join.stats)
        return total

    def _publish_stats(self) -> None:
        cur = self.stats()
        d = cur.minus(self._published)
        self._published = cur
        M.IMPRESSIONS.inc(d.impressions)
        M.DUPLICATE_IMPRESSIONS.inc(d.duplicate_impressions)
        for fate in M.OUTCOME_FATES:
            n = getattr(d, "duplicates" if fate == "duplicate" else fate)
            if n:
                M.OUTCOMES.labels(fate=fate).inc(n)
        M.REWARDS.inc(d.rewards)
        M.POSITIVE.inc(d.positive)
        tasks = list(self.tasks.values())
        M.OPEN.set(sum(len(t.join.open) for t in tasks))
        M.BUFFERED.set(sum(t.join.buffered for t in tasks))
        if tasks:
            M.WATERMARK_LAG.set(max(0.0, (now_ms() - min(t.wm.value for t in tasks)) / 1000.0))

    def take_latencies(self) -> list[int]:
        with self._stats_lock:
            out, self._latencies = self._latencies, []
        return out


def _plus(a: JoinStats, b: JoinStats) -> JoinStats:
    return JoinStats(**{k: v + getattr(b, k) for k, v in a.__dict__.items()})
