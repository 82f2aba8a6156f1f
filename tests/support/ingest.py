"""Ingest as a real process on a test's own topics."""

from __future__ import annotations

from pathlib import Path

from recpilot.kafka import committed_offsets
from recpilot.stack.process import ServiceProcess
from tests.support.wait import wait_until

KINDS = ("raw", "clean", "dlq", "metrics")


def topic_names(prefix: str) -> dict[str, str]:
    """``{"raw": "<prefix>.raw", "clean": ..., "dlq": ..., "metrics": ...}``."""
    return {x: f"{prefix}.{x}" for x in KINDS}


def ingest_process(names: dict[str, str], group: str, log: Path, env: dict | None = None, **settings) -> ServiceProcess:
    """``python -m services.ingest`` (not started yet) reading ``names["raw"]`` as ``group``;
    ``settings`` are further ``RECPILOT_INGEST_*`` values (``batch_size=20``)."""
    topics = {f"{k}_topic": names[k] for k in KINDS}
    return ServiceProcess("services.ingest", log, env=env, settings={**topics, "group_id": group, **settings})


def wait_committed(platform, group: str, topic: str, partitions: list[int], n: int, proc: ServiceProcess,
                   timeout: float = 90.0, what: str | None = None) -> None:
    """Until ``group`` has committed ``n`` offsets of ``topic``; fails at once when ingest exits."""

    def done() -> bool:
        assert proc.alive(), f"ingest exited with {proc.returncode}:\n{proc.log_tail(60)}"
        return sum(committed_offsets(platform, group, topic, partitions).values()) >= n

    what = what or f"{n} offsets of {topic} committed by {group}"
    wait_until(done, timeout, lambda: f"{what}:\n{proc.log_tail(60)}", 0.25)
