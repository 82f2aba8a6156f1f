"""Drop duplicate events by ``event_id`` with bounded memory and a time-to-live (domain code).

An ordered map ``key -> first-seen ms``: an id seen again within ``ttl_ms`` is a duplicate. The
oldest entries expire after the TTL and are evicted first when ``capacity`` is reached, so memory
is bounded by ``capacity`` whatever the rate. Keys are 64-bit BLAKE2b digests of the id (the same
in every process; a small int per entry instead of the whole id string).
"""

from __future__ import annotations

from collections import OrderedDict
from hashlib import blake2b


def id_key(event_id: str) -> int:
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "little")


class Deduplicator:
    def __init__(self, capacity: int = 500_000, ttl_ms: int = 3_600_000) -> None:
        if capacity < 1 or ttl_ms <= 0:
            raise ValueError("capacity must be >= 1 and ttl_ms > 0")
        self.capacity = capacity
        self.ttl_ms = ttl_ms
        self._seen: OrderedDict[int, int] = OrderedDict()
        self.evicted = 0  # entries dropped for capacity before their TTL ran out

    def __len__(self) -> int:
        return len(self._seen)

    def expire(self, now_ms: int) -> None:
        seen, cutoff = self._seen, now_ms - self.ttl_ms
        while seen:
            k, ts = next(iter(seen.items()))
            if ts > cutoff:
                break
            seen.popitem(last=False)

    def seen(self, event_id: str, now_ms: int) -> bool:
        """True if ``event_id`` was recorded within the TTL; otherwise record it and return False."""
        k = id_key(event_id)
        seen = self._seen
        ts = seen.get(k)
        if ts is not None and ts > now_ms - self.ttl_ms:
            return True
        if ts is not None:
            del seen[k]
        seen[k] = now_ms
        if len(seen) > self.capacity:
            seen.popitem(last=False)
            self.evicted += 1
        return False

    def remember(self, event_id: str, at_ms: int) -> None:
        """Record an id seen at ``at_ms`` (used to warm up from the clean topic)."""
        k = id_key(event_id)
        self._seen.pop(k, None)
        self._seen[k] = at_ms
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
            self.evicted += 1

    def forget(self, event_id: str) -> None:
        """Drop ``event_id`` (an event recorded but then not published)."""
        self._seen.pop(id_key(event_id), None)
