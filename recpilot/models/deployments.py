"""Deployment control: the state of every model, event-sourced on ``control.deployments``.

The topic is the only store. It carries :class:`ControlMessage` envelopes keyed by model name:
``command`` (DEPLOY, PROMOTE, CANARY, SHADOW, ROLLBACK, CLEAR_CANARY, CLEAR_SHADOW) written by the
CLI, rl_feedback and monitor, and ``ack`` written by serving replicas. Retention is forever, so
anyone rebuilds the state by replaying the topic from the beginning with the same pure function
(:func:`apply_command`): the CLI before it validates a new command, every serving replica through
:class:`DeploymentFollower`, and a fresh process after any restart (including the broker's: Kafka
keeps the log on disk).

Replay is deterministic. A command that is invalid against the state it meets in the log (say two
operators rolled back at once and there is no older production version left) is *rejected* by every
replayer alike: it stays in the log for the audit trail but changes nothing, and the revision only
counts applied commands.

Layers:

* pure domain (no I/O): :func:`check_command`, :func:`apply_command`, :class:`DeploymentBook`
  (states + acks + rejections from a sequence of messages), :func:`promotion_gate`,
  :func:`routes_to_canary`;
* Kafka transport: :class:`TopicReader` (replay / tail), :class:`DeploymentFollower` (serving
  replicas: start/stop, ``state()``, ``ready``, ``on_change``, ``ack``);
* :class:`DeploymentController`: validates a command against the replayed state and the model
  repository (existence, integrity, the offline-metric promotion gate), publishes it, waits for
  its outcome and, if asked, for replica acknowledgements. Used by ``recpilot models ...``; the
  monitor and rl_feedback can use it too.
"""

from __future__ import annotations

import getpass
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recpilot.pb import deployments_pb2 as pb
from recpilot.settings import PlatformSettings, RecpilotSettings
from recpilot.topics import CONTROL_DEPLOYMENTS

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while a broker restarts, ...) go through logging:
# JSON in services; the CLI silences this logger and reports errors itself.
kafka_log = logging.getLogger("recpilot.deployments.kafka")

# Metrics of the follower inside each serving replica (and of the controller in the CLI).

_m_applied = Counter("recpilot_deployments_commands_applied_total",
                     "deployment commands applied to the followed state (replay included)")
_m_rejected = Counter("recpilot_deployments_commands_rejected_total",
                      "deployment commands in the log that were invalid against the state they met")
_m_acks = Counter("recpilot_deployments_acks_published_total", "acknowledgements published by this process",
                  ["status"])

ACTIONS = {
    "deploy": pb.DEPLOY, "promote": pb.PROMOTE, "canary": pb.CANARY, "shadow": pb.SHADOW,
    "rollback": pb.ROLLBACK, "clear_canary": pb.CLEAR_CANARY, "clear_shadow": pb.CLEAR_SHADOW,
}
ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
ACK_NAMES = {pb.APPLIED: "APPLIED", pb.REJECTED: "REJECTED", pb.FAILED: "FAILED",
             pb.ACK_STATUS_UNSPECIFIED: "UNSPECIFIED"}
CANARY_BUCKETS = 10_000


class DeploymentSettings(RecpilotSettings):
    """Deployment control. Environment prefix ``RECPILOT_DEPLOY_``."""

    model_config = SettingsConfigDict(env_prefix="RECPILOT_DEPLOY_", extra="forbid", case_sensitive=False)

    topic: str = Field(default=CONTROL_DEPLOYMENTS, min_length=1, description="the control topic (tests override it)")
    auc_tolerance: float = Field(default=0.005, ge=0, description="promotion refused if auc < production auc - this")
    logloss_tolerance: float = Field(default=0.01, ge=0,
                                     description="promotion refused if logloss > production logloss + this")
    replay_timeout_s: float = Field(default=20.0, gt=0, description="how long a replay of the topic may take")
    publish_timeout_s: float = Field(default=30.0, gt=0)


