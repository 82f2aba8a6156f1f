"""The simulator's ground truth and the in-process shop: click probabilities by the click model's
formula, a policy's exact value on logged contexts, traffic that does not depend on the policy."""

import numpy as np
import pytest

from recpilot.rl import slate
from recpilot.rl.fastshop import FastConfig, FastShop
from recpilot.rl.logged import ValuePolicy
from recpilot.rl.slate import Exploration
from recpilot.simulator import ShopSimulator
from recpilot.simulator.truth import Truth, policy_value

SMALL = dict(n_users=300, n_items=200, concurrent_sessions=20, warmup_events=1500, num_candidates=60, pool_size=12, k=4)


def test_slot_probabilities_follow_the_click_model():
    sim = ShopSimulator(seed=3, n_users=100, n_items=50, run_id="t")
    truth = Truth(sim)
    user = sim.population.user(7)
    ids = [it.item_id for it in sim.items[:4]]
    cm = sim.click_model
    hand = []
    for pos, it in enumerate(sim.items[:4], start=1):
        attract = cm.attractiveness(user, it)
        hand.append(attract / pos ** cm.position_bias)
    np.testing.assert_allclose(truth.slot_click_probabilities(user.user_id, ids), hand)
    lst = truth.list_click_probability(user, ids)
    assert lst["expected_clicks"] == pytest.approx(sum(hand))
    assert lst["p_any_click"] == pytest.approx(1 - np.prod([1 - h for h in hand]))
    # a policy that always shows this list in this order (one-hot marginals) has the list's CTR
    p = np.eye(4)
    assert truth.slate_value(p, truth.attractiveness(user, ids)) == pytest.approx(sum(hand) / 4)
    # the uniform policy over the 4 items: every slot's examine times the mean attractiveness
    a = truth.attractiveness(user, ids)
    exam = np.array([1 / j for j in range(1, 5)])
    assert truth.slate_value(np.full((4, 4), 0.25), a) == pytest.approx(exam.sum() * a.mean() / 4)


def _run(shop, values_of, ex, n, seed=0):
    rng = np.random.default_rng(seed)
    users = []
    for _ in range(n):
        ctx = shop.next_context()
        users.append(ctx.user_id)
        idx, prop = slate.sample(values_of(ctx), shop.cfg.k, ex, rng)
        shop.show(ctx, idx, prop)
    return users


def test_traffic_does_not_depend_on_the_policy_and_logs_carry_the_truth():
    a = FastShop(FastConfig(seed=5, **SMALL), log=True)
    b = FastShop(FastConfig(seed=5, **SMALL))
    ua = _run(a, lambda c: np.zeros(len(c.x)), Exploration("uniform"), 60)
    ub = _run(b, lambda c: c.popularity, slate.GREEDY, 60)
    assert ua == ub  # the same shoppers ask, whatever was shown to them
    logs = a.logged()
    assert logs.n == 60 and logs.k == 4 and logs.x.shape[2] == len(logs.features)
    assert np.allclose(logs.propensity, 1 / 12)
    # the exact value of a target policy on these contexts, against a direct computation
    target = ValuePolicy(lambda x: x[:, -1] + x[:, 9], Exploration("epsilon_greedy", epsilon=0.3))
    got = policy_value(logs, target)
    direct = []
    for i in range(logs.n):
        att = a.truth.attractiveness(logs.meta["users"][i], logs.meta["pool_item_ids"][i], logs.meta["elapsed_s"][i])
        p = target.marginals(logs.pool(i), 4)
        direct.append(sum(p[j, m] * att[m] / (j + 1) for j in range(4) for m in range(p.shape[1])) / 4)
    assert got["value"] == pytest.approx(np.mean(direct))
    # the shown clicks are draws of those probabilities: realised CTR near the logging policy's true value
    uni = policy_value(logs, ValuePolicy(lambda x: np.zeros(len(x)), Exploration("uniform")))["value"]
    assert 0 < uni < 0.2
