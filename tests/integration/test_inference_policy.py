"""`python -m services.inference` serving learned re-ranking policies from the model repository,
following a unique control topic: policy commands published on it are loaded and hot-swapped under
concurrent load with no failed request (ranker's order -> a policy -> a policy canary at 50 %);
responses and the impressions on Kafka name the policy that chose the list and carry its pool,
exploration rule and the exact marginal propensities; a policy version that fails to load is acked
FAILED while the previous policy keeps serving."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from bench.toymodel import write_version
from recpilot.featurespec import DENSE_FEATURES
from recpilot.models.deployments.state import in_canary
from recpilot.models.repository import ModelRepository
from recpilot.pb import deployments_pb2 as dpb
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from recpilot.rl.artifact import load_policy
from recpilot.rl.features import policy_inputs
from recpilot.rl.slate import Exploration, marginals
from tests.support.inference import (catalogue, events, publish, publish_policy, read_acks, read_impressions,
                                     server_env, start_server, write_features)
from tests.support.policy import write_toy_policy

POOL = 8


@pytest.fixture
def server(stack, platform_settings, tmp_path, unique):
    root = tmp_path / "models"
    v1 = write_version(root, "ranker", seed=1)
    p_eps = write_toy_policy(root, exploration="epsilon_greedy:0.2", pool_size=POOL)
    p_soft = write_toy_policy(root, exploration="softmax:0.5", pool_size=POOL)
    bad = write_toy_policy(root, tampered=True)
    items = catalogue()
    write_features(platform_settings.redis_url, f"t{unique}:", events(items, int(time.time() * 1000)))
    topic = f"control.test-{unique}"
    publish(platform_settings, topic, "deploy", v1)
    env = server_env(root, topic, unique, RECPILOT_INFERENCE_REPLICA_ID=f"test-{unique}",
                     RECPILOT_INFERENCE_DEFAULT_TIMEOUT_MS="5000", RECPILOT_INFERENCE_REDIS_TIMEOUT_MS="3000")
    log = tmp_path / "inference.log"
    proc = start_server(env, log, 60)
    yield {"proc": proc, "port": proc.grpc_port, "topic": topic, "root": root, "eps": p_eps, "soft": p_soft,
           "bad": bad, "log": log, "replica": f"test-{unique}", "unique": unique,
           "items": [it["item_id"] for it in items]}
    proc.kill9()


def _check_replay(imp, root):
    """The logged pool replayed through the logged policy gives exactly the logged propensities."""
    m = len(imp.pool_item_ids)
    assert len(imp.pool_scores) == m and len(imp.pool_dense) == m * len(DENSE_FEATURES)
    assert list(imp.pool_scores) == sorted(imp.pool_scores, reverse=True)  # the ranker's top M, best first
    dense = np.array(imp.pool_dense, np.float32).reshape(m, len(DENSE_FEATURES))
    scores = np.array(imp.pool_scores, np.float32)
    if imp.policy_version == "ranker-order":
        values, rule = scores.astype(np.float64), Exploration.parse("greedy")
    else:
        pol = load_policy(ModelRepository(root), "ranker", imp.policy_version)
        values, rule = pol.values(policy_inputs(dense, scores)), pol.exploration
    assert imp.exploration == str(rule)
    p = marginals(values, len(imp.items), rule)
    for j, item in enumerate(imp.items):
        assert imp.pool_item_ids[item.pool_index] == item.item_id
        assert item.propensity == pytest.approx(p[j, item.pool_index], abs=1e-6)
        assert item.score == pytest.approx(imp.pool_scores[item.pool_index])


def test_policies_hot_swap_under_load_canary_failed_load_and_impressions(server, platform_settings, wait_until):
    stub = recommend_pb2_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{server['port']}"))
    cands = server["items"]

    def ask(user, k=4):
        return stub.Recommend(recommend_pb2.RecommendRequest(user_id=user, k=k, candidate_ids=cands), timeout=10)

    first = ask("user1")
    assert first.policy_version == "ranker-order" and len(first.items) == 4
    seen, errors, stop = {}, [], threading.Event()

    def client(i):
        while not stop.is_set():
            try:
                r = ask(f"load{i}")
                key = "fallback" if r.fallback else r.policy_version
                seen[key] = seen.get(key, 0) + 1
            except grpc.RpcError as exc:
                errors.append(exc.code().name)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: seen.get("ranker-order", 0) > 0 or errors, 30, lambda: f"no answer; errors {errors}")
        deploy = publish_policy(platform_settings, server["topic"], "deploy", server["eps"])
        wait_until(lambda: ask("probe").policy_version == server["eps"], 30,
                   lambda: "the policy never served\n" + server["log"].read_text()[-3000:], interval=0.2)
        canary = publish_policy(platform_settings, server["topic"], "canary", server["soft"], percent=50.0)
        wait_until(lambda: seen.get(server["soft"], 0) > 0, 30,
                   lambda: f"answers {seen}; no canary\n" + server["log"].read_text()[-3000:])
        bad = publish_policy(platform_settings, server["topic"], "promote", server["bad"])
        wait_until(lambda: "policy load failed; keeping what serves" in server["log"].read_text(), 30,
                   lambda: server["log"].read_text()[-3000:])
        n = sum(seen.values())
        wait_until(lambda: sum(seen.values()) > n + 20, 30, "no answers after the failed load")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == [] and seen.get("fallback", 0) == 0
    assert seen["ranker-order"] > 0 and seen[server["eps"]] > 0 and seen[server["soft"]] > 0
    assert server["bad"] not in seen

    # production stays the epsilon-greedy policy, the canary the softmax one, split by the user hash
    users = [f"c{i}" for i in range(40)]
    got = {u: ask(u) for u in users}
    assert 0 < sum(in_canary(u, 50.0) for u in users) < len(users)
    for u, r in got.items():
        assert r.policy_version == (server["soft"] if in_canary(u, 50.0) else server["eps"]), u

    acks = {a.command_id: a for a in read_acks(platform_settings, server["topic"], f"t-acks-{server['unique']}")
            if a.replica == server["replica"]}
    assert acks[deploy].status == dpb.APPLIED and f"production={server['eps']}" in acks[deploy].message
    assert acks[canary].status == dpb.APPLIED and f"canary={server['soft']}@50%" in acks[canary].message
    assert acks[bad].status == dpb.FAILED and "sha256 mismatch" in acks[bad].message
    assert f"production={server['eps']}" in acks[bad].message

    # the impressions name the policy that chose each list and carry what replays it
    want = {first.request_id: first} | {r.request_id: r for r in got.values()}
    imps = read_impressions(platform_settings, f"impressions.test-{server['unique']}", set(want),
                            f"t-imp-{server['unique']}")
    assert set(imps) == set(want)
    for rid, imp in imps.items():
        r = want[rid]
        assert imp.policy_version == r.policy_version and [i.item_id for i in imp.items] == [i.item_id for i in r.items]
        assert [i.propensity for i in imp.items] == pytest.approx([i.propensity for i in r.items])
        assert imp.policy_variant == ("canary" if r.policy_version == server["soft"] else "production")
        assert len(imp.pool_item_ids) == (40 if r.policy_version == "ranker-order" else POOL)
        _check_replay(imp, server["root"])
    explored = [i.propensity for imp in imps.values() if imp.policy_version != "ranker-order" for i in imp.items]
    assert any(p < 1.0 for p in explored)