class DeploymentError(Exception):
    """A deployment command was refused before publishing (nothing was published), or could not be
    published / confirmed. The message says why."""


class PublishError(DeploymentError):
    """Publishing (or reading back) a validated command failed; whether it reached the log is
    unknown, so the message says to check the status."""


class PromotionRefused(DeploymentError):
    """The candidate's offline metrics are worse than production's beyond the tolerance."""


class CommandRejected(DeploymentError):
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
    if act not in ACTION_NAMES:
        return f"unknown action {act}"
    if cmd.force and not cmd.reason.strip():
        return "--force needs a --reason (it is recorded)"
    current = state.production_version if kind == pb.RANKER else state.policy_version
    what = "model" if kind == pb.RANKER else "policy"
    if act in (pb.DEPLOY, pb.PROMOTE, pb.CANARY, pb.SHADOW) and not cmd.version:
        return f"{ACTION_NAMES[act]} needs a version"
    if kind == pb.POLICY and act not in (pb.DEPLOY, pb.PROMOTE, pb.ROLLBACK):
        return f"{ACTION_NAMES[act]} is not supported for policies"
    if act in (pb.DEPLOY, pb.PROMOTE) and cmd.version == current:
        return f"version {cmd.version} of {what} {cmd.model_name} is already production"
    if act in (pb.CANARY, pb.SHADOW):
        if not current:
            return f"{cmd.model_name} has no production version yet; deploy one first"
        if cmd.version == current:
            return f"version {cmd.version} is production; a {ACTION_NAMES[act]} must be another version"
    if act == pb.CANARY and not 0.0 < cmd.percent <= 100.0:
        return f"canary percent must be in (0, 100], got {cmd.percent:g} (use clear_canary to stop a canary)"
    if act == pb.CLEAR_CANARY and not state.canary_version:
        return f"{cmd.model_name} has no canary"
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


def routes_to_canary(state: pb.DeploymentState, user_id: str) -> bool:
    """Canary routing everywhere: ``stable_hash(user_id, 10_000) < percent * 100``."""
    if not state.canary_version or state.canary_percent <= 0:
        return False
    from recpilot.featurespec import stable_hash

    return stable_hash(str(user_id), CANARY_BUCKETS) < state.canary_percent * 100


