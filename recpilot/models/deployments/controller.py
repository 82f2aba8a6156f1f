"""The deployment controller: check a command, publish it, read back its outcome, wait for acks.

:class:`DeploymentController` is what changes deployment state (``recpilot models ...``; the
monitor and rl_feedback can use it too). Before anything is published it validates the command
against the state replayed from the control topic (:mod:`.state`, :mod:`.log`) and against the
model repository: the versions exist and are intact, and a promotion passes the offline-metric
gate (:func:`promotion_gate`) unless forced with a recorded reason. It then publishes the command,
reads the log back to report whether it was applied, and, if asked, waits for the serving
replicas' acknowledgements.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from recpilot.errors import FailedPrecondition
from recpilot.models.deployments.log import (
    PublishError,
    ControlLogReader,
    ensure_control_topic,
    kafka_log,
    publish_message,
)
from recpilot.models.deployments.state import (
    ACTIONS,
    CommandRejected,
    DeploymentBook,
    DeploymentError,
    DeploymentSettings,
    InvalidCommand,
    Outcome,
    check_command,
    default_actor,
    new_command,
    previous_production,
)
from recpilot.pb import deployments_pb2 as pb
from recpilot.settings import PlatformSettings

log = logging.getLogger(__name__)


class PromotionRefused(DeploymentError, FailedPrecondition):
    """The candidate's offline metrics are worse than production's beyond the tolerance."""


# --------------------------------------------------------------------------------------------
# the promotion gate
# --------------------------------------------------------------------------------------------
def promotion_gate(candidate: dict, production: dict | None, auc_tolerance: float,
                   logloss_tolerance: float) -> list[str]:
    """Reasons to refuse promoting ``candidate`` over ``production`` (model.json dicts); empty: pass.
    auc is higher-better (refused if below production - auc_tolerance), logloss lower-better
    (refused if above production + logloss_tolerance). A metric that is missing/undefined on the
    candidate while production has it counts as a failure (it cannot be shown not to be worse).

    Head to head when possible: if the candidate's model.json scored this very production version on
    the candidate's holdout (``metrics.production``, written by ``recpilot train``), both are judged
    on those same rows. Otherwise each model's own figures are compared, which come from different
    holdouts (different weeks): the message says which."""
    if production is None:
        return []
    cm = candidate.get("metrics") or {}
    cname = f"{candidate.get('name')}/{candidate.get('version')}"
    pname = f"production {production.get('name')}/{production.get('version')}"
    same = cm.get("production")
    if isinstance(same, dict) and str(same.get("version")) == str(production.get("version")):
        pm, basis = same, f"both scored on {cname}'s holdout"
    else:
        pm, basis = production.get("metrics") or {}, "each on its own holdout"
    problems = []
    for key, tol, higher in (("auc", auc_tolerance, True), ("logloss", logloss_tolerance, False)):
        c, p = cm.get(key), pm.get(key)
        if p is None:
            continue
        if c is None:
            problems.append(f"{key} of {cname} is undefined while {pname} has {p:.4f} ({basis})")
        elif higher and c < p - tol:
            problems.append(f"{key} {c:.4f} of {cname} is below {pname}'s {p:.4f} by {p - c:.4f} "
                            f"(tolerance {tol:g}; {basis})")
        elif not higher and c > p + tol:
            problems.append(f"{key} {c:.4f} of {cname} is above {pname}'s {p:.4f} by {c - p:.4f} "
                            f"(tolerance {tol:g}; {basis})")
    if candidate.get("feature_set") and production.get("feature_set") and \
            candidate["feature_set"] != production["feature_set"] and not problems:
        log.warning("promotion gate compares models trained on different feature sets",
                    extra={"candidate": cname, "production": pname})
    return problems


# --------------------------------------------------------------------------------------------
# the controller (CLI, monitor, rl_feedback)
# --------------------------------------------------------------------------------------------
@dataclass
class Submitted:
    """A published command and what became of it."""

    command: pb.DeploymentCommand          # as recorded in the state (a rollback carries its target)
    outcome: Outcome
    state: pb.DeploymentState
    acks: list[pb.DeploymentAck] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)   # gate failures overridden by --force


class DeploymentController:
    """Validates deployment commands against the replayed state and the model repository, then
    publishes them on the control topic and reports their outcome.

    Nothing is published when validation fails (:class:`DeploymentError` and subclasses, or
    :class:`~recpilot.models.repository.ModelRepositoryError` wrapped in a DeploymentError).
    """

    def __init__(self, settings: PlatformSettings, repository=None, deploy_settings: DeploymentSettings | None = None,
                 *, topic: str | None = None, actor: str | None = None, verify_repository: bool = True) -> None:
        """``verify_repository=False`` skips the repository checks (existence, integrity) for a
        publisher that has no access to the repository (e.g. the monitor on another host rolling
        back or clearing a canary); the state checks still apply, replicas still verify versions on
        load, and a promotion over a production version is then refused unless forced (the metric
        gate needs the repository)."""
        from recpilot.settings import load

        self.settings = settings
        self.deploy = deploy_settings or load(DeploymentSettings)
        self.topic = topic or self.deploy.topic
        self.actor = actor or default_actor()
        if repository is None:
            from recpilot.models.repository import ModelRepository

            repository = ModelRepository(settings.model_repo)
        self.repository = repository
        self.verify_repository = verify_repository
        self._reader: ControlLogReader | None = None
        self._producer = None
        self._topic_ensured = False

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._producer is not None:
            self._producer.flush(5.0)
            self._producer = None

    def __enter__(self) -> DeploymentController:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------
    def refresh(self, timeout: float | None = None) -> DeploymentBook:
        """Bring the replayed view up to the topic's current end."""
        if self._reader is None:
            self._reader = ControlLogReader(self.settings, self.topic, client_id="recpilot-controller")
        return self._reader.read_to_end(timeout or self.deploy.replay_timeout_s)

    @property
    def book(self) -> DeploymentBook:
        return self.refresh()

    def state(self, model_name: str) -> pb.DeploymentState:
        return self.refresh().state(model_name)

    def wait_acks(self, command_id: str, seconds: float, replicas: int = 1) -> list[pb.DeploymentAck]:
        """Tail the topic until ``replicas`` replicas acknowledged ``command_id`` or ``seconds`` passed."""
        book = self.refresh()
        deadline = time.monotonic() + seconds
        while len(book.acks.get(command_id, {})) < replicas and time.monotonic() < deadline:
            self._reader.poll_once(min(0.5, max(deadline - time.monotonic(), 0.01)))
        return sorted(book.acks.get(command_id, {}).values(), key=lambda a: (a.timestamp_ms, a.replica))

    # -- validating ----------------------------------------------------------------------
    def _meta(self, model: str, version: str, what: str) -> dict:
        from recpilot.models.repository import ModelRepositoryError

        try:
            return self.repository.meta(model, version)
        except ModelRepositoryError as exc:
            raise DeploymentError(f"cannot {what}: {exc}") from None

    def plan(self, action: str, model: str, version: str = "", *, percent: float = 0.0, reason: str = "",
             force: bool = False, kind: int = pb.RANKER, auc_tolerance: float | None = None,
             logloss_tolerance: float | None = None) -> tuple[pb.DeploymentCommand, list[str]]:
        """Build and validate a command; returns it with the gate failures ``force`` overrides."""
        if action not in ACTIONS:
            raise InvalidCommand(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        if force and not reason.strip():
            raise InvalidCommand("--force needs --reason TEXT: the reason is recorded in the history")
        state = self.state(model)
        act = ACTIONS[action]
        version = str(version or "")
        what = f"{action} {model}" + (f" version {version}" if version else "")
        overridden: list[str] = []
        if kind == pb.RANKER and not self.verify_repository:
            if act == pb.PROMOTE and not force and state.production_version:
                raise PromotionRefused(f"promotion of {model}/{version} refused: the metric gate needs the model "
                                       "repository (verify_repository=False); promote with force and a reason")
            if act == pb.ROLLBACK:
                prev = previous_production(state)
                if version and prev and version != prev:
                    raise CommandRejected(f"cannot roll back {model} to {version}: the previous production version "
                                          f"is {prev}")
                version = prev or ""
        elif kind == pb.RANKER:
            if act in (pb.DEPLOY, pb.PROMOTE, pb.CANARY, pb.SHADOW):
                if not version:
                    raise InvalidCommand(f"{action} needs a version of {model}")
                candidate = self._meta(model, version, what)
                if act == pb.PROMOTE and state.production_version and state.production_version != version:
                    try:
                        production = self.repository.meta(model, state.production_version)
                        problems = promotion_gate(
                            candidate, production,
                            self.deploy.auc_tolerance if auc_tolerance is None else auc_tolerance,
                            self.deploy.logloss_tolerance if logloss_tolerance is None else logloss_tolerance)
                    except Exception as exc:  # production unreadable: it cannot be shown the candidate is not worse
                        problems = [f"production {model}/{state.production_version} cannot be compared: {exc}"]
                    if problems and not force:
                        raise PromotionRefused(
                            f"promotion of {model}/{version} refused: " + "; ".join(problems)
                            + ". Use --force --reason TEXT to promote anyway (recorded in the history).")
                    overridden = problems
            elif act == pb.ROLLBACK:
                prev = previous_production(state)
                if prev is None:
                    raise CommandRejected(f"{model} has no previous production version to roll back to "
                                          f"(production: {state.production_version or 'none'})")
                if version and version != prev:
                    raise CommandRejected(f"cannot roll back {model} to {version}: rollback returns to the previous "
                                          f"production version, which is {prev}")
                version = prev
                self._meta(model, prev, f"roll back {model} to version {prev}")
        if overridden:
            reason = f"{reason} [promotion gate overridden: {'; '.join(overridden)}]"
        cmd = new_command(act, model, version, percent=percent, actor=self.actor, reason=reason, force=force,
                          kind=kind)
        problem = check_command(state, cmd)
        if problem:
            raise CommandRejected(f"cannot {what}: {problem}")
        return cmd, overridden

    # -- publishing ----------------------------------------------------------------------
    def publish(self, cmd: pb.DeploymentCommand, *, wait_acks_s: float = 0.0, replicas: int = 1) -> Submitted:
        """Publish ``cmd`` (durably: acks=all, flushed), then read it back and report its outcome."""
        from recpilot.kafka import producer

        try:
            if not self._topic_ensured:
                ensure_control_topic(self.settings, self.topic)
                self._topic_ensured = True
            if self._producer is None:
                self._producer = producer(self.settings, **{"client.id": "recpilot-controller", "logger": kafka_log})
            publish_message(self._producer, self.topic, pb.ControlMessage(command=cmd), cmd.model_name,
                            self.deploy.publish_timeout_s, "the command")
        except Exception as exc:
            raise PublishError(f"could not publish command {cmd.command_id} to {self.topic} at "
                               f"{self.settings.kafka_bootstrap}: {exc}; it may or may not be in the log: check "
                               "`recpilot models status`") from None
        try:
            book = self.refresh()
        except DeploymentError as exc:
            raise PublishError(f"command {cmd.command_id} was published but its outcome could not be read: {exc}") \
                from None
        outcome = book.outcomes.get(cmd.command_id)
        if outcome is None:
            raise PublishError(f"command {cmd.command_id} was published but not read back from {self.topic}")
        state = book.state(cmd.model_name)
        recorded = cmd
        for h in reversed(state.history):
            if h.command_id == cmd.command_id:
                recorded = h
                break
        acks = self.wait_acks(cmd.command_id, wait_acks_s, replicas) if (wait_acks_s > 0 and outcome.applied) else []
        return Submitted(recorded, outcome, state, acks)

    def submit(self, action: str, model: str, version: str = "", *, wait_acks_s: float = 0.0, replicas: int = 1,
               **kw) -> Submitted:
        """:meth:`plan` then :meth:`publish`."""
        cmd, overridden = self.plan(action, model, version, **kw)
        sub = self.publish(cmd, wait_acks_s=wait_acks_s, replicas=replicas)
        sub.overridden = overridden
        return sub
