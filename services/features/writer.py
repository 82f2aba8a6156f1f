"""The write side of the online features: batches of events -> one atomic Lua call per partition chunk
(per shard and side with several shards, see scripts.APPLY).

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
               session_items: int = 10, covisit_max: int = 50, user_ttl_s: int = 0, mode: str = "b",
               offset_field: str | None = None, journal_floor: int = 0,
               categories: dict[str, str] | None = None) -> list[str]:
    """APPLY's arguments (after its one key): ``prefix`` is the shard's key head, ``mode`` b/i/u
    (scripts.APPLY), ``categories`` (mode u) the item category per offset that the item side returned."""
    args = [prefix, offset_field or source, str(fs.RECENT_LEN), str(fs.AFFINITY_HALF_LIFE_MS), str(session_items),
            str(covisit_max), str(int(user_ttl_s)), mode, str(int(journal_floor))]
    assert len(args) == scripts.APPLY_HEADER
    if categories is None:
        rows = [encode_event(off, ev) for off, ev in events]
    else:
        rows = [[*encode_event(off, ev), categories.get(str(int(off)), "")] for off, ev in events]
    args.append(json.dumps(rows, ensure_ascii=False, separators=(",", ":")))
    return args


def has_item_side(ev: events_pb2.UserEvent) -> bool:
    """Whether an event updates an item (a counted event type with an item id), as APPLY decides."""
    return bool(ev.item_id) and fs.EVENT_NAMES.get(int(ev.event_type)) in fs.COUNT_FIELD


def merge_offsets(raws: Iterable[dict]) -> dict[str, int]:
    """The applied offset per source from the ``off`` hashes of every shard: the highest the user side
    (or, with one shard, the whole event) reached in any shard. The writer applies a batch completely
    before it takes the next, so this is where the worker stands (the item side's own offsets only
    serve its replays)."""
    out: dict[str, int] = {}
    for raw in raws:
        for k, v in raw.items():
            side, src = keys.offset_source(k.decode() if isinstance(k, bytes) else str(k))
            if side != "i":
                out[src] = max(out.get(src, -1), int(v))
    return out


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


class LayoutError(Exception):
    """The store was built with another number of shards than this worker's (not retried: exit 1)."""


class StoreBehind(Exception):
    """Redis holds a lower offset for a partition (and side, and shard) than this writer stored there
    itself: the store lost acknowledged writes (restarted from an older copy, failed over to a replica
    without the last writes). Nothing of the call was written. Not retried: the events between are
    read again from Kafka (the worker restarts; the stored offsets decide where it starts)."""

    def __init__(self, source: str, key: str, field: str, stored: int, written: int) -> None:
        super().__init__(f"{key} {field}: the store holds offset {stored}, this worker had written {written}")
        self.source, self.key, self.field, self.stored, self.written = source, key, field, stored, written


class WriteJob:
    """The Lua calls of one batch and what they applied so far: :meth:`FeatureWriter.run` runs the calls
    that have not succeeded yet, so a retry after an error redoes only those.

    With several shards a job has two phases: the item-side calls (``i``), then the user-side calls
    (``u``), built once every item-side call has returned the categories the user side needs."""

    def __init__(self, sources: list[str]) -> None:
        self.applied: dict[str, int] = dict.fromkeys(sources, 0)
        # (source, offsets key, the call's highest offset, APPLY arguments)
        self.pending: list[tuple[str, str, int, list[str]]] = []
        self.phase = "b"
        self.batches: dict = {}
        self.categories: dict[str, dict[str, str]] = {s: {} for s in sources}  # per source: offset -> category

    @property
    def done(self) -> bool:
        return not self.pending and self.phase != "i"


