"""Deployment state and commands: pure functions over protobuf messages, no I/O.

The state of a model (production, canary, shadow, policy versions and the history) is what the
commands of the control topic make of it, applied in log order by :func:`apply_command`. A command
that is invalid against the state it meets (:func:`check_command` says why) is *rejected*: it
stays in the log for the audit trail but changes nothing, and the revision only counts applied
commands. Because only the state and the command decide, every replayer (the CLI, each serving
replica, a fresh process after a restart) rebuilds the same state: :class:`DeploymentBook` does it
for the messages of the control topic (commands; :meth:`DeploymentBook.apply_bytes`), wherever
they were read from, and collects the replicas' acknowledgements read from the acks topic
(:meth:`DeploymentBook.apply_ack_bytes`). Each topic's reader takes only its own kind of message:
an ack found on the control topic (written there by an earlier version) and a command found on the
acks topic (which every serving replica may write) are skipped and counted (``stray``).

The log is writable by anyone the broker lets write, so every replayer applies the checks the CLI
applies before publishing, not only the state machine's: :func:`check_command` refuses malformed
model names and versions (``../x`` never reaches a path), and a replayer with the model repository
passes a :class:`DeploymentBook` the repository checks as ``admit`` (:mod:`.checks`: the version
exists and is intact, the promotion gate unless forced). A command failing either is rejected like
any other.

Nothing here imports a Kafka client: reading and writing the topic is :mod:`.log`.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recpilot.errors import FailedPrecondition, InvalidArgument, RecpilotError
from recpilot.models.repository import NAME_RE, POLICY_SUFFIX, VERSION_RE
from recpilot.pb import deployments_pb2 as pb
from recpilot.settings import RecpilotSettings
from recpilot.topics import CONTROL_DEPLOYMENTS, acks_topic

log = logging.getLogger(__name__)

ACTIONS = {
    "deploy": pb.DEPLOY, "promote": pb.PROMOTE, "canary": pb.CANARY, "shadow": pb.SHADOW,
    "rollback": pb.ROLLBACK, "clear_canary": pb.CLEAR_CANARY, "clear_shadow": pb.CLEAR_SHADOW,
}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
# what a re-ranking policy (kind POLICY) accepts: no shadow (a policy's choice is only seen when served)
POLICY_ACTIONS = (pb.DEPLOY, pb.PROMOTE, pb.CANARY, pb.CLEAR_CANARY, pb.ROLLBACK)
KINDS = {"ranker": pb.RANKER, "policy": pb.POLICY}
KIND_NAMES = {v: k for k, v in KINDS.items()}
ACK_NAMES = {pb.APPLIED: "APPLIED", pb.REJECTED: "REJECTED", pb.FAILED: "FAILED",
             pb.ACK_STATUS_UNSPECIFIED: "UNSPECIFIED"}
CANARY_BUCKETS = 10_000


class DeploymentSettings(RecpilotSettings):
    """Deployment control. Environment prefix ``RECPILOT_DEPLOY_``."""

    model_config = SettingsConfigDict(env_prefix="RECPILOT_DEPLOY_", extra="forbid", case_sensitive=False)

    topic: str = Field(default=CONTROL_DEPLOYMENTS, min_length=1, description="the control topic (tests override it)")
    acks_topic: str = Field(default="", description="the topic the serving replicas acknowledge commands on; empty: "
                            "control.acks for control.deployments, <topic>.acks for another control topic")
    auc_tolerance: float = Field(default=0.005, ge=0, description="promotion refused if auc < production auc - this")
    logloss_tolerance: float = Field(default=0.01, ge=0,
                                     description="promotion refused if logloss > production logloss + this")
    replay_timeout_s: float = Field(default=20.0, gt=0, description="how long a replay of the topic may take")
    publish_timeout_s: float = Field(default=30.0, gt=0)

    def acks_topic_for(self, topic: str | None = None) -> str:
        """The acks topic of ``topic`` (default: this ``topic``): ``acks_topic`` when set and
        ``topic`` is the configured one, else derived (:func:`recpilot.topics.acks_topic`)."""
        topic = topic or self.topic
        return self.acks_topic if self.acks_topic and topic == self.topic else acks_topic(topic)


class DeploymentError(RecpilotError):
    """A deployment command was refused before publishing (nothing was published), or could not be
    published / confirmed. The message says why; the subclasses say which kind of failure it is."""


class InvalidCommand(DeploymentError, InvalidArgument):
    """The command itself is malformed (unknown action, a missing version, ``force`` without a
    reason): the caller must change what they asked for."""


class CommandRejected(DeploymentError, FailedPrecondition):
    """The command is invalid against the current deployment state."""


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_command(action: str | int, model_name: str, version: str = "", *, percent: float = 0.0,
                actor: str | None = None, reason: str = "", force: bool = False,
                kind: int = pb.RANKER, timestamp_ms: int | None = None) -> pb.DeploymentCommand:
    act = ACTIONS[action] if isinstance(action, str) else action
    return pb.DeploymentCommand(
        command_id=uuid.uuid4().hex, action=act, kind=kind, model_name=model_name, version=str(version or ""),
        percent=float(percent), actor=actor or default_actor(), reason=reason, force=force,
        timestamp_ms=timestamp_ms if timestamp_ms is not None else now_ms(),
    )


# --------------------------------------------------------------------------------------------
# pure state machine
# --------------------------------------------------------------------------------------------
def _kind(cmd: pb.DeploymentCommand) -> int:
    return cmd.kind or pb.RANKER


def lineage(state: pb.DeploymentState, kind: int = pb.RANKER) -> list[str]:
    """The stack of production versions (oldest first); the last one is current. PROMOTE (and the
    first DEPLOY) push, ROLLBACK pops, so repeated rollbacks walk back through production history."""
    stack: list[str] = []
    for h in state.history:
        if _kind(h) != kind:
            continue
        if h.action == pb.DEPLOY and not stack:
            stack.append(h.version)
        elif h.action == pb.PROMOTE:
            stack.append(h.version)
        elif h.action == pb.ROLLBACK and stack:
            stack.pop()
    return stack


def previous_production(state: pb.DeploymentState, kind: int = pb.RANKER) -> str | None:
    stack = lineage(state, kind)
    return stack[-2] if len(stack) >= 2 else None


def check_command(state: pb.DeploymentState, cmd: pb.DeploymentCommand) -> str | None:
    """Why ``cmd`` cannot be applied to ``state`` (None: it can). Deterministic: only the state and
    the command decide, so every replayer agrees."""
    if not cmd.model_name:
        return "model_name is empty"
    if not cmd.command_id:
        return "command_id is empty"
    act, kind = cmd.action, _kind(cmd)
    if not NAME_RE.fullmatch(cmd.model_name):
        return f"invalid model name {cmd.model_name[:80]!r} (letters, digits, '_', '.', '-'; at most 64)"
    if cmd.model_name.endswith(POLICY_SUFFIX):
        return (f"{cmd.model_name} holds the re-ranking policies of {cmd.model_name.removesuffix(POLICY_SUFFIX)}, "
                f"not a model: deploy them with kind policy on {cmd.model_name.removesuffix(POLICY_SUFFIX)}")
    if cmd.version:
        # ranker versions are repository directories ("1", "2", ...); policy versions are names
        if kind == pb.RANKER and not VERSION_RE.fullmatch(cmd.version):
            return f"invalid version {cmd.version[:80]!r} (a whole number, as the model repository numbers them)"
        if kind == pb.POLICY and not NAME_RE.fullmatch(cmd.version):
            return f"invalid policy version {cmd.version[:80]!r} (letters, digits, '_', '.', '-'; at most 64)"
    if act not in ACTION_NAMES:
        return f"unknown action {act}"
    if cmd.force and not cmd.reason.strip():
        return "--force needs a --reason (it is recorded)"
    policy = kind == pb.POLICY
    current = state.policy_version if policy else state.production_version
    canary = state.policy_canary_version if policy else state.canary_version
    what = "policy" if policy else "model"
    if act in (pb.DEPLOY, pb.PROMOTE, pb.CANARY, pb.SHADOW) and not cmd.version:
        return f"{ACTION_NAMES[act]} needs a version"
    if policy and act not in POLICY_ACTIONS:
        return f"{ACTION_NAMES[act]} is not supported for policies"
    if act in (pb.DEPLOY, pb.PROMOTE) and cmd.version == current:
        return f"version {cmd.version} of {what} {cmd.model_name} is already production"
    if act in (pb.CANARY, pb.SHADOW):
        # a policy canary needs no learned production policy: it then runs beside the ranker's order
        if not current and not policy:
            return f"{cmd.model_name} has no production version yet; deploy one first"
        if cmd.version == current:
            return f"version {cmd.version} is production; a {ACTION_NAMES[act]} must be another version"
    if act == pb.CANARY and not 0.0 < cmd.percent <= 100.0:
        return f"canary percent must be in (0, 100], got {cmd.percent:g} (use clear_canary to stop a canary)"
    if act == pb.CLEAR_CANARY and not canary:
        return f"{what} {cmd.model_name} has no canary" if policy else f"{cmd.model_name} has no canary"
    if act == pb.CLEAR_SHADOW and not state.shadow_version:
        return f"{cmd.model_name} has no shadow"
    if act == pb.ROLLBACK:
        prev = previous_production(state, kind)
        if prev is None:
            return f"{what} {cmd.model_name} has no previous production version to roll back to"
        if cmd.version and cmd.version != prev:
            return f"rollback target {cmd.version} is not the previous production version {prev} (state changed?)"
    return None


def apply_command(state: pb.DeploymentState, cmd: pb.DeploymentCommand) -> pb.DeploymentState:
    """The state after ``cmd`` (a new message; ``state`` is not modified). Raises
    :class:`CommandRejected` with :func:`check_command`'s reason."""
    problem = check_command(state, cmd)
    if problem:
        raise CommandRejected(problem)
    new = pb.DeploymentState()
    new.CopyFrom(state)
    _apply_in_place(new, cmd)
    return new


