"""The ingest decision for one raw message (domain code: no Kafka): validate and normalise, then
de-duplicate the valid ones. Keeps data-quality counters the transport turns into metrics.

Handling one message never raises: an exception in validation is that message's rejection with
the reason ``internal_error`` (the exception in the detail), so one message cannot stop the
stream."""

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
    dedup_evicted: int = 0  # ids the de-duplicator dropped for capacity before their TTL ran out

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def snapshot(self) -> Stats:
        return Stats(self.received, self.accepted, self.duplicates, dict(self.rejected), dict(self.missing),
                     self.dedup_evicted)

    def minus(self, other: Stats) -> Stats:
        return Stats(
            self.received - other.received, self.accepted - other.accepted, self.duplicates - other.duplicates,
            {k: v - other.rejected.get(k, 0) for k, v in self.rejected.items()},
            {k: v - other.missing.get(k, 0) for k, v in self.missing.items()},
            self.dedup_evicted - other.dedup_evicted,
        )

    @property
    def missing_field_rate(self) -> float:
        """Share of received messages rejected because a required field was absent."""
        return (sum(self.missing.values()) / self.received) if self.received else 0.0


def internal_error(exc: BaseException) -> Rejection:
    """The rejection of a message whose handling raised ``exc``."""
    detail = f"{type(exc).__name__}: {exc}"[:200]
    return Rejection("internal_error", detail.encode("utf-8", "backslashreplace").decode())


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
        try:
            r = self.validator.check(value, now_ms)
        except Exception as exc:  # a bug in validation must not stall the stream on this message
            r = internal_error(exc)
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

    def failed(self, event: UserEvent, exc: BaseException) -> Rejection:
        """An accepted ``event`` could not be published (``exc`` is about this message): count it as
        an ``internal_error`` rejection instead and forget its id, so a resend is not a duplicate."""
        st = self.stats
        st.accepted -= 1
        st.rejected["internal_error"] += 1
        self.dedup.forget(event.event_id)
        return internal_error(exc)

    def snapshot(self) -> Stats:
        """A copy of the counters, with the de-duplicator's evictions."""
        out = self.stats.snapshot()
        out.dedup_evicted = self.dedup.evicted
        return out

    def forget(self, event_ids: list[str]) -> None:
        """Nothing to undo: a batch that failed is replayed after a restart with a fresh state."""
