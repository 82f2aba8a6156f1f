"""The faust-streaming worker: ``events.clean`` -> online features in Redis.

Transport around the domain code in :mod:`services.features.writer`: the agent takes batches of
events (``stream.take_events``), groups them by partition, and hands them to
:class:`FeatureWriter`, which applies each partition's events and stores the partition's offset in
ONE Lua call. Faust acks (and later commits) a batch only after that call returned; whatever the
Kafka commit says, the offsets in Redis make a replay a no-op.

Faust runs in the main thread with its own event loop and signal handling (SIGTERM stops the
worker gracefully); the HTTP health/metrics server runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from functools import partial
from pathlib import Path

from recpilot.lifecycle import await_chain, reexec, use_event_loop
from recpilot.metricevents import MetricPublisher, metric_event, summary
from recpilot.pb import events_pb2
from recpilot.settings import PlatformSettings
from services.features import metrics as m
from services.features.client import connect
from services.features.settings import FeaturesSettings
from services.features.writer import FeatureWriter, StoreBehind, offsets_ahead, transient_error_kind

log = logging.getLogger(__name__)

# Backoff between retries of a batch while Redis cannot take it (down, restarting, failing over,
# loading, or refusing writes: MISCONF, READONLY, OOM, BUSY ...), and between looks at the stored
# offsets while a partition waits for `recpilot features reset-offsets`.
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


def freshness_seconds(events: list[events_pb2.UserEvent], now_ms: int) -> list[float]:
    """Event time -> visible, per event; events stamped in the future (clock skew, which ingest
    tolerates up to 5 minutes) count as 0 rather than negative."""
    return [max(0.0, (now_ms - ev.timestamp_ms) / 1000.0) for ev in events if ev.timestamp_ms > 0]


def broker_settings(platform: PlatformSettings) -> dict:
    """faust's broker settings from the platform's: the broker URLs and, unless the protocol is
    PLAINTEXT, ``broker_credentials`` (faust hands them to each aiokafka client it builds:
    consumer, producer, admin client) with the TLS context of :func:`recpilot.kafka.ssl_context`."""
    conf: dict = {"broker": [f"kafka://{h.strip()}" for h in platform.kafka_bootstrap.split(",") if h.strip()]}
    proto = platform.kafka_security_protocol
    if proto == "PLAINTEXT":
        return conf
    import faust

    from recpilot.kafka import ssl_context

    ctx = ssl_context(platform)
    if proto == "SSL":
        conf["broker_credentials"] = faust.SSLCredentials(ctx)
    else:  # SASL_PLAINTEXT (no context) or SASL_SSL
        password = platform.kafka_sasl_password
        conf["broker_credentials"] = faust.SASLCredentials(
            username=platform.kafka_sasl_username, password=password.get_secret_value() if password else None,
            ssl_context=ctx, mechanism=platform.kafka_sasl_mechanism)
    return conf


class FeaturePipeline:
    def __init__(self, settings: FeaturesSettings, platform: PlatformSettings) -> None:
        self.loop_name = use_event_loop(settings.event_loop)
        import faust

        self.settings = settings
        self.platform = platform
        self.redis_url = settings.redis_url or platform.redis_url
        datadir = Path(settings.datadir) if settings.datadir else platform.home / "features" / settings.app_id
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            **broker_settings(platform),
            web_enabled=False,
            store="memory://",
            autodiscover=False,
            datadir=str(datadir),
            topic_allow_declare=False,  # the input topic belongs to the stack's catalogue
            topic_disable_leader=True,  # no tables, no leader-only timers: skip the assignor topic
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=settings.heartbeat_interval_s,
            stream_buffer_maxsize=max(8192, settings.batch_max * 2),
        )
        self.topic = self.app.topic(settings.input_topic, value_serializer="raw", key_serializer="raw")
        self.app.agent(self.topic, name=f"{settings.app_id}.apply")(self._process)
        self.app.timer(settings.metrics_interval_s)(self._tick)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        cluster = platform.redis_cluster
        self.aredis = connect(self.redis_url, cluster, aio=True, socket_timeout=10, socket_connect_timeout=5)
        self.sync_redis = connect(self.redis_url, cluster, socket_timeout=2, socket_connect_timeout=2)
        self.writer = FeatureWriter(self.aredis, settings.key_prefix, settings.session_items, settings.covisit_max,
                                    settings.user_ttl_s, shards=platform.redis_shards, cluster=cluster)
        self.instance = settings.instance or f"{socket.gethostname()}:{os.getpid()}"
        self.assigned: set = set()
        self.rebalanced = False
        self.last_tick = time.monotonic()
        self.applied_total = 0
        self.invalid_total = 0
        self.fresh = m.Reservoir()
        self.crash_reason: BaseException | None = None
        self.write_failure: dict | None = None  # the Redis error the current batch is retried for
        # sources whose stored offset is at or beyond the topic's end (the topic was recreated):
        # found by the lag check (``behind``) or holding a batch until the offsets are reset (``held``)
        self.behind: dict[str, dict[str, int]] = {}
        self.held: dict[str, dict[str, int]] = {}
        self._metrics: MetricPublisher | None = None
        # the group-coordination watchdog (``_check_group``): when aiokafka last had a successful
        # heartbeat or faust an assignment, counted only while the broker answers
        self.group_ok_at = time.monotonic()

    # -- faust callbacks ---------------------------------------------------------------
    async def _on_assigned(self, _sender=None, assigned=None, **_kw) -> None:
        self.assigned = {tp for tp in (assigned or ()) if tp.topic == self.settings.input_topic}
        self.rebalanced = True
        self.group_ok_at = time.monotonic()
        m.ASSIGNED.set(len(self.assigned))
        self._tune_fetcher()
        self._watch_heartbeats()
        self._seek_to_stored_offsets()
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.assigned)})

    def _tune_fetcher(self) -> None:
        """Apply fetch_min_bytes / fetch_max_wait_ms to faust's aiokafka consumer.

        Faust builds its AIOKafkaConsumer with fetch_min_bytes=1 and fetch_max_wait_ms=1500 and
        exposes neither; with min bytes 1 every fetch returns a record or two at moderate rates and
        faust's drain loop then pays its per-fetch overhead for each. These are attributes of
        aiokafka's Fetcher (read when each fetch request is built), so they are set here, once
        the consumer exists; if a faust/aiokafka upgrade moves them, a warning says so and the
        defaults stay (correct, only more CPU).
        """
        s = self.settings
        try:
            fetcher = self.app.consumer._thread._ensure_consumer()._fetcher
            if not (hasattr(fetcher, "_fetch_min_bytes") and hasattr(fetcher, "_fetch_max_wait_ms")):
                raise AttributeError("aiokafka Fetcher has no _fetch_min_bytes/_fetch_max_wait_ms")
            fetcher._fetch_min_bytes = s.fetch_min_bytes
            fetcher._fetch_max_wait_ms = s.fetch_max_wait_ms
        except AttributeError as exc:
            log.warning("fetch tuning not applied", extra={"error": repr(exc)})

    def _seek_to_stored_offsets(self) -> None:
        """Make faust's seek after each rebalance (``perform_seek``: to the group's committed offsets)
        go back to the offsets stored in Redis with the features where those are behind: Redis is
        the truth for what was applied, the Kafka commit only a hint. Redis can come back with
        less than it acknowledged (a failover to a replica that had not received the last writes,
        a restore from a backup, appendfsync everysec and a power cut) while the group's commit
        already passed those events; without this they would never be applied. Installed once
        (a wrapper around faust's ``Consumer.seek_to_committed``, whose mapping perform_seek takes
        as the read and committed offsets)."""
        consumer = self.app.consumer
        if getattr(consumer, "_recpilot_seek_to_stored", False):
            return
        committed_seek = consumer.seek_to_committed

        async def seek_to_stored():
            committed = dict(await committed_seek())
            try:
                committed.update(await self._rewind(committed))
            except Exception as exc:  # Redis unreadable now: the batch's own offsets still skip replays
                log.warning("stored offsets not compared with the committed ones", extra={"error": repr(exc)})
            return committed

        consumer.seek_to_committed = seek_to_stored
        consumer._recpilot_seek_to_stored = True

    async def _rewind(self, committed: dict) -> dict:
        """Seek the input partitions whose committed offset is beyond the stored one + 1 back to it;
        the offsets sought, by partition."""
        stored = await self._stored_offsets()
        out, behind = {}, {}
        for tp, offset in committed.items():
            if tp.topic != self.settings.input_topic or offset is None or offset < 0:
                continue
            src = f"{tp.topic}:{tp.partition}"
            want = stored.get(src, -1) + 1
            if want < offset:
                await self.app.consumer.seek(tp, want)
                out[tp], behind[src] = want, {"committed": offset, "stored_next": want}
        if behind:
            log.warning("the feature store is behind the group's committed offsets (Redis lost acknowledged "
                        "writes, or was restored from an older copy): replaying from the stored offsets",
                        extra={"partitions": behind, "events": sum(v["committed"] - v["stored_next"]
                                                                   for v in behind.values())})
        return out

    def _coordinator(self):
        """aiokafka's group coordinator inside faust's consumer (None if faust/aiokafka moved it)."""
        try:
            return self.app.consumer._thread._ensure_consumer()._coordinator
        except (AttributeError, AssertionError):
            return None

    def _watch_heartbeats(self) -> None:
        """Stamp ``group_ok_at`` at every successful heartbeat of aiokafka's group coordinator (a
        wrapper around its ``_do_heartbeat``, installed once; it runs in faust's consumer thread).
        Local state only: no request of its own goes to the broker."""
        coord = self._coordinator()
        if coord is None or not hasattr(coord, "_do_heartbeat"):
            log.warning("group coordination watchdog not installed: aiokafka's coordinator has no _do_heartbeat")
            return
        if getattr(coord, "_recpilot_watched", False):
            return
        beat = coord._do_heartbeat

        async def watched_heartbeat():
            ok = await beat()
            if ok:
                self.group_ok_at = time.monotonic()
            return ok

        coord._do_heartbeat = watched_heartbeat
        coord._recpilot_watched = True

    async def _check_group(self) -> None:
        """Seen once under heavy load after a broker kill -9: one of two workers' group coordination
        (aiokafka, inside faust) stalled without an error; the group gave its partitions to the other
        worker while it kept reporting them and applied nothing. The sign: no successful heartbeat
        and no assignment for ``group_stall_s`` while the broker answers (the clock restarts while
        it does not). Such a worker logs where its coordination task waits and restarts itself
        (``recpilot.lifecycle.reexec``): its partitions' events are applied exactly once by whoever
        holds them next, since the offsets live in Redis with the features."""
        s = self.settings
        if not s.group_stall_s or not self.rebalanced or self.crash_reason is not None:
            return
        now = time.monotonic()
        if now - self.group_ok_at < s.group_stall_s:
            return
        from recpilot.net import reachable

        if not await asyncio.get_running_loop().run_in_executor(None, reachable, self.platform.kafka_bootstrap):
            self.group_ok_at = now  # the broker is away: no heartbeat is expected
            return
        log.error("group coordination stalled: no successful heartbeat and no assignment while the broker answers; "
                  "restarting this worker", extra={
                      "group": s.app_id, "stalled_for_s": round(now - self.group_ok_at, 1),
                      "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.assigned),
                      "coordination": self._coordination_stacks()})
        reexec()

    def _coordination_stacks(self) -> dict:
        """Where aiokafka's coordination and heartbeat tasks wait (a diagnosis for the log)."""
        coord = self._coordinator()
        out: dict = {}
        if coord is None:
            return out
        out["coordinator_id"] = getattr(coord, "coordinator_id", None)
        out["generation"] = getattr(coord, "generation", None)
        out["member_id"] = getattr(coord, "member_id", None)
        for name in ("_coordination_task", "_heartbeat_task"):
            task = getattr(coord, name, None)
            try:
                out[name] = None if task is None else "done" if task.done() else await_chain(task)
            except Exception as exc:  # another thread's task: a best-effort read
                out[name] = repr(exc)
        return out

    async def _on_revoked(self, _sender=None, revoked=None, **_kw) -> None:
        self.assigned -= set(revoked or ())
        m.ASSIGNED.set(len(self.assigned))

    async def _process(self, stream) -> None:
        """Drain the agent's channel in batches and ack each batch after its Redis write.

        Like ``stream.take_events(batch_max, within)`` (which acks after the batch too), but it
        takes whatever is queued in one go and sleeps once per batch, instead of passing every
        event through the Stream's iterator and a buffer processor: less CPU per event. Faust's
        rebalance still works as for a Stream: it waits until every delivered event is acked.
        """
        s = self.settings
        queue = stream.channel.queue
        while True:
            try:
                batch = [await queue.get()]
            except StopAsyncIteration:  # faust ends the channel on shutdown
                return
            ended = self._drain(queue, batch)
            if len(batch) < s.batch_max and not ended:
                # one short sleep lets a batch build up (instead of a wait per trickling event)
                await asyncio.sleep(s.batch_within_s)
                ended = self._drain(queue, batch)
            await self.handle(batch)
            for event in batch:  # safe to commit only now: the batch is in Redis
                event.ack()
            if ended:
                return

    def _drain(self, queue, batch: list) -> bool:
        """Move queued events into ``batch`` (up to batch_max); True when the channel has ended."""
        limit = self.settings.batch_max
        while len(batch) < limit:
            try:
                batch.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                return False
            except StopAsyncIteration:
                return True
        return False

    def _mark_inbound(self, events) -> None:
        """Tell faust's monitor that the stream is processing these partitions.

        Faust's stall detector reads ``monitor.stream_inbound_time``, which its Stream updates per
        event; this agent drains the channel itself, so it updates it per batch (otherwise faust
        logs 'Stream has not started processing' errors for healthy partitions)."""
        monitor = self.app.monitor
        if monitor is None:
            return
        now = time.monotonic()
        for tp in {e.message.tp for e in events}:
            monitor.stream_inbound_time[tp] = now

    async def handle(self, events) -> None:
        by_source: dict[str, list[tuple[int, events_pb2.UserEvent]]] = {}
        tps: dict[str, object] = {}
        invalid = 0
        for event in events:
            msg = event.message
            try:
                ev = events_pb2.UserEvent.FromString(event.value)
            except Exception:  # ingest validated it; a bad record here is counted and skipped
                invalid += 1
                log.warning("undecodable event skipped",
                            extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})
                continue
            source = f"{msg.topic}:{msg.partition}"
            by_source.setdefault(source, []).append((msg.offset, ev))
            tps[source] = msg.tp
        for evs in by_source.values():
            evs.sort(key=lambda oe: oe[0])
        self._mark_inbound(events)
        applied = await self._write(by_source)
        skipped = [src for src, evs in by_source.items() if applied.get(src, 0) < len(evs)]
        if skipped:  # a replay after a restart -- or a recreated topic numbering its records from 0 again
            applied.update(await self._hold_if_behind(by_source, {src: tps[src] for src in skipped}))
        now_ms = int(time.time() * 1000)
        fresh: list[float] = []
        replayed = 0
        for source, evs in by_source.items():
            n = applied.get(source, 0)
            replayed += len(evs) - n
            if n:
                fresh.extend(freshness_seconds([ev for _, ev in evs[len(evs) - n:]], now_ms))
        for v in fresh:
            m.FRESHNESS.observe(v)
        self.fresh.add_many(fresh)
        n_applied = sum(applied.values())
        self.applied_total += n_applied
        self.invalid_total += invalid
        m.EVENTS.labels("applied").inc(n_applied)
        if replayed:
            m.EVENTS.labels("replayed").inc(replayed)
            log.info("skipped events applied before (replay)", extra={"events": replayed})
        if invalid:
            m.EVENTS.labels("invalid").inc(invalid)
        m.BATCHES.inc()

    async def _write(self, by_source) -> dict[str, int]:
        """Write one batch; wait out Redis outages and refusals for as long as they last.

        Giving up on a batch would be data loss (later batches would store higher offsets), so an
        error that describes Redis's state (connection lost, loading, MISCONF, READONLY, OOM, BUSY
        ...: :func:`transient_error_kind`) is retried forever with a capped backoff, redoing only
        the Lua calls that failed (each is atomic, and one that ran is skipped by its stored offset);
        /readyz reports the error meanwhile and SIGTERM still stops the worker (the unacked batch is
        replayed on restart). Any other error is a bug or a broken script: the worker stops with
        exit status 1.
        """
        if not by_source:
            return {}
        job = self.writer.prepare(by_source)
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                await self.writer.run(job)
            except StoreBehind as exc:
                m.WRITE_ERRORS.inc()
                log.error("the feature store lost acknowledged writes (Redis restarted from an older copy, or failed "
                          "over to a replica without the last writes): restarting this worker, which reads those "
                          "events again from the stored offsets", extra={
                              "partition": exc.source, "field": exc.field, "stored_offset": exc.stored,
                              "written_offset": exc.written})
                reexec()
            except Exception as exc:
                m.WRITE_ERRORS.inc()
                kind = transient_error_kind(exc)
                if kind is None:
                    self.crash_reason = exc
                    log.exception("redis write failed; stopping the worker")
                    await self.app.crash(exc)
                    raise
                m.WRITE_RETRIES.labels(kind).inc()
                since = self.write_failure["since"] if self.write_failure else time.monotonic()
                self.write_failure = {"kind": kind, "error": repr(exc), "since": since}
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                attempt += 1
                log.warning("redis write failed, retrying", extra={"error": repr(exc), "kind": kind, "attempt": attempt,
                                                                   "retry_in_s": delay, "collapse": True})
                await asyncio.sleep(delay)
                continue
            m.WRITE_SECONDS.observe(time.perf_counter() - t0)
            if attempt:
                self.write_failure = None
                log.info("redis write succeeded after retries", extra={"attempts": attempt + 1})
            return job.applied

    async def _hold_if_behind(self, by_source, tps: dict) -> dict[str, int]:
        """Tell replays from a recreated topic, and hold the latter until the offsets are reset.

        Events at or below a partition's stored offset are skipped as replays. When the partition's
        end (high watermark) is at or below the stored offset, they are not replays: the topic was
        recreated and numbers new records from 0 again. Such events were all skipped (their offsets
        are below the end), so nothing of them is in Redis; the batch is held (not acked) and
        reported -- log error, ``recpilot_features_offsets_ahead_partitions``, /readyz -- until
        ``recpilot features reset-offsets`` deletes the partition's stored offset, then written.
        Returns per held source how many events that write applied.
        """
        ends = {src: self.app.consumer.highwater(tp) for src, tp in tps.items()}
        ends = {src: hw for src, hw in ends.items() if hw is not None}
        if not ends:
            return {}
        stored = await self._stored_offsets()
        held = offsets_ahead(stored, ends)
        if not held:
            return {}
        self.held = held
        self._report_ahead()
        log.error("stored offsets are ahead of the topic's end: the topic was recreated or truncated; its events "
                  "wait until `recpilot features reset-offsets` removes the stored offsets",
                  extra={"partitions": held, "key_prefix": self.settings.key_prefix})
        out: dict[str, int] = {}
        attempt = 0
        while self.held:
            await asyncio.sleep(_RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)])
            attempt += 1
            stored = await self._stored_offsets()
            reset = [src for src in self.held if stored.get(src, -1) < by_source[src][0][0]]
            if reset:
                self.writer.forget(reset)
                out.update(await self._write({src: by_source[src] for src in reset}))
                self.held = {src: v for src, v in self.held.items() if src not in reset}
                self._report_ahead()
                log.info("stored offsets were reset; held events applied", extra={"partitions": reset})
        return out

    async def _stored_offsets(self) -> dict[str, int]:
        """The stored offsets, read again until Redis answers (a connection error must not stop the worker)."""
        attempt = 0
        while True:
            try:
                return await self.writer.stored_offsets()
            except Exception as exc:
                if transient_error_kind(exc) is None:
                    raise
                log.warning("stored offsets not readable, retrying", extra={"error": repr(exc), "collapse": True})
                await asyncio.sleep(_RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)])
                attempt += 1

    def _report_ahead(self) -> None:
        m.OFFSETS_AHEAD.set(len(set(self.behind) | set(self.held)))

    async def _tick(self) -> None:
        self.last_tick = time.monotonic()
        try:
            await self._update_lag()
        except Exception as exc:
            log.warning("lag update failed", extra={"error": repr(exc), "collapse": True})
        self.publish_metrics()
        await self._check_group()

    async def _update_lag(self) -> None:
        if not self.assigned:
            m.LAG.set(0)
            return
        stored = await self.writer.stored_offsets()
        lag = 0
        ends = {}
        for tp in self.assigned:
            hw = self.app.consumer.highwater(tp)
            if hw is None or hw < 0:
                continue
            ends[f"{tp.topic}:{tp.partition}"] = hw
            done = stored.get(f"{tp.topic}:{tp.partition}", -1) + 1
            lag += max(0, hw - done)
        m.LAG.set(lag)
        behind = offsets_ahead(stored, ends)
        new = {src: v for src, v in behind.items() if src not in self.behind}
        self.behind = behind
        self._report_ahead()
        if new:
            log.error("stored offsets are ahead of the topic's end: the topic was recreated or truncated; its new "
                      "events would be skipped until `recpilot features reset-offsets` removes the stored offsets",
                      extra={"partitions": new, "key_prefix": self.settings.key_prefix})

    # -- metric events for the monitor -------------------------------------------------------
    def metric_publisher(self) -> MetricPublisher:
        if self._metrics is None:
            from recpilot.kafka import producer

            self._metrics = MetricPublisher(producer(self.platform, **{"client.id": "recpilot-features"}),
                                            "features", self.instance, topic=self.settings.metrics_topic)
        return self._metrics

    def metric_events(self, now_ms: int) -> list[events_pb2.MetricEvent]:
        labels = {"topic": self.settings.input_topic}
        ev = partial(metric_event, "features", self.instance, labels=labels, timestamp_ms=now_ms)
        out = [
            ev("events_applied_total", self.applied_total),
            ev("events_invalid_total", self.invalid_total),
            ev("consumer_lag_messages", m.LAG._value.get()),
        ]
        fresh = self.fresh.drain()
        if fresh:  # seconds in the reservoir, milliseconds in the event
            out.append(ev("freshness_ms", fresh["quantiles"]["p99"] * 1000.0,
                          summary=summary(fresh["count"], fresh["sum"], fresh["min"], fresh["max"],
                                          fresh["quantiles"], scale=1000.0)))
        return out

    def publish_metrics(self) -> None:
        try:
            pub = self.metric_publisher()
            pub.publish([*self.metric_events(int(time.time() * 1000)), *pub.resource_events()])
        except Exception as exc:  # metrics must never stop the pipeline
            log.warning("metric events not published", extra={"error": repr(exc), "collapse": True})

    # -- health ------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict]:
        details: dict = {"partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in self.assigned)}
        try:
            redis_ok = bool(self.sync_redis.ping())
        except Exception as exc:
            redis_ok = False
            details["redis_error"] = repr(exc)
        details["redis"] = redis_ok
        details["rebalanced"] = self.rebalanced
        if self.crash_reason is not None:
            details["crashed"] = repr(self.crash_reason)
        failure = self.write_failure
        if failure is not None:
            details["redis_write_error"] = {"kind": failure["kind"], "error": failure["error"],
                                            "failing_for_s": round(time.monotonic() - failure["since"], 1)}
        ahead = {**self.behind, **self.held}
        if ahead:
            details["offsets_ahead_of_topic"] = ahead
        if self.rebalanced:
            details["group_heartbeat_s_ago"] = round(time.monotonic() - self.group_ok_at, 1)
        ok = (redis_ok and self.rebalanced and bool(self.assigned) and self.crash_reason is None
              and failure is None and not ahead)
        return ok, details

    def live(self) -> tuple[bool, dict]:
        age = time.monotonic() - self.last_tick
        limit = 3 * self.settings.metrics_interval_s + 30
        return age < limit and self.crash_reason is None, {"last_tick_s_ago": round(age, 1)}

    # -- run ---------------------------------------------------------------------------
    def run(self) -> int:
        """Run the faust worker in this thread until SIGTERM/SIGINT; return the exit status."""
        from faust.worker import Worker

        worker = Worker(self.app, loglevel=self.platform.log_level, override_logging=False,
                        redirect_stdouts=False, quiet=True)
        worker.spinner = None  # a terminal spinner would write escape codes into the JSON log
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
            return 1 if self.crash_reason is not None else code
        return 1 if self.crash_reason is not None else 0

    def close(self) -> None:
        if self._metrics is not None:
            self.publish_metrics()
            self._metrics.close(10.0)
        self.sync_redis.close()
