"""Settings of the ingest service (environment prefix ``RECPILOT_INGEST_``). Light to import."""

from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recpilot import topics


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECPILOT_INGEST_", extra="forbid", case_sensitive=False)

    http_host: str | None = Field(default=None, description="default: RECPILOT_BIND_HOST")
    http_port: int = Field(default=9101, ge=0, le=65535)

    raw_topic: str = topics.EVENTS_RAW
    clean_topic: str = topics.EVENTS_CLEAN
    dlq_topic: str = topics.EVENTS_DLQ
    metrics_topic: str = topics.metrics_topic("ingest")
    group_id: str = "recpilot-ingest"
    instance_id: str = Field(default_factory=socket.gethostname, description="names this replica (metrics, transactional id)")

    session_timeout_ms: int = Field(default=10_000, ge=1_000, description="consumer group session timeout")
    static_membership: bool = Field(
        default=False, description="group.instance.id = instance_id: a restarted replica gets its partitions back "
        "at once instead of after the session timeout (instance ids must then be unique per replica)")

    # False (default): idempotent producer, offsets committed after the batch's delivery is confirmed
    # (at-least-once; the de-duplicator, warmed from the clean topic at start, drops a replayed batch).
    # True: each batch is a Kafka transaction with its offsets (exactly-once raw -> clean), but only
    # for read_committed readers: a read_uncommitted reader of the clean topic (faust's default) sees
    # the records of a batch aborted by a crash as well as their retry.
    transactional: bool = False
    transactional_id: str | None = Field(default=None, description="default: <group_id>-<instance_id>")
    transaction_timeout_ms: int = Field(
        default=15_000, ge=1_000, description="an open transaction of a crashed replica that does not come back "
        "under the same id is aborted by the broker after this long (read_committed readers wait for it)")

    # Validation
    max_payload_bytes: int = Field(default=65_536, ge=64)
    max_future_ms: int = Field(default=300_000, ge=0, description="reject events further in the future")
    max_age_s: float = Field(default=7 * 86_400.0, gt=0, description="reject events older than this horizon")
    max_id_length: int = Field(default=256, ge=8, description="event, user, session, item and request ids")
    max_query_length: int = Field(default=1024, ge=1, description="characters of a query")
    max_context_entries: int = Field(default=64, ge=0, description="entries of an event's context map")
    max_context_key_length: int = Field(default=256, ge=1, description="characters of a context key")
    max_context_value_length: int = Field(default=1024, ge=1, description="characters of a context value")
    dlq_prefix_bytes: int = Field(
        default=4096, ge=0, description="the DLQ copy of a message over max_payload_bytes (or one the producer "
        "refuses as too large) is its first N bytes, with headers original_size and original_sha256")

    # De-duplication by event_id: bounded memory with a TTL
    dedup_capacity: int = Field(default=500_000, ge=1)
    dedup_ttl_s: float = Field(default=3_600.0, gt=0)
    dedup_warmup: bool = Field(default=True, description="at start, and when a rebalance brings partitions new to "
                               "this replica, reload event ids of the last TTL from the clean topic")
    dedup_warmup_timeout_s: float = Field(default=60.0, gt=0)

    # Hot path
    batch_size: int = Field(default=5_000, ge=1, le=100_000)
    poll_timeout_s: float = Field(default=0.05, gt=0)
    flush_timeout_s: float = Field(default=30.0, gt=0)

    # A failed batch (e.g. the broker unreachable for flush_timeout_s) stops the loop without a
    # commit; the service then starts afresh in-process, as a process restart would: new clients,
    # the de-duplicator re-warmed from the clean topic, the batch replayed.
    restart_on_error: bool = Field(default=True, description="restart the loop after a failed batch "
                                   "(False: exit non-zero and leave it to a supervisor)")
    restart_backoff_max_s: float = Field(default=30.0, gt=0, description="restarts back off 1 s doubling to this")

    metrics_interval_s: float = Field(default=5.0, gt=0)
    stall_after_s: float = Field(default=30.0, gt=0, description="/readyz fails when the loop did not poll for this long")

    @property
    def txn_id(self) -> str:
        return self.transactional_id or f"{self.group_id}-{self.instance_id}"

    def replica_settings(self, i: int, home) -> dict[str, str]:
        """What replica ``i`` (1, 2 ...) of ``recpilot up --replicas`` changes of these settings: its
        own HTTP port and instance id (hence transactional id); the consumer group stays the same so
        the replicas share the raw topic's partitions (docs/operations.md "Scaling")."""
        out = {"instance_id": f"{self.instance_id}-{i}"}
        if self.transactional_id:
            out["transactional_id"] = f"{self.transactional_id}-{i}"
        return out
