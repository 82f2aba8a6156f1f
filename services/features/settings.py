"""Settings of the features service (environment prefix ``RECPILOT_FEATURES_``). Light to import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recpilot.topics import EVENTS_CLEAN, metrics_topic


class FeaturesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECPILOT_FEATURES_", extra="forbid", case_sensitive=False)

    http_port: int = Field(default=9102, ge=0, le=65535, description="/metrics, /healthz, /readyz (0 = any free port)")
    http_host: str | None = Field(default=None, description="default: RECPILOT_BIND_HOST")
    input_topic: str = Field(default=EVENTS_CLEAN, min_length=1, description="validated UserEvent protobufs")
    metrics_topic: str = Field(default=metrics_topic("features"), min_length=1)
    app_id: str = Field(default="recpilot-features", min_length=1, description="faust app id = consumer group id")
    key_prefix: str = Field(default="rp:", description="prefix of every Redis key this service writes")
    redis_url: str | None = Field(default=None, description="default: the platform's Redis (RECPILOT_REDIS_*)")
    instance: str = Field(default="", description="instance name in metric events (default: host:pid)")

    batch_max: int = Field(default=2000, ge=1, description="events per Redis write (stream.take_events)")
    batch_within_s: float = Field(default=0.02, gt=0, description="max wait to fill a batch")
    session_items: int = Field(default=10, ge=1, le=100, description="items of the current session kept for co-visitation")
    covisit_max: int = Field(default=50, ge=1, description="co-visited items kept per item")
    user_ttl_s: int = Field(default=30 * 24 * 3600, ge=0, description="idle time after which a user's keys expire "
                            "(every event of the user refreshes it; 0 = never): bounds Redis by active users")
    session_timeout_s: float = Field(default=10.0, ge=1, description="Kafka group session timeout: how soon a dead "
                                     "worker's partitions move to another (faust's default is 60 s)")
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    group_stall_s: float = Field(default=90.0, ge=0, description="a worker whose group coordination (aiokafka, "
                                 "inside faust) has had no successful heartbeat and no assignment for this long while "
                                 "the broker answers is stuck: it logs where and restarts itself (0 = never); longer "
                                 "than a legitimate rebalance (faust's rebalance timeout, 60 s)")
    fetch_min_bytes: int = Field(default=16384, ge=1, description="broker holds a fetch until this much data ... ")
    fetch_max_wait_ms: int = Field(default=15, ge=0, le=1000, description="... or this long: fewer, larger fetches "
                                   "at moderate rates (less CPU per event) for at most this much added latency")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="auto = uvloop when installed (less CPU per event), else asyncio")
    metrics_interval_s: float = Field(default=10.0, gt=0, description="how often MetricEvents are published")
    datadir: str | None = Field(default=None, description="faust data dir (default: <RECPILOT_HOME>/features/<app_id>)")

    def replica_settings(self, i: int, home) -> dict[str, str]:
        """What replica ``i`` (1, 2 ...) of ``recpilot up --replicas`` changes of these settings: its
        own HTTP port and faust data dir (a worker's own); the app id (the consumer group) stays the
        same so the workers share the input partitions (docs/operations.md "Scaling")."""
        base = self.datadir or str(Path(home) / "features" / self.app_id)
        out = {"datadir": f"{base}-{i}"}
        if self.instance:
            out["instance"] = f"{self.instance}-{i}"
        return out
