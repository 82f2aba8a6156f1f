"""The Redis key layout of the online features (one place, used by the writer and the read API).

With prefix ``P`` (default ``rp:``):

  P i:<item>      hash   views clicks carts purchases, category cat_ts, price price_ts, title, last_event_ms
  P ib:<item>     hash   per-minute buckets ``m:<field>:<minute>`` and per-hour buckets ``h:<field>:<hour>``
                         (event time; minute buckets older than 24 h behind the item's newest event are pruned)
  P u:<user>      hash   events, last_event_ms, session_id, session_events
  P rv|rc|rp:<user> list recent viewed / clicked / purchased item ids, newest first (RECENT_LEN)
  P ua:<user>     hash   category -> "<score>|<ts_ms>" (decayed affinity, featurespec.decayed)
  P us:<user>     list   items of the current session (for co-visitation), newest first
  P cv:<item>     zset   co-visited items (same session) -> count, at most ~2 * covisit_max
  P pop           zset   item -> all-time popularity score
  P popc:<cat>    zset   item -> popularity score within the category
  P off           hash   "<topic>:<partition>" -> highest offset applied (written atomically with the features)
  P ichg          zset   item -> version of its last catalogue change (new item, or category/price/title changed)
  P iver          string the last catalogue change version (a counter; ``ichg`` scores come from it)

The user keys (u:, rv:, rc:, rp:, ua:, us:) expire after the features service's ``user_ttl_s`` of
idle time (every write refreshes the TTL of all of them); the item, popularity, co-visitation,
catalogue and offset keys never expire, so a Redis ``maxmemory-policy`` of ``volatile-lru`` can
evict only idle users' keys, never a count or an offset.

Every script builds its keys from the prefix, so all keys of one deployment must live on one Redis
node (no Redis Cluster hash-slot routing; a cluster deployment would need hash tags per user/item).
"""

from __future__ import annotations

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
