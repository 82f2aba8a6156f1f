"""The monitor's process: one consumer over its inputs feeding the detectors' :class:`Engine`, alerts
to the channels' :class:`Dispatcher`, firing alerts to the :class:`Actuator`, and ``/status``.

* **Inputs** (assigned, not subscribed: the monitor is one aggregator that must see every
  instance's events, and it reads from the end at start): ``metrics.*``, ``rewards`` and a sample of
  ``events.clean`` (every ``1/events_sample``-th offset, so the sample costs no parsing).
* **Ticks**: every ``tick_s`` the engine closes the windows that are due and returns the alerts
  that fired or resolved; each goes to every channel (never blocking: the dispatcher queues per
  channel) and a firing one to the actuator (which acts on its own thread).
* **Restart**: windows are rebuilt from the traffic that follows (the first windows after a start
  give no verdict until they have data); which alerts were firing is restored from the ``alerts``
  topic, so an alert still firing is not announced twice and one that stopped is resolved, and the
  actions taken are restored, so a cool-down survives the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from recpilot import kafka as rkafka
from recpilot.lifecycle import LoopThread
from recpilot.pb import events_pb2
from recpilot.settings import PlatformSettings
from recpilot.topics import catalogue
from services.monitor import metrics as M
from services.monitor.alerts import Alert
from services.monitor.settings import MonitorSettings

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class References:
    """model.json ``reference`` per (model, version), cached; a version not (yet) in the repository is
    asked again after ``retry_s``."""

    def __init__(self, repository, retry_s: float = 60.0) -> None:
        self.repository, self.retry_s = repository, retry_s
        self._cache: dict[tuple[str, str], tuple[float, dict | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str, version: str) -> dict | None:
        key = (model, version)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and (hit[1] is not None or time.monotonic() - hit[0] < self.retry_s):
            return hit[1]
        try:
            ref = self.repository.meta(model, version).get("reference") or None
        except Exception as exc:  # not in this repository (yet): no reference, no drift verdict
            log.info("no reference for model version", extra={"model": model, "version": version,
                                                               "error": str(exc), "collapse": True})
            ref = None
        with self._lock:
            self._cache[key] = (time.monotonic(), ref)
        return ref


def read_alerts_log(platform: PlatformSettings, topic: str, timeout: float = 30.0
                    ) -> tuple[dict[str, Alert], list[events_pb2.MonitorAction]]:
    """The ``alerts`` topic read to its end: the latest alert per fingerprint, and every action."""
    latest: dict[str, Alert] = {}
    actions: list[events_pb2.MonitorAction] = []

    def on_message(m) -> None:
        msg = events_pb2.AlertsMessage()
        try:
            msg.ParseFromString(m.value() or b"")
        except Exception:
            return
        which = msg.WhichOneof("body")
        if which == "alert":
            a = Alert.from_proto(msg.alert)
            latest[a.fingerprint] = a
        elif which == "action":
            actions.append(msg.action)

    with rkafka.TopicReader(platform, topic, group_id="recpilot-monitor-restore") as r:
        r.read({p: OFFSET_BEGINNING for p in r.partitions()}, on_message, timeout)
    return latest, actions


def gauges(status: dict) -> None:
    """The dashboard's gauges from the engine's status: each model version's largest drift statistic
    over its features (kind feature) and of its scores (kind score), and each version's CTR."""
    det = status.get("detectors") or {}
    for name, kind in (("FeatureDrift", "feature"), ("ScoreDrift", "score")):
        top: dict[tuple[str, str, str], float] = {}
        for k in (det.get(name) or {}).get("keys", []):
            last, labels = k.get("last") or {}, k.get("labels") or {}
            if last.get("breach") is None or not last.get("statistic"):
                continue
            key = (labels.get("model", ""), labels.get("version", ""), last["statistic"])
            top[key] = max(top.get(key, 0.0), float(last.get("value") or 0.0))
        for (model, version, statistic), value in top.items():
            M.DRIFT.labels(model, version, kind, statistic).set(value)
    for seq in (det.get("CtrRegression") or {}).get("sequences", []):
        if seq.get("rate") is not None:
            M.CTR.labels(seq.get("model", ""), seq.get("version", "")).set(seq["rate"])


