"""`recpilot features user|item|popular|candidates|reset-offsets` (light to import)."""

from __future__ import annotations

import contextlib
import json
import sys
import time

from recpilot.errors import Unavailable


@contextlib.contextmanager
def _client(args):
    """A feature read client for one command; Redis not answering is a failure (exit 1)."""
    import redis

    from recpilot.settings import PlatformSettings, load
    from services.features.client import FeatureClient
    from services.features.settings import FeaturesSettings

    fs = load(FeaturesSettings)
    platform = load(PlatformSettings)
    url = fs.redis_url or platform.redis_url
    prefix = args.key_prefix if args.key_prefix is not None else fs.key_prefix
    c = FeatureClient(url, prefix, shards=platform.redis_shards, cluster=platform.redis_cluster,
                      socket_connect_timeout=5, socket_timeout=10)
    try:
        _check_layout(c, platform.redis_shards)
        yield c
    except redis.RedisError as exc:
        raise Unavailable(f"cannot read features from Redis at {url}: {exc}") from None
    finally:
        c.close()


def _check_layout(c, shards: int) -> None:
    """The store's recorded shard count (``<prefix>layout``, keys.py) against RECPILOT_REDIS_SHARDS: reading
    with another would find nothing (exit 2: fix the setting)."""
    from recpilot.errors import UsageError
    from services.features import keys

    stored = c.redis.get(keys.layout_key(c.prefix))
    if stored is not None and int(stored) != shards:
        raise UsageError(f"the feature store under prefix {c.prefix!r} has {int(stored)} shards, RECPILOT_REDIS_SHARDS "
                         f"is {shards}: set RECPILOT_REDIS_SHARDS={int(stored)}")


def _now(args) -> int:
    return int(args.now_ms) if args.now_ms is not None else int(time.time() * 1000)


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, sort_keys=True))
        return
    for k, v in obj.items():
        print(f"{k:<18} {v}")


def cmd_user(args) -> int:
    with _client(args) as c:
        user = c.user(args.user_id, _now(args))
    _print(user, args.json)
    if not user.get("events"):
        print(f"(no events stored for user {args.user_id!r}: the defaults a new user gets)", file=sys.stderr)
    return 0


def cmd_item(args) -> int:
    with _client(args) as c:
        item = c.item(args.item_id, _now(args))
        item["title"] = c.item_meta([args.item_id])[args.item_id]["title"]
    _print(item, args.json)
    if not item.get("last_event_ms") and not item.get("title"):
        print(f"(nothing stored for item {args.item_id!r}: no events and not in the catalogue)", file=sys.stderr)
    return 0


def cmd_popular(args) -> int:
    with _client(args) as c:
        items = c.popular(args.n, args.category)
    print(json.dumps(items) if args.json else "\n".join(items))
    return 0


def cmd_candidates(args) -> int:
    with _client(args) as c:
        items = c.candidates(args.user_id, args.n, _now(args))
    print(json.dumps(items) if args.json else "\n".join(items))
    return 0


def cmd_reset_offsets(args) -> int:
    """Delete the stored offsets of a recreated input topic, so that its new events are applied.

    By default only partitions whose stored offset is at or beyond the topic's end (what the worker
    reports as ``offsets_ahead_of_topic``); ``--force`` resets the chosen partitions anyway, and their
    events still in the topic are then counted again."""
    from recpilot.kafka import end_offsets
    from recpilot.settings import PlatformSettings, load
    from services.features.settings import FeaturesSettings
    from services.features.writer import offsets_ahead

    topic = args.topic or load(FeaturesSettings).input_topic
    with _client(args) as c:
        stored = {src: off for src, off in c.offsets().items()
                  if src.rpartition(":")[0] == topic
                  and (not args.partition or int(src.rpartition(":")[2]) in args.partition)}
        if args.force:
            doomed = {src: {"stored": off} for src, off in stored.items()}
        else:
            ends = {f"{topic}:{p}": end for p, end in end_offsets(load(PlatformSettings), topic).items()}
            doomed = offsets_ahead(stored, ends)
        if doomed:
            c.reset_offsets(list(doomed))
    if args.json:
        print(json.dumps({"reset": doomed}, sort_keys=True))
    elif not doomed:
        print(f"nothing to reset: no stored offset of {topic} is at or beyond the topic's end (--force resets anyway)")
    for src, v in doomed.items():
        if not args.json:
            print(f"{src:<24} stored {v['stored']}" + (f", topic end {v['end']}" if "end" in v else "") + ": reset")
    return 0


def register(sub) -> None:
    p = sub.add_parser("features", help="read the online features stored in Redis")
    fsub = p.add_subparsers(dest="features_cmd", metavar="WHAT")

    def common(q):
        q.add_argument("--json", action="store_true", help="one JSON object")
        q.add_argument("--now-ms", type=int, default=None, help="reference time for windows (default: now)")
        q.add_argument("--key-prefix", default=None, help="Redis key prefix (default: RECPILOT_FEATURES_KEY_PREFIX or rp:)")

    q = fsub.add_parser("user", help="a user's features")
    q.add_argument("user_id")
    common(q)
    q.set_defaults(func=cmd_user)
    q = fsub.add_parser("item", help="an item's features (all-time counts views/clicks/carts/purchases, windows, ctr)")
    q.add_argument("item_id")
    common(q)
    q.set_defaults(func=cmd_item)
    q = fsub.add_parser("popular", help="globally (or per category) most popular items")
    q.add_argument("-n", type=int, default=10)
    q.add_argument("--category", default=None)
    common(q)
    q.set_defaults(func=cmd_popular)
    q = fsub.add_parser("candidates", help="candidate items for a user (co-visited, category-popular, popular)")
    q.add_argument("user_id")
    q.add_argument("-n", type=int, default=20)
    common(q)
    q.set_defaults(func=cmd_candidates)
    q = fsub.add_parser("reset-offsets", help="after the input topic was recreated: forget the offsets stored for it, "
                        "so the worker applies its new events (only partitions stored beyond the topic's end, "
                        "unless --force)")
    q.add_argument("--topic", default=None, help="default: RECPILOT_FEATURES_INPUT_TOPIC (events.clean)")
    q.add_argument("--partition", type=int, action="append", default=[], help="only this partition (repeatable)")
    q.add_argument("--force", action="store_true", help="reset even partitions whose offset is below the topic's "
                   "end (their events are applied again: counts grow twice)")
    common(q)
    q.set_defaults(func=cmd_reset_offsets)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
