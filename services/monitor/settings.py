"""Settings of the monitor process (environment prefix ``RECPILOT_MONITOR_``). Light to import.

The detectors' thresholds and the alert-to-action policy are not here but in one documented file,
``services/monitor/monitor.toml`` (or the file ``config_path`` names); docs/monitoring.md."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from recpilot import topics


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECPILOT_MONITOR_", extra="forbid", case_sensitive=False)

    http_host: str | None = Field(default=None, description="default: RECPILOT_BIND_HOST")
    http_port: int = Field(default=9105, ge=0, le=65535, description="/metrics, /healthz, /readyz and /status")
    config_path: Path | None = Field(default=None, description="detector and action config (default: the packaged "
                                     "services/monitor/monitor.toml)")
    instance_id: str = Field(default_factory=socket.gethostname)
    group_id: str = "recpilot-monitor"

    # Inputs
    metrics_topics: Annotated[tuple[str, ...], NoDecode] = Field(default=tuple(topics.metrics_topic(s) for s in topics.METRICS_SERVICES))
    rewards_topic: str = topics.REWARDS
    impressions_topic: str = topics.IMPRESSIONS
    events_topic: str = topics.EVENTS_CLEAN
    events_sample: float = Field(default=0.1, ge=0.0, le=1.0, description="share of events.clean the data "
                                 "detectors look at (by a hash of the event id, so every replica samples alike)")
    tick_s: float = Field(default=1.0, gt=0, description="how often windows are closed and alerts evaluated")

    # Channels (docs/monitoring.md "Alerts")
    alerts_topic: str = topics.ALERTS
    alertmanager_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:9095: alerts are POSTed to "
                                         "<url>/api/v2/alerts and re-sent while firing")
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = Field(default=(), description="generic JSON webhooks (comma-separated or JSON list)")
    webhook_secret: str | None = Field(default=None, description="HMAC-SHA256 key of the X-Recpilot-Signature header")
    slack_webhook_urls: Annotated[tuple[str, ...], NoDecode] = Field(default=(), description="Slack-compatible incoming webhooks")
    channel_queue_size: int = Field(default=1_000, ge=1, description="alerts held per channel while it is down; "
                                    "beyond it the oldest is dropped and counted")
    channel_timeout_s: float = Field(default=5.0, gt=0)
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    alertmanager_resend_s: float = Field(default=60.0, gt=0, description="firing alerts are re-posted this often "
                                         "(Alertmanager resolves an alert it has not heard of for resolve_timeout)")

    # Actions (docs/monitoring.md "Actions")
    actions_enabled: bool = Field(default=True, description="the global kill switch (also: recpilot monitor actions "
                                  "--disable, which survives restarts)")
    action_cooldown_s: float = Field(default=300.0, ge=0, description="at most one action per (action, model) this often")
    state_dir: Path | None = Field(default=None, description="status and the runtime kill switch (default: <home>/monitor)")
    retrain_data: str = Field(default="kafka", description="the retrain action's `recpilot train --data` source")
    retrain_last_days: float | None = Field(default=7.0, gt=0, description="the retrain action trains on the latest "
                                            "this many days of the data (`--last-days`; unset: all of it)")
    retrain_timeout_s: float = Field(default=3600.0, gt=0, description="the training subprocess is killed after this")
    retrain_framework: str = Field(default="", description="torch|tensorflow; empty: the framework of the model's "
                                   "newest version")

    metrics_interval_s: float = Field(default=5.0, gt=0)
    stall_after_s: float = Field(default=30.0, gt=0, description="/readyz fails when the loop did not poll for this long")

    @field_validator("metrics_topics", "webhook_urls", "slack_webhook_urls", mode="before")
    @classmethod
    def _list(cls, v):
        """A list from the environment: a JSON list, or comma-separated."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(x.strip() for x in text.split(",") if x.strip())
        return v
