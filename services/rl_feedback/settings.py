"""Settings of the reward joiner (environment prefix ``RECPILOT_RL_FEEDBACK_``). Light to import.

The join rules these settings tune are in ``docs/learning.md`` ("Rewards")."""

from __future__ import annotations

import socket

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

    metrics_interval_s: float = Field(default=5.0, gt=0)
    stall_after_s: float = Field(default=30.0, gt=0, description="/readyz fails when the loop did not poll for this long")

    @property
    def txn_id(self) -> str:
        return self.transactional_id or f"{self.group_id}-{self.instance_id}"

    @property
    def window_ms(self) -> int:
        return int(self.window_s * 1000)
