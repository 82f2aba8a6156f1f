"""The shopper simulator: deterministic catalogue, long tail, click model, traffic mix (no I/O)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict

import pytest

from recpilot.pb import events_pb2
from recpilot.simulator import (
    CATEGORY_NAMES,
    ClickModel,
    ShopSimulator,
    TrafficMix,
    catalogue,
    event_to_dict,
    make_user,
    read_catalogue,
    write_catalogue,
)

NOW = 1_800_000_000_000


def test_catalogue_is_deterministic_and_prefix_stable():
    a, b = catalogue(42, 300), catalogue(42, 300)
    assert a == b
    assert catalogue(42, 1000)[:300] == a
    assert catalogue(43, 300) != a
    assert len({it.item_id for it in a}) == 300
    assert all(it.category in CATEGORY_NAMES and it.price > 0 and it.title for it in a)


def test_catalogue_fingerprint_is_pinned():
    # Other parts (Search in inference) rebuild the catalogue from (seed, n_items): a change to the
    # generator must be deliberate, so the content of catalogue(42, 50) is pinned here.
    blob = json.dumps([asdict(it) for it in catalogue(42, 50)], sort_keys=True).encode()
    first = catalogue(42, 1)[0]
    assert (first.item_id, first.title, first.category, first.price) == (
        "item-000000", "Relaxed Pink Leather Chronograph", "watches", 140.49)
    assert hashlib.sha256(blob).hexdigest()[:16] == FINGERPRINT


FINGERPRINT = "98cec120320cd63c"


def test_popularity_has_a_long_tail():
    pops = sorted((it.popularity for it in catalogue(42, 5000)), reverse=True)
    top10 = sum(pops[: len(pops) // 10]) / sum(pops)
    assert top10 > 0.4  # a tenth of the items carries a large share of the traffic
    assert pops[len(pops) // 2] < 2.0  # the median item is near the minimum weight 1


def test_catalogue_roundtrip(tmp_path):
    items = catalogue(1, 20)
    path = write_catalogue(items, tmp_path / "catalogue.jsonl")
    assert read_catalogue(path) == items


def test_click_model_position_bias_and_drift():
    cm = ClickModel(position_bias=1.0)
    assert [cm.examine(k) for k in (1, 2, 4)] == [1.0, 0.5, 0.25]
    user = make_user(42, 7)
    item = catalogue(42, 10)[3]
    p1, p5 = cm.click_probability(user, item, 1), cm.click_probability(user, item, 5)
    assert p1 == pytest.approx(5 * p5)
    drifting = ClickModel(drift_per_hour=1.0)
    assert drifting.tastes(user, 0.0) == user.tastes
    rotated = drifting.tastes(user, 3600.0)
    n = len(CATEGORY_NAMES)
    assert rotated == pytest.approx([user.tastes[(c + n // 2) % n] for c in range(n)])
    assert ClickModel(sudden_drift_at_s=10).tastes(user, 9.9) == user.tastes


def test_user_tastes_are_deterministic_distributions():
    u = make_user(42, 11)
    assert u == make_user(42, 11)
    assert sum(u.tastes) == pytest.approx(1.0)
    assert max(u.tastes) > 0.4


def test_same_seed_same_shoppers_but_fresh_event_ids_unless_run_id_given():
    # A second `make run` replays the same seeded shoppers; reusing event ids would make ingest drop
    # the whole second run as duplicates of the first.
    def stream(**kw):
        sim = ShopSimulator(seed=5, n_users=100, n_items=200, **kw)
        return [sim.next_event(NOW + i) for i in range(500)]

    a, b = stream(), stream()
    assert [(e.user_id, e.item_id, e.event_type) for e in a] == [(e.user_id, e.item_id, e.event_type) for e in b]
    assert not {e.event_id for e in a} & {e.event_id for e in b}
    assert not {e.session_id for e in a} & {e.session_id for e in b}
    c, d = stream(run_id="fixed"), stream(run_id="fixed")
    assert [e.SerializeToString() for e in c] == [e.SerializeToString() for e in d]


def test_stream_has_sessions_types_and_categories_that_follow_tastes():
    sim = ShopSimulator(seed=9, n_users=200, n_items=500)
    evs = [sim.next_event(NOW) for _ in range(20_000)]
    types = Counter(e.event_type for e in evs)
    assert types[events_pb2.VIEW] > types[events_pb2.CLICK] > types[events_pb2.ADD_TO_CART] > types[events_pb2.PURCHASE] > 0
    assert types[events_pb2.SEARCH] > 0
    assert len({e.event_id for e in evs}) == len(evs)
    assert all(e.item_id and e.context["category"] for e in evs if e.event_type != events_pb2.SEARCH)
    sessions = Counter(e.session_id for e in evs)
    assert 2 < sum(sessions.values()) / len(sessions) < 20
    # a heavy user's views concentrate on the categories they like
    by_user = Counter(e.user_id for e in evs if e.event_type == events_pb2.VIEW)
    uid, _ = by_user.most_common(1)[0]
    user = sim.population.user(int(uid.split("-")[1]))
    cats = Counter(e.context["category"] for e in evs if e.user_id == uid and e.event_type == events_pb2.VIEW)
    fav = CATEGORY_NAMES[max(range(len(CATEGORY_NAMES)), key=lambda c: user.tastes[c])]
    assert cats.most_common(1)[0][0] == fav


def test_outcomes_follow_position_bias_and_carry_request_id():
    sim = ShopSimulator(seed=4, n_users=50, n_items=50)
    user = sim.population.user(0)
    ranked = [it.item_id for it in sim.items[:10]]
    clicks_top = clicks_bottom = 0
    for r in range(4000):
        # the same items, once at the top and once at the bottom of the list
        out = sim.outcomes_for(user, "s", ranked, f"r{r}", NOW)
        assert all(e.request_id == f"r{r}" for e in out)
        clicks_top += sum(1 for e in out if e.event_type == events_pb2.CLICK and e.item_id in ranked[:2])
        rev = list(reversed(ranked))
        out = sim.outcomes_for(user, "s", rev, f"q{r}", NOW)
        clicks_bottom += sum(1 for e in out if e.event_type == events_pb2.CLICK and e.item_id in ranked[:2])
    assert clicks_top > 3 * clicks_bottom > 0
    assert sim.outcomes_for(user, "s", ["not-in-catalogue"], "r", NOW) == []


def test_traffic_mix_shares_and_duplicates_are_exact_resends():
    mix = TrafficMix(ShopSimulator(seed=2, n_users=100, n_items=100), malformed_share=0.1, duplicate_share=0.05)
    recs = [mix.next(NOW) for _ in range(20_000)]
    kinds = Counter(k for _, _, k in recs)
    assert 1600 < sum(v for k, v in kinds.items() if k not in ("valid", "duplicate")) < 2400
    assert 700 < kinds["duplicate"] < 1300
    valid = {v for _, v, k in recs if k == "valid"}
    assert all(v in valid for _, v, k in recs if k == "duplicate")
    with pytest.raises(ValueError):
        TrafficMix(ShopSimulator(seed=2, n_users=10, n_items=10), malformed_share=0.7, duplicate_share=0.5)


def test_events_are_deterministic_time_ordered_and_map_to_offline_dicts():
    a = [event_to_dict(e) for e in ShopSimulator(seed=5, n_users=20, n_items=50, run_id="t").events(300, 10_000, 2.5)]
    b = [event_to_dict(e) for e in ShopSimulator(seed=5, n_users=20, n_items=50, run_id="t").events(300, 10_000, 2.5)]
    assert a == b and len(a) == 300
    assert [e["timestamp_ms"] for e in a[:3]] == [10_000, 10_002, 10_005]
    assert [e["timestamp_ms"] for e in a] == sorted(e["timestamp_ms"] for e in a)
    assert {e["event_type"] for e in a} >= {events_pb2.VIEW, events_pb2.CLICK, events_pb2.SEARCH}
    assert all(e["item_id"] and e["context"]["category"] in CATEGORY_NAMES
               for e in a if e["event_type"] != events_pb2.SEARCH)
    # the dict OfflineFeatureStore.apply takes: event type by number, context as a plain dict
    from recpilot.featurespec import OfflineFeatureStore

    store = OfflineFeatureStore()
    for e in a:
        store.apply(e)
    views = sum(1 for e in a if e["event_type"] == events_pb2.VIEW)
    assert sum(it["views"] for it in store.items.values()) == views > 0
