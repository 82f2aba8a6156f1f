"""Re-ranking policies on the serving path: the ranker's order and a learned TorchScript policy
(written by recpilot.rl.artifact into a temporary repository) through RankingService, with the pool,
exploration and marginal propensities every impression logs checked against hand-computed values;
the policy router's canary, failed and slow loads."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest

from recpilot.featurespec import DENSE_FEATURES, OfflineFeatureStore
from recpilot.models.deployments.state import in_canary
from services.inference.policy import LearnedPolicy, PolicyRegistry, RankerOrderPolicy
from services.inference.routing import Routes
from services.inference.service import RankingService, Request
from services.inference.settings import InferenceSettings
from tests.support.policy import write_toy_policy

CANDS = ["c0", "c1", "c2", "c3", "c4", "c5"]
SCORES = np.array([0.1, 0.9, 0.5, 0.3, 0.7, 0.2], np.float32)  # the ranker's; pool of 4: c1 c4 c2 c3


class Version:  # a ranker version that gives every request the same scores
    name, version, meta = "ranker", "1", {}

    async def score(self, dense, ids):
        return SCORES[: len(dense)].copy()


class Models:
    model_names = ["ranker"]

    def serves(self, name):
        return name == "ranker"

    def routes(self, name):
        return Routes(production=Version())


class Features:  # the read API over featurespec's offline store (no Redis)
    def __init__(self):
        self.store = OfflineFeatureStore()
        for n, iid in enumerate(CANDS):
            self.store.apply({"event_type": "VIEW", "user_id": "u", "item_id": iid, "timestamp_ms": 1000 + n,
                              "context": {"category": f"cat{n % 2}"}})

    async def fetch(self, user_id, item_ids, now_ms):
        return self.store.user(user_id), [self.store.item(i, now_ms) for i in item_ids]

    async def popular(self, k):
        return []


class Impressions:
    def __init__(self):
        self.records = []

    def log(self, rec):
        self.records.append(rec)


def service(policies: PolicyRegistry):
    imps = Impressions()
    svc = RankingService(InferenceSettings(policy_pool=4), Features(), Models(), policies=policies, impressions=imps)
    return svc, imps


def recommend(svc, users, k=2):
    async def run():
        return [await svc.recommend(Request(user_id=u, k=k, candidate_ids=list(CANDS)), 1e12) for u in users]

    return asyncio.run(run())


def test_ranker_order_logs_its_pool_greedy_with_propensity_one():
    svc, imps = service(PolicyRegistry(pool_size=4))
    (res,) = recommend(svc, ["u"], k=3)
    assert [i for i, *_ in res.items] == ["c1", "c4", "c2"] and [p for *_, p in res.items] == [1.0, 1.0, 1.0]
    assert res.policy_version == "ranker-order" and res.policy_variant == "production"
    (rec,) = imps.records
    assert rec.pool_item_ids == ["c1", "c4", "c2", "c3"] and rec.pool_index == [0, 1, 2]
    np.testing.assert_array_equal(rec.pool_scores, SCORES[[1, 4, 2, 3]])
    imp = rec.to_proto()
    assert imp.policy_version == "ranker-order" and imp.exploration == "greedy" and imp.policy_variant == "production"
    assert [(i.item_id, i.position, i.pool_index, i.propensity) for i in imp.items] == \
        [("c1", 1, 0, 1.0), ("c4", 2, 1, 1.0), ("c2", 3, 2, 1.0)]
    d = len(DENSE_FEATURES)
    dense = np.array(imp.pool_dense, np.float32).reshape(4, d)
    np.testing.assert_array_equal(dense, rec.pool_dense)
    # the shown items' snapshot is the pool's rows at their pool index
    assert [imp.features[f"2:{f}"] for f in DENSE_FEATURES] == pytest.approx(dense[1].tolist())
    # k beyond the pool: the pool grows to k, every item still shown
    (res,) = recommend(svc, ["u"], k=6)
    assert len(res.items) == 6 and len(imps.records[-1].pool_item_ids) == 6


def _softmax2(a, b, t):
    """P(first) of a two-item softmax with temperature t."""
    return 1.0 / (1.0 + math.exp((b - a) / t))


# values = -ranker score, so by value the pool (c1 c4 c2 c3) orders c3 c2 c4 c1; with k = 2 slot 1
# draws from {c3, c4} and slot 2 from {c2, c1} (stratified groups of recpilot.rl.slate).
HAND = {
    "epsilon_greedy:0.2": {(1, "c3"): 0.8 + 0.1, (1, "c4"): 0.1, (2, "c2"): 0.9, (2, "c1"): 0.1},
    "softmax:0.5": {(1, "c3"): _softmax2(-0.3, -0.7, 0.5), (1, "c4"): 1 - _softmax2(-0.3, -0.7, 0.5),
                    (2, "c2"): _softmax2(-0.5, -0.9, 0.5), (2, "c1"): 1 - _softmax2(-0.5, -0.9, 0.5)},
    # a uniform share 0.4: 0.6 * the epsilon-greedy marginals + 0.4 / 4, every item in every slot
    "epsilon_greedy:0.2+uniform:0.4": {(1, "c3"): 0.64, (1, "c4"): 0.16, (1, "c2"): 0.1, (1, "c1"): 0.1,
                                       (2, "c2"): 0.64, (2, "c1"): 0.16, (2, "c3"): 0.1, (2, "c4"): 0.1},
}


@pytest.mark.parametrize("exploration", sorted(HAND))
def test_a_learned_policy_logs_the_hand_computed_marginal_propensities(tmp_path, exploration):
    version = write_toy_policy(tmp_path, exploration=exploration, pool_size=4)
    reg = PolicyRegistry(tmp_path, pool_size=40)  # the version's own pool_size (4) wins
    res = reg.reconcile("ranker", production=version)
    assert res.loaded == [version] and not res.failed
    policy = reg.routes("ranker").production
    assert isinstance(policy, LearnedPolicy) and policy.pool_size == 4
    policy.rng = np.random.default_rng(7)
    svc, imps = service(reg)
    answers = recommend(svc, [f"u{i}" for i in range(400)])
    hand, counts = HAND[exploration], {}
    for res, rec in zip(answers, imps.records):
        assert res.policy_version == version and rec.policy_version == version
        imp = rec.to_proto()
        assert imp.exploration == exploration and list(imp.pool_item_ids) == ["c1", "c4", "c2", "c3"]
        for item, (iid, score, pos, prop) in zip(imp.items, res.items):
            assert (item.item_id, item.position) == (iid, pos)
            assert prop == pytest.approx(hand[(pos, iid)], abs=1e-6)
            assert item.propensity == pytest.approx(hand[(pos, iid)], abs=1e-6)  # float32 on the wire
            assert imp.pool_item_ids[item.pool_index] == iid and score == pytest.approx(imp.pool_scores[item.pool_index])
            counts[(pos, iid)] = counts.get((pos, iid), 0) + 1
    for key, p in hand.items():  # and the draws follow them (400 draws: 3.5 standard errors)
        assert counts.get(key, 0) / 400 == pytest.approx(p, abs=3.5 * math.sqrt(p * (1 - p) / 400) + 1e-9), key


def test_policy_canary_splits_users_by_the_ranker_canarys_hash(tmp_path):
    version = write_toy_policy(tmp_path, exploration="greedy", pool_size=4)
    reg = PolicyRegistry(tmp_path)
    reg.reconcile("ranker", canary=version, canary_percent=50.0)
    svc, imps = service(reg)
    users = [f"u{i}" for i in range(60)]
    answers = recommend(svc, users)
    assert 0 < sum(in_canary(u, 50.0) for u in users) < 60
    for u, res, rec in zip(users, answers, imps.records):
        if in_canary(u, 50.0):  # greedy on -score: c3 then c2
            assert (res.policy_version, rec.policy_variant, [i for i, *_ in res.items]) == (version, "canary",
                                                                                             ["c3", "c2"])
        else:
            assert (res.policy_version, rec.policy_variant, [i for i, *_ in res.items]) == ("ranker-order",
                                                                                             "production",
                                                                                             ["c1", "c4"])
    # promoted: everyone gets it; the canary is gone
    reg.reconcile("ranker", production=version)
    r = reg.routes("ranker")
    assert r.production.version == version and r.canary is None


def test_a_version_that_fails_to_load_leaves_the_previous_policy_serving(tmp_path):
    good = write_toy_policy(tmp_path)
    bad = write_toy_policy(tmp_path, tampered=True)
    reg = PolicyRegistry(tmp_path)
    assert reg.reconcile("ranker", production=good).loaded == [good]
    res = reg.reconcile("ranker", production=bad)
    assert "sha256 mismatch" in res.failed[bad] and reg.routes("ranker").production.version == good
    res = reg.reconcile("ranker", production=good, canary="99", canary_percent=10)
    assert "99" in res.failed and reg.routes("ranker").canary is None
    # back to the ranker's order
    reg.reconcile("ranker")
    assert isinstance(reg.routes("ranker").production, RankerOrderPolicy)


def test_a_slow_load_times_out_and_a_newer_reconcile_is_not_undone():
    release = threading.Event()

    def loader(model, version):
        if version == "slow":
            release.wait(10)
        return RankerOrderPolicy()

    reg = PolicyRegistry(loader=loader, load_timeout_s=0.2)
    res = reg.reconcile("ranker", production="slow", ticket=1)
    assert "did not load within 0.2 s" in res.failed["slow"]
    reg.load_timeout_s = 10.0
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("old", reg.reconcile("ranker", production="slow", ticket=2)))
    t.start()
    reg.reconcile("ranker", production="fast", ticket=3)  # newer: applies at once
    release.set()
    t.join(10)
    assert done["old"].superseded and reg.routes("ranker").production is reg.get("ranker", "fast")


def test_a_failing_policy_answers_with_the_ranker_order():
    class Broken:
        version = "7"

        def choose(self, scores, dense, k):
            raise RuntimeError("boom")

    reg = PolicyRegistry(pool_size=4)
    reg.register("ranker", "7", Broken())
    reg.reconcile("ranker", production="7")
    svc, imps = service(reg)
    (res,) = recommend(svc, ["u"])
    assert res.policy_version == "ranker-order" and [i for i, *_ in res.items] == ["c1", "c4"]
    assert imps.records[0].policy_version == "ranker-order"


def test_the_queued_bytes_of_an_impression_include_its_pool():
    svc, imps = service(PolicyRegistry(pool_size=4))
    recommend(svc, ["u"])
    rec = imps.records[0]
    with_pool = rec.approx_bytes()
    rec.pool_item_ids = rec.pool_scores = rec.pool_dense = None
    assert with_pool - rec.approx_bytes() >= 4 * (len(DENSE_FEATURES) + 1) * 4 + 4 * 64


def test_telemetry_counts_the_shown_items_not_every_candidate():
    """The drift summaries (score, feature) count what a response showed: the population of a trained
    version's reference (one training row per shown item), not all scored candidates."""
    from services.inference.telemetry import Telemetry

    tel = Telemetry("i1")
    svc = RankingService(InferenceSettings(policy_pool=4), Features(), Models(), policies=PolicyRegistry(pool_size=4),
                         telemetry=tel)
    (res,) = recommend(svc, ["u"], k=2)
    assert [i for i, *_ in res.items] == ["c1", "c4"]
    by = {(e.name, e.labels.get("feature", "")): e for e in tel.events()}
    score = by[("score", "")]
    assert score.summary.count == 2 and score.value == pytest.approx((0.9 + 0.7) / 2)
    assert all(by[("feature", f)].summary.count == 2 for f in DENSE_FEATURES)