class MonitorLoop(LoopThread):
    """The consume-and-tick loop (its own thread); ``engine`` calls are serialised by ``lock``,
    which :meth:`Monitor.status` takes too."""

    failure = "monitor loop failed"

    def __init__(self, settings: MonitorSettings, platform: PlatformSettings, engine, lock: threading.Lock,
                 on_alerts: Callable[[list[Alert]], None]) -> None:
        super().__init__("monitor-loop")
        self.s, self.platform, self.engine, self.lock, self.on_alerts = settings, platform, engine, lock, on_alerts
        self.last_poll = 0.0
        self.assigned = False
        self.counts: dict[str, int] = {}
        every = round(1.0 / settings.events_sample) if settings.events_sample > 0 else 0
        self._sample_every = every

    def _assign(self, consumer) -> None:
        s = self.s
        topics = [*s.metrics_topics, s.rewards_topic]
        if self._sample_every:
            topics.append(s.events_topic)
        md = consumer.list_topics(timeout=10.0).topics
        parts = []
        for t in topics:
            tmd = md.get(t)
            if tmd is None or tmd.error is not None:
                log.warning("monitor input topic missing; not read", extra={"topic": t})
                continue
            parts += [TopicPartition(t, p, now_ms()) for p in sorted(tmd.partitions)]
        # Start at the offsets of "now", resolved before the assignment (a lazily resolved OFFSET_END
        # would skip what is produced between this call and the first fetch); none yet: the high
        # watermark, asked now.
        if parts:
            resolved = []
            for tp in consumer.offsets_for_times(parts, timeout=10.0):
                offset = tp.offset
                if offset < 0:
                    offset = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10.0,
                                                            cached=False)[1]
                resolved.append(TopicPartition(tp.topic, tp.partition, offset))
            parts = resolved
        consumer.assign(parts)
        self.assigned = True
        log.info("monitor inputs assigned", extra={"partitions": len(parts)})

    def run(self) -> None:
        s = self.s
        consumer = rkafka.consumer(self.platform, s.group_id, **{"client.id": f"recpilot-monitor-{s.instance_id}",
                                                                  "fetch.wait.max.ms": 100})
        metrics_topics = set(s.metrics_topics)
        rewards, events, every = s.rewards_topic, s.events_topic, self._sample_every
        engine, lock = self.engine, self.lock
        next_tick = time.monotonic() + s.tick_s
        try:
            self._assign(consumer)
            while not self._stop.is_set():
                msgs = consumer.consume(5_000, min(0.2, s.tick_s))
                self.last_poll = time.monotonic()
                if msgs:
                    n = {"metrics": 0, "rewards": 0, "events": 0}
                    bad = dict.fromkeys(n, 0)
                    with lock:
                        for m in msgs:
                            if m.error() is not None:
                                if m.error().code() != KafkaError._PARTITION_EOF:
                                    log.warning("monitor consume error", extra={"error": str(m.error()), "collapse": True})
                                continue
                            t = m.topic()
                            before = engine.malformed
                            if t in metrics_topics:
                                engine.observe_metric_bytes(m.value())
                                name = "metrics"
                            elif t == rewards:
                                engine.observe_reward_bytes(m.value())
                                name = "rewards"
                            elif t == events and m.offset() % every == 0:
                                engine.observe_event_bytes(m.value())
                                name = "events"
                            else:
                                continue
                            n[name] += 1
                            if engine.malformed != before:
                                bad[name] += 1
                    for name, k in n.items():
                        if k:
                            M.EVENTS.labels(name).inc(k)
                            self.counts[name] = self.counts.get(name, 0) + k
                        if bad[name]:
                            M.MALFORMED.labels(name).inc(bad[name])
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + s.tick_s
                    t0 = time.perf_counter()
                    with lock:
                        alerts = engine.tick(now_ms())
                        st = engine.status()
                    M.TICK_SECONDS.observe(time.perf_counter() - t0)
                    gauges(st)
                    if alerts:
                        self.on_alerts(alerts)
        finally:
            try:
                consumer.close()
            except Exception:
                log.exception("monitor consumer close failed")


