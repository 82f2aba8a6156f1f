"""The deployment controller: check a command, publish it, read back its outcome, wait for acks.

:class:`DeploymentController` is what changes deployment state (``recpilot models ...``; the
monitor and rl_feedback can use it too). Before anything is published it validates the command
against the state replayed from the control topic (:mod:`.state`, :mod:`.log`) and against the
model repository: the versions exist and are intact, and a promotion passes the offline-metric
gate (:func:`promotion_gate`) unless forced with a recorded reason. It then publishes the command,
reads the log back to report whether it was applied, and, if asked, waits for the serving
replicas' acknowledgements, which it reads from the acks topic (``control.acks``; never from the
control topic, where an ack written by an earlier version is skipped). With the repository, it
replays the log with the same checks every replica applies (:mod:`.checks`) and writes the
deployment snapshot (:mod:`.snapshot`) after each command it saw applied.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from recpilot.errors import FailedPrecondition
from recpilot.models.deployments.checks import gate_problems, policy_problem, promotion_gate
from recpilot.models.deployments.log import (
    AckLogReader,
    PublishError,
    ControlLogReader,
    ensure_control_topic,
    kafka_log,
    publish_message,
    repository_book,
)
from recpilot.models.deployments.snapshot import write_snapshot
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

__all__ = ["DeploymentController", "PromotionRefused", "Submitted", "promotion_gate"]


class PromotionRefused(DeploymentError, FailedPrecondition):
    """The candidate's offline metrics are worse than production's beyond the tolerance."""


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


def _rollback_target(state: pb.DeploymentState, model: str, version: str, kind: int) -> str:
    """The version a ROLLBACK of ``kind`` returns to; :class:`CommandRejected` when there is none or
    ``version`` (the one the caller expects) is another."""
    prev = previous_production(state, kind)
    what, current = (f"the policy of {model}", state.policy_version or "ranker-order") if kind == pb.POLICY \
        else (model, state.production_version or "none")
    if prev is None:
        raise CommandRejected(f"{what} has no previous production version to roll back to (production: {current})")
    if version and version != prev:
        raise CommandRejected(f"cannot roll back {what} to {version}: rollback returns to the previous "
                              f"production version, which is {prev}")
    return prev


class DeploymentController:
    """Validates deployment commands against the replayed state and the model repository, then
    publishes them on the control topic and reports their outcome.

    Nothing is published when validation fails (:class:`DeploymentError` and subclasses, or
    :class:`~recpilot.models.repository.ModelRepositoryError` wrapped in a DeploymentError).
    """

    def __init__(self, settings: PlatformSettings, repository=None, deploy_settings: DeploymentSettings | None = None,
                 *, topic: str | None = None, actor: str | None = None, verify_repository: bool = True,
                 acks_topic: str | None = None) -> None:
        """``verify_repository=False`` skips the repository checks (existence, integrity) for a
        publisher that has no access to the repository (e.g. the monitor on another host rolling
        back or clearing a canary); the state checks still apply, replicas still verify versions on
        load, and a promotion over a production version is then refused unless forced (the metric
        gate needs the repository). ``acks_topic``: where the replicas acknowledge (default: the
        control topic's, :meth:`DeploymentSettings.acks_topic_for`)."""
        from recpilot.settings import load

        self.settings = settings
        self.deploy = deploy_settings or load(DeploymentSettings)
        self.topic = topic or self.deploy.topic
        self.acks_topic = acks_topic or self.deploy.acks_topic_for(self.topic)
        self.actor = actor or default_actor()
        if repository is None:
            from recpilot.models.repository import ModelRepository

            repository = ModelRepository(settings.model_repo)
        self.repository = repository
        self.verify_repository = verify_repository
        self._reader: ControlLogReader | None = None
        self._acks_reader: AckLogReader | None = None
        self._producer = None
        self._topic_ensured = False

    def close(self) -> None:
        if self._acks_reader is not None:
            self._acks_reader.close()
            self._acks_reader = None
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
            checked = self.verify_repository
            self._reader = ControlLogReader(
                self.settings, self.topic, repository_book(self.repository if checked else None, self.deploy),
                client_id="recpilot-controller", snapshot_root=self.repository.root if checked else None)
        return self._reader.read_to_end(timeout or self.deploy.replay_timeout_s)

    @property
    def problems(self) -> list[str]:
        """What was wrong with the control log when it was first read (lost, truncated)."""
        return self._reader.problems if self._reader is not None else []

    @property
    def book(self) -> DeploymentBook:
        return self.refresh()

    def state(self, model_name: str) -> pb.DeploymentState:
        return self.refresh().state(model_name)

    def read_acks(self, timeout: float | None = None) -> DeploymentBook:
        """:meth:`refresh`, then bring ``book.acks`` up to the acks topic's current end (an acks
        topic that does not exist yet holds no acks). Publishing alone never reads the acks."""
        book = self.refresh(timeout)
        if self._acks_reader is None:
            self._acks_reader = AckLogReader(self.settings, self.acks_topic, book, client_id="recpilot-controller-acks")
        self._acks_reader.read_to_end(timeout or self.deploy.replay_timeout_s)
        return book

    def wait_acks(self, command_id: str, seconds: float, replicas: int = 1) -> list[pb.DeploymentAck]:
        """Tail the acks topic until ``replicas`` replicas acknowledged ``command_id`` or ``seconds`` passed."""
        book = self.read_acks()
        reader = self._acks_reader
        deadline = time.monotonic() + seconds
        while len(book.acks.get(command_id, {})) < replicas and time.monotonic() < deadline:
            wait = min(0.5, max(deadline - time.monotonic(), 0.01))
            if reader.assigned:
                reader.poll_once(wait)
            else:  # no acks topic yet: look again (the first replica creates it)
                time.sleep(wait)
                reader.read_to_end(self.deploy.replay_timeout_s)
        return sorted(book.acks.get(command_id, {}).values(), key=lambda a: (a.timestamp_ms, a.replica))

    # -- validating ----------------------------------------------------------------------
    def _meta(self, model: str, version: str, what: str) -> dict:
        from recpilot.models.repository import ModelRepositoryError

        try:  # the full check a replica makes before loading: every file against its manifest
            return self.repository.verify(model, version)
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
        tolerances = (self.deploy.auc_tolerance if auc_tolerance is None else auc_tolerance,
                      self.deploy.logloss_tolerance if logloss_tolerance is None else logloss_tolerance)
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
                    problems = gate_problems(self.repository, model, candidate, state.production_version, *tolerances)
                    if problems and not force:
                        raise PromotionRefused(
                            f"promotion of {model}/{version} refused: " + "; ".join(problems)
                            + ". Use --force --reason TEXT to promote anyway (recorded in the history).")
                    overridden = problems
            elif act == pb.ROLLBACK:
                version = prev = _rollback_target(state, model, version, kind)
                self._meta(model, prev, f"roll back {model} to version {prev}")
        elif kind == pb.POLICY:
            if act == pb.ROLLBACK:
                version = _rollback_target(state, model, version, kind)
            if self.verify_repository and act in (pb.DEPLOY, pb.PROMOTE, pb.CANARY, pb.ROLLBACK):
                if not version:
                    raise InvalidCommand(f"{action} needs a policy version of {model}")
                problem = policy_problem(self.repository, model, version, verify=True)
                if problem:
                    raise DeploymentError(f"cannot {what} (policy): {problem}")
        if overridden:
            reason = f"{reason} [promotion gate overridden: {'; '.join(overridden)}]"
        cmd = new_command(act, model, version, percent=percent, actor=self.actor, reason=reason, force=force,
                          kind=kind)
        if act == pb.PROMOTE:  # every replayer re-checks the gate with the tolerances judged here
            cmd.auc_tolerance, cmd.logloss_tolerance = tolerances
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
        if outcome.applied:
            self.write_snapshot()
        state = book.state(cmd.model_name)
        recorded = cmd
        for h in reversed(state.history):
            if h.command_id == cmd.command_id:
                recorded = h
                break
        acks = self.wait_acks(cmd.command_id, wait_acks_s, replicas) if (wait_acks_s > 0 and outcome.applied) else []
        return Submitted(recorded, outcome, state, acks)

    def write_snapshot(self) -> None:
        """Copy the replayed state into the model repository (:mod:`.snapshot`); a failure is
        logged, never raised (the command is in the log already)."""
        if not self.verify_repository or self._reader is None:
            return
        try:
            write_snapshot(self.repository.root, self.topic, self._reader.book, self._reader.topic_id,
                           self._reader.positions, writer=self.actor)
        except Exception as exc:
            log.error("could not write the deployment snapshot", extra={"topic": self.topic, "error": str(exc)})

    def submit(self, action: str, model: str, version: str = "", *, wait_acks_s: float = 0.0, replicas: int = 1,
               **kw) -> Submitted:
        """:meth:`plan` then :meth:`publish`."""
        cmd, overridden = self.plan(action, model, version, **kw)
        sub = self.publish(cmd, wait_acks_s=wait_acks_s, replicas=replicas)
        sub.overridden = overridden
        return sub