def _apply_in_place(new: pb.DeploymentState, cmd: pb.DeploymentCommand) -> None:
    """Apply a command :func:`check_command` accepted, modifying ``new``."""
    act, kind = cmd.action, _kind(cmd)
    target = previous_production(new, kind) if act == pb.ROLLBACK else cmd.version
    new.model_name = cmd.model_name
    entry = new.history.add()
    entry.CopyFrom(cmd)
    entry.version = target  # a rollback records where it went
    if kind == pb.POLICY:
        if act == pb.PROMOTE or act == pb.ROLLBACK or (act == pb.DEPLOY and not new.policy_version):
            new.policy_version = target
            if new.policy_canary_version == target:
                new.policy_canary_version, new.policy_canary_percent = "", 0.0
        elif act == pb.CANARY:
            new.policy_canary_version, new.policy_canary_percent = target, cmd.percent
        elif act == pb.CLEAR_CANARY:
            new.policy_canary_version, new.policy_canary_percent = "", 0.0
    else:
        if act == pb.PROMOTE or act == pb.ROLLBACK or (act == pb.DEPLOY and not new.production_version):
            new.production_version = target
            if new.canary_version == target:
                new.canary_version, new.canary_percent = "", 0.0
            if new.shadow_version == target:
                new.shadow_version = ""
        elif act == pb.CANARY:
            new.canary_version, new.canary_percent = target, cmd.percent
        elif act == pb.SHADOW:
            new.shadow_version = target
        elif act == pb.CLEAR_CANARY:
            new.canary_version, new.canary_percent = "", 0.0
        elif act == pb.CLEAR_SHADOW:
            new.shadow_version = ""
    new.revision += 1
    new.updated_ms = cmd.timestamp_ms


