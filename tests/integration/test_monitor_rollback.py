"""A CTR collapse on a newly promoted version, end to end on the real broker: the monitor (a real
process) sees the new version's rewards click far less than the previous version's, fires
CtrRegression, rolls the model back through the control topic with actor ``monitor`` and an audit
record on the alerts topic, and the inference server (a real process following the same control
topic) then answers with the previous version."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from bench.toymodel import write_version
from recpilot import kafka
from recpilot.models.deployments import ACTION_NAMES, replay
from recpilot.pb import events_pb2, recommend_pb2, recommend_pb2_grpc
from recpilot.topics import acks_topic
from tests.support.inference import publish, server_env, start_server
from tests.support.monitor import monitor_topics, rewards, start_monitor, status

pytestmark = pytest.mark.timeout(300)

CONFIG = """
[ctr_regression]
window_items = 200
baseline_min_items = 3000
baseline_items = 20000
[conversion_regression]
enabled = false
[policy_ctr_regression]
enabled = false
"""


def _answer(stub) -> str:
    r = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=3, candidate_ids=[f"x{i}" for i in range(20)]),
                       timeout=10)
    return "fallback" if r.fallback else r.model_version


def test_ctr_collapse_rolls_back_and_inference_serves_the_previous_version(
        stack, platform_settings, tmp_path, unique, wait_until):
    root = tmp_path / "models"
    v1, v2 = write_version(root, "ranker", seed=1), write_version(root, "ranker", seed=2)
    control = f"test.deployments.{unique}"
    publish(platform_settings, control, "deploy", v1)
    publish(platform_settings, control, "promote", v1)
    server = start_server(server_env(root, control, unique, RECPILOT_INFERENCE_REPLICA_ID=f"test-{unique}"),
                          tmp_path / "inference.log", 120)
    env = {"RECPILOT_MODEL_REPOSITORY": str(root), "RECPILOT_DEPLOY_TOPIC": control}
    mon = start_monitor(platform_settings, tmp_path, unique, CONFIG, env=env, action_cooldown_s=600)
    topics = monitor_topics(unique)
    prod = kafka.producer(platform_settings)
    rng = np.random.default_rng(3)

    def send(version: str, n: int, ctr: float) -> None:
        for r in rewards("ranker", version, n, ctr, rng):
            kafka.produce_waiting(prod, topics["rewards"], r.SerializeToString(), b"u")
        kafka.flush_or_raise(prod, 10)

    stub = recommend_pb2_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    try:
        assert _answer(stub) == v1
        send(v1, 8000, 0.05)                      # v1's CTR: the baseline
        publish(platform_settings, control, "promote", v2)
        wait_until(lambda: _answer(stub) == v2, 30, "v2 never served")
        t0 = time.monotonic()
        send(v2, 3000, 0.005)                      # v2 clicks a tenth as often
        wait_until(lambda: _answer(stub) == v1, 60, lambda: status(mon)["detectors"]["CtrRegression"])
        print(f"rolled back {time.monotonic() - t0:.1f} s after v2's rewards were produced")

        state = replay(platform_settings, control, timeout=20).state("ranker")
        last = state.history[-1]
        assert state.production_version == v1 and ACTION_NAMES[last.action] == "rollback"
        assert last.actor == "monitor" and "CtrRegression" in last.reason and f"version={v2}" in last.reason
        st = status(mon)
        (act,) = [a for a in st["actions"] if a["action"] == "rollback"]
        assert act["outcome"] == "executed" and act["version"] == v2 and act["command_id"] == last.command_id
        audit = [events_pb2.AlertsMessage.FromString(m.value()) for m in
                 kafka.read_to_end(platform_settings, topics["alerts"], timeout=20)]
        assert [(m.WhichOneof("body"), m.action.outcome if m.HasField("action") else m.alert.name) for m in audit] == [
            ("alert", "CtrRegression"), ("action", "executed")]
    finally:
        mon.kill9()
        server.kill9()
        kafka.delete_topics(platform_settings, [control, acks_topic(control)], timeout=10)
