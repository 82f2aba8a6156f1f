"""The features service's parts in process (no Kafka, no Redis): the Lua script's arguments, the
read client's parsing and candidates, settings, freshness, metrics, the synthetic stream, the CLI."""

from __future__ import annotations

import json

import pytest

from bench.features import histogram_quantile, parse_histogram
from recpilot import featurespec as fs
from recpilot.pb import events_pb2
from recpilot.settings import SettingsError, load
from services.features import client as fc
from services.features import scripts
from services.features.app import freshness_seconds
from services.features.metrics import Reservoir, quantile
from services.features.settings import FeaturesSettings
from services.features.writer import (RETRY_KINDS, FeatureWriter, apply_args, chunks, encode_event, offsets_ahead,
                                      transient_error_kind)


def _ev(**kw) -> events_pb2.UserEvent:
    ev = events_pb2.UserEvent(event_id="e1", user_id="u1", session_id="s1", event_type=events_pb2.CLICK,
                              item_id="i9", price=12.5, timestamp_ms=1_700_000_000_123)
    ev.context["category"] = "shoes"
    ev.context["title"] = "Red shoe"
    for k, v in kw.items():
        setattr(ev, k, v)
    return ev


def test_encode_event_fields_in_script_order():
    fields = encode_event(42, _ev())
    assert fields == ["42", "CLICK", "u1", "i9", "s1", "1700000000123", "12.5", "shoes", "Red shoe"]
    assert len(fields) == len(scripts.APPLY_FIELDS)


def test_encode_event_no_price_and_unknown_type():
    fields = encode_event(0, _ev(price=0.0, event_type=events_pb2.EVENT_TYPE_UNSPECIFIED))
    assert fields[1] == "" and fields[6] == ""
    # the exact double survives the string round trip Redis stores
    p = 0.1 + 0.2
    assert float(encode_event(0, _ev(price=p))[6]) == p


def test_apply_args_header_and_layout():
    args = apply_args("pfx:", "events.clean:3", [(7, _ev()), (8, _ev(item_id="i10"))], session_items=4, covisit_max=9,
                      user_ttl_s=3600)
    assert args[:scripts.APPLY_HEADER] == ["pfx:", "events.clean:3", str(fs.RECENT_LEN),
                                          str(fs.AFFINITY_HALF_LIFE_MS), "4", "9", "3600", "b", "0"]
    assert len(args) == scripts.APPLY_HEADER + 1
    body = json.loads(args[scripts.APPLY_HEADER])
    assert len(body) == 2 and all(len(e) == len(scripts.APPLY_FIELDS) for e in body)
    assert body[0][0] == "7" and body[1][0] == "8" and body[1][3] == "i10"
    assert all(isinstance(v, str) for e in body for v in e)


def test_apply_args_keep_unicode_and_separators_intact():
    ev = _ev(user_id='u"ß,|\u1f600', item_id="ä]\n")
    body = json.loads(apply_args("p:", "t:0", [(1, ev)])[scripts.APPLY_HEADER])
    assert body[0][2] == ev.user_id and body[0][3] == ev.item_id


def test_chunks_cover_everything_in_order():
    seq = list(range(1203))
    parts = list(chunks(seq, 500))
    assert [len(p) for p in parts] == [500, 500, 203]
    assert [x for p in parts for x in p] == seq


def test_scripts_are_generated_from_featurespec():
    for name, field in fs.COUNT_FIELD.items():
        assert f"{name}='{field}'" in scripts.APPLY
    assert f"local BUCKET_MS = {fs.BUCKET_MS}" in scripts.APPLY
    assert set(scripts.WINDOW_KEYS) == {f"{f}_{w}" for f in fs.COUNT_FIELDS for w in fs.WINDOWS_S}


