"""The policy lifecycle's gate on the real broker and a real deployment controller: a candidate that
off-policy evaluation says is better than the serving policy is published on the control topic and
becomes the state's policy version; a worse one is written to the repository with the reason it was
held back, and nothing is published."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recpilot.featurespec import DENSE_FEATURES
from recpilot.kafka import admin, delete_topics, ensure_topics, flush_or_raise, producer
from recpilot.models.deployments.controller import DeploymentController
from recpilot.models.deployments.state import DeploymentSettings
from recpilot.models.repository import ModelRepository
from recpilot.pb import deployments_pb2 as pb
from recpilot.pb import events_pb2
from recpilot.rl.artifact import policy_repo_name
from recpilot.topics import TopicSpec
from services.rl_feedback.learning import PolicyLearner
from services.rl_feedback.settings import RlFeedbackSettings

pytestmark = pytest.mark.timeout(180)

D = len(DENSE_FEATURES)
AFF = DENSE_FEATURES.index("user_cat_affinity")
M, K = 8, 3


def click_prob(a: np.ndarray, sign: float) -> np.ndarray:
    """The clicks follow the affinity column (sign +1) or its opposite (-1); the ranker score is noise."""
    return 0.05 + 0.5 * (a if sign > 0 else 1.0 - a)


def decision(rng: np.random.Generator, sign: float = 1.0):
    dense = rng.random((M, D)).astype(np.float32)
    scores = rng.random(M).astype(np.float32)
    shown = rng.permutation(M)[:K]  # uniform logging: every (slot, item) has propensity 1/M
    clicks = rng.random(K) < click_prob(dense[shown, AFF].astype(np.float64), sign)
    return dense, scores, shown, clicks


def rows_for(rng, n: int, sign: float) -> list[dict]:
    out = []
    for i in range(n):
        dense, scores, shown, clicks = decision(rng, sign)
        for j, (a, c) in enumerate(zip(shown, clicks)):
            out.append({"dense": dense[a], "score": float(scores[a]), "position": j + 1, "reward": float(c),
                        "request_id": f"train-{sign}-{i}", "session_id": "", "user_id": f"u{i % 50}",
                        "impression_ts_ms": i})
    return out


@pytest.fixture
def setup(stack, platform_settings, unique, tmp_path):
    p = platform_settings
    names = {"imp": f"test.learn.impressions.{unique}", "rew": f"test.learn.rewards.{unique}",
             "control": f"test.learn.deployments.{unique}"}
    ensure_topics(admin(p), [TopicSpec(names["imp"], 2), TopicSpec(names["rew"], 2)])
    rng = np.random.default_rng(7)
    prod = producer(p)
    now = int(__import__("time").time() * 1000)
    for i in range(600):
        dense, scores, shown, clicks = decision(rng)
        imp = events_pb2.Impression(request_id=f"q{unique}-{i}", user_id=f"u{i % 50}", timestamp_ms=now - 600 + i,
                                    policy_version="ranker-order", exploration="uniform")
        ids = [f"item-{i}-{a}" for a in range(M)]
        imp.pool_item_ids.extend(ids)
        imp.pool_scores.extend(scores.tolist())
        imp.pool_dense.extend(dense.reshape(-1).tolist())
        for j, a in enumerate(shown):
            imp.items.add(item_id=ids[a], position=j + 1, score=float(scores[a]), propensity=1.0 / M, pool_index=int(a))
        prod.produce(names["imp"], key=imp.user_id, value=imp.SerializeToString())
        for j, a in enumerate(shown):
            rw = events_pb2.Reward(request_id=imp.request_id, user_id=imp.user_id, item_id=ids[a], position=j + 1,
                                   propensity=1.0 / M, reward=float(clicks[j]), clicked=bool(clicks[j]))
            prod.produce(names["rew"], key=rw.user_id, value=rw.SerializeToString())
    flush_or_raise(prod)
    repo = ModelRepository(tmp_path / "models")
    ctl = DeploymentController(p, repo, DeploymentSettings(topic=names["control"]), actor="rl_feedback")
    s = RlFeedbackSettings(impressions_topic=names["imp"], rewards_topic=names["rew"], learner_state_dir=tmp_path / "ckpt",
                           gate_min_decisions=100, gate_n_boot=50, gate_tolerance=0.0, learner_every_rewards=10**9)
    yield p, s, repo, ctl
    ctl.close()
    delete_topics(p, [names["imp"], names["rew"], names["control"], names["control"] + ".acks"], timeout=10)


def learner_with(p, s, repo, ctl, sign: float) -> PolicyLearner:
    pl = PolicyLearner(s, p, repository=repo, controller_factory=lambda: ctl)
    pl.restore()
    pl.learner.observe(rows_for(np.random.default_rng(11 if sign > 0 else 12), 800, sign))
    pl.learner.train(600)
    return pl


def test_a_better_policy_is_published_and_a_worse_one_is_held_back_with_its_reason(setup):
    p, s, repo, ctl = setup
    good = learner_with(p, s, repo, ctl, +1.0).judge_and_publish()
    assert good.published, good.reason
    assert good.serving_version == "ranker-order" and good.decisions == 600
    assert good.candidate["lo"] >= good.serving["value"]
    assert ctl.refresh().state("ranker").policy_version == good.version
    meta = json.loads((repo.path(policy_repo_name("ranker"), good.version) / "model.json").read_text())
    assert meta["decision"]["published"] and meta["ope"]["candidate"]["value"] == good.candidate["value"]

    bad = learner_with(p, s, repo, ctl, -1.0).judge_and_publish()
    assert not bad.published and bad.reason.startswith("lower bound below the serving estimate")
    assert bad.serving_version == good.version  # judged against the policy that serves now
    assert bad.candidate["hi"] < bad.serving["value"]
    state = ctl.refresh().state("ranker")
    assert state.policy_version == good.version
    assert [h.version for h in state.history if h.kind == pb.POLICY] == [good.version]  # nothing published for it
    meta = json.loads((repo.path(policy_repo_name("ranker"), bad.version) / "model.json").read_text())
    assert meta["decision"] == {"published": False, "reason": bad.reason, "at_ms": bad.at_ms}
