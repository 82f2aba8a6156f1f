"""Typed settings from the environment (pydantic-settings).

Every service has one settings class with its own prefix (``RECPILOT_INGEST_...``) and
``extra="forbid"``; what the whole platform shares (broker and Redis addresses, the state
directory) lives in :class:`PlatformSettings` under the bare ``RECPILOT_`` prefix.

:func:`load` turns a validation error into :class:`SettingsError`, whose message names the
environment variable and the bad value, so a typo stops start-up with a clear line instead of a
traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from recpilot.errors import UsageError
from recpilot.paths import REPO_ROOT


class SettingsError(UsageError):
    """A setting from the environment (or an override) is invalid (exit 2: fix the setting)."""


class RecpilotSettings(BaseSettings):
    """Base class: env prefix per subclass, unknown fields rejected."""

    model_config = SettingsConfigDict(env_prefix="RECPILOT_", extra="forbid", case_sensitive=False)


class PlatformSettings(RecpilotSettings):
    """What every component shares. Environment prefix ``RECPILOT_``."""

    model_config = SettingsConfigDict(env_prefix="RECPILOT_", extra="forbid", case_sensitive=False)

    home: Path = Field(default=REPO_ROOT / ".recpilot", description="state: data, pids, logs")
    log_level: str = "INFO"
    bind_host: str = Field(default="127.0.0.1", description="address the services' HTTP/gRPC servers bind (0.0.0.0 in containers)")

    kafka_host: str = "127.0.0.1"
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="overrides kafka_host:kafka_port (e.g. kafka:9092 in compose)"
    )
    kafka_heap_mb: int = Field(default=512, ge=128)
    kafka_ready_timeout_s: float = Field(default=60.0, gt=0)

    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_db: int = Field(default=0, ge=0)
    redis_url_override: str | None = Field(default=None, alias="RECPILOT_REDIS_URL")
    redis_ready_timeout_s: float = Field(default=30.0, gt=0)
    redis_maxmemory: str = Field(default="1gb", pattern=r"^(?i)[0-9]+(b|k|kb|m|mb|g|gb)?$",
                                 description="memory limit of the local stack's Redis (`recpilot up`; 0 = none)")
    redis_maxmemory_policy: Literal["volatile-lru", "volatile-lfu", "volatile-ttl", "noeviction"] = Field(
        default="volatile-lru", description="what the local Redis does at the limit: volatile-* evict only keys "
        "with a TTL (idle users' features), never counts or offsets; then writes fail with OOM and the features "
        "worker waits. The allkeys-* policies would lose counts and offsets, so they are refused")

    # Partition counts of the topics in recpilot.topics.
    events_partitions: int = Field(default=4, ge=1)
    impressions_partitions: int = Field(default=4, ge=1)
    default_partitions: int = Field(default=1, ge=1)

    model_repository: Path | None = Field(default=None, description="default: <home>/models")

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def model_repo(self) -> Path:
        return self.model_repository or (self.home / "models")


S = TypeVar("S", bound=BaseSettings)


def _env_name(cls: type[BaseSettings], loc: tuple) -> str:
    prefix = cls.model_config.get("env_prefix", "") or ""
    if not loc:
        return prefix.rstrip("_")
    field = str(loc[0])
    info = cls.model_fields.get(field)
    if info is not None and info.alias:
        return info.alias.upper()
    return f"{prefix}{field}".upper()


def load(cls: type[S], **overrides) -> S:
    """Build settings ``cls`` from the environment; raise :class:`SettingsError` naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = _env_name(cls, tuple(err.get("loc", ())))
            raw = os.environ.get(name)
            shown = repr(raw) if raw is not None else repr(err.get("input"))
            lines.append(f"invalid setting {name}={shown}: {err.get('msg')}")
        raise SettingsError("; ".join(lines)) from None


def load_service(service: str, cls: type[S]) -> tuple[PlatformSettings, S]:
    """The platform's and one service's settings for ``python -m services.<service>``.

    A bad value ends the process with exit code 2 and one line naming the variable."""
    try:
        return load(PlatformSettings), load(cls)
    except SettingsError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
