"""Off-policy estimators (recpilot.rl.ope): hand-computed values on a tiny log, unbiasedness and
interval coverage on a synthetic bandit whose click probabilities are known, errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from bench import ope as bench_ope
from recpilot.errors import FailedPrecondition, InvalidArgument
from recpilot.rl import slate
from recpilot.rl.logged import LoggedSlates, ValuePolicy
from recpilot.rl.ope import RewardModel, evaluate, fit_reward_model

# --- a tiny log, every figure worked out by hand ------------------------------------------------
# 3 decisions, pools of 3 items (x = the item's index), 2 slots.
#   d0 shows items (0, 2) with logging propensities (0.5, 0.25), rewards (1, 0)
#   d1 shows items (1, 0) with propensities (0.25, 0.5), rewards (0, 1)
#   d2 shows item 2 in slot 1 only (slot 2 empty), propensity 0.25, reward 1
# The target shows, in every decision, slot 1: items (0,1,2) w.p. (0.5, 0.25, 0.25),
#                                         slot 2: items (0,1,2) w.p. (0.2, 0.2, 0.6).
# The fixed reward model qhat[item, slot] = [[0.4, 0.2], [0.1, 0.1], [0.3, 0.5]].
P_T = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
QHAT = np.array([[0.4, 0.2], [0.1, 0.1], [0.3, 0.5]])


class FixedTarget:
    name = "fixed"

    def __init__(self, p=P_T):
        self.p = p

    def marginals(self, x, k):
        return self.p[:k]


class TableModel:
    def predict(self, x, k):
        return QHAT[x[:, 0].astype(int), :k]


def tiny_log() -> LoggedSlates:
    x = np.tile(np.arange(3, dtype=np.float32).reshape(1, 3, 1), (3, 1, 1))
    return LoggedSlates(x=x, mask=np.ones((3, 3), bool), shown=np.array([[0, 2], [1, 0], [2, -1]]),
                        propensity=np.array([[0.5, 0.25], [0.25, 0.5], [0.25, 0.0]]),
                        reward=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), features=["item"], source="tiny")


def test_every_estimator_matches_the_hand_computed_value():
    # weights w = P_target[slot, item] / propensity:
    #   d0: 0.5/0.5 = 1,   0.6/0.25 = 2.4      d1: 0.25/0.25 = 1,   0.2/0.5 = 0.4      d2: 0.25/0.25 = 1
    # IPS per decision (sum w r / logged slots): d0 (1*1 + 2.4*0)/2 = 0.5, d1 (0 + 0.4*1)/2 = 0.2, d2 1*1/1 = 1
    ips = (0.5 + 0.2 + 1.0) / 3
    # SNIPS: slot 1 (1+0+1)/(1+1+1) = 2/3, slot 2 (0+0.4)/(2.4+0.4) = 1/7;
    # slot shares: d0 and d1 give 1/2 to each slot, d2 all to slot 1 -> (2, 1)/3
    snips = 2 / 3 * 2 / 3 + 1 / 3 * 1 / 7
    # DM: slot 1: 0.5*0.4 + 0.25*0.1 + 0.25*0.3 = 0.3; slot 2: 0.2*0.2 + 0.2*0.1 + 0.6*0.5 = 0.36
    #   d0, d1: (0.3 + 0.36)/2 = 0.33; d2 (slot 1 only): 0.3
    dm = (0.33 + 0.33 + 0.3) / 3
    # DR = DM + sum w (r - qhat(logged item, slot)) / slots:
    #   d0: 0.33 + (1*(1-0.4) + 2.4*(0-0.5))/2 = 0.33 - 0.3 = 0.03
    #   d1: 0.33 + (1*(0-0.1) + 0.4*(1-0.2))/2 = 0.33 + 0.11 = 0.44
    #   d2: 0.3 + 1*(1-0.3) = 1.0
    dr = (0.03 + 0.44 + 1.0) / 3
    rep = evaluate(tiny_log(), FixedTarget(), reward_model=TableModel(), n_boot=300)
    est = rep.estimates
    assert est["ips"].value == pytest.approx(ips)
    assert est["snips"].value == pytest.approx(snips)
    assert est["dm"].value == pytest.approx(dm)
    assert est["dr"].value == pytest.approx(dr)
    # ESS = (sum w)^2 / sum w^2: all (1+2.4+1+0.4+1)^2 / (1+5.76+1+0.16+1); slot 1 three 1s -> 3;
    # slot 2 (2.4+0.4)^2 / (5.76+0.16)
    assert rep.ess == pytest.approx(5.8 ** 2 / 8.92)
    assert rep.ess_per_slot == pytest.approx([3.0, 2.8 ** 2 / 5.92])
    assert est["ips"].ess == pytest.approx(rep.ess) and est["dm"].ess is None
    # target probability of each logged (slot, item): 0.5, 0.6, 0.25, 0.2, 0.25
    assert rep.match_rate == pytest.approx(1.8 / 5)
    assert rep.logged_value == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert (rep.decisions, rep.slots, rep.k) == (3, 5, 2)
    for e in est.values():
        assert e.lo <= e.value <= e.hi


def test_clipping_caps_the_weights():
    # clip 2: d0's slot-2 weight 2.4 -> 2, so d0's DR term is 0.33 + (0.6 + 2*(-0.5))/2 = 0.13
    rep = evaluate(tiny_log(), FixedTarget(), reward_model=TableModel(), clip=2.0, n_boot=10)
    assert rep.estimates["dr"].value == pytest.approx((0.13 + 0.44 + 1.0) / 3)
    assert rep.estimates["ips"].value == pytest.approx((0.5 + 0.2 + 1.0) / 3)  # r = 0 where it binds
    assert rep.ess == pytest.approx(5.4 ** 2 / (1 + 4 + 1 + 0.16 + 1))


def test_k_evaluates_the_first_slots_only():
    # k=1: IPS over slot 1: d0 1*1, d1 1*0, d2 1*1
    rep = evaluate(tiny_log(), FixedTarget(), k=1, estimators=("ips",), n_boot=10)
    assert rep.estimates["ips"].value == pytest.approx(2 / 3)
    assert list(rep.estimates) == ["ips"]


def test_the_bootstrap_resamples_decisions():
    # IPS per-decision terms are 0.5, 0.2, 1: every resample's mean lies between 0.2 and 1, and
    # with 2000 resamples the 95% interval reaches close to both
    rep = evaluate(tiny_log(), FixedTarget(), estimators=("ips",), n_boot=2000, seed=3)
    e = rep.estimates["ips"]
    assert 0.2 <= e.lo < 0.35 and 0.8 < e.hi <= 1.0
    narrow = evaluate(tiny_log(), FixedTarget(), estimators=("ips",), n_boot=2000, seed=3, level=0.5).estimates["ips"]
    assert e.lo < narrow.lo < narrow.hi < e.hi


def test_report_serializes_and_prints():
    rep = evaluate(tiny_log(), FixedTarget(), reward_model=TableModel(), n_boot=20)
    d = rep.to_dict()
    assert d["estimates"]["ips"]["value"] == pytest.approx(rep.estimates["ips"].value)
    assert set(d["estimates"]) == {"ips", "snips", "dm", "dr"} and d["target"] == "fixed"
    text = rep.table()
    assert "snips" in text and "ESS per slot" in text and "tiny" in text


# --- errors ---------------------------------------------------------------------------------------

def test_zero_or_negative_propensities_are_refused():
    for bad in (0.0, -0.1, 1.5, np.nan):
        logs = tiny_log()
        logs.propensity[1, 1] = bad
        with pytest.raises(InvalidArgument, match="propensit"):
            evaluate(logs, FixedTarget(), n_boot=5)


def test_a_target_whose_rows_do_not_sum_to_one_is_refused():
    with pytest.raises(InvalidArgument, match="sum to 1"):
        evaluate(tiny_log(), FixedTarget(np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.5]])), n_boot=5)
    with pytest.raises(InvalidArgument, match="shape"):
        evaluate(tiny_log(), FixedTarget(np.array([[1.0, 0.0]])), n_boot=5)


def test_empty_logs_and_bad_settings_are_refused():
    empty = LoggedSlates(np.zeros((0, 3, 1), np.float32), np.zeros((0, 3), bool), np.zeros((0, 2), np.int64),
                         np.zeros((0, 2)), np.zeros((0, 2)), ["item"])
    with pytest.raises(FailedPrecondition, match="no decisions"):
        evaluate(empty, FixedTarget())
    nothing_shown = tiny_log()
    nothing_shown.shown[:] = -1
    with pytest.raises(FailedPrecondition, match="show no item"):
        evaluate(nothing_shown, FixedTarget())
    for kwargs, match in (({"k": 3}, "k must be"), ({"estimators": ("ipw",)}, "unknown estimators"),
                          ({"level": 1.0}, "level"), ({"n_boot": 0}, "n_boot"), ({"clip": 0.0}, "clip")):
        with pytest.raises(InvalidArgument, match=match):
            evaluate(tiny_log(), FixedTarget(), **kwargs)


# --- the reward model -----------------------------------------------------------------------------

def test_reward_model_recovers_a_logistic_truth():
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=(n, 2))
    slot = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.5 * x[:, 1] - 1.0 - 0.7 * slot)))
    y = (rng.random(n) < p).astype(float)
    m = RewardModel(l2=1e-3).fit(x, slot, y, 2)
    grid = rng.normal(size=(200, 2))
    want = 1 / (1 + np.exp(-(1.5 * grid[:, 0] - 0.5 * grid[:, 1] - 1.0 - 0.7 * np.arange(2)[:, None]))).T
    assert np.abs(m.predict(grid, 2) - want).max() < 0.05
    assert np.all(np.diff(m.values(np.array([[-1.0, 0], [0, 0], [1, 0]]))) > 0)


def test_weighted_rewards_are_modelled_on_their_scale():
    x = np.zeros((4, 1))
    m = RewardModel(l2=1e-6).fit(x, np.zeros(4, int), np.array([0.0, 5.0, 5.0, 0.0]), 1)
    assert m.predict(np.zeros((1, 1)), 1)[0, 0] == pytest.approx(2.5, abs=1e-3)


# --- unbiasedness on a synthetic bandit with known click probabilities (bench/ope.py) ---------------

M, K = 8, 3


def bandit_logs(seed, n, logger, k=K):
    return bench_ope.bandit_logs(seed, n, logger, k, M)


TARGET = bench_ope.bandit_target("epsilon_greedy:0.2")


@pytest.mark.parametrize("logger,k", [(slate.Exploration("uniform"), K), (slate.Exploration.parse("softmax:1"), 1)])
def test_estimators_are_unbiased_and_intervals_cover(logger, k):
    seeds, n = 40, 300
    est = {e: [] for e in ("ips", "snips", "dm", "dr")}
    covered = {"ips": 0, "dr": 0}
    truths = []
    for seed in range(seeds):
        logs, truth = bandit_logs(seed, n, logger, k)
        v = bench_ope.true_value(logs, truth, TARGET, k)
        truths.append(v)
        rep = evaluate(logs, TARGET, n_boot=200, seed=seed)
        for e in est:
            est[e].append(rep.estimates[e].value - v)
        for e in covered:
            covered[e] += rep.estimates[e].lo <= v <= rep.estimates[e].hi
    logged = np.mean(truths)
    # the target is much better than the logs: the estimators must see it
    assert logged > 0.1
    for e in ("ips", "dr"):
        err = np.asarray(est[e])
        # unbiased: the mean error over 40 seeds is within 3 standard errors of 0 and small in itself
        assert abs(err.mean()) < max(3 * err.std() / np.sqrt(seeds), 1e-3), (e, err.mean(), err.std())
        assert abs(err.mean()) < 0.05 * logged, (e, err.mean())
        assert covered[e] >= 0.8 * seeds, (e, covered[e])
    # DR is never worse than IPS by much (a useful reward model lowers the variance)
    assert np.std(est["dr"]) < 1.1 * np.std(est["ips"])
    # SNIPS and DM have small biases but are close
    for e in ("snips", "dm"):
        assert abs(np.mean(est[e])) < 0.1 * logged, (e, np.mean(est[e]))


def test_the_logging_policy_evaluates_to_its_own_average():
    """Evaluated as the target, the logging policy has weights 1: IPS is the logged average, ESS the slot count."""
    logs, _ = bandit_logs(1, 200, slate.Exploration("uniform"))
    uniform = ValuePolicy(lambda x: np.zeros(len(x)), slate.Exploration("uniform"))
    rep = evaluate(logs, uniform, estimators=("ips", "snips"), n_boot=50)
    assert rep.estimates["ips"].value == pytest.approx(rep.logged_value)
    assert rep.estimates["snips"].value == pytest.approx(rep.logged_value)
    assert rep.ess == pytest.approx(200 * K)
    assert rep.match_rate == pytest.approx(1 / M)


def test_reward_model_is_cross_fitted():
    """A decision is never scored by a model that saw it. Three one-slot decisions with one item and
    nothing to tell them apart, rewards (1, 0, 0): the reward model can only learn a base rate. The
    two folds are one decision and two. If the rewarded decision is alone, it is scored by the rate
    of (0, 0) = 0 and the other two by the rate of (1) = 1: DM = 2/3. If a 0 is alone, it is scored
    by the rate of (1, 0) = 1/2 and the other two by 0: DM = 1/6. A model that saw every decision
    would say 1/3."""
    n = 3
    logs = LoggedSlates(np.zeros((n, 1, 1), np.float32), np.ones((n, 1), bool), np.zeros((n, 1), np.int64),
                        np.ones((n, 1)), np.array([[1.0], [0.0], [0.0]]), ["c"])
    only = ValuePolicy(lambda x: np.zeros(len(x)), slate.GREEDY)
    seen = evaluate(logs, only, estimators=("dm",), n_boot=10, reward_model=fit_reward_model(logs, l2=1e-6))
    assert seen.estimates["dm"].value == pytest.approx(1 / 3, abs=1e-4)
    outcomes = set()
    for seed in range(12):
        rep = evaluate(logs, only, estimators=("dm", "dr"), n_boot=10, l2=1e-6, seed=seed)
        dm = rep.estimates["dm"].value
        assert dm == pytest.approx(2 / 3, abs=1e-4) or dm == pytest.approx(1 / 6, abs=1e-4), dm
        outcomes.add(round(dm, 3))
        # DR corrects to the logged average (the target is the logging policy)
        assert rep.estimates["dr"].value == pytest.approx(1 / 3, abs=1e-4)
    assert outcomes == {round(2 / 3, 3), round(1 / 6, 3)}
    assert "cross-fitted" in rep.reward_model


# --- bootstrap replicates that refit the reward model ---------------------------------------------

def test_weighted_fit_is_the_fit_on_repeated_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 2))
    slot = rng.integers(0, 2, 40)
    y = (rng.random(40) < 0.4).astype(float)
    w = rng.integers(0, 4, 40)
    rep = np.repeat(np.arange(40), w)
    a = RewardModel(l2=0.5).fit(x, slot, y, 2, weight=w)
    b = RewardModel(l2=0.5).fit(x[rep], slot[rep], y[rep], 2)
    np.testing.assert_allclose(a.predict(x, 2), b.predict(x, 2), atol=1e-9)
    # started from another fit, its scaling is kept (the penalty acts on the scaled inputs, so compare
    # with a vanishing penalty) and Newton converges to the same predictions
    start = RewardModel(l2=1e-6).fit(x, slot, y, 2)
    c = RewardModel(l2=1e-6, iterations=25).fit(x, slot, y, 2, weight=w, start=start)
    assert c.mean is start.mean and c.scale is start.scale
    np.testing.assert_allclose(c.predict(x, 2), RewardModel(l2=1e-6).fit(x, slot, y, 2, weight=w).predict(x, 2), atol=1e-5)
    np.testing.assert_allclose(c.predict_pools(x.reshape(4, 10, 2), 2), c.predict(x, 2).reshape(4, 10, 2), atol=1e-12)


def test_a_refit_replicate_of_the_unresampled_logs_is_the_point_estimate(monkeypatch):
    """Every resample = the logs themselves (counts all 1): refitting each fold's model on its own
    data gives back the point estimate's model, so every DM and DR replicate equals the estimate.
    Any misalignment of decisions, folds, slots or pool rows in the refit path breaks the equality."""
    from recpilot.rl import ope

    logs, _ = bandit_logs(5, 120, slate.Exploration("uniform"))
    monkeypatch.setattr(ope, "_bootstrap_counts", lambda n, n_boot, rng: np.ones((n_boot, n)))
    rep = evaluate(logs, TARGET, n_boot=3, seed=2, refit=True, refit_iterations=30)
    for e in ("dm", "dr"):
        est = rep.estimates[e]
        assert est.lo == pytest.approx(est.value, abs=1e-7) and est.hi == pytest.approx(est.value, abs=1e-7), e
    assert "refit" in rep.reward_model


def test_refit_intervals_carry_the_reward_models_uncertainty():
    """Few decisions: the model is unsure. Resampling around a fixed model understates DM's spread;
    refitting on every resample widens it, the point estimates stay the same."""
    widths = {False: [], True: []}
    for seed in range(4):
        logs, _ = bandit_logs(20 + seed, 80, slate.Exploration("uniform"))
        for refit in (False, True):
            rep = evaluate(logs, TARGET, n_boot=100, seed=seed, refit=refit)
            widths[refit].append(rep.estimates["dm"].hi - rep.estimates["dm"].lo)
            if refit:
                assert rep.estimates["dm"].value == pytest.approx(fixed.estimates["dm"].value)
                assert rep.estimates["dr"].value == pytest.approx(fixed.estimates["dr"].value)
                assert rep.estimates["ips"].lo == pytest.approx(fixed.estimates["ips"].lo)  # IPS does not change
            fixed = rep
    assert np.mean(widths[True]) > 1.3 * np.mean(widths[False]), widths


def test_a_logger_with_a_uniform_share_is_evaluated_on_every_slot():
    """bench ope --part coverage: a stratified logger is evaluated on one slot (where it has support),
    one with a uniform share on all three, and IPS stays unbiased there (full support)."""
    assert bench_ope.coverage(1, 50, "epsilon_greedy:0.1", "epsilon_greedy:0.2", 20, 0.95)["k"] == 1
    mixed = "epsilon_greedy:0.1+uniform:0.5"
    assert bench_ope.coverage(1, 50, mixed, "epsilon_greedy:0.2", 20, 0.95)["k"] == K
    err = []
    for seed in range(30):
        logs, truth = bandit_logs(100 + seed, 300, slate.Exploration.parse(mixed))
        assert (logs.propensity >= 0.5 / M - 1e-12).all()  # every logged slot carries at least the share's U/M
        v = bench_ope.true_value(logs, truth, TARGET, K)
        err.append(evaluate(logs, TARGET, estimators=("ips",), n_boot=10, seed=seed).estimates["ips"].value - v)
    err = np.asarray(err)
    assert abs(err.mean()) < 3 * err.std() / np.sqrt(len(err)), (err.mean(), err.std())
