"""The Redis key layout of the online features (one place, used by the writer and the read API).

Shards. The keys are spread over ``S`` shards (``RECPILOT_REDIS_SHARDS``, default 1). Each shard has
a key *head* ``H``: with one shard on one Redis it is the prefix ``P`` itself (default ``rp:``);
otherwise (``S > 1``, or ``RECPILOT_REDIS_CLUSTER=true``) it is the hash tag ``{P<n>}`` of shard
``n`` (``{rp:0}`` ... ``{rp:15}``), so Redis Cluster puts every key of one shard in one slot and
each Lua script, which touches the keys of one shard only, runs on one node. A user's keys live in
shard :func:`shard_of` (user id), an item's in shard :func:`shard_of` (item id) (CRC-32 mod S, the
same in writer and readers). ``S`` is part of the layout: changing it means a new, empty store
(rebuild it by replaying the topic under a new prefix or after a flush).

With head ``H`` (of the user's shard for user keys, of the item's shard for item keys):

  H i:<item>      hash   views clicks carts purchases, category cat_ts, price price_ts, title, last_event_ms
  H ib:<item>     hash   per-minute buckets ``m:<field>:<minute>`` and per-hour buckets ``h:<field>:<hour>``
                         (event time; minute buckets older than 24 h behind the item's newest event are pruned)
  H u:<user>      hash   events, last_event_ms, session_id, session_events
  H rv|rc|rp:<user> list recent viewed / clicked / purchased item ids, newest first (RECENT_LEN)
  H ua:<user>     hash   category -> "<score>|<ts_ms>" (decayed affinity, featurespec.decayed)
  H us:<user>     list   items of the current session (for co-visitation), newest first
  H cv:<item>     zset   co-visited items (same session) -> count, at most ~2 * covisit_max. With S > 1
                         the writer counts a pair in the shard of the USER whose session it came from:
                         each shard holds partial counts, a reader sums the S partials of an item
  H pop           zset   item -> all-time popularity score (of the shard's items: global top-N is the
                         merge of the S per-shard top-N, exact)
  H popc:<cat>    zset   item -> popularity score within the category (the shard's items)
  H off           hash   offsets applied, written atomically with the features: one shard (S = 1):
                         "<topic>:<partition>" -> highest offset applied; S > 1: "i|<topic>:<partition>"
                         (item side) and "u|<topic>:<partition>" (user side) -> highest offset whose
                         item / user updates this shard applied
  H jr:<topic>:<partition> zset (S > 1 only) the item side's journal: per item-side call, the category
                         each event's item had after it (JSON, score = the call's highest offset), so
                         that the user side of events whose item side ran before a crash gets the
                         same category on replay; a call drops the entries wholly below the first
                         offset of its batch (those batches were applied completely: the consumer
                         resumes at the committed offset, committed after a batch's last call)
  H ichg          zset   item -> version of its last catalogue change (new item, or category/price/title changed)
  H iver          string the last catalogue change version of the shard (a counter; ``ichg`` scores come from it)
  P layout        string S, set by the first features worker; a worker configured with another S refuses
                         to start (its keys would be named differently: an empty store)

The user keys (u:, rv:, rc:, rp:, ua:, us:) expire after the features service's ``user_ttl_s`` of
idle time (every write refreshes the TTL of all of them); the item, popularity, co-visitation,
catalogue and offset keys never expire, so a Redis ``maxmemory-policy`` of ``volatile-lru`` can
evict only idle users' keys, never a count or an offset.

Every Lua script builds its keys from the head it is given (ARGV[1]) and names one key of that head
in KEYS[1], which is what a Redis Cluster client routes the call by.
"""

from __future__ import annotations

import zlib

ITEM = "i:"
BUCKETS = "ib:"
USER = "u:"
RECENT = {"recent_views": "rv:", "recent_clicks": "rc:", "recent_purchases": "rp:"}
AFFINITY = "ua:"
SESSION_ITEMS = "us:"
COVISIT = "cv:"
POPULAR = "pop"
POPULAR_CAT = "popc:"
OFFSETS = "off"
CATALOGUE_CHANGES = "ichg"
CATALOGUE_VERSION = "iver"
JOURNAL = "jr:"
LAYOUT = "layout"
USER_KEYS = (USER, *RECENT.values(), AFFINITY, SESSION_ITEMS)


def item_key(prefix: str, item_id: str) -> str:
    return f"{prefix}{ITEM}{item_id}"


def user_key(prefix: str, user_id: str) -> str:
    return f"{prefix}{USER}{user_id}"


def offsets_key(prefix: str) -> str:
    return f"{prefix}{OFFSETS}"


def catalogue_changes_key(prefix: str) -> str:
    return f"{prefix}{CATALOGUE_CHANGES}"


def catalogue_version_key(prefix: str) -> str:
    return f"{prefix}{CATALOGUE_VERSION}"


def popular_key(prefix: str, category: str | None = None) -> str:
    return f"{prefix}{POPULAR_CAT}{category}" if category else f"{prefix}{POPULAR}"


def covisit_key(prefix: str, item_id: str) -> str:
    return f"{prefix}{COVISIT}{item_id}"


def tagged(shards: int, cluster: bool = False) -> bool:
    """Whether keys carry a shard hash tag: always on a cluster, and with more than one shard."""
    return cluster or shards > 1


def shard_of(key_id: str, shards: int) -> int:
    """The shard of a user or item id: CRC-32 of its UTF-8 bytes mod ``shards`` (stable across processes)."""
    if shards <= 1:
        return 0
    return zlib.crc32(key_id.encode()) % shards


def head(prefix: str, shard: int, shards: int = 1, cluster: bool = False) -> str:
    """What every key of ``shard`` starts with: the prefix, or the hash tag ``{<prefix><shard>}``."""
    return f"{{{prefix}{shard}}}" if tagged(shards, cluster) else prefix


def heads(prefix: str, shards: int = 1, cluster: bool = False) -> list[str]:
    return [head(prefix, s, shards, cluster) for s in range(max(1, shards))]


def layout_key(prefix: str) -> str:
    return f"{prefix}{LAYOUT}"


def journal_key(h: str, source: str) -> str:
    return f"{h}{JOURNAL}{source}"


def offset_source(field: str) -> tuple[str, str]:
    """``(side, source)`` of a field of the ``off`` hash: side "" (one shard), "i" or "u"."""
    if field[:2] in ("i|", "u|"):
        return field[0], field[2:]
    return "", field
