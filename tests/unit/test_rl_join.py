"""The reward join (services.rl_feedback.join): attribution, out-of-order, late and duplicate
outcomes, window closing, weights, the watermark rule, and restore from the changelog."""

from __future__ import annotations

import pytest

from recpilot.featurespec import DENSE_FEATURES
from recpilot.pb import events_pb2
from services.rl_feedback.join import PartitionJoin, Watermark, Weights, decode_open, encode_open, reward_parts

W = 10_000
D = len(DENSE_FEATURES)


def imp(rid="r1", user="u1", ts=1_000, items=("a", "b", "c"), pool=True):
    i = events_pb2.Impression(request_id=rid, user_id=user, session_id="s1", surface="recommend",
                              model_version="3", policy_version="2", timestamp_ms=ts, variant="production")
    i.features["user:clicks_1h"] = 2.0
    i.features["1:item_ctr"] = 0.5  # not user-level: not copied
    for j, it in enumerate(items):
        i.items.add(item_id=it, position=j + 1, score=0.1 * (j + 1), propensity=0.5, pool_index=len(items) - 1 - j)
    if pool:
        n = len(items)
        i.pool_item_ids.extend(reversed(items))
        i.pool_dense.extend(float(100 * r + c) for r in range(n) for c in range(D))
    return i


def ev(eid, etype=events_pb2.CLICK, item="a", ts=2_000, rid="r1", user="u1", price=0.0):
    return events_pb2.UserEvent(event_id=eid, user_id=user, event_type=etype, item_id=item, timestamp_ms=ts,
                                request_id=rid, price=price)


def rewards(j: PartitionJoin) -> dict[tuple[str, str], events_pb2.Reward]:
    out = {}
    for key, value in j.take().rewards:
        r = events_pb2.Reward.FromString(value)
        assert key == r.user_id.encode()
        assert (r.request_id, r.item_id) not in out
        out[(r.request_id, r.item_id)] = r
    return out


def test_request_id_attribution_and_window_close_gives_one_reward_per_item():
    j = PartitionJoin(W)
    j.impression(imp())
    j.outcome(ev("e1", item="b"))
    j.advance(1_000 + W - 1, published_ms=50)
    assert rewards(j) == {}  # window still open
    j.advance(1_000 + W, published_ms=12_345)
    got = rewards(j)
    assert set(got) == {("r1", "a"), ("r1", "b"), ("r1", "c")}
    b = got[("r1", "b")]
    assert b.clicked and b.reward == 1.0 and b.outcome_ts_ms == 2_000 and b.outcome_events == 1
    assert b.position == 2 and b.propensity == 0.5 and b.model_version == "3" and b.policy_version == "2"
    assert b.published_ms == 12_345 and b.impression_ts_ms == 1_000 and b.session_id == "s1"
    assert dict(b.features) == {"user:clicks_1h": 2.0}
    assert list(b.dense) == [float(100 * 1 + c) for c in range(D)]  # b's pool row is 1
    assert got[("r1", "a")].reward == 0.0 and not got[("r1", "a")].clicked
    assert list(got[("r1", "a")].dense) == [float(200 + c) for c in range(D)]
    assert j.stats.rewards == 3 and j.stats.positive == 1 and not j.open
    j.advance(10 * W, published_ms=0)
    assert rewards(j) == {}  # closed once


def test_user_item_attribution_picks_most_recent_open_impression_in_window():
    j = PartitionJoin(W)
    j.impression(imp("old", ts=1_000, items=("a", "x")))
    j.impression(imp("new", ts=3_000, items=("a", "y")))
    j.impression(imp("other", user="u2", ts=3_500, items=("a",)))
    j.outcome(ev("e1", item="a", ts=4_000, rid=""))       # -> new (most recent before it)
    j.outcome(ev("e2", item="x", ts=4_000, rid=""))       # -> old (only one that showed x)
    j.outcome(ev("e3", item="a", ts=2_000, rid=""))       # -> old (new is after the outcome)
    j.outcome(ev("e4", item="a", ts=3_000 + W + 1, rid=""))  # outside every window: buffered, then unmatched
    j.advance(3_500 + W + 2 * W, published_ms=1)
    got = rewards(j)
    assert got[("new", "a")].clicked and got[("new", "a")].outcome_events == 1
    assert got[("old", "x")].clicked and got[("old", "a")].clicked
    assert not got[("other", "a")].clicked and not got[("new", "y")].clicked
    assert j.stats.unmatched == 1


def test_item_not_shown_in_the_named_request_is_not_attributed():
    j = PartitionJoin(W)
    j.impression(imp())
    j.outcome(ev("e1", item="zzz"))
    j.advance(1_000 + W, 1)
    assert not any(r.clicked for r in rewards(j).values())
    assert j.stats.not_shown == 1


