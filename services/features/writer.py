"""The write side of the online features: batches of events -> one atomic Lua call per partition chunk.

Knows nothing of Kafka or faust: a *source* is any ordered log (``"<topic>:<partition>"``) and
each event comes with its position in it. Positions at or below the stored one are skipped inside
the same Lua script that applies the rest, so a replay after a crash never double-counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from recpilot import featurespec as fs
from recpilot.pb import events_pb2
from services.features import keys, scripts

# Events per Lua call: bounds how long Redis is blocked by one write (readers interleave between calls).
CHUNK = 500


def encode_event(offset: int, ev: events_pb2.UserEvent) -> list[str]:
    """One event as APPLY's fields (see scripts.APPLY_FIELDS); all strings, so ids and times stay exact."""
    price = float(ev.price)
    return [
        str(int(offset)),
        fs.EVENT_NAMES.get(int(ev.event_type), ""),
        ev.user_id,
        ev.item_id,
        ev.session_id,
        str(int(ev.timestamp_ms)),
        repr(price) if price > 0 else "",
        ev.context.get("category", ""),
        ev.context.get("title", ""),
    ]


def apply_args(prefix: str, source: str, events: Iterable[tuple[int, events_pb2.UserEvent]],
               session_items: int = 10, covisit_max: int = 50, user_ttl_s: int = 0) -> list[str]:
    args = [prefix, source, str(fs.RECENT_LEN), str(fs.AFFINITY_HALF_LIFE_MS), str(session_items), str(covisit_max),
            str(int(user_ttl_s))]
    assert len(args) == scripts.APPLY_HEADER
    args.append(json.dumps([encode_event(off, ev) for off, ev in events], ensure_ascii=False, separators=(",", ":")))
    return args


def chunks(seq: Sequence, size: int = CHUNK):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


# Redis error replies that describe the server's state, not the request: the same write succeeds once
# the state clears (the disk is writable again, the node is a master again, memory was freed, a slow
# script ended, the dataset finished loading). Values: the ``kind`` label of the retry metric.
_TRANSIENT_CODES = {"MISCONF": "misconf", "READONLY": "readonly", "OOM": "oom", "BUSY": "busy",
                    "LOADING": "loading", "MASTERDOWN": "masterdown", "NOREPLICAS": "noreplicas",
                    "TRYAGAIN": "tryagain", "CLUSTERDOWN": "clusterdown"}
RETRY_KINDS = ("connection", "timeout", *_TRANSIENT_CODES.values())


def transient_error_kind(exc: BaseException) -> str | None:
    """The kind of a Redis error worth retrying the same write for (one of :data:`RETRY_KINDS`), or None
    for an error the same write would hit again (a script bug, a wrong key type, a refused ACL)."""
    from redis.exceptions import (BusyLoadingError, ClusterDownError, ConnectionError, MasterDownError,
                                  OutOfMemoryError, ReadOnlyError, ResponseError, TimeoutError, TryAgainError)

    for cls, kind in ((BusyLoadingError, "loading"), (ReadOnlyError, "readonly"), (OutOfMemoryError, "oom"),
                      (TryAgainError, "tryagain"), (MasterDownError, "masterdown"), (ClusterDownError, "clusterdown"),
                      (TimeoutError, "timeout"), (ConnectionError, "connection")):
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, ResponseError):
        # redis-py keeps the code at the start of an error it has no class for (MISCONF, BUSY ...);
        # an error raised by redis.call inside a script keeps the reply's code too (Redis 7)
        msg = str(exc.args[0] if exc.args else "")
        return _TRANSIENT_CODES.get(msg.split(" ", 1)[0].upper())
    return None


class WriteJob:
    """The Lua calls of one batch and what they applied so far: :meth:`FeatureWriter.run` runs the calls
    that have not succeeded yet, so a retry after an error redoes only those."""

    def __init__(self, sources: list[str]) -> None:
        self.applied: dict[str, int] = dict.fromkeys(sources, 0)
        self.pending: list[tuple[str, list[str]]] = []  # (source, APPLY arguments)

    @property
    def done(self) -> bool:
        return not self.pending


class FeatureWriter:
    """Applies events to Redis through ``redis.asyncio`` (used by the faust worker)."""

    def __init__(self, redis_client, key_prefix: str = "rp:", session_items: int = 10, covisit_max: int = 50,
                 user_ttl_s: int = 0) -> None:
        self.redis = redis_client
        self.prefix = key_prefix
        self.session_items = session_items
        self.covisit_max = covisit_max
        self.user_ttl_s = user_ttl_s
        self._apply = redis_client.register_script(scripts.APPLY)
        self._loaded = False

    def prepare(self, batches: dict[str, list[tuple[int, events_pb2.UserEvent]]]) -> WriteJob:
        """``{source: [(offset, event), ...]}`` (offsets ascending per source) as a job for :meth:`run`."""
        job = WriteJob(list(batches))
        for source, events in batches.items():
            for part in chunks(events):
                job.pending.append((source, apply_args(self.prefix, source, part, self.session_items,
                                                       self.covisit_max, self.user_ttl_s)))
        return job

    async def apply(self, batches: dict[str, list[tuple[int, events_pb2.UserEvent]]]) -> dict[str, int]:
        """Apply ``{source: [(offset, event), ...]}`` (offsets ascending per source) in one round trip.

        Returns per source how many events were applied; the others (always the first ones of the
        source's list) had been applied before. Raises the first Redis error.
        """
        job = self.prepare(batches)
        await self.run(job)
        return job.applied

    async def run(self, job: WriteJob) -> None:
        """Run the job's pending calls in one pipeline; those that succeed leave ``job.pending`` and add
        to ``job.applied``. Raises the first error of the others (each Lua call is atomic: a call that
        failed wrote nothing, and one that ran is skipped by its stored offset if it runs again)."""
        from redis.exceptions import NoScriptError

        for attempt in (1, 2):
            if job.done:
                return
            if not self._loaded:  # EVALSHA inside a pipeline needs the script loaded first
                await self.redis.script_load(scripts.APPLY)
                self._loaded = True
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, args in job.pending:
                    pipe.evalsha(self._apply.sha, 0, *args)
                results = await pipe.execute(raise_on_error=False)
            failed, error, noscript = [], None, None
            for call, r in zip(job.pending, results):
                if isinstance(r, NoScriptError):
                    failed.append(call)
                    noscript = r
                elif isinstance(r, Exception):
                    failed.append(call)
                    error = error or r
                else:
                    job.applied[call[0]] += int(r)
            job.pending = failed
            if noscript is not None:
                self._loaded = False  # Redis restarted without its script cache; safe to redo (idempotent)
            if error is not None:
                raise error
            if noscript is not None and attempt == 2:
                raise noscript

    async def stored_offsets(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.offsets_key(self.prefix))
        return {k.decode(): int(v) for k, v in raw.items()}


def offsets_ahead(stored: dict[str, int], ends: dict[str, int]) -> dict[str, dict[str, int]]:
    """Sources whose stored offset is at or beyond the source's end, ``{source: {"stored", "end"}}``.

    ``stored`` is the highest offset applied per source, ``ends`` the next offset the source will
    write (Kafka's high watermark). Applying offset ``o`` means the log once had ``o + 1`` records,
    so ``stored >= end`` says the log went backwards: the topic was deleted and created again (or
    truncated), and its new records, numbered from 0 again, would be skipped as replays."""
    return {src: {"stored": stored[src], "end": end} for src, end in sorted(ends.items())
            if src in stored and end >= 0 and stored[src] >= end}