def test_parse_fetch_builds_featurespec_dicts():
    raw = [
        [b"events", b"7", b"last_event_ms", b"1000", b"session_id", b"s2", b"session_events", b"3"],
        [b"i2", b"i1"], [b"i2"], [],
        [b"shoes", b"4.5|900"],
        [b"3", b"1", None, None, b"shoes", b"9.99", b"1000"], [3, 3, 1, 1, 0, 0, 0, 0],
        [None, None, None, None, None, None, None], [0, 0, 0, 0, 0, 0, 0, 0],
    ]
    user, items = fc.parse_fetch("u1", ["i1", "i404"], raw)
    assert set(user) == set(fs.empty_user("u1"))
    assert user == {"user_id": "u1", "recent_views": ["i2", "i1"], "recent_clicks": ["i2"], "recent_purchases": [],
                    "affinity": {"shoes": [4.5, 900]}, "last_event_ms": 1000, "session_id": "s2",
                    "session_events": 3, "events": 7}
    assert set(items[0]) == set(fs.empty_item("i1"))
    assert items[0]["views"] == 3 and items[0]["clicks"] == 1 and items[0]["carts"] == 0
    assert items[0]["views_1h"] == 3 and items[0]["clicks_24h"] == 1
    assert items[0]["ctr"] == pytest.approx((1 + 1) / (3 + 20))
    assert items[0]["price"] == 9.99 and items[0]["category"] == "shoes"
    assert items[1] == fs.empty_item("i404")


def test_parse_popular_breaks_ties_by_id_like_offline_store():
    top = [b"b", b"5", b"z", b"2", b"y", b"2"]  # Redis orders ties by member descending
    ties = [b"a", b"2", b"c", b"2", b"y", b"2"]  # ZRANGEBYSCORE at the cut, ascending, LIMIT n
    assert fc.parse_popular([top, ties], 3) == ["b", "a", "c"]
    assert fc.parse_popular([[], []], 3) == []


def test_merge_candidates_order_and_dedupe():
    covis = [[(b"x", 2.0), (b"y", 1.0)], [(b"y", 5.0)]]  # two recent items
    cats = [["c1", "x"], ["d1", "d2"]]
    out = fc.merge_candidates(6, ["p1", "x", "p2"], covis, cats)
    assert out == ["y", "x", "c1", "d1", "d2", "p1"]
    assert fc.merge_candidates(2, ["p1", "p2", "p3"], [], []) == ["p1", "p2"]


def test_sharded_layout_routes_users_and_items_and_merges_exactly():
    one = fc._Layout("rp:", 1, False)
    assert one.heads == ["rp:"] and fc._Layout("rp:", 1, True).heads == ["{rp:0}"]
    lay = fc._Layout("rp:", 4, False)
    assert lay.heads == ["{rp:0}", "{rp:1}", "{rp:2}", "{rp:3}"]
    items = [f"i{k}" for k in range(12)]
    calls = lay.fetch_calls("u7", items, 5)
    # the user's shard first (it reads the user), then one call per other shard holding items
    assert calls[0][0] == lay.of("u7") and calls[0][1][1] == "u7" and all(c[1][1] == "" for c in calls[1:])
    assert sorted(p for c in calls for p in c[2]) == list(range(12))
    assert all(lay.of(items[p]) == h for h, _, pos in calls for p in pos)
    # a shard's popular list: disjoint items, merged by score then id
    assert fc._merge_ranked([[(b"a", 3.0), (b"b", 1.0)], [(b"c", 3.0)], []]) == ["a", "c", "b"]
    assert fc._merge_ranked([[b"z", b"a"]]) == ["z", "a"]  # one shard: Redis' order as it is
    assert fc.merge_popular([([b"a", b"3", b"b", b"1"], [b"b", b"1"]), ([b"c", b"2"], [b"c", b"2"])], 2) == ["a", "c"]
    # the catalogue scan's keys back to item ids (another shard's key pattern or a foreign key: none)
    iid = "x}i:y"
    key = f"{lay.of(iid)}i:{iid}"
    assert lay.catalogue_id(key) == iid and lay.catalogue_id("{rp:1}ib:x") is None
    assert lay.catalogue_pattern() == "{rp:*}i:*" and one.catalogue_pattern() == "rp:i:*"


def test_top_categories_use_decay_at_now():
    h = fs.AFFINITY_HALF_LIFE_MS
    flat = [b"old", b"10|0", b"new", f"6|{4 * h}".encode()]
    # at 4 half-lives 'old' has decayed to 10/16 < 6
    assert fc._top_categories(flat, 4 * h, 2) == ["new", "old"]
    assert fc._top_categories(flat, 0, 1) == ["old"]


def test_settings_defaults_prefix_and_forbid(monkeypatch):
    s = load(FeaturesSettings)
    assert s.http_port == 9102 and s.input_topic == "events.clean" and s.key_prefix == "rp:"
    monkeypatch.setenv("RECPILOT_FEATURES_INPUT_TOPIC", "t.x")
    monkeypatch.setenv("RECPILOT_FEATURES_KEY_PREFIX", "p9:")
    s = load(FeaturesSettings)
    assert (s.input_topic, s.key_prefix) == ("t.x", "p9:")
    monkeypatch.setenv("RECPILOT_FEATURES_BATCH_MAX", "0")
    with pytest.raises(SettingsError, match="RECPILOT_FEATURES_BATCH_MAX"):
        load(FeaturesSettings)
    with pytest.raises(SettingsError):
        load(FeaturesSettings, no_such_field=1)


