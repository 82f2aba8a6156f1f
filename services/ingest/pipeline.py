"""The ingest decision for one raw message (domain code: no Kafka): validate and normalise, then
de-duplicate the valid ones. Keeps data-quality counters the transport turns into metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from recpilot.pb import events_pb2
from services.ingest.dedup import Deduplicator
from services.ingest.validate import REASONS, Rejection, Validator

UserEvent = events_pb2.UserEvent


@dataclass
class Stats:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    missing: dict[str, int] = field(default_factory=dict)  # missing field name -> count

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def snapshot(self) -> Stats:
        return Stats(self.received, self.accepted, self.duplicates, dict(self.rejected), dict(self.missing))

    def minus(self, other: Stats) -> Stats:
        return Stats(
            self.received - other.received, self.accepted - other.accepted, self.duplicates - other.duplicates,
            {k: v - other.rejected.get(k, 0) for k, v in self.rejected.items()},
            {k: v - other.missing.get(k, 0) for k, v in self.missing.items()},
        )

    @property
    def missing_field_rate(self) -> float:
        """Share of received messages rejected because a required field was absent."""
        return (sum(self.missing.values()) / self.received) if self.received else 0.0


class Ingestor:
    """``process(value, now_ms)`` -> a clean ``UserEvent``, a :class:`Rejection`, or ``None`` for a
    duplicate (a valid event whose ``event_id`` was accepted within the TTL)."""

    def __init__(self, validator: Validator, dedup: Deduplicator) -> None:
        self.validator = validator
        self.dedup = dedup
        self.stats = Stats()

    def process(self, value: bytes | None, now_ms: int) -> UserEvent | Rejection | None:
        st = self.stats
        st.received += 1
        r = self.validator.check(value, now_ms)
        if r.__class__ is Rejection:
            st.rejected[r.reason] += 1
            if r.missing:
                st.missing[r.missing] = st.missing.get(r.missing, 0) + 1
            return r
        if self.dedup.seen(r.event_id, now_ms):
            st.duplicates += 1
            return None
        st.accepted += 1
        return r

    def forget(self, event_ids: list[str]) -> None:
        """Nothing to undo: a batch that failed is replayed after a restart with a fresh state."""
