"""Settings of the reward joiner (environment prefix ``RECPILOT_RL_FEEDBACK_``). Light to import.

The join rules these settings tune are in ``docs/learning.md`` ("Rewards")."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recpilot import topics


class RlFeedbackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECPILOT_RL_FEEDBACK_", extra="forbid", case_sensitive=False)

    http_host: str | None = Field(default=None, description="default: RECPILOT_BIND_HOST")
    http_port: int = Field(default=9104, ge=0, le=65535)

    impressions_topic: str = topics.IMPRESSIONS
    events_topic: str = topics.EVENTS_CLEAN
    rewards_topic: str = topics.REWARDS
    changelog_topic: str = topics.RL_JOIN_CHANGELOG
    metrics_topic: str = topics.metrics_topic("rl_feedback")
    group_id: str = "recpilot-rl-feedback"
    instance_id: str = Field(default_factory=socket.gethostname, description="names this replica (metrics, transactional id)")
    transactional_id: str | None = Field(
        default=None, description="default: <group_id>-<instance_id>; a restarted replica with the same id aborts "
        "the transaction its predecessor left open at once (else the broker does after transaction_timeout_ms)")
    transaction_timeout_ms: int = Field(default=15_000, ge=1_000)

    # The join
    window_s: float = Field(
        default=10.0, gt=0, description="attribution window: outcomes up to this long after the impression count; "
        "an impression's rewards are published when event time passes impression time + window (docs/learning.md)")
    grace_ms: int = Field(
        default=500, ge=0, description="while an input is caught up, event time is the wall clock minus this: the "
        "time an outcome may take from its event time to events.clean and still count")
    reward_click: float = Field(default=1.0, description="reward weight of a click (defaults: the CTR objective)")
    reward_add_to_cart: float = Field(default=0.0, description="reward weight of an add-to-cart")
    reward_purchase: float = Field(default=0.0, description="reward weight of a purchase")
    reward_revenue: float = Field(default=0.0, description="reward per unit of revenue (purchase price)")

    # Hot path
    batch_size: int = Field(default=5_000, ge=1, le=100_000, description="messages per consume call")
    poll_timeout_s: float = Field(default=0.1, gt=0, description="also the tick at which idle windows close")
    commit_timeout_s: float = Field(default=30.0, gt=0)
    restore_timeout_s: float = Field(default=120.0, gt=0, description="reading a partition's changelog on assignment")
    session_timeout_ms: int = Field(default=10_000, ge=1_000, description="consumer group session timeout")
    static_membership: bool = Field(
        default=False, description="group.instance.id = instance_id: a restarted replica gets its partitions back "
        "at once instead of after the session timeout (instance ids must then be unique per replica)")

    # The policy lifecycle (services/rl_feedback/learning.py; docs/learning.md "Policy lifecycle")
    learner_enabled: bool = Field(default=True, description="learn a re-ranking policy from the rewards in this process")
    learner_model: str = Field(default="ranker", description="the ranker model whose policy is learned (<model>.policy)")
    learner_state_dir: Path | None = Field(default=None, description="checkpoint folder (default: <home>/rl_feedback)")
    learner_gamma: float = Field(default=0.0, ge=0.0, lt=1.0, description="discount: 0 = a contextual bandit; above 0 the "
                                 "next state is the same session's next impression")
    learner_explore: str = Field(default="epsilon_greedy:0.05", description="exploration of the published policy: "
                                 "epsilon_greedy:<p> or softmax:<temperature>, optionally +uniform:<share> (that share of slates "
                                 "uniformly random: full support for off-policy evaluation); the propensities it logs are exact")
    learner_hidden: tuple[int, ...] = Field(default=(64, 32), description="Q-network hidden layer sizes")
    learner_lr: float = Field(default=1e-3, gt=0)
    learner_seed: int = 0
    learner_batch: int = Field(default=2_000, ge=1, description="rewards per consume call")
    learner_updates_per_reward: float = Field(default=0.05, gt=0, description="minibatch updates per reward learned from")
    learner_checkpoint_every_rewards: int = Field(default=10_000, ge=1, description="a checkpoint every this many rewards "
                                                  "(and at every candidate)")
    learner_every_rewards: int = Field(default=50_000, ge=1, description="a candidate policy every this many rewards ...")
    learner_every_s: float = Field(default=120.0, gt=0, description="... or every this many seconds")
    learner_min_rewards: int = Field(default=1_000, ge=1, description="rewards learned from before a cycle")
    learner_pool_size: int = Field(default=40, ge=1, description="pool size the published policy asks serving for")
    gate_estimator: Literal["dr", "ips", "snips", "dm"] = Field(default="dr", description="off-policy estimator of the gate")
    gate_level: float = Field(default=0.95, gt=0, lt=1, description="confidence level of the gate's interval")
    gate_n_boot: int = Field(default=100, ge=10)
    gate_tolerance: float = Field(default=0.001, ge=0, description="publish when the candidate's lower bound >= the "
                                  "serving estimate minus this (reward per shown item)")
    gate_window_s: float = Field(default=600.0, gt=0, description="logged traffic the gate evaluates on: the last this many seconds")
    gate_max_decisions: int = Field(default=5_000, ge=1, description="... at most the latest this many decisions")
    gate_min_decisions: int = Field(default=200, ge=1, description="hold back when the window has fewer decisions")
    publish_canary_percent: float = Field(default=0.0, ge=0, le=100, description="0: PROMOTE a passing candidate; else "
                                          "put it on canary for this share of users")

    metrics_interval_s: float = Field(default=5.0, gt=0)
    stall_after_s: float = Field(default=30.0, gt=0, description="/readyz fails when the loop did not poll for this long")
    restart_after_stall_s: float = Field(default=240.0, ge=0, description="the process restarts itself when the loop "
                                         "did not poll for this long (blocked inside a Kafka call: the restart's "
                                         "init_transactions aborts what it left open); longer than a restore and "
                                         "a commit can take (0 = never)")

    @property
    def txn_id(self) -> str:
        return self.transactional_id or f"{self.group_id}-{self.instance_id}"

    def replica_settings(self, i: int, home) -> dict[str, str]:
        """What replica ``i`` (1, 2 ...) of ``recpilot up --replicas`` changes of these settings: its
        own HTTP port, instance id and transactional id (two producers under one transactional id
        fence each other), the same consumer group (the replicas share the impressions partitions),
        and no policy learner: the learner reads every reward from its own checkpointed offsets and
        publishes policy versions, so it runs in replica 0 alone (docs/operations.md "Scaling")."""
        out = {"instance_id": f"{self.instance_id}-{i}", "learner_enabled": "false"}
        if self.transactional_id:
            out["transactional_id"] = f"{self.transactional_id}-{i}"
        return out

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)