class FeatureWriter:
    """Applies events to Redis through ``redis.asyncio`` (used by the faust worker); ``redis_client`` may
    be a ``redis.asyncio.cluster.RedisCluster``. ``shards``: keys.py (``RECPILOT_REDIS_SHARDS``)."""

    def __init__(self, redis_client, key_prefix: str = "rp:", session_items: int = 10, covisit_max: int = 50,
                 user_ttl_s: int = 0, shards: int = 1, cluster: bool = False) -> None:
        self.redis = redis_client
        self.prefix = key_prefix
        self.session_items = session_items
        self.covisit_max = covisit_max
        self.user_ttl_s = user_ttl_s
        self.shards = max(1, int(shards))
        self.heads = keys.heads(key_prefix, self.shards, cluster)
        self._apply = redis_client.register_script(scripts.APPLY)
        self._loaded = False
        self._layout_checked = False
        # the highest offset this writer stored per (offsets key, field): every call passes it, and
        # APPLY refuses (STALE) when Redis holds less -- the store lost acknowledged writes
        self.written: dict[tuple[str, str], int] = {}

    def forget(self, sources) -> None:
        """Drop what this writer remembers having stored for ``sources`` (their stored offsets were
        reset on purpose: ``recpilot features reset-offsets``)."""
        sources = set(sources)
        self.written = {g: o for g, o in self.written.items() if keys.offset_source(g[1])[1] not in sources}

    async def check_layout(self) -> None:
        """Record the number of shards in ``<prefix>layout`` (first writer), or refuse to write with another
        one: its keys would be named differently (an empty store beside the real one)."""
        key = keys.layout_key(self.prefix)
        await self.redis.set(key, str(self.shards), nx=True)
        stored = await self.redis.get(key)
        stored = int(stored) if stored is not None else self.shards
        if stored != self.shards:
            raise LayoutError(f"the feature store under prefix {self.prefix!r} was built with RECPILOT_REDIS_SHARDS="
                              f"{stored}, this worker has {self.shards}: set it back, or rebuild the store (a new "
                              "key prefix, or delete its keys) to change it")
        self._layout_checked = True

    def _args(self, head: str, source: str, events, **kw) -> list[str]:
        return apply_args(head, source, events, self.session_items, self.covisit_max, self.user_ttl_s, **kw)

    def prepare(self, batches: dict[str, list[tuple[int, events_pb2.UserEvent]]]) -> WriteJob:
        """``{source: [(offset, event), ...]}`` (offsets ascending per source) as a job for :meth:`run`."""
        job = WriteJob(list(batches))
        if self.shards == 1:
            head = self.heads[0]
            for source, events in batches.items():
                for part in chunks(events):
                    job.pending.append((source, keys.offsets_key(head), part[-1][0], self._args(head, source, part)))
            return job
        job.phase, job.batches = "i", batches
        for source, events in batches.items():
            per_shard: dict[int, list] = {}
            for oe in events:
                if has_item_side(oe[1]):
                    per_shard.setdefault(keys.shard_of(oe[1].item_id, self.shards), []).append(oe)
            for shard, evs in sorted(per_shard.items()):
                head = self.heads[shard]
                for part in chunks(evs):
                    job.pending.append((source, keys.offsets_key(head), part[-1][0], self._args(
                        head, source, part, mode="i", offset_field=f"i|{source}", journal_floor=events[0][0])))
        return job

    def _user_phase(self, job: WriteJob) -> None:
        job.phase = "u"
        for source, events in job.batches.items():
            per_shard: dict[int, list] = {}
            for oe in events:
                per_shard.setdefault(keys.shard_of(oe[1].user_id, self.shards), []).append(oe)
            for shard, evs in sorted(per_shard.items()):
                head = self.heads[shard]
                for part in chunks(evs):
                    job.pending.append((source, keys.offsets_key(head), part[-1][0], self._args(
                        head, source, part, mode="u", offset_field=f"u|{source}",
                        categories=job.categories[source])))

    async def apply(self, batches: dict[str, list[tuple[int, events_pb2.UserEvent]]]) -> dict[str, int]:
        """Apply ``{source: [(offset, event), ...]}`` (offsets ascending per source) in one round trip
        (two with several shards: the item sides, then the user sides).

        Returns per source how many events were applied; the others (always the first ones of the
        source's list) had been applied before. Raises the first Redis error.
        """
        job = self.prepare(batches)
        await self.run(job)
        return job.applied

    async def run(self, job: WriteJob) -> None:
        """Run the job's pending calls in one pipeline per phase; those that succeed leave ``job.pending``
        and add to ``job.applied``. Raises the first error of the others (each Lua call is atomic: a call
        that failed wrote nothing, and one that ran is skipped by its stored offset if it runs again)."""
        while True:
            await self._run_pending(job)
            if job.phase == "i" and not job.pending:
                self._user_phase(job)
                continue
            return

    async def _run_pending(self, job: WriteJob) -> None:
        """Run the pending calls, a round trip per round: one call per (offsets key, partition) in each
        round, so a later chunk of a partition runs only after the earlier ones succeeded. Were they
        pipelined together, a failed first chunk beside a second that ran would leave the stored
        offset past the first chunk's events, and its retry would skip them as already applied."""
        from redis.exceptions import NoScriptError, ResponseError

        if job.pending and not self._layout_checked:
            await self.check_layout()
        noscripts = 0
        while job.pending:
            if not self._loaded:  # EVALSHA inside a pipeline needs the script loaded first (on every node)
                await self.redis.script_load(scripts.APPLY)
                self._loaded = True
            now, later, groups = [], [], set()
            for call in job.pending:
                group = (call[1], call[3][1])  # the offsets key and field the call stores its offset in
                (later if group in groups else now).append(call)
                groups.add(group)
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, key, _, args in now:
                    # (execute_command: redis-py's cluster pipeline blocks its evalsha method, not the command)
                    pipe.execute_command("EVALSHA", self._apply.sha, 1, key, *args,
                                         str(self.written.get((key, args[1]), -1)))
                results = await pipe.execute(raise_on_error=False)
            failed, error, noscript = [], None, None
            for call, r in zip(now, results):
                if not isinstance(r, Exception):
                    group = (call[1], call[3][1])
                    self.written[group] = max(self.written.get(group, -1), call[2])
                if isinstance(r, ResponseError) and str(r).startswith("STALE "):
                    _, stored, expected = str(r).split()[:3]
                    raise StoreBehind(call[0], call[1], call[3][1], int(stored), int(expected))
                if isinstance(r, NoScriptError):
                    failed.append(call)
                    noscript = r
                elif isinstance(r, Exception):
                    failed.append(call)
                    error = error or r
                elif job.phase == "i":
                    cats = r[1].decode() if isinstance(r[1], bytes) else r[1]
                    for off, cat in json.loads(cats):
                        job.categories[call[0]][str(off)] = cat
                else:
                    job.applied[call[0]] += int(r)
            job.pending = failed + later  # a group's failed call is its earliest: the order per group holds
            if noscript is not None:
                self._loaded = False  # Redis restarted without its script cache; safe to redo (idempotent)
                noscripts += 1
            else:
                noscripts = 0
            if error is not None:
                raise error
            if noscript is not None and noscripts >= 2:
                raise noscript

    async def stored_offsets(self) -> dict[str, int]:
        """Highest offset applied per source (:func:`merge_offsets` over the shards)."""
        if len(self.heads) == 1:
            return merge_offsets([await self.redis.hgetall(keys.offsets_key(self.heads[0]))])
        async with self.redis.pipeline(transaction=False) as pipe:
            for h in self.heads:
                pipe.hgetall(keys.offsets_key(h))
            return merge_offsets(await pipe.execute())


def offsets_ahead(stored: dict[str, int], ends: dict[str, int]) -> dict[str, dict[str, int]]:
    """Sources whose stored offset is at or beyond the source's end, ``{source: {"stored", "end"}}``.

    ``stored`` is the highest offset applied per source, ``ends`` the next offset the source will
    write (Kafka's high watermark). Applying offset ``o`` means the log once had ``o + 1`` records,
    so ``stored >= end`` says the log went backwards: the topic was deleted and created again (or
    truncated), and its new records, numbered from 0 again, would be skipped as replays."""
    return {src: {"stored": stored[src], "end": end} for src, end in sorted(ends.items())
            if src in stored and end >= 0 and stored[src] >= end}
