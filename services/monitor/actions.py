"""The monitor's actions: what a firing alert makes the platform do, through the deployment control.

The action policy (``[actions]`` in the monitor's config: alert name -> action) maps an alert to
one of:

* ``rollback``: ROLLBACK of the alert's ``model`` to its previous production version. Refused when
  the alert's ``version`` is no longer production (someone already acted) or there is no previous
  version.
* ``abort_canary``: CLEAR_CANARY of the alert's ``model``; refused when its ``version`` is not the
  canary any more.
* ``pause_policy``: the re-ranking policy of the alert's ``model`` back to the ranker's own order:
  PROMOTE kind POLICY of :data:`recpilot.rl.artifact.DEFAULT_VERSION` (``ranker-order``, which the
  control accepts without a policy file) when the alert's ``policy_version`` is production, or
  CLEAR_CANARY kind POLICY when it is the policy canary. A later ``recpilot models rollback --kind
  policy`` resumes the learned policy.
* ``retrain``: ``recpilot train`` on the latest window in a subprocess (:class:`TrainSubprocess`),
  then PROMOTE of the new version, gated by the offline-metric promotion gate like any promotion (a
  refused promotion is audited as ``refused`` with the gate's reason).
* ``none``: nothing.

Every decision is an audit record (``events_pb2.MonitorAction``, outcome ``executed``,
``cooldown``, ``disabled``, ``refused`` or ``failed``) handed to the ``audit`` callable, which the
monitor publishes on the ``alerts`` topic; each command published carries actor ``monitor`` and a
reason naming the alert (name, labels, statistic, value, threshold, fingerprint).

Safety: a cool-down per (action, model) (an action that reached the control, executed, refused
by the control or the promotion gate, or failed, blocks the same action on the same model for
``cooldown_s``; a refusal by the actuator's own state check, e.g. the version is no longer
production, costs nothing), and the
global kill switch ``enabled()`` (``MonitorSettings.actions_enabled`` and the runtime file that
``recpilot monitor actions --disable`` writes under the monitor's state dir, :func:`disable`;
it survives restarts), checked when the alert arrives and again just before the command is
published.

Threading: :meth:`Actuator.handle` is called from the monitor's loop and never waits for Kafka or a
training run. It decides at once what needs no I/O (not configured, kill switch, cool-down) and
returns that record; an action to execute is queued (a bounded queue, ``queue_size``) to the
actuator's own worker thread, which publishes the command (or runs the training subprocess) and
hands the record to ``audit`` from that thread; ``handle`` then returns None. ``audit`` must
therefore be thread-safe (a confluent-kafka ``produce`` is). :meth:`Actuator.join` waits until the
queue is empty (tests, shutdown); :meth:`Actuator.close` stops the worker.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recpilot.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, RecpilotError
from recpilot.pb import events_pb2

from services.monitor.alerts import Alert

log = logging.getLogger(__name__)

ACTOR = "monitor"
ACTIONS = ("rollback", "abort_canary", "pause_policy", "retrain", "none")
EXECUTED, COOLDOWN, DISABLED, REFUSED, FAILED = "executed", "cooldown", "disabled", "refused", "failed"
KILL_FILE = "actions-disabled.json"
HISTORY = 200  # audit records kept for /status


# --------------------------------------------------------------------------------------------
# the runtime kill switch: a file under the monitor's state dir
# --------------------------------------------------------------------------------------------
def state_dir(settings=None, platform=None) -> Path:
    """The monitor's state dir: ``MonitorSettings.state_dir``, else ``<home>/monitor``."""
    from recpilot.settings import PlatformSettings, load

    from services.monitor.settings import MonitorSettings

    settings = settings or load(MonitorSettings)
    if settings.state_dir is not None:
        return Path(settings.state_dir)
    platform = platform or load(PlatformSettings)
    return Path(platform.home) / "monitor"


def kill_file(directory: Path) -> Path:
    return Path(directory) / KILL_FILE


