"""Stratified slates: marginal propensities by hand for a 5-item pool and k=2, sampling frequencies."""

import math

import numpy as np
import pytest

from recpilot.rl import slate
from recpilot.rl.slate import Exploration

# pool values; by value: item 2 (0.9), 4 (0.7), 0 (0.5), 3 (0.3), 1 (0.1)
VALUES = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
# with k=2: slot 1 draws from ranks 1, 3, 5 = items (2, 0, 1); slot 2 from ranks 2, 4 = items (4, 3)


def test_groups_are_the_stratified_ranks():
    g = slate.groups(VALUES, 2)
    assert [list(x) for x in g] == [[2, 0, 1], [4, 3]]


def test_greedy_is_the_top_k():
    p = slate.marginals(VALUES, 2, slate.GREEDY)
    expected = np.zeros((2, 5))
    expected[0, 2] = expected[1, 4] = 1.0
    np.testing.assert_array_equal(p, expected)
    idx, prop = slate.sample(VALUES, 2, slate.GREEDY, np.random.default_rng(0))
    assert list(idx) == [2, 4] and list(prop) == [1.0, 1.0]


def test_epsilon_greedy_marginals_by_hand():
    eps = 0.2
    p = slate.marginals(VALUES, 2, Exploration("epsilon_greedy", epsilon=eps))
    expected = np.zeros((2, 5))
    expected[0, 2] = 1 - eps + eps / 3   # the best of its group of 3
    expected[0, 0] = expected[0, 1] = eps / 3
    expected[1, 4] = 1 - eps + eps / 2   # the best of its group of 2
    expected[1, 3] = eps / 2
    np.testing.assert_allclose(p, expected, atol=1e-12)
    assert expected[0, 2] == pytest.approx(0.866666, abs=1e-6) and expected[1, 3] == pytest.approx(0.1)


def test_softmax_marginals_by_hand():
    t = 0.5
    p = slate.marginals(VALUES, 2, Exploration("softmax", temperature=t))
    e = {i: math.exp(VALUES[i] / t) for i in range(5)}
    z0, z1 = e[2] + e[0] + e[1], e[4] + e[3]
    expected = np.zeros((2, 5))
    for i in (2, 0, 1):
        expected[0, i] = e[i] / z0
    for i in (4, 3):
        expected[1, i] = e[i] / z1
    np.testing.assert_allclose(p, expected, atol=1e-12)
    assert expected[0, 2] == pytest.approx(0.60561, abs=1e-5) and expected[1, 4] == pytest.approx(0.68997, abs=1e-5)


def test_uniform_marginals():
    np.testing.assert_allclose(slate.marginals(VALUES, 2, Exploration("uniform")), np.full((2, 5), 0.2))


def test_uniform_share_marginals_by_hand():
    # epsilon_greedy:0.2 with a uniform share 0.25: (1 - 0.25) * the rule's marginals + 0.25 / 5
    p = slate.marginals(VALUES, 2, Exploration.parse("epsilon_greedy:0.2+uniform:0.25"))
    eps, u = 0.2, 0.25
    expected = np.full((2, 5), u / 5)
    expected[0, 2] += (1 - u) * (1 - eps + eps / 3)
    expected[0, 0] += (1 - u) * eps / 3
    expected[0, 1] += (1 - u) * eps / 3
    expected[1, 4] += (1 - u) * (1 - eps + eps / 2)
    expected[1, 3] += (1 - u) * eps / 2
    np.testing.assert_allclose(p, expected, atol=1e-12)
    # numbers: slot 1's best 0.75 * 0.866667 + 0.05; slot 2 never shows items 2, 0, 1 without the share
    assert p[0, 2] == pytest.approx(0.7, abs=1e-12) and p[1, 2] == pytest.approx(0.05)
    assert (p > 0).all()  # full support: every item in every slot
    # greedy + uniform share: one-hot mixed with 1/M
    g = slate.marginals(VALUES, 2, Exploration.parse("greedy+uniform:0.5"))
    assert g[0, 2] == pytest.approx(0.6) and g[0, 4] == pytest.approx(0.1) and g[1, 4] == pytest.approx(0.6)


@pytest.mark.parametrize("rule", ["epsilon_greedy:0.3", "softmax:0.2", "uniform", "epsilon_greedy:0.1+uniform:0.3",
                                  "greedy+uniform:0.2"])
def test_sampling_frequencies_match_the_marginals(rule):
    ex = Exploration.parse(rule)
    rng = np.random.default_rng(1)
    n = 6_000
    p = slate.marginals(VALUES, 2, ex)
    draws = [slate.sample(VALUES, 2, ex, rng) for _ in range(n)]
    idx = np.stack([d[0] for d in draws])
    prop = np.stack([d[1] for d in draws])
    assert (idx[:, 0] != idx[:, 1]).all()  # never the same item twice
    np.testing.assert_allclose(prop, p[[0, 1], idx])  # the logged propensity is the marginal
    counts = np.zeros((2, 5))
    for j in (0, 1):
        counts[j] = np.bincount(idx[:, j], minlength=5)
    # binomial standard error at n=6000 is at most 0.0065: 4.6 of them
    np.testing.assert_allclose(counts / n, p, atol=0.03)


def test_parse_round_trip_and_bad_rules():
    for text in ("greedy", "uniform", "epsilon_greedy:0.1", "softmax:0.5", "epsilon_greedy:0.1+uniform:0.2",
                 "softmax:0.5+uniform:0.05", "greedy+uniform:1"):
        assert str(Exploration.parse(text)) == text
    assert Exploration.parse("epsilon_greedy:0.1+uniform:0.2") == Exploration("epsilon_greedy", epsilon=0.1, uniform=0.2)
    assert str(Exploration.parse("epsilon_greedy:0.1+uniform:0")) == "epsilon_greedy:0.1"
    for bad in ("epsilon_greedy:0.1+uniform:1.5", "epsilon_greedy:0.1+uniform", "epsilon_greedy:0.1+softmax:1",
                "greedy:3", "softmax:x"):
        with pytest.raises(ValueError):
            Exploration.parse(bad)
    with pytest.raises(ValueError):
        Exploration.parse("epsilon_greedy:2")
    with pytest.raises(ValueError):
        Exploration.parse("thompson")


def test_the_model_repository_accepts_every_logged_form_and_only_those():
    # the repository checks a policy's exploration with a pattern (it does not import recpilot.rl):
    # every str(Exploration) must pass it, malformed ones must not
    from recpilot.models.repository import EXPLORATION_RE

    for ex in (Exploration(), Exploration("uniform"), Exploration("epsilon_greedy", epsilon=0.05),
               Exploration("softmax", temperature=0.5), Exploration("epsilon_greedy", epsilon=0.1, uniform=0.2),
               Exploration("greedy", uniform=1.0), Exploration("softmax", temperature=2.0, uniform=0.05)):
        assert EXPLORATION_RE.fullmatch(str(ex)), str(ex)
    for bad in ("epsilon_greedy:0.1+uniform:2", "epsilon_greedy:0.1+uniform", "greedy+softmax:1", "+uniform:0.1"):
        assert not EXPLORATION_RE.fullmatch(bad), bad