def test_freshness_skips_events_without_time_and_clamps_future():
    evs = [_ev(timestamp_ms=1000), _ev(timestamp_ms=0), _ev(timestamp_ms=1900), _ev(timestamp_ms=2500)]
    assert freshness_seconds(evs, 2000) == [1.0, 0.1, 0.0]


def test_reservoir_summary_and_reset():
    r = Reservoir(size=100, seed=1)
    r.add_many(float(i) for i in range(1, 1001))
    s = r.drain()
    assert s["count"] == 1000 and s["sum"] == sum(range(1, 1001)) and s["min"] == 1 and s["max"] == 1000
    assert 300 < s["quantiles"]["p50"] < 700  # a uniform sample of 100
    assert r.drain() is None
    assert quantile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_histogram_quantile_interpolates_like_prometheus():
    text = "\n".join([
        'x_bucket{le="0.1"} 50.0', 'x_bucket{le="0.2"} 90.0', 'x_bucket{le="0.5"} 100.0', 'x_bucket{le="+Inf"} 100.0'])
    bounds, cum, n = parse_histogram(text, "x")
    assert n == 100 and bounds[-1] == float("inf")
    assert histogram_quantile(0.5, bounds, cum) == pytest.approx(0.1)
    assert histogram_quantile(0.7, bounds, cum) == pytest.approx(0.15)
    assert histogram_quantile(0.99, bounds, cum) == pytest.approx(0.2 + 0.3 * 0.9)


def test_cli_registers_features_commands():
    from recpilot.cli import build_parser

    p = build_parser()
    args = p.parse_args(["features", "item", "i1", "--json"])
    assert args.item_id == "i1" and args.json and callable(args.func)
    args = p.parse_args(["features", "reset-offsets", "--topic", "t", "--partition", "1", "--partition", "3"])
    assert (args.topic, args.partition, args.force) == ("t", [1, 3], False) and callable(args.func)


def test_features_http_server_binds_the_platform_bind_host(monkeypatch):
    """Like ingest and inference: RECPILOT_BIND_HOST unless RECPILOT_FEATURES_HTTP_HOST says otherwise."""
    from types import SimpleNamespace

    from recpilot.settings import PlatformSettings, load
    from services.features.__main__ import health_server
    from services.features.settings import FeaturesSettings

    pipeline = SimpleNamespace(ready=lambda: (True, {}), live=lambda: (True, {}))
    monkeypatch.delenv("RECPILOT_FEATURES_HTTP_HOST", raising=False)
    monkeypatch.delenv("RECPILOT_FEATURES_HTTP_PORT", raising=False)
    monkeypatch.setenv("RECPILOT_BIND_HOST", "0.0.0.0")
    health = health_server(load(FeaturesSettings), load(PlatformSettings), pipeline)
    assert health.host == "0.0.0.0" and health.port == 9102
    monkeypatch.setenv("RECPILOT_FEATURES_HTTP_HOST", "127.0.0.2")
    assert health_server(load(FeaturesSettings), load(PlatformSettings), pipeline).host == "127.0.0.2"


def test_redis_errors_worth_a_retry_are_told_from_bugs():
    from redis import exceptions as rx

    cases = {
        rx.ConnectionError("Connection refused"): "connection",
        rx.TimeoutError("Timeout reading from socket"): "timeout",
        rx.BusyLoadingError("Redis is loading the dataset in memory"): "loading",
        rx.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"):
            "misconf",
        rx.ReadOnlyError("You can't write against a read only replica. script: 1f0e, on @user_script:97."): "readonly",
        rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."): "oom",
        rx.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"): "busy",
        rx.MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."): "masterdown",
        rx.ResponseError("NOREPLICAS Not enough good replicas to write."): "noreplicas",
    }
    for exc, kind in cases.items():
        assert transient_error_kind(exc) == kind, exc
        assert kind in RETRY_KINDS
    for exc in (rx.ResponseError("ERR user_script:12: attempt to compare nil with number script: 1f0e"),
                rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
                rx.NoPermissionError("this user has no permissions to run the 'evalsha' command"),
                rx.ResponseError("ERR value is BUSY"), ValueError("MISCONF")):
        assert transient_error_kind(exc) is None, exc