def in_canary(user_id: str, percent: float) -> bool:
    """The one canary rule, for rankers and policies alike: ``stable_hash(user_id, 10_000) < percent * 100``."""
    if percent <= 0:
        return False
    from recpilot.featurespec import stable_hash

    return stable_hash(str(user_id), CANARY_BUCKETS) < percent * 100


def routes_to_canary(state: pb.DeploymentState, user_id: str, kind: int = pb.RANKER) -> bool:
    """Whether ``user_id`` is answered by the canary of ``kind`` (the ranker's by default, or the
    re-ranking policy's): :func:`in_canary` with that canary's percent."""
    if kind == pb.POLICY:
        return bool(state.policy_canary_version) and in_canary(user_id, state.policy_canary_percent)
    return bool(state.canary_version) and in_canary(user_id, state.canary_percent)


def serving_version(state: pb.DeploymentState, user_id: str, kind: int = pb.RANKER) -> str:
    """The version of ``kind`` that answers ``user_id``: the canary for its share of users, else
    production (for policies: the policy version; empty = the ranker's order)."""
    if kind == pb.POLICY:
        return state.policy_canary_version if routes_to_canary(state, user_id, kind) else state.policy_version
    return state.canary_version if routes_to_canary(state, user_id) else state.production_version


# --------------------------------------------------------------------------------------------
# replay: control messages, in log order, into states
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened to one command in the log."""

    command: pb.DeploymentCommand
    applied: bool
    reason: str = ""                     # why it was rejected
    revision: int = 0                    # the state's revision after it (applied only)
    offset: int = -1


Admission = Callable[[pb.DeploymentState, pb.DeploymentCommand], "str | None"]


@dataclass
class DeploymentBook:
    """States and outcomes rebuilt from the messages of the control topic, and the replicas'
    acknowledgements read from the acks topic.

    ``admit(state, command)``: checks beyond :func:`check_command` (why the command cannot be
    applied, or None), e.g. :func:`.checks.repository_admission`. ``base``: the states the book was
    seeded with (:meth:`seed`, from a snapshot when the log was lost or truncated) and the offsets
    the log was read from on top of them; None when the whole log was replayed."""

    states: dict[str, pb.DeploymentState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)          # command_id -> outcome
    acks: dict[str, dict[str, pb.DeploymentAck]] = field(default_factory=dict)  # command_id -> replica -> ack
    messages: int = 0                    # control topic messages applied (apply_bytes)
    ack_messages: int = 0                # acks topic messages read (apply_ack_bytes)
    undecodable: int = 0
    stray: int = 0                       # an ack on the control topic, a command or state on the acks topic
    admit: Admission | None = None
    base: tuple[dict[int, int], dict[str, pb.DeploymentState]] | None = None

    def seed(self, states: dict[str, pb.DeploymentState], offsets: dict[int, int]) -> None:
        """Start from ``states`` (copies) instead of nothing; the log is then read from ``offsets``."""
        self.states = {}
        for name, st in states.items():
            own = pb.DeploymentState()
            own.CopyFrom(st)
            self.states[name] = own
        self.base = (dict(offsets), {n: self.state(n) for n in self.states})

    def state(self, model_name: str) -> pb.DeploymentState:
        st = self.states.get(model_name)
        if st is None:
            return pb.DeploymentState(model_name=model_name)
        out = pb.DeploymentState()
        out.CopyFrom(st)
        return out

    def _parse(self, value: bytes | None, offset: int, where: str) -> tuple[str | None, pb.ControlMessage | None]:
        msg = pb.ControlMessage()
        try:
            msg.ParseFromString(value or b"")
        except Exception:
            self.undecodable += 1
            log.warning(f"undecodable message on the {where} topic", extra={"offset": offset})
            return None, None
        body = msg.WhichOneof("body")
        if body is None:
            self.undecodable += 1
        return body, msg

    def apply_bytes(self, value: bytes | None, offset: int = -1) -> tuple[str, object]:
        """Apply one message of the control topic; returns ("command", Outcome) | ("state", _) |
        ("stray", DeploymentAck) | ("bad", None). An ack there (the control topic of an earlier
        version carried them) is skipped: acks are read from the acks topic only."""
        self.messages += 1
        body, msg = self._parse(value, offset, "control")
        if body == "command":
            return "command", self.apply_command(msg.command, offset)
        if body == "state":
            return "state", msg.state  # informational snapshots; the commands are the source of truth
        if body == "ack":
            self.stray += 1
            return "stray", msg.ack
        return "bad", None

    def apply_ack_bytes(self, value: bytes | None, offset: int = -1) -> tuple[str, object]:
        """Record one message of the acks topic; returns ("ack", DeploymentAck) | ("stray", _) |
        ("bad", None). Only ack bodies count: a command or state there is never applied (every
        serving replica may write that topic), only counted and logged."""
        self.ack_messages += 1
        body, msg = self._parse(value, offset, "acks")
        if body == "ack":
            a = msg.ack
            self.acks.setdefault(a.command_id, {})[a.replica] = a
            return "ack", a
        if body is not None:
            self.stray += 1
            log.warning("a message that is not an ack on the acks topic: ignored",
                        extra={"offset": offset, "body": body, "collapse": True})
            return "stray", getattr(msg, body)
        return "bad", None

    def apply_command(self, cmd: pb.DeploymentCommand, offset: int = -1) -> Outcome:
        if cmd.command_id in self.outcomes:  # a producer retry: the same command twice changes nothing
            return self.outcomes[cmd.command_id]
        state = self.states.get(cmd.model_name)
        if state is None:
            state = pb.DeploymentState(model_name=cmd.model_name)
        problem = check_command(state, cmd)
        if problem is None and self.admit is not None:
            problem = self.admit(state, cmd)
        if problem:
            out = Outcome(cmd, False, problem, state.revision, offset)
        else:
            _apply_in_place(state, cmd)  # in place: replaying N commands stays O(N), not O(N^2) copies
            self.states[cmd.model_name] = state
            out = Outcome(cmd, True, "", state.revision, offset)
        self.outcomes[cmd.command_id] = out
        return out

    def commands(self, model_name: str | None = None) -> list[Outcome]:
        """Every command in log order (applied and rejected)."""
        outs = [o for o in self.outcomes.values() if model_name is None or o.command.model_name == model_name]
        return sorted(outs, key=lambda o: o.offset)
