"""The policy lifecycle's pure parts: the publish gate and the ranker-order target policy."""

from __future__ import annotations

import math

import numpy as np

from recpilot.rl.features import POLICY_FEATURES
from services.rl_feedback.learning import gate, paused_by_monitor, ranker_order_policy


def est(value, lo=None, hi=None):
    return {"value": value, "lo": value if lo is None else lo, "hi": value if hi is None else hi}


def test_a_candidate_whose_lower_bound_clears_the_serving_estimate_is_published():
    ok, reason = gate(est(0.06, 0.052), est(0.05), tolerance=0.0, decisions=500, min_decisions=100)
    assert ok and "not below" in reason and "0.05200" in reason and "500 decisions" in reason


def test_the_tolerance_lets_a_slightly_lower_bound_through_and_no_more():
    assert gate(est(0.05, 0.046), est(0.05), tolerance=0.005, decisions=500, min_decisions=100)[0]
    ok, reason = gate(est(0.05, 0.044), est(0.05), tolerance=0.005, decisions=500, min_decisions=100)
    assert not ok and reason.startswith("lower bound below the serving estimate minus the tolerance")


def test_a_worse_candidate_is_held_back_and_says_why():
    ok, reason = gate(est(0.03, 0.02, 0.04), est(0.05), tolerance=0.005, decisions=800, min_decisions=100)
    assert not ok and "candidate 0.03000 [0.02000, 0.04000] vs serving 0.05000" in reason


def test_too_few_decisions_or_no_finite_estimate_hold_back():
    ok, reason = gate(est(0.9, 0.8), est(0.1), tolerance=0.0, decisions=20, min_decisions=100)
    assert not ok and "too few logged decisions" in reason
    ok, reason = gate(est(math.nan), est(0.1), tolerance=0.0, decisions=500, min_decisions=100)
    assert not ok and "no finite estimate" in reason


def test_ranker_order_is_greedy_on_the_ranker_score_column():
    x = np.zeros((5, len(POLICY_FEATURES)), dtype=np.float32)
    x[:, POLICY_FEATURES.index("ranker_score")] = [0.1, 0.5, 0.3, 0.9, 0.2]
    p = ranker_order_policy().marginals(x, 3)
    assert p.shape == (3, 5)
    assert [int(np.argmax(r)) for r in p] == [3, 1, 2] and np.all(p.max(axis=1) == 1.0)


def test_the_learner_sees_a_pause_by_the_monitor_until_a_policy_is_resumed():
    from recpilot.models.deployments import new_command
    from recpilot.pb import deployments_pb2 as pb
    from recpilot.rl.artifact import DEFAULT_VERSION

    def state(*cmds):
        st = pb.DeploymentState(model_name="ranker")
        for action, version, actor in cmds:
            st.history.add().CopyFrom(new_command(action, "ranker", version, actor=actor, reason=f"{actor} did it",
                                                  kind=pb.POLICY))
        return st

    assert paused_by_monitor(state()) is None
    assert paused_by_monitor(state(("promote", "3", "rl_feedback"))) is None
    paused = state(("promote", "3", "rl_feedback"), ("promote", DEFAULT_VERSION, "monitor"))
    assert paused_by_monitor(paused) == "monitor did it"
    # an operator serving the ranker's order is not a pause; a resume (rollback by anyone) ends it
    assert paused_by_monitor(state(("promote", DEFAULT_VERSION, "alice@host"))) is None
    resumed = state(("promote", "3", "rl_feedback"), ("promote", DEFAULT_VERSION, "monitor"), ("rollback", "", "alice"))
    assert paused_by_monitor(resumed) is None
    # a ranker command after the pause does not end it
    st = state(("promote", "3", "rl_feedback"), ("promote", DEFAULT_VERSION, "monitor"))
    st.history.add().CopyFrom(new_command("promote", "ranker", "7", actor="alice"))
    assert paused_by_monitor(st) == "monitor did it"