def test_offsets_ahead_only_where_stored_reaches_the_end():
    stored = {"t:0": 99, "t:1": 5, "t:2": 7, "u:0": 3}
    ends = {"t:0": 10, "t:1": 6, "t:2": 7, "t:3": 0, "u:0": -1}
    # t:0 stored beyond a recreated topic's end, t:2 exactly at it (offset 7 needs an end of 8);
    # t:1 is behind its end (lag), t:3 has nothing stored, u:0's end is unknown
    assert offsets_ahead(stored, ends) == {"t:0": {"stored": 99, "end": 10}, "t:2": {"stored": 7, "end": 7}}
    assert offsets_ahead({}, ends) == {} and offsets_ahead(stored, {}) == {}


class _FakePipe:
    def __init__(self, redis):
        self.redis, self.calls = redis, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def execute_command(self, cmd, sha, numkeys, *args):
        assert cmd == "EVALSHA"
        self.calls.append(args[numkeys:])

    async def execute(self, raise_on_error=True):
        assert raise_on_error is False
        return [self.redis.answer(args) for args in self.calls]


class _FakeRedis:
    """Answers each APPLY call from a script of outcomes per source, recording what was sent."""

    def __init__(self, outcomes):
        self.outcomes, self.sent, self.loads = outcomes, [], 0

    def register_script(self, body):
        from types import SimpleNamespace

        return SimpleNamespace(sha="sha1")

    async def script_load(self, body):
        self.loads += 1

    async def set(self, key, value, nx=False):
        self.layout = getattr(self, "layout", None) or value

    async def get(self, key):
        return self.layout

    def pipeline(self, transaction=True):
        return _FakePipe(self)

    def answer(self, args):
        self.sent.append((args[1], json.loads(args[scripts.APPLY_HEADER])[0][0]))
        out = self.outcomes[args[1]].pop(0)
        return out if not isinstance(out, type) else out(f"{out.__name__} from the fake")


def test_writer_retry_redoes_only_the_calls_that_failed():
    import asyncio

    from redis import exceptions as rx

    evs = [(k, _ev()) for k in range(3)]
    fake = _FakeRedis({"t:0": [3], "t:1": [rx.ReadOnlyError, 3], "t:2": [rx.NoScriptError, 2]})
    writer = FeatureWriter(fake, "p:", user_ttl_s=60)
    job = writer.prepare({"t:0": evs, "t:1": evs, "t:2": evs})
    assert all(args[6] == "60" for *_, args in job.pending)

    async def go():
        with pytest.raises(rx.ReadOnlyError):  # the first real error, not the missing script
            await writer.run(job)
        assert [c[0] for c in job.pending] == ["t:1", "t:2"] and job.applied == {"t:0": 3, "t:1": 0, "t:2": 0}
        await writer.run(job)

    asyncio.run(go())
    assert job.done and job.applied == {"t:0": 3, "t:1": 3, "t:2": 2}
    assert [src for src, _ in fake.sent] == ["t:0", "t:1", "t:2", "t:1", "t:2"]
    assert fake.loads == 2  # loaded once, and again after NOSCRIPT


class _OffsetRedis:
    """A stand-in for redis.asyncio: APPLY keeps only the offset logic (skip at or below the stored
    offset, store the highest), the first call on ``fail_first`` fails once with a connection error."""

    def __init__(self, fail_first: int):
        self.stored: dict[tuple, int] = {}
        self.applied: list[int] = []
        self.fail_first, self.rounds = fail_first, []

    def register_script(self, body):
        return type("S", (), {"sha": "sha"})()

    async def set(self, *a, **kw):
        return True

    async def get(self, key):
        return None

    async def script_load(self, body):
        return "sha"

    def pipeline(self, transaction=False):
        outer = self

        class Pipe:
            def __init__(self):
                self.calls = []

            async def __aenter__(self):
                return self

            async def __aexit__(self, *exc):
                return False

            def execute_command(self, *args):
                self.calls.append(args)

            async def execute(self, raise_on_error=False):
                from redis.exceptions import ConnectionError

                outer.rounds.append(len(self.calls))
                out = []
                for args in self.calls:
                    key, field, evs = args[3], args[5], json.loads(args[-2])  # the events, then the written offset
                    offs = [int(e[0]) for e in evs]
                    if offs[0] == outer.fail_first:
                        outer.fail_first = None
                        out.append(ConnectionError("connection reset"))
                        continue
                    stored = outer.stored.get((key, field), -1)
                    new = [o for o in offs if o > stored]
                    outer.applied += new
                    outer.stored[(key, field)] = max([stored, *offs])
                    out.append(len(new))
                return out

        return Pipe()


