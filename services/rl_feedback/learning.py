"""The policy lifecycle: learn a re-ranking policy online from ``rewards``, checkpoint it, export it,
judge it off-policy against the serving policy, and publish it only when the judgement allows.

One thread in the rl_feedback process, beside the joiner:

1. **Learn.** A consumer (no group offsets: positions come from the checkpoint) reads ``rewards``
   (read_committed: only rewards of committed join transactions) and feeds each to the
   :class:`recpilot.rl.qlearn.QLearner` replay buffer, then runs ``learner_updates_per_reward``
   minibatch updates per reward.
2. **Checkpoint.** Every ``learner_checkpoint_every_rewards`` rewards and at every cycle: the learner's
   state (networks, optimizer, replay buffer, counters) and the rewards offsets it has consumed go
   to ``<home>/rl_feedback/learner.ckpt`` (written to a temporary file, fsynced, renamed). After a
   crash or ``kill -9`` the learner restores it and reads ``rewards`` from exactly those offsets, so
   learning resumes where the checkpoint left it and no reward is learned from twice.
3. **Export.** Every ``learner_every_rewards`` rewards or ``learner_every_s`` seconds (whichever
   comes first, once at least ``learner_min_rewards`` rewards were learned from), the learner's network becomes the next version of ``<model>.policy`` in the model
   repository (:func:`recpilot.rl.artifact.write_policy_version`), with the off-policy evaluation
   and the decision in its ``model.json`` (``ope``, ``decision``).
4. **Judge.** Off-policy evaluation on the recent logged traffic (``impressions`` + ``rewards`` of
   the last ``gate_window_s``, :func:`recpilot.rl.logs.from_kafka`): the candidate (its greedy
   values with the serving exploration rule) and the serving policy (the deployment state's policy
   version, or the ranker's order) are both estimated with ``gate_estimator`` (doubly robust by
   default), bootstrap intervals at ``gate_level``.
5. **Publish.** The candidate is published on ``control.deployments`` (PROMOTE, or CANARY at
   ``publish_canary_percent``; kind POLICY; actor ``rl_feedback``; the reason carries the figures)
   only when its interval's lower bound is not below the serving policy's estimate by more than
   ``gate_tolerance`` and the logs hold at least ``gate_min_decisions`` decisions; otherwise the
   decision says why not. ``recpilot policy status`` shows the last decision.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recpilot.errors import RecpilotError
from recpilot.featurespec import DENSE_FEATURES
from recpilot.rl.features import POLICY_FEATURES
from recpilot.rl.logged import ValuePolicy
from recpilot.rl.slate import Exploration
from recpilot.lifecycle import LoopThread
from services.rl_feedback import metrics as m

log = logging.getLogger(__name__)

CHECKPOINT = "learner.ckpt"


@dataclass
class Decision:
    """What the gate decided about one candidate policy version."""

    version: str
    published: bool
    reason: str
    at_ms: int
    serving_version: str
    estimator: str
    candidate: dict = field(default_factory=dict)   # {value, lo, hi, ess}
    serving: dict = field(default_factory=dict)
    decisions: int = 0                              # logged decisions the evaluation used
    command_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def paused_by_monitor(state) -> str | None:
    """The reason, when the monitor paused the model's policy (its latest policy command is the
    monitor's promotion of the ranker's order, the ``pause_policy`` action): the learner then
    publishes nothing until someone resumes a policy (``recpilot models rollback --kind policy`` or a
    promotion); None otherwise."""
    from recpilot.pb import deployments_pb2 as pb
    from recpilot.rl.artifact import DEFAULT_VERSION

    policy = [h for h in state.history if h.kind == pb.POLICY]
    last = policy[-1] if policy else None
    if last is not None and last.actor == "monitor" and last.action == pb.PROMOTE and last.version == DEFAULT_VERSION:
        return last.reason or "paused by the monitor"
    return None


def gate(candidate: dict, serving: dict, *, tolerance: float, decisions: int, min_decisions: int) -> tuple[bool, str]:
    """Publish (True) when the candidate's lower bound is not below the serving estimate by more than
    ``tolerance``; the reason states the figures either way."""
    if decisions < min_decisions:
        return False, (f"too few logged decisions to judge: {decisions} < {min_decisions} "
                       "(gate_min_decisions)")
    lo, sv = candidate["lo"], serving["value"]
    figures = (f"candidate {candidate['value']:.5f} [{lo:.5f}, {candidate['hi']:.5f}] vs serving {sv:.5f} "
               f"on {decisions} decisions, tolerance {tolerance:g}")
    if not (math.isfinite(lo) and math.isfinite(sv)):
        return False, "the evaluation gave no finite estimate: " + figures
    if lo >= sv - tolerance:
        return True, "lower bound not below the serving estimate minus the tolerance: " + figures
    return False, "lower bound below the serving estimate minus the tolerance: " + figures


def ranker_order_policy() -> ValuePolicy:
    """The built-in default as a target policy: greedy on the ranker score column."""
    col = POLICY_FEATURES.index("ranker_score")
    return ValuePolicy(lambda x: np.asarray(x[:, col], dtype=np.float64), Exploration(), "ranker-order")


def write_atomic(path: Path, payload: dict) -> None:
    """``torch.save`` to a temporary file, fsync, rename over ``path``, fsync the directory."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def reward_row(rw) -> dict:
    """A ``Reward`` as the learner's row."""
    return {"dense": rw.dense, "score": rw.score, "position": rw.position, "reward": rw.reward,
            "request_id": rw.request_id, "session_id": rw.session_id, "user_id": rw.user_id,
            "impression_ts_ms": rw.impression_ts_ms}