def test_out_of_order_outcome_waits_for_its_impression():
    j = PartitionJoin(W)
    j.outcome(ev("e1", item="c", ts=2_000))                       # before its impression
    j.outcome(ev("e2", item="b", ts=2_500, rid="", etype=events_pb2.ADD_TO_CART))
    assert j.buffered == 2
    j.advance(1_500, 1)  # the watermark moves but not past either outcome's window
    j.impression(imp(ts=1_000))
    assert j.buffered == 0
    j.advance(1_000 + W, 2)
    got = rewards(j)
    assert got[("r1", "c")].clicked and got[("r1", "b")].added_to_cart and not got[("r1", "b")].clicked
    assert j.stats.buffered == 2 and j.stats.joined == 2


def test_late_outcomes_are_counted_and_dropped():
    j = PartitionJoin(W)
    j.impression(imp())
    j.advance(1_000 + W, 1)
    assert len(rewards(j)) == 3
    j.outcome(ev("e1", item="a", ts=2_000))              # its impression's reward is out: late
    j.outcome(ev("e2", item="a", ts=500, rid="r-gone"))  # unknown request, window behind the watermark
    j.impression(imp("r2", ts=20_000))
    j.outcome(ev("e3", item="a", ts=20_000 + W + 5, rid="r2"))  # after r2's window
    j.advance(20_000 + W, 1)
    assert not any(r.clicked for r in rewards(j).values())
    assert j.stats.late == 3 and j.take().rewards == []


def test_duplicate_outcomes_count_once_per_flag():
    j = PartitionJoin(W, Weights(click=1.0, add_to_cart=0.0, purchase=2.0, revenue=0.1))
    j.impression(imp())
    j.outcome(ev("e1", item="a"))
    j.outcome(ev("e1", item="a"))                   # the same event twice
    j.outcome(ev("e2", item="a", ts=2_100))          # a second click
    j.outcome(ev("p1", events_pb2.PURCHASE, item="a", ts=3_000, price=20.0))
    j.outcome(ev("p1", events_pb2.PURCHASE, item="a", ts=3_000, price=20.0))
    j.outcome(ev("v1", events_pb2.VIEW, item="a"))   # not an outcome
    j.advance(1_000 + W, 1)
    a = rewards(j)[("r1", "a")]
    assert a.clicked and a.purchased and not a.added_to_cart
    assert a.revenue == 20.0 and a.reward == pytest.approx(1.0 + 2.0 + 0.1 * 20.0)
    assert a.outcome_events == 3 and a.outcome_ts_ms == 3_000
    assert j.stats.duplicates == 2 and j.stats.ignored == 1


def test_duplicate_impression_is_dropped():
    j = PartitionJoin(W)
    j.impression(imp())
    j.impression(imp())
    j.advance(1_000 + W, 1)
    j.impression(imp())  # after close: still a duplicate, no second reward
    j.advance(10 * W, 1)
    assert len(rewards(j)) == 3 and j.stats.duplicate_impressions == 2


@pytest.mark.parametrize("weights, expect", [
    (Weights(), {"a": 1.0, "b": 0.0, "c": 1.0}),                     # CTR objective
    (Weights(click=0.0, add_to_cart=0.5, purchase=1.0), {"a": 1.5, "b": 0.5, "c": 0.0}),
    (Weights(click=0.0, revenue=0.01), {"a": 0.5, "b": 0.0, "c": 0.0}),
])
def test_reward_weights(weights, expect):
    j = PartitionJoin(W, weights)
    j.impression(imp())
    j.outcome(ev("1", item="a"))
    j.outcome(ev("2", events_pb2.ADD_TO_CART, item="a"))
    j.outcome(ev("3", events_pb2.PURCHASE, item="a", price=50.0))
    j.outcome(ev("4", events_pb2.ADD_TO_CART, item="b"))
    j.outcome(ev("5", item="c"))
    j.advance(1_000 + W, 1)
    got = rewards(j)
    assert {k[1]: r.reward for k, r in got.items()} == pytest.approx(expect)


def test_restore_from_changelog_gives_the_same_rewards():
    """State written as changelog records (latest per key) restores to the same rewards."""
    def run(crash_after: int | None):
        steps = [lambda j: j.impression(imp("r1", ts=1_000)),
                 lambda j: j.outcome(ev("e0", item="a", ts=1_100, rid="r9")),        # buffered, r9 comes later
                 lambda j: j.outcome(ev("e1", item="b", ts=1_500, rid="")),          # attributed by user+item
                 lambda j: j.impression(imp("r0", ts=500)),
                 lambda j: j.advance(500 + W, 7),                                   # closes r0
                 lambda j: j.impression(imp("r9", ts=1_050)),
                 lambda j: j.outcome(ev("e1", item="b", ts=1_500, rid="")),          # duplicate
                 lambda j: j.outcome(ev("e2", events_pb2.PURCHASE, item="c", ts=1_600, price=3.0))]
        log: dict[bytes, bytes | None] = {}
        out = {}
        j = PartitionJoin(W)
        for n, step in enumerate(steps):
            if crash_after is not None and n == crash_after:
                j = PartitionJoin(W)
                j.restore(log)
            step(j)
            o = j.take()
            log.update(o.changelog)
            for _k, v in o.rewards:
                r = events_pb2.Reward.FromString(v)
                out[(r.request_id, r.item_id)] = (r.clicked, r.purchased, r.revenue, r.outcome_events)
        j.advance(10 * W, 8)
        for _k, v in j.take().rewards:
            r = events_pb2.Reward.FromString(v)
            assert (r.request_id, r.item_id) not in out
            out[(r.request_id, r.item_id)] = (r.clicked, r.purchased, r.revenue, r.outcome_events)
        return out

    base = run(None)
    assert base[("r1", "b")][0] and base[("r9", "a")][0] and base[("r1", "c")][1:3] == (True, 3.0)
    assert len(base) == 9
    for crash in range(1, 8):
        assert run(crash) == base, crash