def serving_version(state: pb.DeploymentState, user_id: str) -> str:
    """The version that answers ``user_id``: the canary for its share of users, else production."""
    return state.canary_version if routes_to_canary(state, user_id) else state.production_version


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
# replayed view of the topic
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened to one command in the log."""

    command: pb.DeploymentCommand
    applied: bool
    reason: str = ""                     # why it was rejected
    revision: int = 0                    # the state's revision after it (applied only)
    offset: int = -1


@dataclass
class DeploymentBook:
    """States, outcomes and acknowledgements rebuilt from the messages of the control topic."""

    states: dict[str, pb.DeploymentState] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)          # command_id -> outcome
    acks: dict[str, dict[str, pb.DeploymentAck]] = field(default_factory=dict)  # command_id -> replica -> ack
    messages: int = 0
    undecodable: int = 0

    def state(self, model_name: str) -> pb.DeploymentState:
        st = self.states.get(model_name)
        if st is None:
            return pb.DeploymentState(model_name=model_name)
        out = pb.DeploymentState()
        out.CopyFrom(st)
        return out

    def apply_bytes(self, value: bytes | None, offset: int = -1) -> tuple[str, object]:
        """Apply one message; returns ("command", Outcome) | ("ack", DeploymentAck) | ("state", _) | ("bad", None)."""
        self.messages += 1
        msg = pb.ControlMessage()
        try:
            msg.ParseFromString(value or b"")
        except Exception:
            self.undecodable += 1
            log.warning("undecodable message on the control topic", extra={"offset": offset})
            return "bad", None
        body = msg.WhichOneof("body")
        if body == "command":
            return "command", self.apply_command(msg.command, offset)
        if body == "ack":
            a = msg.ack
            self.acks.setdefault(a.command_id, {})[a.replica] = a
            return "ack", a
        if body == "state":
            return "state", msg.state  # informational snapshots; the commands are the source of truth
        self.undecodable += 1
        return "bad", None

    def apply_command(self, cmd: pb.DeploymentCommand, offset: int = -1) -> Outcome:
        if cmd.command_id in self.outcomes:  # a producer retry: the same command twice changes nothing
            return self.outcomes[cmd.command_id]
        state = self.states.get(cmd.model_name)
        if state is None:
            state = pb.DeploymentState(model_name=cmd.model_name)
        problem = check_command(state, cmd)
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


# --------------------------------------------------------------------------------------------
# Kafka transport
# --------------------------------------------------------------------------------------------
def control_topic_spec(topic: str):
    from recpilot.topics import TopicSpec

    # Commands and acks are the audit trail and the state: keep them forever, one partition.
    return TopicSpec(topic, 1, {"retention.ms": "-1"})


def ensure_control_topic(settings: PlatformSettings, topic: str, timeout: float = 20.0) -> list[str]:
    """Create the control topic if missing (1 partition, retention forever); return warnings about
    an existing topic whose configuration would lose deployment history (also logged)."""
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


class TopicReader:
    """Reads the control topic from the beginning into a :class:`DeploymentBook` (no consumer
    group offsets are used or committed: every reader replays everything)."""

    def __init__(self, settings: PlatformSettings, topic: str, book: DeploymentBook | None = None,
                 client_id: str = "recpilot-deployments", lock: threading.RLock | None = None) -> None:
        from recpilot.kafka import consumer

        self._lock = lock or threading.RLock()
        self._client_id = client_id
        self._offsets_client = None
        self.settings, self.topic = settings, topic
        self.book = book or DeploymentBook()
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

    def _assign(self, timeout: float) -> bool:
        """Assign every partition from the beginning. False if the topic does not exist; raises
        :class:`DeploymentError` if it exists but is not ready (no leader yet) within ``timeout``."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        deadline = time.monotonic() + timeout
        while True:
            md = self._consumer.list_topics(self.topic, timeout=max(deadline - time.monotonic(), 0.5))
            tmd = md.topics.get(self.topic)
            if tmd is None or (tmd.error is not None and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                return False
            if tmd.error is None and tmd.partitions and all(p.leader >= 0 and p.error is None
                                                            for p in tmd.partitions.values()):
                break
            if time.monotonic() > deadline:
                raise DeploymentError(f"topic {self.topic} is not ready: {tmd.error or 'partitions without a leader'}")
            time.sleep(0.2)
        parts = sorted(tmd.partitions)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        self._positions = {p: 0 for p in parts}
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
        kind, obj = self.book.apply_bytes(m.value(), m.offset())
        if self.on_message is not None:
            self.on_message(kind, obj)
        return 1

    def caught_up(self, ends: dict[int, int], lows: dict[int, int] | None = None) -> bool:
        lows = lows or {}
        return all(self._positions.get(p, 0) >= end or end <= lows.get(p, 0) for p, end in ends.items())

    def read_to_end(self, timeout: float) -> DeploymentBook:
        """Replay up to the end offsets the broker reports now. An absent topic is an empty log.
        Raises :class:`DeploymentError` if the broker does not answer within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            if not self._assigned and not self._assign(timeout):
                return self.book
            lows, ends = self.watermarks(max(deadline - time.monotonic(), 1.0))
        except DeploymentError:
            raise
        except Exception as exc:
            raise DeploymentError(f"cannot read {self.topic} from Kafka at {self.settings.kafka_bootstrap}: {exc}") \
                from None
        while not self.caught_up(ends, lows):
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"replaying {self.topic} from {self.settings.kafka_bootstrap} did not finish within "
                    f"{timeout:g}s (read {self._positions}, end {ends})")
            self.poll_once(0.2)
        return self.book


def replay(settings: PlatformSettings, topic: str = CONTROL_DEPLOYMENTS, timeout: float = 20.0) -> DeploymentBook:
    """The deployment state of every model, rebuilt from the whole topic."""
    reader = TopicReader(settings, topic)
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
    applied command (rejected ones change nothing and are not passed on). ``on_change`` runs on
    the follower's thread; if it raises, a FAILED ack with the error is published for that command.
    ``ack(command, status, message)`` publishes a :class:`DeploymentAck` with this replica's id.
    """

    def __init__(self, settings: PlatformSettings, replica_id: str,
                 on_change: Callable[[pb.DeploymentState, pb.DeploymentCommand], None] | None = None,
                 topic: str = CONTROL_DEPLOYMENTS, *, ensure_topic: bool = True) -> None:
        self.settings, self.replica_id, self.topic = settings, replica_id, topic
        self.on_change = on_change
        self.ensure_topic = ensure_topic
        self.book = DeploymentBook()
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
        from recpilot.kafka import flush_or_raise

        if self._producer is None:
            raise DeploymentError("the follower is not started")
        with self._lock:
            revision = self.book.outcomes.get(command.command_id, Outcome(command, False)).revision
        ack = pb.DeploymentAck(command_id=command.command_id, model_name=command.model_name, version=command.version,
                               status=status, replica=self.replica_id, message=message, revision=revision,
                               timestamp_ms=now_ms())
        errors: list = []
        self._producer.produce(self.topic, key=command.model_name.encode(),
                               value=pb.ControlMessage(ack=ack).SerializeToString(),
                               on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
        flush_or_raise(self._producer, 10.0)
        if errors:
            raise DeploymentError(f"ack for {command.command_id} not delivered: {errors[0]}")
        _m_acks.labels(ACK_NAMES.get(status, "UNSPECIFIED")).inc()
        return ack

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

    def _run(self) -> None:
        reader = TopicReader(self.settings, self.topic, self.book, client_id=f"recpilot-follower-{self.replica_id}",
                             lock=self._lock)
        try:
            # Wait for the broker and the topic (a replica may start before either).
            ends = lows = None
            while not self._stop.is_set():
                try:
                    if self.ensure_topic:
                        ensure_control_topic(self.settings, self.topic, timeout=5.0)
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
                elif kind == "command":
                    _m_rejected.inc()

            reader.on_before = on_before
            reader.on_message = on_message
            while not self._stop.is_set():
                reader.poll_once(0.2)
                with self._lock:
                    batch, pending[:] = list(pending), []
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
                for st, cmd in batch:
                    self._notify(st, cmd)
        finally:
            reader.close()


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
        self._reader: TopicReader | None = None
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
            self._reader = TopicReader(self.settings, self.topic, client_id="recpilot-controller")
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
            raise DeploymentError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        if force and not reason.strip():
            raise DeploymentError("--force needs --reason TEXT: the reason is recorded in the history")
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
                    raise DeploymentError(f"{action} needs a version of {model}")
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
        from recpilot.kafka import flush_or_raise, producer

        try:
            if not self._topic_ensured:
                ensure_control_topic(self.settings, self.topic)
                self._topic_ensured = True
            if self._producer is None:
                self._producer = producer(self.settings, **{"client.id": "recpilot-controller", "logger": kafka_log})
            errors: list = []
            self._producer.produce(self.topic, key=cmd.model_name.encode(),
                                   value=pb.ControlMessage(command=cmd).SerializeToString(),
                                   on_delivery=lambda err, _msg: errors.append(err) if err is not None else None)
            flush_or_raise(self._producer, self.deploy.publish_timeout_s)
            if errors:
                raise RuntimeError(f"delivery failed: {errors[0]}")
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


def state_to_dict(state: pb.DeploymentState) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(state, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def message_to_dict(msg) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