class PolicyLearner(LoopThread):
    """The lifecycle thread. ``start()`` / ``stop()``; ``status()`` for health and metrics."""

    def __init__(self, s, platform, *, repository=None, controller_factory=None) -> None:
        from recpilot.models.repository import ModelRepository

        self.s = s
        self.platform = platform
        self.repo = repository or ModelRepository(platform.model_repo)
        self.model = s.learner_model
        self.state_dir = Path(s.learner_state_dir or (platform.home / "rl_feedback"))
        self.ckpt_path = self.state_dir / CHECKPOINT
        self._controller_factory = controller_factory
        LoopThread.__init__(self, "policy-learner")
        self.learner = None
        self.offsets: dict[int, int] = {}       # rewards partition -> next offset to learn from
        self.rewards_since = 0                  # rewards learned from since the last cycle
        self.since_checkpoint = 0               # ... since the last checkpoint
        self.last_cycle = time.monotonic()
        self.last_decision: Decision | None = None
        self.cycles = 0
        self._judging: threading.Thread | None = None
        self.restored_from: dict | None = None

    # -- learner state ---------------------------------------------------------------------------
    def _new_learner(self):
        from recpilot.rl.qlearn import QConfig, QLearner

        s = self.s
        cfg = QConfig(gamma=s.learner_gamma, loss="bce" if s.learner_gamma == 0 else "huber",
                      explore=s.learner_explore, explore_start=None,  # a published version explores at a fixed rate
                      seed=s.learner_seed, hidden=tuple(s.learner_hidden),
                      lr=s.learner_lr)
        return QLearner(cfg)

    def restore(self) -> None:
        """Load the checkpoint if there is one (else a fresh learner from offset 0)."""
        import torch

        self.learner = self._new_learner()
        if not self.ckpt_path.exists():
            self.offsets = {}
            return
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        self.learner.load_state_dict(state["learner"])
        self.offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        self.cycles = int(state.get("cycles", 0))
        if state.get("last_decision"):
            self.last_decision = Decision(**state["last_decision"])
        self.restored_from = {"offsets": dict(self.offsets), "rows": self.learner.rows,
                              "updates": self.learner.updates}
        m.LEARNER_ROWS.set(self.learner.rows)
        m.LEARNER_UPDATES.set(self.learner.updates)
        log.info("learner restored from its checkpoint", extra={
            "path": str(self.ckpt_path), "rows": self.learner.rows, "updates": self.learner.updates,
            "offsets": self.offsets})

    def checkpoint(self) -> None:
        write_atomic(self.ckpt_path, {
            "learner": self.learner.state_dict(), "offsets": dict(self.offsets), "cycles": self.cycles,
            "last_decision": self.last_decision.to_dict() if self.last_decision else None,
            "written_ms": int(time.time() * 1000)})
        self.since_checkpoint = 0
        m.LEARNER_CHECKPOINTS.inc()

    # -- the loop ----------------------------------------------------------------------------------
    failure = "the policy learner failed"

    def start(self) -> None:
        self.restore()
        LoopThread.start(self)

    def stop(self, timeout: float = 30.0, judge_timeout: float = 5.0) -> None:
        """Stop learning, then wait up to ``judge_timeout`` for a candidate being judged. A judgement
        still running then (the gate's bootstrap can take minutes on a loaded machine) is left to end
        with the process: that candidate is neither published nor recorded, as after a kill, and the
        next start judges a new one. The reward joiner stops after the learner and must commit its
        transaction before `recpilot down` (30 s) kills the process."""
        LoopThread.stop(self, timeout)
        if self._judging is not None:
            self._judging.join(judge_timeout)
            if self._judging.is_alive():
                log.warning("stopping while a candidate policy is judged: its decision is dropped",
                            extra={"cycle": self.cycles})

    def _consumer(self):
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        from recpilot import kafka as rkafka

        c = rkafka.consumer(self.platform, f"{self.s.group_id}-learner", **{
            "isolation.level": "read_committed", "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "client.id": f"rl-feedback-learner-{self.s.instance_id}"})
        md = c.list_topics(self.s.rewards_topic, timeout=10)
        parts = sorted(md.topics[self.s.rewards_topic].partitions)
        c.assign([TopicPartition(self.s.rewards_topic, p, self.offsets.get(p, OFFSET_BEGINNING)) for p in parts])
        return c

    def run(self) -> None:
        from recpilot.kafka import usable
        from recpilot.pb import events_pb2

        consumer = self._consumer()
        s = self.s
        try:
            while not self._stop.is_set():
                msgs = usable(consumer.consume(s.learner_batch, s.poll_timeout_s))
                if msgs:
                    rows = []
                    for msg in msgs:
                        self.offsets[msg.partition()] = msg.offset() + 1
                        rw = events_pb2.Reward()
                        try:
                            rw.ParseFromString(msg.value())
                        except Exception:  # noqa: BLE001 - not a Reward: nothing to learn from
                            m.LEARNER_SKIPPED.labels("undecodable").inc()
                            continue
                        if len(rw.dense) != len(DENSE_FEATURES):  # an impression logged without its pool
                            m.LEARNER_SKIPPED.labels("no_inputs").inc()
                            continue
                        rows.append(reward_row(rw))
                    if rows:
                        self.learner.observe(rows)
                        self.learner.train(max(1, int(round(len(rows) * s.learner_updates_per_reward))))
                        self.rewards_since += len(rows)
                        self.since_checkpoint += len(rows)
                        m.LEARNER_REWARDS.inc(len(rows))
                        m.LEARNER_ROWS.set(self.learner.rows)
                        m.LEARNER_UPDATES.set(self.learner.updates)
                due = (self.rewards_since >= s.learner_every_rewards
                       or time.monotonic() - self.last_cycle >= s.learner_every_s)
                if due and self.rewards_since >= s.learner_min_rewards and not self.judging:
                    self.cycle(wait=False)
                elif self.since_checkpoint >= s.learner_checkpoint_every_rewards:
                    self.checkpoint()
        finally:
            consumer.close()

    # -- one lifecycle step ------------------------------------------------------------------------
    def cycle(self, wait: bool = True) -> Decision | None:
        """Checkpoint, then judge and publish (or hold) a snapshot of the network: one candidate
        policy version. With ``wait=False`` (the loop) the judging runs in a thread of its own while
        learning goes on; the next cycle waits for it."""
        self.rewards_since = 0
        self.last_cycle = time.monotonic()
        self.cycles += 1
        self.checkpoint()
        snapshot = self.snapshot()
        if wait:
            return self._judge(snapshot)
        self._judging = threading.Thread(target=self._judge, args=(snapshot,), name="policy-gate", daemon=True)
        self._judging.start()
        return None

    @property
    def judging(self) -> bool:
        return self._judging is not None and self._judging.is_alive()

    def snapshot(self) -> dict:
        """What a candidate is made of, taken between two learning steps."""
        learner = self.learner
        st = learner.stats()
        return {"module": learner.export_module(), "cycle": self.cycles, "training": {
            "source": "rewards", "rows": int(st["rows"]), "updates": int(st["updates"]),
            "impressions": int(learner.impressions_seen), "offsets": dict(self.offsets),
            "config": {k: v for k, v in asdict(learner.config).items() if k != "features"},
            "mean_reward": st["mean_reward"], "cycle": self.cycles}}

    def _judge(self, snapshot: dict) -> Decision | None:
        try:
            decision = self.judge_and_publish(snapshot)
        except RecpilotError as exc:  # Kafka or the repository unavailable: try again next cycle
            log.error("policy cycle failed; the next cycle tries again", extra={"error": str(exc)})
            return self.last_decision
        self.last_decision = decision  # in the next checkpoint
        return decision

    def serving(self) -> tuple[str, object]:
        """The serving policy version (deployment state) and a target policy for it."""
        from recpilot.rl.artifact import DEFAULT_VERSION, load_policy

        state = self._controller().state(self.model)
        version = state.policy_version or DEFAULT_VERSION
        if version == DEFAULT_VERSION:
            return version, ranker_order_policy()
        loaded = load_policy(self.repo, self.model, version)
        return version, ValuePolicy(loaded.values, loaded.exploration, version)

    def _controller(self):
        if getattr(self, "_ctl", None) is None:
            if self._controller_factory is not None:
                self._ctl = self._controller_factory()
            else:
                from recpilot.models.deployments.controller import DeploymentController

                self._ctl = DeploymentController(self.platform, repository=self.repo, actor="rl_feedback")
        self._ctl.refresh()
        return self._ctl

    def judge_and_publish(self, snapshot: dict | None = None) -> Decision:
        from recpilot.pb import deployments_pb2 as pb
        from recpilot.rl.artifact import write_policy_version
        from recpilot.rl.logs import from_kafka
        from recpilot.rl.ope import evaluate

        s = self.s
        now_ms = int(time.time() * 1000)
        est = s.gate_estimator
        serving_version, serving = self.serving()
        explore = Exploration.parse(s.learner_explore)
        snapshot = snapshot or self.snapshot()
        module = snapshot["module"]
        candidate = ValuePolicy(_module_values(module), explore, "candidate")
        logs = from_kafka(self.platform, since_ms=now_ms - int(s.gate_window_s * 1000),
                          max_impressions=s.gate_max_decisions,
                          impressions_topic=s.impressions_topic, rewards_topic=s.rewards_topic)
        n = logs.n
        cand = serv = {}
        if n > 0:
            kw = {"estimators": (est,), "n_boot": s.gate_n_boot, "level": s.gate_level, "seed": snapshot["cycle"]}
            rc = evaluate(logs, candidate, name="candidate", **kw).estimates[est]
            rs = evaluate(logs, serving, name=serving_version, **kw).estimates[est]
            cand = {"value": rc.value, "lo": rc.lo, "hi": rc.hi, "ess": rc.ess}
            serv = {"value": rs.value, "lo": rs.lo, "hi": rs.hi, "ess": rs.ess}
            m.POLICY_ESTIMATE.labels("candidate").set(rc.value)
            m.POLICY_ESTIMATE.labels("serving").set(rs.value)
            publish, reason = gate(cand, serv, tolerance=s.gate_tolerance, decisions=n,
                                   min_decisions=s.gate_min_decisions)
        else:
            publish, reason = False, "no logged decisions with rewards in the gate window yet"
        paused = paused_by_monitor(self._controller().state(self.model))
        if publish and paused:
            publish, reason = False, (f"the gate passed ({reason}) but the monitor paused the policy ({paused}); "
                                      "resume with `recpilot models rollback --kind policy` or a promotion")
        training = snapshot["training"]
        ope = {"estimator": est, "level": s.gate_level, "decisions": n, "window_s": s.gate_window_s,
               "candidate": cand, "serving": serv, "serving_version": serving_version}
        decision = Decision("", publish, reason, now_ms, serving_version, est, cand, serv, n)
        version = write_policy_version(self.repo, self.model, module, list(POLICY_FEATURES), explore,
                                       pool_size=s.learner_pool_size, gamma=s.learner_gamma, training=training,
                                       ope=ope, extra={"decision": {"published": publish, "reason": reason,
                                                                    "at_ms": now_ms}})
        decision.version = version
        if publish:
            ctl = self._controller()
            if s.publish_canary_percent > 0:
                sub = ctl.submit("canary", self.model, version, percent=s.publish_canary_percent,
                                 reason=f"rl_feedback: {reason}", kind=pb.POLICY)
            else:
                sub = ctl.submit("promote", self.model, version, reason=f"rl_feedback: {reason}", kind=pb.POLICY)
            decision.command_id = sub.command.command_id
            m.POLICY_DECISIONS.labels("published").inc()
        else:
            m.POLICY_DECISIONS.labels("held").inc()
        log.info("policy decision", extra={"version": version, "published": publish, "reason": reason,
                                           "serving_version": serving_version})
        return decision

    def status(self) -> dict:
        st = self.learner.stats() if self.learner is not None else {}
        return {"running": self.running, "error": repr(self.error) if self.error else None,
                "offsets": dict(self.offsets), "cycles": self.cycles, "learner": st,
                "restored_from": self.restored_from,
                "last_decision": self.last_decision.to_dict() if self.last_decision else None}


def _module_values(module):
    import torch

    def values(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy().astype(np.float64)

    return values
