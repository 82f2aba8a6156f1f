"""QLearner: the discounted target as documented, checkpoints that resume bit for bit, the exported
module loaded as a policy version, and the propensities its slates log (tiny nets, a few updates)."""

import math

import numpy as np
import pytest
import torch

from recpilot.featurespec import DENSE_FEATURES
from recpilot.models.repository import ModelRepository
from recpilot.rl import slate
from recpilot.rl.artifact import load_policy, write_policy_version
from recpilot.rl.features import POLICY_FEATURES, policy_inputs
from recpilot.rl.qlearn import QConfig, QLearner
from recpilot.rl.slate import Exploration

D = len(DENSE_FEATURES)


def rows(rng, n, request="r", session="s", ts=0, per_request=5):
    out = []
    for i in range(n):
        out.append({"dense": rng.random(D).astype(np.float32), "score": float(rng.random()), "position": i % per_request + 1,
                    "reward": float(rng.random() < 0.3), "request_id": f"{request}{i // per_request}",
                    "session_id": f"{session}{i // 50}", "user_id": "u", "impression_ts_ms": ts + 1000 * (i // per_request)})
    return out


def x_of(row):
    return policy_inputs(np.asarray(row["dense"]).reshape(1, D), np.array([row["score"]]))[0]


def test_gamma_target_is_reward_plus_discounted_max_over_the_next_impressions_shown_items():
    q = QLearner(QConfig(gamma=0.5, loss="huber", hidden=(8,), min_replay=1, session_gap_ms=10_000,
                         replay_capacity=100))
    rng = np.random.default_rng(0)
    mk = lambda req, pos, r, ts: {"dense": rng.random(D).astype(np.float32), "score": float(rng.random()),  # noqa: E731
                                  "position": pos, "reward": r, "request_id": req, "session_id": "s1",
                                  "user_id": "u1", "impression_ts_ms": ts}
    a = [mk("A", 1, 1.0, 1000), mk("A", 2, 0.0, 1000)]
    b = [mk("B", 1, 0.0, 2000), mk("B", 2, 1.0, 2000), mk("B", 3, 0.0, 2000)]
    q.observe(a)
    assert not q.ready[:2].any()  # waiting for the session's next impression
    q.observe(b)
    assert q.ready[:2].all() and not q.ready[2:5].any()
    with torch.no_grad():
        qb = q.target(torch.from_numpy(np.stack([x_of(r) for r in b]))).numpy()
    y = q._targets(np.array([0, 1])).numpy()
    np.testing.assert_allclose(y, [1.0 + 0.5 * qb.max(), 0.0 + 0.5 * qb.max()], rtol=1e-6)
    # a late row of A (its successor B is known) and then the session closing (B is terminal: y = r)
    q.observe([mk("A", 3, 1.0, 1000)])
    np.testing.assert_allclose(q._targets(np.array([5])).numpy(), [1.0 + 0.5 * qb.max()], rtol=1e-6)
    q.observe([{**mk("C", 1, 0.0, 50_000), "session_id": "s2"}])
    assert q.ready[2:5].all()
    np.testing.assert_allclose(q._targets(np.array([2, 3, 4])).numpy(), [0.0, 1.0, 0.0])


def test_gamma_needs_huber():
    with pytest.raises(ValueError):
        QConfig(gamma=0.9, loss="bce")


def _params(learner):
    return [p.detach().clone() for p in learner.net.parameters()]


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    cfg = QConfig(hidden=(16, 8), batch_size=32, min_replay=50, replay_capacity=1000, target_sync=3)
    rng = np.random.default_rng(1)
    first, more = rows(rng, 400), rows(rng, 100, request="t", ts=10_000_000)
    a = QLearner(cfg)
    a.observe(first)
    a.train(5)
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    b = QLearner(cfg)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    assert b.stats() == a.stats() or math.isnan(a.stats()["last_loss"])
    for learner in (a, b):
        learner.observe(more)
        learner.train(4)
    for pa, pb in zip(_params(a), _params(b)):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a.target.parameters(), b.target.parameters()):
        assert torch.equal(pa, pb)
    # and the same updates from a fresh learner (no checkpoint) differ: the test can fail
    c = QLearner(cfg)
    c.observe(more)
    c.train(4)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(_params(a), _params(c)))


def test_export_loads_as_a_policy_version_with_the_same_values(tmp_path):
    q = QLearner(QConfig(hidden=(16,), min_replay=20, batch_size=16))
    q.observe(rows(np.random.default_rng(2), 100))
    q.train(3)
    repo = ModelRepository(tmp_path)
    ex = Exploration.parse("epsilon_greedy:0.1")
    version = write_policy_version(repo, "ranker", q.export_module(), list(POLICY_FEATURES), ex, pool_size=40,
                                   gamma=0.0, training={"updates": q.updates})
    loaded = load_policy(repo, "ranker", version)
    x = np.random.default_rng(3).random((40, len(POLICY_FEATURES))).astype(np.float32)
    np.testing.assert_allclose(loaded.values(x), q.values(x), rtol=1e-6, atol=1e-7)
    assert loaded.exploration == ex and loaded.version == version


@pytest.mark.parametrize("rule", ["epsilon_greedy:0.2", "softmax:0.05"])
def test_logged_propensities_equal_hand_computed_ones(rule):
    q = QLearner(QConfig(hidden=(8,)))
    x = np.random.default_rng(4).random((5, len(POLICY_FEATURES))).astype(np.float32)
    v = q.values(x)
    ex = Exploration.parse(rule)
    order = sorted(range(5), key=lambda i: (-v[i], i))
    g = [order[0::2], order[1::2]]  # k = 2: ranks 1,3,5 and 2,4
    hand = np.zeros((2, 5))
    for j in (0, 1):
        if ex.rule == "epsilon_greedy":
            for i in g[j]:
                hand[j, i] = ex.epsilon / len(g[j]) + (1 - ex.epsilon if i == g[j][0] else 0.0)
        else:
            w = [math.exp((v[i] - max(v[t] for t in g[j])) / ex.temperature) for i in g[j]]
            for i, wi in zip(g[j], w):
                hand[j, i] = wi / sum(w)
    for seed in range(20):
        idx, prop = slate.sample(v, 2, ex, np.random.default_rng(seed))
        np.testing.assert_allclose(prop, hand[[0, 1], idx], rtol=1e-9)


def test_exploration_schedule():
    q = QLearner(QConfig(explore="epsilon_greedy:0.05", explore_start=0.25, explore_decay=100))
    assert q.exploration(0).epsilon == pytest.approx(0.25)
    assert q.exploration(50).epsilon == pytest.approx(0.15)
    assert q.exploration(1000).epsilon == pytest.approx(0.05)
    soft = QLearner(QConfig(explore="softmax:0.01", explore_start=0.1, explore_decay=10))
    assert soft.exploration(5) == Exploration("softmax", temperature=0.055)
    # the schedule decays the rule's own parameter and keeps its uniform share (full support)
    mixed = QLearner(QConfig(explore="epsilon_greedy:0.05+uniform:0.2", explore_start=0.25, explore_decay=100))
    assert mixed.exploration(50) == Exploration("epsilon_greedy", epsilon=0.15, uniform=0.2)