def disable(directory: Path, by: str = "", reason: str = "") -> dict:
    """Turn the monitor's actions off until :func:`enable` (a file, so it survives restarts)."""
    from recpilot.models.deployments import default_actor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"disabled_ms": int(time.time() * 1000), "by": by or default_actor(), "reason": reason}
    tmp = kill_file(directory).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(kill_file(directory))
    return record


def enable(directory: Path) -> bool:
    """Remove the kill file; True if there was one."""
    try:
        kill_file(directory).unlink()
        return True
    except FileNotFoundError:
        return False


def kill_switch(directory: Path) -> dict | None:
    """The kill file's record (who, when, why) when actions are disabled at run time, else None. A
    file that cannot be parsed still disables (its content is reported)."""
    p = kill_file(directory)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"error": str(exc)}
    try:
        rec = json.loads(text)
        return rec if isinstance(rec, dict) else {"content": text[:200]}
    except ValueError:
        return {"content": text[:200]}


def enabled_check(settings_enabled: bool, directory: Path) -> Callable[[], bool]:
    """``enabled()`` for the :class:`Actuator`: the setting and no kill file."""
    return lambda: bool(settings_enabled) and kill_switch(directory) is None


# --------------------------------------------------------------------------------------------
# retraining in a subprocess
# --------------------------------------------------------------------------------------------
@dataclass
class TrainSubprocess:
    """``retrain(model) -> version``: ``recpilot train --data DATA --name MODEL --json`` in a child
    process (never in the monitor's process: training takes minutes and the CPU), on the latest
    ``last_days`` of the data, killed after ``timeout_s``. ``framework``: empty for the framework of
    the model's newest version in ``repository`` (torch when there is none). The new version is
    written to the repository; promoting it is the actuator's job (through the gate)."""

    data: str = "kafka"
    last_days: float | None = None
    timeout_s: float = 3600.0
    framework: str = ""
    repository: Path | None = None
    python: str = sys.executable
    extra_args: tuple[str, ...] = ()

    def framework_of(self, model: str) -> str:
        if self.framework:
            return self.framework
        if self.repository is not None:
            from recpilot.models.repository import ModelRepository, ModelRepositoryError

            repo = ModelRepository(self.repository)
            for v in reversed(repo.versions(model)):
                try:
                    return str(repo.meta(model, v).get("framework") or "torch")
                except ModelRepositoryError:
                    continue
        return "torch"

    def argv(self, model: str) -> list[str]:
        argv = [self.python, "-m", "recpilot.cli", "train", "--framework", self.framework_of(model),
                "--data", self.data, "--name", model, "--json", "--quiet"]
        if self.last_days is not None:
            argv += ["--last-days", f"{self.last_days:g}"]
        if self.repository is not None:
            argv += ["--repository", str(self.repository)]
        return argv + list(self.extra_args)

    def __call__(self, model: str) -> str:
        argv = self.argv(model)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            raise DeadlineExceeded(f"recpilot train of {model} did not finish within {self.timeout_s:g} s "
                                   "(killed)") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RecpilotError(f"recpilot train of {model} exited {done.returncode}: {' | '.join(tail)}")
        try:
            version = str(json.loads(done.stdout)["version"])
        except (ValueError, KeyError, TypeError):
            raise RecpilotError(f"recpilot train of {model} printed no model.json with a version: "
                                f"{done.stdout[-200:]!r}") from None
        return version


def train_runner(settings, repository: Path | None = None) -> TrainSubprocess:
    """The retrain action's :class:`TrainSubprocess` from ``MonitorSettings`` (``retrain_*``)."""
    return TrainSubprocess(data=settings.retrain_data, last_days=settings.retrain_last_days,
                           timeout_s=settings.retrain_timeout_s, framework=settings.retrain_framework,
                           repository=repository)


# --------------------------------------------------------------------------------------------
# the actuator
# --------------------------------------------------------------------------------------------
class Refused(FailedPrecondition):
    """The action does not apply to the deployment state now (audited as ``refused``)."""


