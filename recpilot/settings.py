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

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as PydanticSettingsError

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

    # How every Kafka client (confluent-kafka via recpilot.kafka, faust/aiokafka in the features
    # service) authenticates and encrypts; PLAINTEXT (the default) adds nothing to a client's
    # configuration. docs/security.md.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-256"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(default=None, description="or kafka_sasl_password_file")
    kafka_sasl_password_file: Path | None = Field(
        default=None, description="a file holding the SASL password (a mounted secret); read once at start")
    kafka_ssl_ca_location: Path | None = Field(
        default=None, description="CA bundle (PEM) that signed the brokers' certificates; default: the system's")
    kafka_ssl_certificate_location: Path | None = Field(default=None, description="client certificate (PEM), for mTLS")
    kafka_ssl_key_location: Path | None = Field(default=None, description="client private key (PEM), for mTLS")
    kafka_ssl_key_password: SecretStr | None = None
    # The local stack's broker (recpilot.stack.kafka): PLAINTEXT, or a SASL_SSL client listener
    # with a throw-away CA, SCRAM users and the StandardAuthorizer.
    kafka_listener_security: Literal["PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"

    redis_host: str = "127.0.0.1"
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_db: int = Field(default=0, ge=0)
    redis_url_override: str | None = Field(default=None, alias="RECPILOT_REDIS_URL")
    redis_ready_timeout_s: float = Field(default=30.0, gt=0)
    # The online feature store's layout (services/features/keys.py), the same for its writer and readers.
    redis_cluster: bool = Field(default=False, description="the Redis at RECPILOT_REDIS_URL (any node) is a Redis "
                                "Cluster: clients in cluster mode (set RECPILOT_REDIS_SHARDS > 1 to use its masters)")
    redis_shards: int = Field(default=1, ge=1, le=4096, description="shards of the feature store's keys, each a hash "
                              "tag (one cluster slot); part of the layout: changing it means an empty store")
    redis_maxmemory: str = Field(default="1gb", pattern=r"^(?i)[0-9]+(b|k|kb|m|mb|g|gb)?$",
                                 description="memory limit of the local stack's Redis (`recpilot up`; 0 = none)")
    redis_maxmemory_policy: Literal["volatile-lru", "volatile-lfu", "volatile-ttl", "noeviction"] = Field(
        default="volatile-lru", description="what the local Redis does at the limit: volatile-* evict only keys "
        "with a TTL (idle users' features), never counts or offsets; then writes fail with OOM and the features "
        "worker waits. The allkeys-* policies would lose counts and offsets, so they are refused")

    # The local stack's Alertmanager (recpilot.stack.alertmanager), started by `recpilot up` when
    # Debian's prometheus-alertmanager is installed. Not on its default :9093, Kafka's controller port.
    alertmanager_port: int = Field(default=9095, ge=1, le=65535, description="Alertmanager's API and UI "
                                   "(the monitor posts to http://127.0.0.1:<port>/api/v2/alerts)")
    alertmanager_config: Path | None = Field(default=None, description="an alertmanager.yml of your own (e.g. "
                                             "deploy/prometheus/alertmanager.yml); default: a generated one that "
                                             "keeps alerts in Alertmanager without notifying anyone")

    # Partition counts of the topics in recpilot.topics.
    events_partitions: int = Field(default=4, ge=1)
    impressions_partitions: int = Field(default=4, ge=1)
    default_partitions: int = Field(default=1, ge=1)

    model_repository: Path | None = Field(default=None, description="default: <home>/models")
    model_allow_unverified: bool = Field(
        default=False, description="load model versions that have no file manifest (written before manifests "
        "existed) without verifying their files; versions with a manifest are always verified")

    @model_validator(mode="after")
    def _kafka_security(self) -> PlatformSettings:
        if self.kafka_sasl_password_file is not None:
            if self.kafka_sasl_password is not None:
                raise ValueError("set RECPILOT_KAFKA_SASL_PASSWORD or RECPILOT_KAFKA_SASL_PASSWORD_FILE, not both")
            try:
                secret = self.kafka_sasl_password_file.read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"cannot read RECPILOT_KAFKA_SASL_PASSWORD_FILE: {exc.strerror}") from None
            self.kafka_sasl_password = SecretStr(secret)
        if self.kafka_security_protocol.startswith("SASL_") and not (
                self.kafka_sasl_username and self.kafka_sasl_password is not None):
            raise ValueError(f"kafka_security_protocol={self.kafka_security_protocol} needs RECPILOT_KAFKA_SASL_USERNAME "
                             "and RECPILOT_KAFKA_SASL_PASSWORD (or RECPILOT_KAFKA_SASL_PASSWORD_FILE)")
        if (self.kafka_ssl_certificate_location is None) != (self.kafka_ssl_key_location is None):
            raise ValueError("RECPILOT_KAFKA_SSL_CERTIFICATE_LOCATION and RECPILOT_KAFKA_SSL_KEY_LOCATION go together")
        return self

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


def _secret(cls: type[BaseSettings], loc: tuple) -> bool:
    info = cls.model_fields.get(str(loc[0]))
    return info is not None and "SecretStr" in repr(info.annotation)


def load(cls: type[S], **overrides) -> S:
    """Build settings ``cls`` from the environment; raise :class:`SettingsError` naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            name = _env_name(cls, loc)
            if not loc:  # a check across fields: its message names the variables, no value is shown
                lines.append(f"invalid settings: {err.get('msg')}")
                continue
            raw = os.environ.get(name)
            shown = repr(raw) if raw is not None else repr(err.get("input"))
            if _secret(cls, loc):
                shown = "<hidden>"
            lines.append(f"invalid setting {name}={shown}: {err.get('msg')}")
        raise SettingsError("; ".join(lines)) from None
    except PydanticSettingsError as exc:  # an environment value that does not parse (e.g. a list that is not JSON)
        raise SettingsError(f"invalid settings: {exc}") from None


def load_service(service: str, cls: type[S]) -> tuple[PlatformSettings, S]:
    """The platform's and one service's settings for ``python -m services.<service>``.

    A bad value ends the process with exit code 2 and one line naming the variable."""
    try:
        return load(PlatformSettings), load(cls)
    except SettingsError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
