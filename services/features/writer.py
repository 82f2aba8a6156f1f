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
               session_items: int = 10, covisit_max: int = 50) -> list[str]:
    args = [prefix, source, str(fs.RECENT_LEN), str(fs.AFFINITY_HALF_LIFE_MS), str(session_items), str(covisit_max)]
    assert len(args) == scripts.APPLY_HEADER
    args.append(json.dumps([encode_event(off, ev) for off, ev in events], ensure_ascii=False, separators=(",", ":")))
    return args


def chunks(seq: Sequence, size: int = CHUNK):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


class FeatureWriter:
    """Applies events to Redis through ``redis.asyncio`` (used by the faust worker)."""

    def __init__(self, redis_client, key_prefix: str = "rp:", session_items: int = 10, covisit_max: int = 50) -> None:
        self.redis = redis_client
        self.prefix = key_prefix
        self.session_items = session_items
        self.covisit_max = covisit_max
        self._apply = redis_client.register_script(scripts.APPLY)
        self._loaded = False

    async def apply(self, batches: dict[str, list[tuple[int, events_pb2.UserEvent]]]) -> dict[str, int]:
        """Apply ``{source: [(offset, event), ...]}`` (offsets ascending per source) in one round trip.

        Returns per source how many events were applied; the others (always the first ones of the
        source's list) had been applied before.
        """
        calls, sources = [], []
        for source, events in batches.items():
            for part in chunks(events):
                calls.append(apply_args(self.prefix, source, part, self.session_items, self.covisit_max))
                sources.append(source)
        out = dict.fromkeys(batches, 0)
        if not calls:
            return out
        from redis.exceptions import NoScriptError

        for attempt in (1, 2):
            if not self._loaded:  # EVALSHA inside a pipeline needs the script loaded first
                await self.redis.script_load(scripts.APPLY)
                self._loaded = True
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for args in calls:
                        pipe.evalsha(self._apply.sha, 0, *args)
                    results = await pipe.execute()
                for source, r in zip(sources, results):
                    out[source] += int(r)
                return out
            except NoScriptError:  # Redis restarted without its script cache; safe to redo (idempotent)
                self._loaded = False
                if attempt == 2:
                    raise
        return out

    async def stored_offsets(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.offsets_key(self.prefix))
        return {k.decode(): int(v) for k, v in raw.items()}