class Monitor:
    """Engine + dispatcher + actuator + loop, and the ``/status`` document."""

    def __init__(self, settings: MonitorSettings, platform: PlatformSettings, *, config=None, repository=None,
                 producer=None, submit=None) -> None:
        from services.monitor.actions import Actuator, enabled_check, kill_switch, state_dir, train_runner
        from services.monitor.channels import Dispatcher, build_channels
        from services.monitor.config import load_config
        from services.monitor.engine import Engine

        self.s, self.platform = settings, platform
        self.config = config or load_config(settings.config_path)
        if repository is None:
            from recpilot.models.repository import ModelRepository

            repository = ModelRepository(platform.model_repo)
        self.repository = repository
        self.state_dir = state_dir(settings, platform)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._kill_switch = lambda: kill_switch(self.state_dir)
        self.producer = producer or rkafka.producer(platform, **{"client.id": f"recpilot-monitor-{settings.instance_id}"})
        self.engine = Engine(self.config, References(repository), instance=settings.instance_id,
                             serving_path=self.state_dir / "serving_references.json")
        self.lock = threading.Lock()
        self.dispatcher = Dispatcher(build_channels(settings, self.producer), queue_size=settings.channel_queue_size,
                                     retry_initial_s=settings.retry_initial_s, retry_max_s=settings.retry_max_s)
        self._controller = None
        self.actions_enabled = enabled_check(settings.actions_enabled, self.state_dir)
        self.actuator = Actuator(self.config.actions, submit or self._submit, cooldown_s=settings.action_cooldown_s,
                                 enabled=self.actions_enabled, audit=self._audit,
                                 retrain=train_runner(settings, platform.model_repo), instance=settings.instance_id,
                                 state=None if submit else self._state)
        self.loop = MonitorLoop(settings, platform, self.engine, self.lock, self._on_alerts)
        self.started_ms = now_ms()
        self.restored = {"firing": 0, "actions": 0}

    # -- actions (called from the actuator's worker thread only) -----------------------------------
    def _control(self):
        from recpilot.models.deployments.controller import DeploymentController

        if self._controller is None:
            self._controller = DeploymentController(self.platform, repository=self.repository, actor="monitor")
        self._controller.refresh()
        return self._controller

    def _state(self, model: str):
        return self._control().state(model)

    def _submit(self, action: str, model: str, version: str = "", **kw):
        return self._control().submit(action, model, version, **kw)

    def _audit(self, action: events_pb2.MonitorAction) -> None:
        M.ACTIONS.labels(action.action, action.outcome).inc()
        log.warning("monitor action", extra={"action": action.action, "outcome": action.outcome,
                                             "model": action.model_name, "version": action.version,
                                             "alert": action.alert_name, "detail": action.detail})
        try:
            rkafka.produce_waiting(self.producer, self.s.alerts_topic,
                                   events_pb2.AlertsMessage(action=action).SerializeToString(),
                                   action.alert_fingerprint or action.action)
            self.producer.poll(0)
        except Exception as exc:  # the audit record is also in the log line above and in /status
            log.error("action audit record not published", extra={"error": repr(exc)})

    # -- alerts ----------------------------------------------------------------------------------
    def _on_alerts(self, alerts: list[Alert]) -> None:
        for a in alerts:  # the dispatcher counts them (recpilot_monitor_alerts_total)
            log.warning("alert " + a.status, extra={"alert": a.name, "labels": a.labels, "value": a.value,
                                                    "threshold": a.threshold, "statistic": a.statistic})
            self.dispatcher.submit(a)
            if a.firing:
                self.actuator.handle(a)

    # -- lifecycle -------------------------------------------------------------------------------
    def restore(self) -> None:
        """Adopt the alerts still firing and the actions taken, from the ``alerts`` topic."""
        latest, actions = read_alerts_log(self.platform, self.s.alerts_topic)
        firing = [a for a in latest.values() if a.firing]
        with self.lock:
            self.engine.adopt_firing(firing, now_ms())
        self.actuator.restore(actions)
        self.restored = {"firing": len(firing), "actions": len(actions)}
        log.info("monitor state restored from the alerts topic", extra=self.restored)

    def start(self) -> None:
        adm = rkafka.admin(self.platform)
        want = {*self.s.metrics_topics, self.s.rewards_topic, self.s.events_topic, self.s.alerts_topic}
        rkafka.ensure_topics(adm, [t for t in catalogue(self.platform) if t.name in want])
        self.restore()
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
        self.actuator.close()
        self.dispatcher.close(5.0)
        self.producer.flush(5.0)
        if self._controller is not None:
            self._controller.close()

    @property
    def running(self) -> bool:
        return self.loop.running

    def ready(self) -> tuple[bool, dict]:
        stalled = time.monotonic() - self.loop.last_poll if self.loop.last_poll else None
        ok = self.loop.running and self.loop.assigned and stalled is not None and stalled < self.s.stall_after_s
        return ok, {"checks": {"loop": self.loop.running, "assigned": self.loop.assigned,
                               "last_poll_s_ago": None if stalled is None else round(stalled, 2)}}

    def status(self) -> dict:
        with self.lock:
            eng = self.engine.status()
            malformed, processed = self.engine.malformed, self.engine.processed
        return {"instance": self.s.instance_id, "started_ms": self.started_ms, "detectors": eng["detectors"],
                "firing": eng["firing"], "hints": eng["hints"],
                "engine": {k: eng[k] for k in ("now_ms", "processed", "malformed", "ignored", "late", "inputs",
                                               "open_windows", "resources")},
                "channels": self.dispatcher.stats(), "actions": self.actuator.history(),
                "actions_enabled": self.actions_enabled(), "kill_switch": self._kill_switch(),
                "malformed": malformed, "processed": processed,
                "inputs": dict(self.loop.counts), "restored": dict(self.restored)}