def test_a_failed_chunk_is_retried_before_the_partitions_later_chunks_run():
    """Chunks of one partition run one per round trip: a later chunk never stores an offset past an
    earlier chunk that failed (its retry would skip those events as applied)."""
    import asyncio

    from redis.exceptions import ConnectionError

    from services.features.writer import CHUNK

    evs = [(o, events_pb2.UserEvent(event_type=events_pb2.VIEW, user_id=f"u{o}", item_id="i", timestamp_ms=1))
           for o in range(CHUNK * 3)]
    other = [(o, events_pb2.UserEvent(event_type=events_pb2.VIEW, user_id="v", item_id="i", timestamp_ms=1))
             for o in range(10)]
    r = _OffsetRedis(fail_first=0)
    w = FeatureWriter(r)
    job = w.prepare({"events.clean:0": evs, "events.clean:1": other})
    with pytest.raises(ConnectionError):
        asyncio.run(w.run(job))
    assert r.applied == list(range(10))  # only partition 1's chunk ran beside the failed one
    asyncio.run(w.run(job))  # the retry: the failed chunk first, then the later ones in order
    assert sorted(r.applied) == sorted([*range(CHUNK * 3), *range(10)]) and len(r.applied) == CHUNK * 3 + 10
    assert r.rounds == [2, 1, 1, 1]


def test_the_group_watchdog_restarts_a_worker_whose_coordination_stalled_while_the_broker_answers(
        tmp_path, monkeypatch):
    """No successful heartbeat for ``group_stall_s`` while the broker answers -> the worker logs
    where its coordination waits and re-executes itself; while the broker does not answer the clock
    restarts (no heartbeat is expected then); a heartbeat stamps the clock through the wrapper
    around aiokafka's ``_do_heartbeat``. (The re-exec itself, on a real worker: the integration
    test test_features_pipeline.py::test_a_stalled_worker_restarts_itself_and_counts_stay_exact.)"""
    import asyncio
    import socket

    from faust.types import TP

    from recpilot.settings import PlatformSettings
    from services.features import app as fapp

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    up = f"127.0.0.1:{listener.getsockname()[1]}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    platform = PlatformSettings(home=tmp_path, kafka_bootstrap_servers=down)
    p = fapp.FeaturePipeline(FeaturesSettings(group_stall_s=30, event_loop="asyncio"), platform)
    p.assigned, p.rebalanced = {TP("events.clean", 0)}, True

    class Coordinator:
        coordinator_id, generation, member_id = 1, 7, "m-1"
        _coordination_task = _heartbeat_task = None

        def __init__(self):
            self.answers = []

        async def _do_heartbeat(self):
            return self.answers.pop(0)

    coord = Coordinator()
    monkeypatch.setattr(p, "_coordinator", lambda: coord)
    restarts = []
    monkeypatch.setattr(fapp, "reexec", lambda: restarts.append(p.group_ok_at))
    clock = [1000.0]
    monkeypatch.setattr(fapp.time, "monotonic", lambda: clock[0])
    p.group_ok_at = clock[0]

    p._watch_heartbeats()
    p._watch_heartbeats()  # installed once
    coord.answers += [True, False]
    clock[0] += 20
    assert asyncio.run(coord._do_heartbeat()) is True and p.group_ok_at == 1020.0
    clock[0] += 20
    assert asyncio.run(coord._do_heartbeat()) is False and p.group_ok_at == 1020.0
    asyncio.run(p._check_group())  # 20 s without a heartbeat: within group_stall_s
    assert not restarts
    clock[0] += 20
    asyncio.run(p._check_group())  # 40 s, but the broker does not answer: the clock restarts
    assert not restarts and p.group_ok_at == 1060.0
    p.platform = PlatformSettings(home=tmp_path, kafka_bootstrap_servers=f"{down},{up}")
    clock[0] += 29
    asyncio.run(p._check_group())
    assert not restarts
    clock[0] += 2
    asyncio.run(p._check_group())  # 31 s without a heartbeat while the broker answers
    assert restarts == [1060.0]
    listener.close()