def test_reward_parts_encode_what_the_protobuf_parser_reads():
    i = imp(items=("a", "b", "c" * 200))  # an item id longer than one varint byte
    i.items[1].position = 300
    i.items[2].propensity = 0.123
    head, parts, ids = reward_parts(i)
    assert decode_open(encode_open(head, parts)) == (head, parts) and ids == ("a", "b", "c" * 200)
    r = events_pb2.Reward.FromString(head + parts[1])
    want = events_pb2.Reward(request_id="r1", user_id="u1", model_version="3", policy_version="2",
                             impression_ts_ms=1_000, session_id="s1", surface="recommend", variant="production",
                             item_id="b", position=300, propensity=0.5, score=i.items[1].score,
                             dense=[float(100 + c) for c in range(D)])
    want.features["user:clicks_1h"] = 2.0
    assert r == want
    r2 = events_pb2.Reward.FromString(head + parts[2])
    assert r2.item_id == "c" * 200 and r2.propensity == i.items[2].propensity


def test_dense_row_falls_back_to_the_position_snapshot():
    i = imp(pool=False)
    for c_, f in enumerate(DENSE_FEATURES):
        i.features[f"2:{f}"] = float(c_)
    _head, parts, _ids = reward_parts(i)
    assert [list(events_pb2.Reward.FromString(p).dense) for p in parts] == [[], [float(c_) for c_ in range(D)], []]


def test_watermark_waits_for_the_slower_input_then_follows_the_wall_clock():
    wm = Watermark(grace_ms=500)
    wm.observe(0, 10_000)
    assert wm.advance(now_ms=100_000) == 0          # nothing read from the outcomes yet
    wm.observe(1, 4_000)
    assert wm.advance(100_000) == 4_000             # backlog: the outcomes' event time
    wm.reached_end(1)
    assert wm.advance(100_000) == 10_000            # outcomes caught up; impressions behind
    wm.reached_end(0)
    assert wm.advance(100_000) == 99_500            # both at their end: wall clock - grace
    wm.observe(0, 50_000)
    assert wm.advance(100_100) == 99_500            # never goes back
    wm.observe(0, 200_000)
    wm.reached_end(0)
    assert wm.advance(101_000) == 100_500           # event time capped by the wall clock


def test_interval_metric_events_name_the_fates_and_the_latency():
    from recpilot.metricevents import MetricPublisher
    from services.rl_feedback.__main__ import interval_events

    class Svc:
        def stats(self):
            j = PartitionJoin(W)
            j.stats.rewards, j.stats.late, j.stats.joined = 30, 2, 5
            return j.stats

        def take_latencies(self):
            return [900, 100, 500]

    evs = {(e.name, tuple(sorted(e.labels.items()))): e
           for e in interval_events(MetricPublisher(None, "rl_feedback", "i1"), Svc())}
    assert evs[("rewards_total", ())].value == 30
    assert evs[("outcomes_total", (("fate", "late"),))].value == 2
    lat = evs[("reward_latency_ms", ())]
    assert lat.summary.count == 3 and lat.summary.max == 900 and lat.summary.quantiles["p50"] == 500


def test_start_refuses_inputs_that_are_not_copartitioned():
    from types import SimpleNamespace as NS

    from recpilot.errors import FailedPrecondition
    from services.rl_feedback.service import check_copartitioned
    from services.rl_feedback.settings import RlFeedbackSettings

    def admin(**counts):
        topics = {t: NS(error=None, partitions=dict.fromkeys(range(n))) for t, n in counts.items()}
        return NS(list_topics=lambda timeout: NS(topics=topics))

    s = RlFeedbackSettings(impressions_topic="imp", events_topic="ev", changelog_topic="cl")
    assert check_copartitioned(admin(imp=4, ev=4), s) == 4
    assert check_copartitioned(admin(imp=4, ev=4, cl=4), s) == 4
    with pytest.raises(FailedPrecondition, match="not co-partitioned"):
        check_copartitioned(admin(imp=4, ev=6), s)
    with pytest.raises(FailedPrecondition, match="changelog must be co-partitioned"):
        check_copartitioned(admin(imp=4, ev=4, cl=2), s)
    with pytest.raises(FailedPrecondition, match="does not exist"):
        check_copartitioned(admin(imp=4), s)
