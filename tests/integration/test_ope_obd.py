"""Off-policy evaluation on the real Open Bandit sample (``RECPILOT_TRAIN_OBD_DIR``, by default
``../shared/data/obd`` beside the checkout): data from outside the checkout, so not a unit test;
skipped where it is absent."""

from __future__ import annotations

import numpy as np
import pytest

from recpilot.models import data as D
from recpilot.rl.logged import ValuePolicy
from recpilot.rl.logs import from_obd
from recpilot.rl.ope import evaluate, fit_reward_model
from recpilot.rl.slate import Exploration

OBD = D.TrainSettings().obd_dir
pytestmark = pytest.mark.skipif(not (OBD / "random" / "all.csv").exists(), reason="OBD sample not present")


@pytest.fixture(scope="module")
def obd():
    return from_obd(OBD, "random"), from_obd(OBD, "bts")


def test_real_sample_reads_as_one_slot_decisions(obd):
    random, bts = obd
    assert random.n == bts.n == 10_000 and random.k == 3 and random.x.shape[1] == 80
    assert random.meta["clicks"] == 38 and bts.meta["clicks"] == 42  # the sample's README
    assert random.features == bts.features  # a model fitted on one folder reads the other
    assert ((random.shown >= 0).sum(axis=1) == 1).all()
    np.testing.assert_allclose(random.propensity[random.shown >= 0], 1 / 80)
    assert 0 < bts.propensity[bts.shown >= 0].min() < bts.propensity[bts.shown >= 0].max() <= 1


def test_uniform_on_random_logs_is_the_logged_ctr_and_a_learned_policy_is_reported_with_intervals(obd):
    random, bts = obd
    uniform = evaluate(random, ValuePolicy(lambda x: np.zeros(len(x)), Exploration("uniform")), n_boot=100)
    assert uniform.estimates["ips"].value == pytest.approx(38 / 10_000)
    assert uniform.ess == pytest.approx(10_000)
    model = fit_reward_model(bts)
    for ex in ("greedy", "epsilon_greedy:0.1"):
        rep = evaluate(random, ValuePolicy(model.values, Exploration.parse(ex)), n_boot=100)
        for e in rep.estimates.values():
            assert e.lo <= e.value <= e.hi
        # a greedy target agrees with a uniform logger on about 1 row in 80: the weights are 80 there
        assert rep.ess < 0.05 * random.n
        assert rep.estimates["ips"].hi - rep.estimates["ips"].lo > uniform.estimates["ips"].hi - uniform.estimates["ips"].lo