def alert_reason(alert: Alert) -> str:
    """The reason recorded with the command: names the alert."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    stat = f" {alert.statistic}={alert.value:.4g} (threshold {alert.threshold:.4g})" if alert.statistic else ""
    return f"monitor: alert {alert.name}{{{labels}}}{stat} fingerprint {alert.fingerprint}"


def action_to_dict(a: events_pb2.MonitorAction) -> dict:
    return {"action_id": a.action_id, "action": a.action, "alert_fingerprint": a.alert_fingerprint,
            "alert_name": a.alert_name, "model_name": a.model_name, "version": a.version, "outcome": a.outcome,
            "detail": a.detail, "command_id": a.command_id, "timestamp_ms": a.timestamp_ms, "instance": a.instance}


class Actuator:
    """Turns firing alerts into deployment commands (module docstring).

    ``policy``: alert name -> action (:data:`ACTIONS`). ``submit(action, model, version="", *,
    reason, kind)``: :meth:`DeploymentController.submit` of a controller made with actor
    ``monitor``; it returns a :class:`~recpilot.models.deployments.Submitted` (its
    ``command.command_id`` and ``outcome.applied`` are read) and raises the control's errors
    (:class:`~recpilot.errors.FailedPrecondition` kinds: refused; anything else: failed).
    ``state(model)``: the model's current ``DeploymentState`` (``controller.state``); without it the
    version checks are left to the control alone. ``retrain(model) -> version``
    (:class:`TrainSubprocess`); without it ``retrain`` is refused. ``background=False`` runs each
    action in the calling thread (tests, the CLI).
    """

    def __init__(self, policy: dict[str, str], submit: Callable[..., object], *, cooldown_s: float,
                 enabled: Callable[[], bool], audit: Callable[[events_pb2.MonitorAction], None],
                 retrain: Callable[[str], str] | None = None, instance: str = "", clock=time.time,
                 state: Callable[[str], object] | None = None, background: bool = True,
                 queue_size: int = 100) -> None:
        unknown = {a for a in policy.values() if a not in ACTIONS}
        if unknown:
            raise InvalidArgument(f"unknown monitor action(s) {sorted(unknown)} (one of {', '.join(ACTIONS)})")
        self.policy = dict(policy)
        self.submit = submit
        self.cooldown_s = float(cooldown_s)
        self.enabled = enabled
        self.audit = audit
        self.retrain = retrain
        self.instance = instance
        self.clock = clock
        self.state = state
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}       # (action, model) -> when it last reached the control
        self._busy: set[tuple[str, str]] = set()            # queued or running
        self._history: deque[events_pb2.MonitorAction] = deque(maxlen=HISTORY)
        self.counts: dict[str, int] = {}
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=queue_size)
            self._worker = threading.Thread(target=self._run, name="monitor-actions", daemon=True)
            self._worker.start()

    # -- the caller's side -------------------------------------------------------------------
    def handle(self, alert: Alert) -> events_pb2.MonitorAction | None:
        """Act on ``alert`` as the policy says. Returns the audit record when the decision was made
        at once (disabled, cool-down, refused, or executed with ``background=False``); None when the
        alert maps to no action, is not firing, or was queued for the worker (whose record goes to
        ``audit``)."""
        if not alert.firing:
            return None
        action = self.policy.get(alert.name, "none")
        if action == "none":
            return None
        model = alert.labels.get("model", "")
        key = (action, model)
        if not self.enabled():
            return self._record(alert, action, DISABLED, "actions are disabled (the kill switch: "
                                "RECPILOT_MONITOR_ACTIONS_ENABLED or `recpilot monitor actions --enable`)")
        if not model:
            return self._record(alert, action, REFUSED, f"alert {alert.name} has no model label")
        with self._lock:
            now = self.clock()
            if key in self._busy:
                why = f"{action} of {model} is already in progress"
            elif key in self._last and now - self._last[key] < self.cooldown_s:
                left = self.cooldown_s - (now - self._last[key])
                why = (f"{action} of {model} ran {now - self._last[key]:.0f} s ago; cool-down "
                       f"{self.cooldown_s:g} s ({left:.0f} s left)")
            else:
                why = None
                self._busy.add(key)
        if why is not None:
            return self._record(alert, action, COOLDOWN, why)
        if self._queue is None:
            return self._execute(alert, action, model)
        try:
            self._queue.put_nowait((alert, action, model))
        except queue.Full:
            with self._lock:
                self._busy.discard(key)
            return self._record(alert, action, FAILED, "the action queue is full (the worker is stuck?)")
        return None

    def restore(self, records: list[events_pb2.MonitorAction]) -> None:
        """Adopt the audit records an earlier monitor published (the ``alerts`` topic, oldest first):
        they rejoin the history, and each action that reached the control (executed or failed)
        restarts its cool-down from when it happened, so a restart never repeats an action early."""
        with self._lock:
            for rec in records:
                self._history.append(rec)
                if rec.outcome in (EXECUTED, FAILED) and rec.model_name:
                    key = (rec.action, rec.model_name)
                    self._last[key] = max(self._last.get(key, 0.0), rec.timestamp_ms / 1000.0)

    def history(self) -> list[dict]:
        """The audit records kept (oldest first), as dicts."""
        with self._lock:
            return [action_to_dict(a) for a in self._history]

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until every queued action is done; False at the timeout."""
        if self._queue is None:
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the worker's queue: nothing to wait on but its counter
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after what is queued (a retrain in progress is not waited for beyond
        ``timeout``)."""
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    # -- the worker --------------------------------------------------------------------------
    def _run(self) -> None:
        from recpilot.lifecycle import name_os_thread

        name_os_thread("monitor-actions")
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._execute(*item)
            except Exception:  # _execute records its failures; this is a bug, never the end of the worker
                log.exception("monitor action crashed")
            finally:
                self._queue.task_done()

    def _execute(self, alert: Alert, action: str, model: str) -> events_pb2.MonitorAction:
        key = (action, model)
        reached = False
        try:
            if not self.enabled():  # the switch may have been thrown while this waited
                return self._record(alert, action, DISABLED, "actions were disabled before the command was published")
            reached = True
            command_id, detail = getattr(self, f"_do_{action}")(alert, model)
            return self._record(alert, action, EXECUTED, detail, command_id)
        except Refused as exc:
            reached = False
            return self._record(alert, action, REFUSED, str(exc))
        except FailedPrecondition as exc:  # the control refused it (state, gate): it reached the control
            return self._record(alert, action, REFUSED, str(exc))
        except Exception as exc:
            return self._record(alert, action, FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._busy.discard(key)
                if reached:
                    self._last[key] = self.clock()

    def _current(self, model: str):
        return self.state(model) if self.state is not None else None

    def _published(self, sub, what: str) -> tuple[str, str]:
        cmd = getattr(sub, "command", None)
        command_id = getattr(cmd, "command_id", "") if cmd is not None else ""
        outcome = getattr(sub, "outcome", None)
        if outcome is not None and not getattr(outcome, "applied", True):
            raise FailedPrecondition(f"{what}: published as {command_id} but rejected by the control: "
                                     f"{getattr(outcome, 'reason', '') or 'no reason given'}")
        return command_id, what

    def _do_rollback(self, alert: Alert, model: str) -> tuple[str, str]:
        from recpilot.models.deployments import previous_production

        version = alert.labels.get("version", "")
        target = ""
        st = self._current(model)
        if st is not None:
            if version and st.production_version != version:
                raise Refused(f"version {version} of {model} is no longer production "
                              f"(production: {st.production_version or 'none'}); nothing to roll back")
            target = previous_production(st) or ""
            if not target:
                raise Refused(f"{model} has no previous production version to roll back to "
                              f"(production: {st.production_version or 'none'})")
        sub = self.submit("rollback", model, target, reason=alert_reason(alert), kind=_kind("ranker"))
        to = getattr(getattr(sub, "command", None), "version", "") or target
        return self._published(sub, f"rolled {model} back from {version or '?'} to {to}")

    def _do_abort_canary(self, alert: Alert, model: str) -> tuple[str, str]:
        version = alert.labels.get("version", "")
        st = self._current(model)
        if st is not None:
            if not st.canary_version:
                raise Refused(f"{model} has no canary")
            if version and st.canary_version != version:
                raise Refused(f"version {version} of {model} is not the canary any more (canary: {st.canary_version})")
        sub = self.submit("clear_canary", model, reason=alert_reason(alert), kind=_kind("ranker"))
        return self._published(sub, f"cleared the canary {version or '?'} of {model}")

    def _do_pause_policy(self, alert: Alert, model: str) -> tuple[str, str]:
        from recpilot.rl.artifact import DEFAULT_VERSION

        version = alert.labels.get("policy_version", "") or alert.labels.get("version", "")
        st = self._current(model)
        production = (st.policy_version or DEFAULT_VERSION) if st is not None else None
        canary = st.policy_canary_version if st is not None else ""
        if version and version == canary:
            sub = self.submit("clear_canary", model, reason=alert_reason(alert), kind=_kind("policy"))
            return self._published(sub, f"cleared the policy canary {version} of {model}")
        if st is not None and production == DEFAULT_VERSION:
            raise Refused(f"{model} already serves the ranker's order ({DEFAULT_VERSION})")
        if st is not None and version and version != production:
            raise Refused(f"policy {version} of {model} is no longer served (production policy: {production})")
        sub = self.submit("promote", model, DEFAULT_VERSION, reason=alert_reason(alert), kind=_kind("policy"))
        return self._published(sub, f"paused policy {version or production} of {model}: serving {DEFAULT_VERSION}")

    def _do_retrain(self, alert: Alert, model: str) -> tuple[str, str]:
        if self.retrain is None:
            raise Refused("retraining is not configured in this monitor")
        version = self.retrain(model)
        try:
            sub = self.submit("promote", model, version, reason=alert_reason(alert), kind=_kind("ranker"))
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"trained {model} version {version}; its promotion was refused: {exc}") from None
        return self._published(sub, f"trained {model} version {version} and promoted it (passed the gate)")

    # -- audit ---------------------------------------------------------------------------------
    def _record(self, alert: Alert, action: str, outcome: str, detail: str, command_id: str = ""
                ) -> events_pb2.MonitorAction:
        rec = events_pb2.MonitorAction(
            action_id=uuid.uuid4().hex, action=action, alert_fingerprint=alert.fingerprint, alert_name=alert.name,
            model_name=alert.labels.get("model", ""),
            version=alert.labels.get("version", "") or alert.labels.get("policy_version", ""),
            outcome=outcome, detail=detail, command_id=command_id, timestamp_ms=int(self.clock() * 1000),
            instance=self.instance)
        with self._lock:
            self._history.append(rec)
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        log.log(logging.WARNING if outcome in (EXECUTED, FAILED) else logging.INFO, "monitor action",
                extra={"action": action, "alert": alert.name, "model": rec.model_name, "version": rec.version,
                       "outcome": outcome, "detail": detail, "command_id": command_id})
        try:
            self.audit(rec)
        except Exception as exc:  # the audit channel failing never undoes or blocks the action
            log.error("could not hand the monitor action to the audit", extra={"error": str(exc)})
        return rec


def _kind(name: str) -> int:
    from recpilot.models.deployments import KINDS

    return KINDS[name]


def controller_actuator(controller, policy: dict[str, str], *, cooldown_s: float, enabled: Callable[[], bool],
                        audit: Callable[[events_pb2.MonitorAction], None], retrain: Callable[[str], str] | None = None,
                        instance: str = "", background: bool = True) -> Actuator:
    """An :class:`Actuator` on ``controller`` (a :class:`~recpilot.models.deployments.DeploymentController`
    made with ``actor="monitor"``): its ``submit`` and ``state``. The controller is used from the
    actuator's worker thread only."""
    if controller.actor != ACTOR:
        raise InvalidArgument(f"the monitor's controller must have actor {ACTOR!r}, not {controller.actor!r}")
    return Actuator(policy, controller.submit, cooldown_s=cooldown_s, enabled=enabled, audit=audit, retrain=retrain,
                    instance=instance, state=controller.state, background=background)
